"""`raydistill run configs/local-chat.yaml` end to end, CI-sized, on the Llama pair: the
shipped laptop config with real architectures, a real tokenizer and chat template, a teacher
fine-tuned first, synthetic data and its top-k cache from one vLLM pass (the CPU build), logit
KD with a ZeRO-3 student on 2 workers, and lm-eval on the test split plus a local task YAML
named like an installed task. (The no-teacher
baseline is left to test_pipeline_run, to keep the suite's time.)"""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from raydistill.cli import main

pytestmark = pytest.mark.slow

CI_SIZE = [
    "data.splits={test: 16, dev: 8, labelled: 48, train: 64}",
    "teacher.model=local:llama-teacher", "student.model=local:llama-student",
    "teacher.steps=8", "teacher.batch_size=16", "student.steps=4", "student.batch_size=8",
    "training.checkpoint_every=2", "generation.batch_size=32", "generation.max_new_tokens=8",
    "generation.engine=vllm",
    "evaluation.limit=8", "evaluation.inference_prompts=8", "evaluation.inference_min_s=0.3",
    "sampling.source=constant:40", "sampling.hz=20", "sampling.push_interval_s=0.5",
    "sampling.idle_s=0", "baseline=false",  # the baseline's run is test_pipeline_run's
    # what `auto` gives on a GPU with bf16, trained here as there (this CPU has AVX-512 bf16);
    # fp32 ZeRO-3 students are test_real_models'
    "training.precision=bf16",
]


def local_task(directory) -> str:
    """An lm-eval task YAML over a local JSONL, included by path (as an offline user would)."""
    directory.mkdir()
    docs = directory / "docs.jsonl"
    docs.write_text("".join(json.dumps({"q": f"Uppercase: {w}", "a": w.upper()}) + "\n"
                            for w in ("cat", "dog", "owl", "fox")))
    (directory / "upper.yaml").write_text(yaml.safe_dump({
        "task": "raydistill_ci_upper", "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(docs)}}, "output_type": "loglikelihood",
        "test_split": "test", "doc_to_text": "{{q}}\n", "doc_to_target": "{{a}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}))
    return "raydistill_ci_upper"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("local-chat")
    task = local_task(root / "tasks")
    sets = [*CI_SIZE, f"evaluation.lm_eval_tasks=[{task}]",
            f"evaluation.lm_eval_include=[{root / 'tasks'}]"]
    argv = ["run", "configs/local-chat.yaml", "--artifacts", str(root / "artifacts"),
            "--out", str(root / "run"), *[a for s in sets for a in ("--set", s)]]
    return root / "run", main(argv)


def test_local_chat_runs_every_stage(run):
    run_dir, code = run
    assert code == 0
    table = pd.read_parquet(run_dir / "results.parquet")
    for stage in ("teacher_training", "teacher_generation", "student_training", "evaluation"):
        assert stage in set(table["stage"]), stage
    # one teacher pass on vLLM: the cache came back with the generated tokens
    assert "teacher_logit_caching" not in set(table["stage"])
    gen = table[table["stage"] == "teacher_generation"].iloc[0]
    assert 0 < gen["generated_tokens"] < gen["tokens"]
    assert gen["prompt_tokens"] == gen["tokens"] - gen["generated_tokens"]
    assert gen["j_per_generated_token"] == pytest.approx(gen["work_j"] / gen["generated_tokens"])
    work = table[table["stage"].isin(["teacher_generation", "student_training"])]
    assert len(work) == 2
    assert (work["load_j"] > 0).all() and (work["tokens_per_s"] > 0).all()
    # J/token is the steady-state figure; the load is reported apart
    assert (work["j_per_token"] < work["j_per_token_incl_load"]).all()


def test_scores_come_from_the_test_split_and_named_tasks(run):
    run_dir, _ = run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    scores = metrics["trials"][0]["scores"]
    for model in ("teacher", "student"):
        for key in ("quick_acc", "raydistill_test_acc", "raydistill_ci_upper_acc"):
            assert 0.0 <= scores[f"{model}_{key}"] <= 1.0, key
    # the local task holds each model's own rendered prompt (the Llama-3 template, one BOS)
    docs = (run_dir / "lm_eval" / "local-chat" / "student" / "test.jsonl").read_text()
    first = json.loads(docs.splitlines()[0])["prompt"]
    assert first.startswith("<|begin_of_text|>") and first.count("<|begin_of_text|>") == 1
    assert first.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    train = metrics["train"]["local-chat"]
    assert train["zero_stage"] == 3 and train["world"] == 2
    # trained in bf16 on fp32 master weights, saved in bf16, reloaded and checked in bf16
    assert train["precision"] == "bf16" and train["saved_dtype"] == "bfloat16"
    assert train["reload_max_abs_diff"] < 1e-3


def test_data_splits_are_written_with_their_digests(run):
    run_dir, _ = run
    splits = json.loads((run_dir / "data" / "splits.json").read_text())
    assert splits["counts"]["test"] == 16 and splits["counts"]["train"] == 64
    test_ids = {json.loads(line)["id"] for line in (run_dir / "data" / "test.jsonl").open()}
    train_ids = {json.loads(line)["id"] for line in (run_dir / "data" / "train.jsonl").open()}
    assert not test_ids & train_ids


def test_one_vllm_pass_wrote_both_artifacts(run):
    run_dir, _ = run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    arts = metrics["artifacts"]["local-chat"]
    synthetic = json.loads((Path(arts["synthetic_data"]["path"]) / "_artifact.json").read_text())
    cache = json.loads((Path(arts["logit_cache"]["path"]) / "_artifact.json").read_text())
    assert synthetic["inputs"]["engine"] == "vllm" and synthetic["built_by"]["one_pass_cache"]
    assert synthetic["inputs"]["decoding"] == "greedy" and synthetic["inputs"]["n"] == 1
    assert cache["inputs"]["engine"] == "vllm"
    assert cache["built_by"]["stage"] == "teacher_generation"
    assert cache["built_by"]["paid_by"] == f"synthetic_data:{arts['synthetic_data']['key']} " \
                                           "(one pass)"
    assert cache["built_by"]["energy_j"] == 0.0  # paid once, by the generation pass
