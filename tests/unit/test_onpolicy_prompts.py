"""On-policy with λ = 1 reads prompts only: the pipeline builds no synthetic data (a teacher
generation the student would never train on) and the worker's stream reads the train split's
prompts, each with an empty response the rollout replaces."""

import json
import types
from pathlib import Path

import pytest

from raydistill.config import load_experiment
from raydistill.data.splits import DataSplits
from raydistill.distill.examples import read_prompts
from raydistill.distill.pipeline import Pipeline, prompts_only

ROOT = Path(__file__).resolve().parents[2]


def _pipeline(tmp_path, lmbda: float):
    cfg = load_experiment(ROOT / "configs" / "local-chat.yaml",
                          ["distill.method=onpolicy", f"distill.lmbda={lmbda}"])
    paths = {s: tmp_path / f"{s}.jsonl" for s in ("test", "dev", "labelled", "train")}
    for p in paths.values():
        p.write_text("")
    data = DataSplits(paths, {s: 4 for s in paths}, {s: s for s in paths})
    pipe = object.__new__(Pipeline)  # no cluster: only run_trial's choices are under test
    pipe.cfg = cfg
    seen: dict = {}
    teacher = types.SimpleNamespace(location="teacher-dir")

    def teacher_side(*args):
        seen["teacher_side"] = True
        return {"synthetic_data": types.SimpleNamespace(path=tmp_path / "synthetic")}

    def student(trial_id, method, teacher, data_path, cache, extra):
        seen["data_path"] = data_path
        return tmp_path / "student", {}

    pipe.data = lambda: data
    pipe.teacher_model = lambda d: teacher
    pipe.teacher_side = teacher_side
    pipe.student = student
    pipe.evaluate = lambda *a: {"scores": {}, "inference_tokens": {}}
    return pipe, seen, paths


def test_lambda_one_pays_no_teacher_generation_and_trains_from_the_train_prompts(tmp_path):
    pipe, seen, paths = _pipeline(tmp_path, 1.0)
    pipe.run_trial("t", "onpolicy")
    assert "teacher_side" not in seen and seen["data_path"] == paths["train"]
    pipe, seen, _ = _pipeline(tmp_path, 0.5)  # some off-policy steps: the synthetic data
    pipe.run_trial("t", "onpolicy")
    assert seen["teacher_side"] and seen["data_path"] == tmp_path / "synthetic"
    assert not prompts_only("logit", 1.0)


def test_prompts_are_read_with_an_empty_response(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"q{i}"}]}
            for i in range(3)]  # the train split needs no gold response
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = read_prompts(path)
    assert [r["id"] for r in got] == ["r0", "r1", "r2"]
    assert all(r["completion"] == "" and r["completion_ids"] is None for r in got)
    assert json.loads(got[1]["messages"]) == rows[1]["messages"]
    assert len(read_prompts(path, 0, 2)) + len(read_prompts(path, 1, 2)) == 3


def test_the_worker_stream_yields_prompts_for_the_rollouts(tmp_path):
    from itertools import islice

    from raydistill.distill.examples import ExampleStream
    from raydistill.distill.tiny import make_tokenizer

    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}", "messages": [
        {"role": "user", "content": f"what is {i} + {i}?"}]}) + "\n" for i in range(4)))
    tok = make_tokenizer()
    cfg = {"method": "onpolicy", "top_k": 0, "seed": 0, "data_path": str(path),
           "max_prompt_tokens": 32, "max_seq_len": 64, "max_response_tokens": 16,
           "shared_vocab": True}
    examples = list(islice(iter(ExampleStream(cfg, tok, tok, 0, 1)), 4))
    # a prompt and nothing after it: the rollout writes the completion
    assert all(len(e["input_ids"]) == e["prompt_len"] > 0 for e in examples)


def test_dense_scoring_above_the_limit_is_refused_with_the_fix():
    from raydistill.distill.teacher_scoring import check_dense_request, dense_request_gib
    from raydistill.errors import ConfigError

    # a Qwen vocabulary, 8 sequences of 512: 2.3 GiB per request through Ray
    assert dense_request_gib(0, 151_936, 8, 512) == pytest.approx(2.32, abs=0.01)
    with pytest.raises(ConfigError, match=r"set distill\.top_k"):
        check_dense_request(0, 151_936, 8, 512)
    check_dense_request(32, 151_936, 8, 512)  # top-k: a few numbers a position
    check_dense_request(0, 1_000, 8, 64)  # a tiny vocabulary: dense is fine


def test_the_pipeline_refuses_dense_scoring_before_the_pool_starts(tmp_path, monkeypatch):
    from raydistill.distill import stages, teacher_scoring
    from raydistill.errors import ConfigError

    pipe, _, _ = _pipeline(tmp_path, 1.0)
    pipe.cfg = load_experiment(ROOT / "configs" / "local-chat.yaml",
                               ["distill.method=onpolicy", "distill.top_k=0",
                                "training.max_seq_len=4096"])
    monkeypatch.setattr(stages, "vocab_rows", lambda *a: 151_936)
    monkeypatch.setattr(teacher_scoring, "start_pool", lambda *a, **k: pytest.fail("started"))
    teacher = types.SimpleNamespace(location="teacher-dir")
    with pytest.raises(ConfigError, match=r"distill\.top_k"):
        pipe._onpolicy_student("t", teacher, tmp_path, tmp_path / "out", None, None)


def test_the_plan_counts_the_scoring_pool_beside_the_training_workers():
    # the bug: plan/dry-run counted the training workers only, so a cluster with no GPU left
    # for the pool passed the plan and then hung in the first scoring request
    from dataclasses import replace

    from raydistill.architectures import KNOWN
    from raydistill.memory_estimate import estimate_memory, format_memory_plan
    from raydistill.plan import plan_of

    over = ["distill.method=onpolicy", "distill.num_workers=2", "hardware.gpus=2",
            "generation.num_actors=1", "generation.gpus_per_actor=1"]
    cfg = load_experiment(ROOT / "configs" / "local-chat.yaml", over)
    plan = plan_of(cfg)
    assert plan.scoring_gpus == 1 and plan.cluster_gpus == 2
    m = estimate_memory(KNOWN["meta-llama/Llama-3.1-8B"], KNOWN["meta-llama/Llama-3.2-1B"],
                        replace(plan, gpu_memory_gib=80.0))
    text = format_memory_plan(m)
    assert "training worker asks for 3 GPUs but the cluster has 2" in text and not m.fits
    assert "teacher scoring pool (1 GPU) beside them" in text
    roomy = replace(m, plan=replace(m.plan, cluster_gpus=3))
    assert not roomy.unplaceable()
    logit = load_experiment(ROOT / "configs" / "local-chat.yaml",
                            [*over[1:], "distill.method=logit"])
    assert plan_of(logit).scoring_gpus == 0


def test_a_scoring_request_that_never_comes_back_says_what_to_change(monkeypatch):
    import ray.exceptions

    from raydistill.distill import onpolicy

    def get(ref, timeout=None):
        assert timeout == 5.0
        raise ray.exceptions.GetTimeoutError("timed out")

    monkeypatch.setattr(ray, "get", get)
    with pytest.raises(TimeoutError, match=r"generation\.num_actors"):
        onpolicy.scorer_get(object(), 5.0, "load")
