"""What a tracked run records besides the ledger (pure): scores, baselines, artifacts and their
amortization, a directory appended to, a native run's scores kept, bad input refused."""

import json

import pandas as pd
import pytest

from raydistill.errors import ConfigError
from raydistill.tracking.state import (
    ArtifactRecord,
    TrackState,
    amortized_j,
    load_state,
    save_state,
)
from raydistill.tracking.state import artifact_costs as costs_of


def table(rows):
    return pd.DataFrame(rows, columns=["trial_id", "stage", "energy_j"])


TABLE = table([("a", "teacher_generation", 100.0), ("a", "student_training", 40.0),
               ("a", "evaluation", 5.0), ("a", "inference_student", 3.0),
               ("b", "student_training", 60.0)])


def test_an_artifact_costs_the_stage_that_made_it_split_over_its_users():
    state = TrackState("r")
    rec = state.add_artifact(ArtifactRecord("synthetic_data", "/d/gen", {"t": 1}, "a",
                                            "teacher_generation"))
    assert rec.used_by == ["a"]
    state.use_artifact(rec.key, "b")
    costs = costs_of(TABLE, state)
    assert costs[0]["energy_j"] == 100.0
    # a: its own stages (inference probes aside) but the generation, plus half of it
    assert amortized_j(TABLE, "a", costs) == 40.0 + 5.0 + 50.0
    assert amortized_j(TABLE, "b", costs) == 60.0 + 50.0
    # the amortized figures add up to what was spent (inference probes aside)
    assert amortized_j(TABLE, "a", costs) + amortized_j(TABLE, "b", costs) == 205.0


def test_the_same_artifact_recorded_twice_keeps_its_first_cost():
    state = TrackState("r")
    first = state.add_artifact(ArtifactRecord("logit_cache", "/c", {"k": 1}, "a", "s1"))
    again = state.add_artifact(ArtifactRecord("logit_cache", "/c", {"k": 1}, "b", "s2"))
    assert again is first and len(state.artifacts) == 1
    other = state.add_artifact(ArtifactRecord("logit_cache", "/c", {"k": 2}, "b", "s2"))
    assert other.key != first.key


def test_state_survives_a_round_trip_and_an_append(tmp_path):
    state = load_state(tmp_path, "r", {"region": "DE"})
    state.add_scores("a", {"student_acc": 0.4, "teacher_acc": 0.5}, baseline="b")
    state.add_artifact(ArtifactRecord("synthetic_data", "/d", {}, "a", "teacher_generation"))
    save_state(tmp_path, state)
    again = load_state(tmp_path, "ignored", None)
    assert again.name == "r" and again.baselines == {"a": "b"}
    assert again.scores["a"] == {"student_acc": 0.4, "teacher_acc": 0.5}
    assert again.artifacts[0].key == state.artifacts[0].key
    assert again.footprint_inputs().region == "DE"
    with pytest.raises(ConfigError, match="same footprint"):
        load_state(tmp_path, "r", {"region": "FR"})


def test_a_native_run_directory_keeps_its_scores_when_a_stage_is_appended(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(
        {"trials": [{"trial_id": "tiny", "scores": {"student_quick_acc": 0.7}}]}))
    state = load_state(tmp_path, "tiny", None)
    assert state.scores == {"tiny": {"student_quick_acc": 0.7}}


@pytest.mark.parametrize("bad, match", [
    ({"footprint": {"regoin": "DE"}}, "valid keys: region"),
    ({"scores": {"student_acc": "high"}}, "numbers"),
    ({"baseline": "a"}, "own baseline"),
    ({"use": "nope"}, "no artifact with key"),
])
def test_bad_input_is_one_clear_error(tmp_path, bad, match):
    with pytest.raises(ConfigError, match=match):
        if "footprint" in bad:
            load_state(tmp_path, "r", bad["footprint"])
        state = TrackState("r")
        if "scores" in bad:
            state.add_scores("a", bad["scores"])
        if "baseline" in bad:
            state.add_scores("a", {"student_acc": 1.0}, baseline=bad["baseline"])
        if "use" in bad:
            state.use_artifact(bad["use"], "a")


def test_model_card_block_takes_the_hub_spec_fields(tmp_path):
    pytest.importorskip("transformers")
    from huggingface_hub import ModelCardData

    from raydistill.integrations.hf import model_card_block
    from tests.report_fixture import make_sweep_dir

    d = make_sweep_dir(tmp_path)
    block = model_card_block(d, trial="t1")
    assert set(block) == {"emissions", "source", "training_type", "geographical_location",
                          "hardware_used"}
    assert block["training_type"] in ("pre-training", "fine-tuning")
    results = pd.read_parquet(d / "results.parquet")
    mine = results[results["trial_id"].isin(["t1", "setup"])]
    assert block["emissions"] == pytest.approx(mine["co2e_g"].sum())
    card = ModelCardData(co2_eq_emissions=block).to_dict()
    assert card["co2_eq_emissions"]["emissions"] == block["emissions"]


def test_a_failed_start_releases_the_run_directory(tmp_path, monkeypatch):
    """A start that fails after taking the lock (Ray unreachable, a sampler that cannot start)
    must not keep it: re-running a notebook cell would otherwise say the directory is being
    tracked by another process until the kernel restarts."""
    import raydistill.cluster.runtime as runtime
    from raydistill.tracking.run import Run, _lock_run_dir

    def unreachable(*args, **kwargs):
        raise ConnectionError("no Ray at ray://nowhere:10001")

    monkeypatch.setattr(runtime, "init_ray", unreachable)
    run = Run(tmp_path / "run")
    with pytest.raises(ConnectionError):
        run.start()
    _lock_run_dir(run.run_dir).close()  # free again: this would raise if the lock were kept


def test_a_run_pickles_with_the_standard_pickle(tmp_path):
    """A Run handed to a process pool or a Ray task by plain pickle: its lock (an open file)
    stays with the owner."""
    import pickle

    from raydistill.tracking.run import Run, _lock_run_dir

    run = Run(tmp_path / "run")
    run.run_dir.mkdir(parents=True)
    run._lock = _lock_run_dir(run.run_dir)
    try:
        copy = pickle.loads(pickle.dumps(run))
    finally:
        run._lock.close()
    assert copy.run_dir == run.run_dir and copy._lock is None and not copy._owner
