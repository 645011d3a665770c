"""Search core without a cluster: spaces, the rung book and scheduler, budgets, forecasts."""

import contextlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from ray.tune.schedulers import TrialScheduler

from raydistill.errors import ConfigError
from raydistill.search.budget import BudgetTracker
from raydistill.search.forecast import Forecaster, forecast_error, profile_stage_j
from raydistill.search.rungs import CONTINUE, STOP, RungBook
from raydistill.search.scheduler import EnergyParetoScheduler
from raydistill.search.space import grid_points, load_space

ROOT = Path(__file__).resolve().parents[2]
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))


def write_space(tmp_path, **body):
    data = {"base": str(ROOT / "configs" / "tiny.yaml"), **body}
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_every_shipped_space_loads_and_says_how_to_run_it(path):
    space = load_space(path)
    assert path.read_text().startswith(f"# raydistill sweep search_spaces/{path.name}")
    assert space.params
    space.config_for({})


def test_smoke_is_a_four_point_grid():
    space = load_space(ROOT / "search_spaces" / "smoke.yaml")
    points = grid_points(space)
    assert len(points) == 4
    assert {p["distill.method"] for p in points} == {"none", "sft"}
    cfg = space.config_for(points[0])
    assert cfg.student.steps == points[0]["student.steps"]
    assert cfg.distill.method == points[0]["distill.method"]


@pytest.mark.parametrize("body, needle", [
    ({"params": {"distill.loss": {"choice": ["forward_kl"]}}, "oops": 1}, "oops"),
    ({"params": {"distill.loss": {"normal": [0, 1]}}}, "normal"),
    ({"params": {"distill.nope": {"choice": [1]}}}, "distill.nope"),
    ({"params": {"distill.loss": {"choice": ["nope"]}}}, "distill.loss"),
    ({"params": {"student.lr": {"loguniform": [0.1, 0.01]}}}, "student.lr"),
    ({"params": {"student.lr": {"loguniform": [0.0, 0.01]}}}, "low must be > 0"),
    ({"params": {"student.lr": {"uniform": [0.1, 0.2]}}, "search": {"algorithm": "grid"}},
     "student.lr"),
    ({"params": {}, "search": {"algorithm": "bayes"}}, "search.algorithm"),
    ({"params": {}, "search": {"num_samples": 0}}, "num_samples"),
    ({"params": {}, "objective": {"energy": "total"}}, "objective.energy"),
    ({"params": {}, "scheduler": {"rungs": [0.6, 0.3]}}, "rungs"),
    ({"params": {}, "scheduler": {"min_spread": -0.01}}, "scheduler.min_spread"),
    ({"params": {}, "budget": {"total_kwh": -1}}, "budget.total_kwh"),
    ({"params": {}, "budget": {"watts": 1}}, "budget.watts"),
    ({"params": {}, "set": {"student.stepz": 3}}, "stepz"),
])
def test_bad_spaces_are_rejected_naming_the_field(tmp_path, body, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_space(write_space(tmp_path, **body))


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["params", "search", "set", "budget", "scheduler", "x"]),
                       st.one_of(st.none(), st.integers(), st.text(max_size=5),
                                 st.dictionaries(st.text(max_size=12), st.integers() | st.text(
                                     max_size=4) | st.lists(st.integers(), max_size=3),
                                     max_size=3)), max_size=4))
def test_fuzzed_spaces_raise_only_config_errors(tmp_path_factory, body):
    path = write_space(tmp_path_factory.mktemp("fuzz"), **body)
    with contextlib.suppress(ConfigError):
        load_space(path)


# ---- the rung book and the scheduler ------------------------------------------------------

def test_rung_book_stops_only_trials_beaten_beyond_noise_at_equal_progress():
    book = RungBook([0.5], min_trials=2)
    n = 200  # dev rows each quality was scored on
    assert book.record("a", 0.5, 0.80, 100.0, n) == CONTINUE  # nobody to compare with
    assert book.record("b", 0.5, 0.70, 120.0, n) == CONTINUE  # one other: below min_trials
    # worse than a on both, but within sampling noise of its quality: survives
    assert book.record("c", 0.5, 0.75, 105.0, n) == CONTINUE
    # clearly worse than a on quality, and a spent less
    assert book.record("d", 0.6, 0.50, 200.0, n) == STOP
    # better energy than everyone: on the front, continues
    assert book.record("e", 0.5, 0.40, 50.0, n) == CONTINUE
    assert [d[2] for d in book.decisions] == [CONTINUE, CONTINUE, CONTINUE, STOP, CONTINUE]
    # a quality without its row count is not a proportion: no interval, nobody stopped
    assert book.record("f", 0.5, 0.10, 300.0) == CONTINUE
    assert book.decisions[-1][3] == "no sampling interval"


def test_rung_book_judges_each_rung_once_and_ignores_unmeasured_quality():
    book = RungBook([0.25, 0.5], min_trials=1)
    book.record("a", 0.3, 0.9, 10.0, 100)
    assert book.record("b", 0.3, float("nan"), 99.0, 100) == CONTINUE  # nothing measured yet
    assert book.record("b", 0.3, 0.1, 99.0, 100) == CONTINUE  # rung 0.25 already passed
    assert book.record("b", 0.5, 0.1, 99.0, 100) == CONTINUE  # nobody at 0.5 yet
    book.record("a", 0.5, 0.9, 20.0, 100)
    assert book.record("c", 1.0, 0.1, 99.0, 100) == STOP  # crosses both rungs, beaten at 0.25


def test_rung_book_stops_nobody_while_quality_is_noise():
    """Before the models learn, a long run looks dominated by a short one at equal progress
    (same ~0 quality, more energy so far): no quality difference is beyond noise there, so
    nobody is stopped; once the qualities really differ, a beaten trial is stopped.
    margin and min_spread stay as extra head starts on top of the noise."""
    book = RungBook([0.3, 0.6], min_trials=1)
    assert book.record("short", 0.3, 0.02, 30.0, 64) == CONTINUE
    assert book.record("long", 0.3, 0.00, 70.0, 64) == CONTINUE  # 1 row apart: noise
    assert book.record("short", 0.6, 0.05, 60.0, 64) == CONTINUE
    assert book.record("long", 0.6, 0.40, 140.0, 64) == CONTINUE  # better quality: front
    assert book.record("poor", 0.6, 0.01, 150.0, 64) == STOP  # beaten by long beyond noise
    headstart = RungBook([0.6], min_trials=1, min_spread=0.5)
    headstart.record("long", 0.6, 0.40, 140.0, 64)
    assert headstart.record("poor", 0.6, 0.01, 150.0, 64) == CONTINUE
    with pytest.raises(ConfigError, match="min_spread"):
        RungBook([0.5], min_spread=-0.1)
    with pytest.raises(ConfigError, match="confidence"):
        RungBook([0.5], confidence=1.0)


def fake_trial(tid):
    return SimpleNamespace(trial_id=tid)


def test_scheduler_driven_through_its_hooks():
    sched = EnergyParetoScheduler(rungs=[0.5], min_trials=1)
    ctl = None
    good, bad = fake_trial("good"), fake_trial("bad")
    assert sched.on_trial_result(ctl, good, {"progress": 0.2, "quality": 0.1, "quality_n": 64,
                                             "energy_rung_j": 5.0}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(ctl, good, {"progress": 0.5, "quality": 0.9, "quality_n": 64,
                                             "energy_rung_j": 10.0}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(ctl, bad, {"quality": 0.0}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(ctl, bad, {"progress": 0.5, "quality": 0.3, "quality_n": 64,
                                            "energy_rung_j": 30.0}) == TrialScheduler.STOP
    sched.on_trial_complete(ctl, good, {})
    assert "1 stopped" in sched.debug_string()


def test_a_retried_trial_is_judged_again_at_the_rungs_its_lost_attempt_passed():
    """Tune calls on_trial_error, then on_trial_add, before it reruns a failed trial (same id).
    The retry must be judged at the rungs again, and never against its own lost attempt."""
    sched = EnergyParetoScheduler(rungs=[0.5], min_trials=1)
    good, flaky = fake_trial("good"), fake_trial("flaky")
    ctl = None
    n = {"quality_n": 64}
    sched.on_trial_result(ctl, good, {"progress": 0.5, "quality": 0.9, "energy_rung_j": 10.0,
                                      **n})
    # the first attempt passes the rung on fair terms (it is not dominated), then errors
    assert sched.on_trial_result(ctl, flaky, {"progress": 0.5, "quality": 0.95, **n,
                                              "energy_rung_j": 9.0}) == TrialScheduler.CONTINUE
    sched.on_trial_error(ctl, flaky)
    sched.on_trial_add(ctl, flaky)
    assert sched.on_trial_result(ctl, flaky, {"progress": 0.2, "quality": 0.1, **n,
                                              "energy_rung_j": 4.0}) == TrialScheduler.CONTINUE
    # the retry reaches the rung again, dominated by `good`: stopped (before the fix it was
    # never judged, its lost attempt having passed the rung)
    assert sched.on_trial_result(ctl, flaky, {"progress": 0.5, "quality": 0.3, **n,
                                              "energy_rung_j": 30.0}) == TrialScheduler.STOP
    # the retry's record replaces it
    assert sched.book.records[0.5]["flaky"][:3] == (0.3, 30.0, 64.0)


def test_a_retry_is_not_compared_with_its_own_lost_attempt():
    book = RungBook([0.5], min_trials=1)
    assert book.record("t", 0.5, 0.9, 10.0, 64) == CONTINUE
    book.restart("t")
    # its lost attempt (0.9, 10 J) would dominate it, but is not another trial: with no other
    # trial at the rung, min_trials is not met and nothing is judged
    assert book.record("t", 0.5, 0.5, 20.0, 64) == CONTINUE
    assert book.decisions[-1][3] == "0 others"


# ---- budgets and forecasts ------------------------------------------------------------------

def test_one_refusal_ends_admission_but_not_the_admitted_trials():
    from raydistill.search.control import BudgetStopper

    b = BudgetTracker(total_j=1000.0)
    b.spent_j = 100.0
    assert b.admit("t1", 300.0)[0] and b.admit("t2", 300.0)[0]
    b.spent_j = 700.0  # t1 and t2 running, 600 J spent between them
    ok, why = b.admit("t3", 400.0, {"t1": 300.0, "t2": 300.0})
    assert not ok and "does not fit" in why
    ok, why = b.admit("t4", 10.0)  # it would fit, but admission is closed
    assert not ok and why == "admission closed since trial t3 was refused"
    stopper = BudgetStopper("ns", trial_j=None)
    assert stopper("t3", {"status": "stopped_by_budget"})  # the refused trial ends
    # the admitted trials go on: the stopper neither stops them nor the sweep
    assert not stopper("t1", {"progress": 0.5, "energy_marginal_j": 250.0})
    assert not stopper.stop_all()


def test_budget_refuses_what_does_not_fit_and_counts_waste():
    b = BudgetTracker(total_j=1000.0, trial_j=300.0)
    b.spent_j = 800.0
    assert b.start_check(150.0)[0]
    ok, why = b.start_check(250.0)
    assert not ok and "250.0 J does not fit" in why
    assert b.trial_over(301.0) and not b.trial_over(299.0)
    b.record("t1", 200.0, "finished")
    b.record("t2", 120.0, "stopped_by_scheduler")
    b.record("t3", 30.0, "failed")
    assert b.wasted_j == 150.0
    with pytest.raises(ConfigError):
        BudgetTracker(total_j=0.0)
    with pytest.raises(ValueError):
        b.record("t4", 1.0, "lost")


def test_forecast_is_exact_on_linear_energy_and_free_for_reused_stages():
    f = Forecaster()
    assert f.predict({"m": "sft"}, {"student_training": 10}) is None
    # 2 J per student sample, 0.5 J per prompt, 3 J per eval example
    for n in (100, 300):
        units = {"student_training": n, "teacher_generation": 50, "evaluation": 10}
        f.add_finished({"m": "sft"}, {"student_training": 2.0 * n, "teacher_generation": 25.0,
                                      "evaluation": 30.0}, units)
    units = {"student_training": 1000, "teacher_generation": 50, "evaluation": 10}
    pred = f.predict({"m": "sft"}, units)
    assert pred == {"student_training": 2000.0, "teacher_generation": 25.0, "evaluation": 30.0}
    assert f.predict({"m": "sft"}, units, {"teacher_generation"})["teacher_generation"] == 0.0
    # a method seen for the first time falls back on every finished trial
    assert f.predict({"m": "logit"}, units)["student_training"] == 2000.0
    assert forecast_error(110.0, 100.0) == pytest.approx(0.1)


def test_profile_forecast_within_15_percent_after_10_percent_of_noisy_steps():
    import random

    rng = random.Random(0)
    power, t_start, setup, steps, step_s = 50.0, 1000.0, 8.0, 500, 0.1
    t_ready = t_start + setup
    times = [t_ready]
    for _ in range(steps):
        times.append(times[-1] + step_s * rng.uniform(0.7, 1.3))
    actual = power * (times[-1] - t_start)
    k = steps // 10
    est = profile_stage_j(power * rng.uniform(0.97, 1.03), t_start, t_ready, times[k], k / steps)
    assert abs(forecast_error(est, actual)) < 0.15
    with pytest.raises(ValueError):
        profile_stage_j(1.0, 0.0, 0.0, 1.0, 0.0)


def _energy_table(rows):
    import pandas as pd

    return pd.DataFrame([{"trial_id": t, "stage": s, "energy_j": e} for t, s, e in rows])


def test_trials_table_keeps_artifacts_a_lost_attempt_built_and_wastes_the_rest():
    """Attempt a1 of trial T built the synthetic data, then its node died mid-training; a2
    reused the data and finished. a1's generation stays T's energy; its training is waste."""
    from raydistill.search.tables import trials_table

    table = _energy_table([
        ("setup", "teacher_training", 100.0),
        ("T~a1", "teacher_generation", 30.0), ("T~a1", "student_training", 12.0),
        ("T~a2", "student_training", 50.0), ("T~a2", "evaluation", 5.0),
        ("T~a2", "inference_student", 0.5),  # probes measure, they are not the trial's bill
    ])
    artifacts = {"synthetic_data:k1": {"trial_id": "T~a1", "energy_j": 30.0}}
    result = {"metrics": {"trial_id": "T", "ledger_trial": "T~a2", "status": "finished",
                          "quality": 0.9, "progress": 1.0, "energy_marginal_j": 55.0,
                          "energy_full_j": 85.0},  # a2 saw the data as reused (30 J)
              "config": {"distill.method": "sft"}, "error": None}
    control = {"consumers": {"synthetic_data:k1": ["T"]}, "energy_view": "full"}
    row = trials_table([result], table, control, artifacts).iloc[0]
    assert row["attempts"] == 2
    assert row["wasted_j"] == 12.0
    assert row["energy_marginal_j"] == 85.0  # 50 + 5 + the 30 J of data it built first time
    assert row["energy_full_j"] == 85.0  # nothing counted twice
    assert row["energy_amortized_j"] == 85.0  # its only consumer
    measured = table.loc[~table["stage"].str.startswith("inference_"), "energy_j"].sum()
    assert measured == 100.0 + row["energy_marginal_j"] + row["wasted_j"]


def test_trials_table_counts_an_unfinished_trial_as_waste():
    from raydistill.search.tables import trials_table

    table = _energy_table([("U~b1", "teacher_generation", 20.0),
                           ("U~b1", "student_training", 7.0)])
    result = {"metrics": {"trial_id": "U", "ledger_trial": "U~b1", "status": "running",
                          "quality": 0.1, "progress": 0.5, "energy_marginal_j": 27.0,
                          "energy_full_j": 27.0},
              "config": {}, "error": None}
    row = trials_table([result], table, {"stopped": {}}).iloc[0]
    assert row["status"] == "stopped_by_scheduler"
    assert row["wasted_j"] == 27.0 and row["quality"] != row["quality"]


@pytest.mark.parametrize("kind", ["pareto", "asha"])
def test_every_scheduler_reads_metrics_the_trials_report(tmp_path, kind):
    """Tune refuses a result without the scheduler's metric: each scheduler's metrics must be
    among what `trial_metrics` reports, from the first report (nothing measured) on."""
    from raydistill.search.sweep import _scheduler
    from raydistill.search.trial import trial_metrics

    space = load_space(write_space(tmp_path, params={"distill.temperature": {"grid": [1.0]}},
                                   scheduler={"kind": kind, "rungs": [0.5]}))
    sched = _scheduler(space)
    views = {"marginal": 0.0, "full": 0.0, "amortized": 0.0}
    first = trial_metrics(0.0, None, views, "full", None, "t~a")
    later = trial_metrics(0.5, 0.6, {**views, "full": 2000.0}, "full", 2500.0, "t~a")
    wanted = {sched.metric} if kind == "asha" else {
        "quality", sched.energy_metric, sched.progress_metric}
    assert wanted <= set(first) and wanted <= set(later)
    assert later["quality_per_kj"] == pytest.approx(0.3)
    assert first["quality_per_kj"] != first["quality_per_kj"]  # NaN until measured


def test_asha_lets_a_trial_reach_its_evaluation():
    """ASHA (max_t = 1) stops any trial that reports progress 1. A trial's reports while it
    trains therefore stop short of 1; progress 1 comes once, after the evaluation."""
    from raydistill.search.space import SchedulerSettings
    from raydistill.search.sweep import _scheduler
    from raydistill.search.trial import reports_during_training, trial_metrics

    sched = _scheduler(SimpleNamespace(scheduler=SchedulerSettings(kind="asha", rungs=(0.5,))))
    views = {"marginal": 0.0, "full": 0.0, "amortized": 0.0}
    progress_file = [s / 20 for s in range(0, 21, 2)]  # a 20-step student, a line every 2
    reported = [p for p in progress_file if reports_during_training(p)]
    assert reported and max(reported) < 1.0 and 0.0 not in reported
    best = fake_trial("best")
    sched.on_trial_add(None, best)
    decisions = [sched.on_trial_result(None, best, trial_metrics(
        p, 0.9, {**views, "full": 100.0 * p}, "full", None, "best~x")) for p in reported]
    assert set(decisions) == {TrialScheduler.CONTINUE}  # it reaches its evaluation
    done = trial_metrics(1.0, 0.9, {**views, "full": 100.0}, "full", None, "best~x")
    assert sched.on_trial_result(None, best, done) == TrialScheduler.STOP  # why 1 waits


def test_dry_run_of_a_random_space_draws_points_across_its_ranges():
    """A non-grid space's dry run shows num_samples seeded draws (not the base point repeated):
    values inside each range, work units that follow the drawn steps, the same draws twice."""
    from raydistill.search.space import sample_points
    from raydistill.search.sweep import dry_run, forecast_table

    path = ROOT / "search_spaces" / "budget.yaml"
    plan = dry_run(path)
    space = load_space(path)
    assert len(plan) == space.search.num_samples == 16
    steps = [p["params"]["student.steps"] for p in plan]
    lrs = [p["params"]["student.lr"] for p in plan]
    assert all(isinstance(s, int) and 300 <= s <= 1000 for s in steps) and len(set(steps)) > 8
    assert all(5e-4 <= lr <= 5e-3 for lr in lrs)
    assert {p["params"]["distill.method"] for p in plan} == {"sft", "logit"}
    for p in plan:
        assert p["units"]["student_training"] == p["params"]["student.steps"] * 128
    assert sample_points(space, 16) == [p["params"] for p in plan]  # seeded
    assert "drawn at random" in forecast_table(plan)
