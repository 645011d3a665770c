"""A `raydistill run` directory appended to by `raydistill.track` keeps every figure of the
native run: its metrics entries (N*, baseline, OM_perf, training figures, artifacts), its top
level and its footprint; the appended stages are added (issue 27). The native files are
written by `raydistill run`'s own writer over a ledger made of replayed samples."""

import json
import time
from dataclasses import replace
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from raydistill.config import ExperimentConfig, FootprintConfig, to_dict
from raydistill.distill.pipeline import TrialOutcome
from raydistill.energy.footprint import FootprintInputs
from raydistill.energy.ledger import LedgerState
from raydistill.energy.samples import Reading, Window
from raydistill.errors import ConfigError
from raydistill.results import results_table
from raydistill.run import write_run_results
from raydistill.tracking.state import TrackState, load_state, save_state, write_results
from tests.ledger_helpers import feed

GPU = "GPU-native-0"
NATIVE = [("tiny", "teacher_generation", 1.0, 10.0, 4000, 3000),
          ("tiny", "student_training", 11.0, 18.0, 2000, 0),
          ("tiny", "evaluation", 19.0, 21.0, 300, 0),
          ("tiny-baseline", "student_training", 22.0, 35.0, 2000, 0)]
FOOTPRINT = {"region": "DE", "pue": 1.2}


def _ledger() -> LedgerState:
    state = LedgerState()
    # a GPU whose power steps with time: every stage has its own figure
    feed(state, "s1", [Reading(GPU, "gpu", t / 10, 100.0 + (t % 37) * 5, None, "replay",
                               "replayed") for t in range(0, 801)])
    return state


def _window(state: LedgerState, n: int, trial: str, stage: str, start: float, end: float,
            tokens: int, generated: int) -> None:
    state.apply_event({"type": "window_open",
                       **Window(f"w{n}", trial, stage, "node-1", (GPU,), start).__dict__})
    state.apply_event({"type": "window_close", "window_id": f"w{n}", "t_end_s": end,
                       "tokens": tokens, "cpu_time_s": None, "generated_tokens": generated})


@pytest.fixture
def native_dir(tmp_path):
    """What `raydistill run` leaves: config.yaml, results.parquet, metrics.json (its writer)."""
    d = tmp_path / "tiny"
    d.mkdir()
    cfg = replace(ExperimentConfig(), footprint=FootprintConfig(**FOOTPRINT))
    (d / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    ledger = _ledger()
    for n, w in enumerate(NATIVE):
        _window(ledger, n, *w)
    table = results_table(ledger.energy_rows(), FootprintInputs(**FOOTPRINT))
    art = SimpleNamespace(key="synthetic_data-abc", reused=False, path="/store/s")
    outcomes = [
        TrialOutcome("tiny", "logit", {"student_quick_acc": 0.6, "teacher_quick_acc": 0.8},
                     {"synthetic_data": art}, train_metrics={"tokens_per_s": 321.0,
                                                             "precision": "bf16"},
                     dev_scores={"student_quick_acc": 0.55, "quick_acc_rows": 20.0}),
        TrialOutcome("tiny-baseline", "none", {"student_quick_acc": 0.5},
                     {"synthetic_data": art},
                     train_metrics={"tokens_per_s": 300.0, "precision": "bf16"})]
    write_run_results(d, table, outcomes, time.time() - 42.0)
    return d, ledger


def _append(d, ledger, trial: str, stage: str, footprint: dict | None = None) -> dict:
    state = load_state(d, "ignored", footprint)
    _window(ledger, 99, trial, stage, 40.0, 60.0, 1000, 0)
    write_results(d, ledger.energy_rows(), state, time.time() - 3.0)
    save_state(d, state)
    return json.loads((d / "metrics.json").read_text())


def _assert_native_kept(native: dict, after: dict) -> None:
    for key, value in native.items():
        if key in ("trials", "artifacts", "reused_artifacts"):
            continue
        assert after[key] == value, key
    for t, kinds in native["artifacts"].items():
        for kind, info in kinds.items():
            assert after["artifacts"][t][kind] == info
    assert set(native["reused_artifacts"]) <= set(after["reused_artifacts"])


def test_a_new_trial_appended_keeps_every_native_figure(native_dir):
    d, ledger = native_dir
    native = json.loads((d / "metrics.json").read_text())
    assert native["trials"][0]["N_star_verdict"] is not None  # the native run has an N*
    assert native["trials"][0]["dev_scores"]["student_quick_acc"] == 0.55  # beside test
    after = _append(d, ledger, "gkd-b", "student_training")
    _assert_native_kept(native, after)
    got = {m["trial_id"]: m for m in after["trials"]}
    for m in native["trials"]:
        kept = got[m["trial_id"]]
        assert {k: kept[k] for k in m} == m  # every native field, equal
        assert "energy_amortized_j" in kept
    assert "gkd-b" in got
    table = pd.read_parquet(d / "results.parquet")
    assert ("gkd-b", "student_training") in set(zip(table["trial_id"], table["stage"],
                                                    strict=True))
    # the whole table priced with the native footprint (DE, PUE 1.2), not the default
    ledger_table = results_table(ledger.energy_rows(), FootprintInputs(**FOOTPRINT))
    assert table["co2e_g"].tolist() == pytest.approx(ledger_table["co2e_g"].tolist())
    world = results_table(ledger.energy_rows(), FootprintInputs())
    assert table["co2e_g"].sum() != pytest.approx(world["co2e_g"].sum())


def test_a_stage_appended_to_a_native_trial_recomputes_it_and_keeps_the_rest(native_dir):
    d, ledger = native_dir
    native = json.loads((d / "metrics.json").read_text())
    after = _append(d, ledger, "tiny", "inference_student")
    _assert_native_kept(native, after)
    got = {m["trial_id"]: m for m in after["trials"]}
    tiny, old = got["tiny"], native["trials"][0]
    assert "inference_student" in tiny["EPT_j_per_token"]  # recomputed with the new stage
    for key in ("E_run_j", "teacher_side_j", "N_star", "N_star_low", "N_star_high",
                "N_star_verdict", "baseline_trial", "OM_perf", "scores"):
        assert tiny[key] == pytest.approx(old[key]), key  # inference probes are not in E_run
    baseline = native["trials"][1]
    assert {k: got["tiny-baseline"][k] for k in baseline} == baseline
    # appended twice: still the native figures (track.json keeps them)
    again = _append(d, ledger, "gkd-c", "evaluation")
    _assert_native_kept(native, again)


def test_appending_with_another_footprint_is_refused(native_dir):
    d, _ = native_dir
    with pytest.raises(ConfigError, match="same footprint"):
        load_state(d, "tiny", {"region": "FR"})
    assert load_state(d, "tiny", dict(FOOTPRINT)).footprint_inputs().region == "DE"
    assert isinstance(load_state(d, "tiny", None), TrackState)
