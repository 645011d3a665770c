"""What a tracked run records besides the ledger (pure): scores, baselines, artifacts and their
amortization, a directory appended to, a native run's scores kept, bad input refused."""

import json

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# ---- one stage's energy split among the artifacts it produced (issue 27) ---------------------

def test_two_artifacts_of_one_stage_split_it_instead_of_each_carrying_it():
    """Synthetic data and its one-pass logit cache, both made by teacher_generation: each used
    to carry the whole 100 J, so the amortized figures summed to more than was spent."""
    state = TrackState("r")
    data = state.add_artifact(ArtifactRecord("synthetic_data", "/d", {}, "a",
                                             "teacher_generation"))
    cache = state.add_artifact(ArtifactRecord("logit_cache", "/c", {}, "a",
                                              "teacher_generation"))
    state.use_artifact(data.key, "b")
    state.use_artifact(cache.key, "b")
    costs = costs_of(TABLE, state)
    assert [c["energy_j"] for c in costs] == [50.0, 50.0]
    assert all(c["stage_energy_j"] == 100.0 for c in costs)
    spent = 100.0 + 40.0 + 5.0 + 60.0  # E_run of a and b (inference probes aside)
    assert amortized_j(TABLE, "a", costs) + amortized_j(TABLE, "b", costs) == spent
    assert amortized_j(TABLE, "b", costs) == 60.0 + 50.0


def test_a_share_weighs_an_artifact_against_its_stage_mates():
    state = TrackState("r")
    state.add_artifact(ArtifactRecord("synthetic_data", "/d", {}, "a", "teacher_generation",
                                      share=3.0))
    state.add_artifact(ArtifactRecord("logit_cache", "/c", {}, "a", "teacher_generation"))
    assert [c["energy_j"] for c in costs_of(TABLE, state)] == [75.0, 25.0]
    for bad in (0, -1.0, float("nan"), "half"):
        with pytest.raises(ConfigError, match="share must be a number > 0"):
            ArtifactRecord("logit_cache", "/c", {}, "a", "teacher_generation", share=bad)


def test_an_old_track_json_without_shares_loads_with_equal_shares(tmp_path):
    (tmp_path / "track.json").write_text(json.dumps({"name": "r", "artifacts": [
        {"kind": "synthetic_data", "path": "/d", "inputs": {}, "trial_id": "a",
         "stage": "teacher_generation", "key": "k1", "used_by": ["a"], "created_s": 0.0}]}))
    assert load_state(tmp_path, "r", None).artifacts[0].share == 1.0


@st.composite
def artifact_graphs(draw):
    trials = [f"t{i}" for i in range(draw(st.integers(1, 5)))]
    stages = ["teacher_generation", "teacher_logit_caching", "student_training", "evaluation"]
    energy = st.floats(0.0, 1e6, allow_nan=False)
    rows = [(t, s, draw(energy)) for t in trials for s in stages if draw(st.booleans())]
    rows.append((trials[0], "inference_student", draw(energy)))  # never in E_run
    arts = []
    for i in range(draw(st.integers(0, 6))):
        users = draw(st.lists(st.sampled_from(trials), max_size=len(trials), unique=True))
        arts.append((f"k{i}", draw(st.sampled_from(trials)), draw(st.sampled_from(stages)),
                     draw(st.floats(0.01, 10.0)), users))
    return trials, rows, arts


@settings(max_examples=200, deadline=None)
@given(artifact_graphs())
def test_amortized_figures_sum_to_what_the_trials_spent(graph):
    """For any artifacts (several per stage, some never used by another trial, some made by a
    stage with no energy) the amortized figures over the trials sum to their E_run."""
    from raydistill.results import seed_metrics

    trials, rows, arts = graph
    tab = table(rows).assign(tokens=0)
    state = TrackState("r")
    for kind, trial, stage, share, users in arts:
        rec = state.add_artifact(ArtifactRecord(kind, f"/{kind}", {}, trial, stage,
                                                share=share))
        for u in users:
            state.use_artifact(rec.key, u)
    costs = costs_of(tab, state)
    amortized = sum(amortized_j(tab, t, costs) for t in trials)
    e_run = sum(seed_metrics(tab, t, {})["E_run_j"] for t in trials)
    assert amortized == pytest.approx(e_run, rel=1e-9, abs=1e-6)


def test_a_finish_interrupted_while_it_waits_releases_the_run_directory(tmp_path, monkeypatch):
    """Ctrl-C while the owner waits for the ranks (or a finish that fails): nothing is written,
    and the directory is free for the cell to be run again."""
    from raydistill.tracking.run import Run, _lock_run_dir

    class Session:
        def close(self) -> None:
            pass

    run = Run(tmp_path / "run")
    run.run_dir.mkdir(parents=True)
    run._lock, run._owner, run._session, run._saved_env = _lock_run_dir(run.run_dir), True, \
        Session(), {}

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "_wait_for_ranks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run.finish()
    _lock_run_dir(run.run_dir).close()  # free again: this would raise if the lock were kept
    assert not (run.run_dir / "metrics.json").exists()
