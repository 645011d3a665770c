"""`raydistill.track(out=...)` appending a stage to a `raydistill run` directory, on one local
Ray sampling a simulated node: every figure of the native run survives, the native footprint
prices the whole table, the new stage is in results.parquet (issue 27)."""

import json
import time
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

import raydistill
from raydistill.config import SamplingConfig
from raydistill.distill.pipeline import TrialOutcome
from raydistill.energy.footprint import FootprintInputs
from raydistill.results import load_ledger, results_table
from raydistill.run import write_run_results
from raydistill.tracking.state import STATE_FILE

pytestmark = [pytest.mark.slow, pytest.mark.shares_ray]

GPU = "GPU-sim-append-0000"
FOOTPRINT = {"region": "DE", "pue": 1.2}


@pytest.fixture(scope="module")
def local_ray(shared_ray):
    yield  # the session's Ray (tests/shared_ray.py), left up for the next module


@pytest.fixture
def sampling(tmp_path, monkeypatch):
    node = {"gpus": [{"uuid": GPU, "refresh_s": 0.02, "power_w": 300.0}],
            "rapl": [{"package": 0, "power_w": 120.0, "dram_w": 10.0}]}
    path = tmp_path / "node.json"
    path.write_text(json.dumps(node))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU)
    return SamplingConfig(source=f"simulate:{path}", hz=20, push_interval_s=0.3, idle_s=0.2,
                          max_gap_s=0.8, push_timeout_s=2.0)


def _native_run(d, sampling) -> dict:
    """A native run's directory: its stages in the ledger, then `raydistill run`'s own writer
    over the ledger's table, its config.yaml with the footprint, no track.json."""
    started = time.time()
    with raydistill.track(out=d, sampling=sampling, trial="tiny") as run:
        for trial, stage, seconds in (("tiny", "teacher_generation", 0.6),
                                      ("tiny", "student_training", 0.4),
                                      ("tiny-baseline", "student_training", 1.2)):
            with run.stage(stage, trial=trial, tokens=1000):
                time.sleep(seconds)
    (d / STATE_FILE).unlink()
    state, _ = load_ledger(d)
    table = results_table(state.energy_rows(), FootprintInputs(**FOOTPRINT))
    (d / "config.yaml").write_text(yaml.safe_dump({"name": "tiny", "footprint": {
        **FOOTPRINT, "gco2_per_kwh": None, "hourly_csv": "", "wue_l_per_kwh": 0.0,
        "water_l_per_kwh": None}}))
    art = SimpleNamespace(key="synthetic_data-k", reused=False, path="/store/s")
    write_run_results(d, table, [
        TrialOutcome("tiny", "sft", {"student_quick_acc": 0.6, "teacher_quick_acc": 0.8},
                     {"synthetic_data": art}, train_metrics={"tokens_per_s": 50.0}),
        TrialOutcome("tiny-baseline", "none", {"student_quick_acc": 0.5}, {},
                     train_metrics={"tokens_per_s": 40.0})], started)
    return json.loads((d / "metrics.json").read_text())


def test_track_appended_to_a_native_run_keeps_every_native_figure(local_ray, sampling,
                                                                  tmp_path):
    d = tmp_path / "tiny"
    native = _native_run(d, sampling)
    assert native["trials"][0]["baseline_trial"] == "tiny-baseline"
    with raydistill.track(out=d, sampling=sampling, trial="gkd-b") as run, \
            run.stage("student_training", tokens=500):
        time.sleep(0.5)
    after = json.loads((d / "metrics.json").read_text())
    got = {m["trial_id"]: m for m in after["trials"]}
    for m in native["trials"]:
        assert {k: got[m["trial_id"]][k] for k in m} == m, m["trial_id"]
    assert (after["wall_s"], after["train"]) == (native["wall_s"], native["train"])
    for trial, kinds in native["artifacts"].items():
        assert after["artifacts"][trial] == kinds
    assert set(native["reused_artifacts"]) <= set(after["reused_artifacts"])
    table = pd.read_parquet(d / "results.parquet")
    assert ("gkd-b", "student_training") in set(zip(table["trial_id"], table["stage"],
                                                    strict=True))
    state, _ = load_ledger(d)
    de = results_table(state.energy_rows(), FootprintInputs(**FOOTPRINT))
    assert table["co2e_g"].tolist() == pytest.approx(de["co2e_g"].tolist())
    assert yaml.safe_load((d / "config.yaml").read_text())["footprint"]["region"] == "DE"
