"""The sweep's searcher, driven directly with fake trials (no Ray cluster): what Optuna's study
is told of finished, stopped and failed trials, the samplers behind each algorithm name, and the
repeats of a configuration."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

optuna = pytest.importorskip("optuna")
tune = pytest.importorskip("ray.tune")

from optuna.trial import TrialState  # noqa: E402

from raydistill.errors import ConfigError  # noqa: E402
from raydistill.search import searcher as srch  # noqa: E402
from raydistill.search.space import ALGORITHMS, SearchSettings  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.ERROR)

SPACE = {"distill.method": tune.choice(["sft", "logit"]), "student.lr": tune.uniform(1e-4, 1e-2)}
FINITE = {"distill.method": tune.choice(["sft", "logit"]), "student.steps": tune.randint(1, 3)}


def space_of(algorithm: str = "nsga2", num_samples: int = 8, population: int | None = None):
    return SimpleNamespace(search=SearchSettings(algorithm=algorithm, num_samples=num_samples,
                                                 population=population))


def searcher(algorithm: str = "random", config: dict | None = None, **kw):
    s = srch.make_searcher(space_of(algorithm, **kw), seed=0)
    assert s.set_search_properties(None, None, config or SPACE)
    return s


def finished(q: float = 0.8, e: float = 400.0) -> dict:
    return {"status": "finished", "progress": 1.0, "quality": q, "energy_j": e}


def stopped(progress: float = 0.3) -> dict:
    """The last result of a trial a scheduler stopped at a rung: partial, finite figures."""
    return {"status": "running", "progress": progress, "quality": 0.02, "energy_j": 120.0}


def told(s) -> list[tuple[TrialState, list[float] | None]]:
    return [(t.state, t.values) for t in s._ot_study.trials]


def test_stopped_trial_is_pruned_and_finished_one_complete():
    s = searcher()
    s.suggest("a")
    s.suggest("b")
    s.on_trial_complete("a", stopped())
    s.on_trial_complete("b", finished(0.8, 400.0))
    assert told(s) == [(TrialState.PRUNED, None), (TrialState.COMPLETE, [0.8, 400.0])]


@pytest.mark.parametrize("result, error, state", [
    ({"status": "stopped_by_budget", "quality": math.nan, "energy_j": 0.0}, False,
     TrialState.PRUNED),
    ({**finished(), "quality": math.nan}, False, TrialState.PRUNED),  # evaluated, no score
    ({"status": "finished", "quality": 0.5}, False, TrialState.PRUNED),  # no energy measured
    (None, False, TrialState.PRUNED),  # removed before it started
    (None, True, TrialState.FAIL),
    (finished(), True, TrialState.FAIL),  # an error is never a point of the front
])
def test_anything_but_a_measured_finish_is_not_complete(result, error, state):
    s = searcher()
    s.suggest("a")
    s.on_trial_complete("a", result, error=error)
    assert told(s) == [(state, None)]


def test_intermediate_results_leave_the_trial_running():
    s = searcher()
    s.suggest("a")
    s.on_trial_result("a", stopped(0.3))
    s.on_trial_result("a", {**stopped(0.6), "status": "running"})
    assert told(s) == [(TrialState.RUNNING, None)]
    s.on_trial_complete("a", finished(0.7, 300.0))
    s.on_trial_complete("a", stopped())  # a second completion changes nothing
    assert told(s) == [(TrialState.COMPLETE, [0.7, 300.0])]


@pytest.mark.parametrize("name, sampler", [
    ("nsga2", "NSGAIISampler"), ("motpe", "TPESampler"), ("tpe", "TPESampler"),
    ("random", "RandomSampler")])
def test_each_algorithm_builds_a_seeded_truthful_searcher(name, sampler):
    s = searcher(name)
    assert isinstance(s, srch.TruthfulOptunaSearch)
    assert type(s._ot_study.sampler).__name__ == sampler
    for n in range(3):
        s.suggest(f"t{n}")
        s.on_trial_complete(f"t{n}", finished(0.1 * n, 100.0 + n))
    again = searcher(name)
    assert [again.suggest(f"t{n}") for n in range(1)] == [s._ot_study.trials[0].params]


@pytest.mark.parametrize("name", ["nsga2", "motpe", "random"])
def test_the_searcher_survives_tunes_checkpoint(name, tmp_path):
    """Tune pickles the searcher at every experiment checkpoint (Optuna's NSGA-II holds a
    lock) and restores it on --resume."""
    s = searcher(name, FINITE, num_samples=4)
    for n in range(2):
        s.suggest(f"t{n}")
        s.on_trial_complete(f"t{n}", finished(0.5, 100.0 + n))
    s.save(str(tmp_path / "searcher.pkl"))
    restored = srch.make_searcher(space_of(name, num_samples=4), seed=0)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert told(restored) == told(s)
    restored.suggest("t2")
    restored.on_trial_complete("t2", stopped())
    assert told(restored)[-1] == (TrialState.PRUNED, None)
    assert len({tuple(t.params.items()) for t in restored._ot_study.trials}) == 3


def test_gp_builds_or_says_what_it_needs():
    try:
        s = searcher("gp")
    except ConfigError as exc:  # an Optuna without GPSampler, or no torch / scipy
        assert "gp needs" in str(exc)
    else:
        assert type(s._ot_study.sampler).__name__ == "GPSampler"


def test_grid_is_left_to_tune():
    assert srch.make_searcher(space_of("grid"), seed=0) is None


def test_every_valid_name_is_served():
    for name in ALGORITHMS:
        if name not in ("grid", "gp"):
            assert srch.make_sampler(name, seed=0, num_samples=8) is not None


def test_unknown_algorithm_lists_the_valid_names():
    with pytest.raises(ConfigError) as exc:
        srch.make_searcher(space_of("bayes"), seed=0)
    assert all(name in str(exc.value) for name in ALGORITHMS)


@pytest.mark.parametrize("num_samples, population, size", [
    (8, None, 4), (12, None, 4), (16, None, 5), (30, None, 10), (8, 7, 7), (1, None, 4)])
def test_nsga2_population_is_a_third_of_the_sweep(num_samples, population, size):
    assert srch.nsga2_population(num_samples, population) == size
    sampler = srch.make_sampler("nsga2", 0, num_samples, population)
    assert sampler.population_size == size


def test_startup_trials_are_sized_to_the_sweep():
    sampler = srch.make_sampler("motpe", 0, num_samples=16)
    assert sampler._n_startup_trials == srch.startup_trials(16) == 5


def test_a_finite_space_runs_each_configuration_once():
    s = searcher("nsga2", FINITE, num_samples=4)
    seen = []
    for n in range(4):
        seen.append(tuple(sorted(s.suggest(f"t{n}").items())))
        s.on_trial_complete(f"t{n}", finished(0.5, 100.0) if n % 2 else stopped())
    assert len(set(seen)) == 4  # 2 methods x 2 step counts
    s.suggest("t4")  # nothing left unseen: the duplicate runs
    runs = [t for t in s._ot_study.trials if "duplicate_of" not in t.user_attrs]
    redrawn = [t for t in s._ot_study.trials if "duplicate_of" in t.user_attrs]
    assert len(runs) == 5 and all(t.state == TrialState.FAIL for t in redrawn)


def repeater(repeats: int = 2) -> srch.ObjectiveRepeater:
    r = srch.repeat(searcher(), repeats)
    assert isinstance(r, srch.ObjectiveRepeater)
    r.set_search_properties(None, None, SPACE)
    return r


def test_repeats_tell_the_mean_of_both_objectives():
    r = repeater()
    assert r.suggest("a") == {**r.suggest("b"), "__trial_index__": 0}
    r.on_trial_complete("a", finished(0.6, 100.0))
    assert told(r.searcher) == [(TrialState.RUNNING, None)]  # waits for the other repeat
    r.on_trial_complete("b", finished(0.8, 300.0))
    ((state, values),) = told(r.searcher)
    assert state == TrialState.COMPLETE and values == pytest.approx([0.7, 200.0])


@pytest.mark.parametrize("second, error, state", [
    (stopped(), False, TrialState.PRUNED), (None, True, TrialState.COMPLETE)])
def test_a_stopped_repeat_prunes_a_failed_one_is_left_out(second, error, state):
    r = repeater()
    r.suggest("a")
    r.suggest("b")
    r.on_trial_complete("a", finished(0.6, 100.0))
    r.on_trial_complete("b", second, error=error)
    assert told(r.searcher)[0][0] == state


def test_repeats_that_all_failed_are_a_failure():
    r = repeater()
    r.suggest("a")
    r.suggest("b")
    r.on_trial_complete("a", error=True)
    r.on_trial_complete("b", error=True)
    assert told(r.searcher) == [(TrialState.FAIL, None)]


def test_once_is_not_wrapped():
    s = searcher()
    assert srch.repeat(s, 1) is s


def test_the_sweep_repeats_configurations_with_both_objectives():
    """`search.repeats: 2` wraps the searcher in ObjectiveRepeater (Tune's Repeater reads one
    scalar metric); a grid has no searcher to wrap and stays Tune's own."""
    from raydistill.search.sweep import _num_samples, _search_alg

    space = SimpleNamespace(search=SearchSettings(algorithm="nsga2", num_samples=6, repeats=2))
    assert isinstance(_search_alg(space, 0), srch.ObjectiveRepeater)
    assert _num_samples(space) == 12
    once = SimpleNamespace(search=SearchSettings(algorithm="nsga2", num_samples=6))
    assert isinstance(_search_alg(once, 0), srch.TruthfulOptunaSearch)
    grid = SimpleNamespace(search=SearchSettings(algorithm="grid", repeats=3))
    assert _search_alg(grid, 0) is None and _num_samples(grid) == 3
