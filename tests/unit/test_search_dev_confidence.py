"""Issue 28, search part: dev decides and test reports; the rungs stop a trial only when it is
beaten beyond the dev score's sampling noise and the energies' stated errors; the energy a rung
compares does not depend on run order. No cluster: pure functions and fake trials."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from ray.tune.schedulers import TrialScheduler

from raydistill.errors import ConfigError
from raydistill.pareto import dominated_by_margin
from raydistill.proportions import newcombe_difference, wilson
from raydistill.search.rungs import CONTINUE, STOP, RungBook
from raydistill.search.scheduler import EnergyParetoScheduler
from raydistill.search.space import SchedulerSettings, load_space
from raydistill.search.trial import energy_views, final_metrics, rung_error, trial_metrics

ROOT = Path(__file__).resolve().parents[2]


# ---- the interval for a difference of two proportions -------------------------------------

@pytest.mark.parametrize("p1, p2, n1, n2", [(0.5, 0.5, 64, 64), (0.1, 0.3, 64, 40),
                                            (0.9, 0.85, 100, 100), (0.02, 0.0, 64, 64)])
def test_newcombe_interval_covers_the_true_difference_95_percent_of_the_time(p1, p2, n1, n2):
    rng = np.random.default_rng(7)
    draws = 4000
    k1, k2 = rng.binomial(n1, p1, draws), rng.binomial(n2, p2, draws)
    hits = 0
    for a, b in zip(k1, k2, strict=True):
        low, high = newcombe_difference(a / n1, n1, b / n2, n2, 0.95)
        hits += low <= p1 - p2 <= high
    # nominal 0.95; Newcombe's hybrid score interval stays near it even at small n
    assert hits / draws >= 0.93


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 64), st.integers(0, 64), st.integers(1, 400), st.integers(1, 400),
       st.floats(0.5, 0.999))
def test_newcombe_interval_is_symmetric_and_holds_the_observed_difference(k1, k2, n1, n2, c):
    p1, p2 = min(k1, n1) / n1, min(k2, n2) / n2
    low, high = newcombe_difference(p1, n1, p2, n2, c)
    swapped = newcombe_difference(p2, n2, p1, n1, c)
    assert swapped == pytest.approx((-high, -low), abs=1e-12)
    assert -1.0 <= low <= p1 - p2 <= high <= 1.0


@settings(max_examples=100, deadline=None)
@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.integers(2, 500))
def test_intervals_narrow_as_rows_grow(p1, p2, n):
    lo1, hi1 = wilson(p1, n)
    lo2, hi2 = wilson(p1, 2 * n)
    assert hi2 - lo2 <= hi1 - lo1 + 1e-12
    low, high = newcombe_difference(p1, n, p2, n)
    low2, high2 = newcombe_difference(p1, 2 * n, p2, 2 * n)
    assert high2 - low2 <= high - low + 1e-12


# ---- the rungs: stopped only when beaten beyond noise -------------------------------------

def equal_quality_stops(book, draws: int, n: int = 64, seed: int = 0) -> float:
    """Three trials of equal true dev accuracy 0.5 (binomial draws on n rows); the third has
    spent 3x the others' energy at the first rung. Share of draws in which it is stopped."""
    rng = np.random.default_rng(seed)
    stops = 0
    for _ in range(draws):
        b = book()
        q = rng.binomial(n, 0.5, size=3) / n
        b.record("a", 0.3, float(q[0]), 100.0, quality_n=n, meter="m")
        b.record("b", 0.3, float(q[1]), 100.0, quality_n=n, meter="m")
        stops += b.record("c", 0.3, float(q[2]), 300.0, quality_n=n, meter="m") == STOP
    return stops / draws


def old_rule_stops(draws: int, n: int = 64, seed: int = 0) -> float:
    """The rule before issue 28 on the same draws (margin 0.05, min_spread 0.05)."""
    rng = np.random.default_rng(seed)
    stops = 0
    for _ in range(draws):
        q = rng.binomial(n, 0.5, size=3) / n
        if max(q) - min(q) <= 0.05:
            continue
        stops += any(dominated_by_margin((q[2], 300.0), (q[i], 100.0), ("max", "min"), 0.05)
                     for i in (0, 1))
    return stops / draws


def test_trials_of_equal_quality_are_rarely_stopped_for_spending_more():
    """The issue's scenario: the old rule stopped the 3x-energy trial about half the time; the
    default scheduler's rung (its settings, the real RungBook) now does so in <= 5%."""
    s = SchedulerSettings()
    assert old_rule_stops(2000) >= 0.40
    rate = equal_quality_stops(lambda: RungBook(s.rungs, s.margin, s.min_trials,
                                                min_spread=s.min_spread,
                                                confidence=s.confidence), 2000)
    assert rate <= 0.05


def test_a_clearly_worse_trial_at_equal_energy_is_stopped():
    book = RungBook([0.3, 0.6])
    book.record("a", 0.3, 0.8, 100.0, quality_n=64, meter="m")
    book.record("b", 0.3, 0.75, 100.0, quality_n=64, meter="m")
    assert book.record("c", 0.3, 0.1, 100.0, quality_n=64, meter="m") == STOP
    assert book.decisions[-1][2] == STOP


def test_energy_errors_cancel_on_one_meter_and_add_in_quadrature_across_meters():
    """B is clearly better on quality but spent 5% more than A, each figure ±10% (a relative
    bias). On one meter the bias cancels: B did spend more, A is not dominated. On two meters
    the 5% is inside the errors: B's energy is not higher beyond them, A is stopped."""
    def stops(meter_a: str, meter_b: str) -> bool:
        book = RungBook([0.5], min_trials=1)
        book.record("b", 0.5, 0.9, 105.0, quality_n=64, energy_error_j=10.5, meter=meter_b)
        return book.record("a", 0.5, 0.2, 100.0, quality_n=64, energy_error_j=10.0,
                           meter=meter_a) == STOP

    assert not stops("n1:0:counter", "n1:0:counter")
    assert stops("n1:0:counter", "n2:0:counter")
    assert stops("", "")  # unnamed meters are not assumed to share a bias


def test_a_quality_without_rows_never_stops_and_is_never_stopped():
    book = RungBook([0.5], min_trials=1)
    book.record("a", 0.5, 0.9, 10.0)  # no quality_n: e.g. a loss, not a proportion
    assert book.record("b", 0.5, 0.1, 50.0, quality_n=64) == CONTINUE
    assert book.record("c", 0.5, 0.1, 50.0) == CONTINUE


# ---- run order does not decide the rung energy --------------------------------------------

def fake_trial(tid):
    return SimpleNamespace(trial_id=tid)


def rung_reports(view: str, builder: str) -> list[tuple[str, dict]]:
    """Three trials reach rung 0.5 in the order rival, t1, t2. t1 and t2 are identical (dev
    quality 0.2, 60 J of student training); the rival scores 0.8 on 70 J. The teacher
    artifacts (100 J) were built by `builder` (t1 or t2), which consumed them first; the rival
    second, the other twin third."""
    consumed = [builder, "rival", "t2" if builder == "t1" else "t1"]
    student = {"rival": 70.0, "t1": 60.0, "t2": 60.0}
    quality = {"rival": 0.8, "t1": 0.2, "t2": 0.2}
    out = []
    for tid in ("rival", "t1", "t2"):
        builds = tid == builder
        own = {"student_training": student[tid]} | ({"teacher_generation": 100.0}
                                                     if builds else {})
        views = energy_views(own, {} if builds else {"synthetic_data": 100.0},
                             {"synthetic_data": consumed.index(tid) + 1},
                             {"synthetic_data"} if builds else set())
        out.append((tid, trial_metrics(0.5, quality[tid], views, view, None, f"{tid}~x",
                                       quality_n=64, meter="n:cpu:estimated")))
    return out


@pytest.mark.parametrize("view", ["marginal", "amortized"])
def test_who_built_the_shared_artifacts_does_not_decide_who_is_stopped(view):
    """With the objective's view at the rungs, the twin that built the artifacts carried their
    cost and was stopped while the other went on. The rungs now read the full view."""
    decisions, energies = {}, {}
    for builder in ("t1", "t2"):
        sched = EnergyParetoScheduler(rungs=[0.5], min_trials=1)
        reports = rung_reports(view, builder)
        decisions[builder] = {t: sched.on_trial_result(None, fake_trial(t), r)
                              for t, r in reports}
        energies[builder] = {t: r["energy_rung_j"] for t, r in reports}
    assert energies["t1"] == energies["t2"] == {"rival": 170.0, "t1": 160.0, "t2": 160.0}
    assert decisions["t1"] == decisions["t2"]
    assert decisions["t1"]["t1"] == decisions["t1"]["t2"] == TrialScheduler.CONTINUE


def test_rung_error_sums_own_rows_and_scales_reused_artifacts():
    rows = [{"stage": "student_training", "node_id": "n1", "device_id": "cpu",
             "method": "estimated", "energy_j": 100.0, "stated_error_j": 20.0},
            {"stage": "evaluation", "node_id": "n1", "device_id": "gpu0", "method": "counter",
             "energy_j": 50.0, "stated_error_j": 2.5},
            {"stage": "inference_student", "node_id": "n9", "device_id": "x", "method": "m",
             "energy_j": 5.0, "stated_error_j": 5.0}]
    error, meter, independent = rung_error(
        rows, {"synthetic_data": {"energy_j": 40.0},
               "logit_cache": {"energy_j": 10.0, "stated_error_j": 1.0}})
    assert error == pytest.approx(20.0 + 2.5 + 0.2 * 40.0 + 1.0)
    assert meter == "n1:cpu:estimated,n1:gpu0:counter"
    # the estimate's 20 J is within its class's 50% bias; nothing of the counter's 2.5 J is
    # beyond its 5%: no independent part
    assert independent == pytest.approx(0.0)
    edge = [{**rows[1], "stated_error_j": 6.5}]  # 2.5 J bias + 4 J of window edges
    assert rung_error(edge, {})[2] == pytest.approx(4.0)


def test_same_meter_energies_keep_their_independent_errors():
    """Two figures of one meter share its bias, not their window edges or unmeasured bounds."""
    from raydistill.search.rungs import RungPoint, energy_not_worse

    a = RungPoint(0.2, 100.0, 64, energy_error_j=55.0, meter="m", energy_independent_j=50.0)
    b = RungPoint(0.8, 150.0, 64, energy_error_j=57.5, meter="m", energy_independent_j=50.0)
    # B spent 50 J more, inside the two 50 J independent errors in quadrature (~71 J)
    assert energy_not_worse(b, a)
    assert not energy_not_worse(b._replace(energy_independent_j=0.0, energy_error_j=7.5),
                                a._replace(energy_independent_j=0.0, energy_error_j=5.0))


# ---- dev decides, test reports --------------------------------------------------------------

RESULT = {"scores": {"student_quick_acc": 0.9, "quick_acc_rows": 200.0},
          "dev_scores": {"student_quick_acc": 0.4, "quick_acc_rows": 64.0}}


def test_the_final_report_carries_dev_as_quality_and_test_beside():
    scores = final_metrics(RESULT, "student_quick_acc")
    assert scores["quality"] == 0.4 and scores["quality_n"] == 64.0
    assert scores["quality_test"] == 0.9
    assert scores["score.student_quick_acc"] == 0.9
    assert scores["dev_score.student_quick_acc"] == 0.4
    with pytest.raises(KeyError, match="dev scores"):
        final_metrics({"scores": RESULT["scores"]}, "student_quick_acc")


def test_optuna_is_told_the_dev_score_never_the_test_one():
    pytest.importorskip("optuna")
    from ray import tune

    from raydistill.search import searcher as srch
    from raydistill.search.space import SearchSettings

    s = srch.make_searcher(SimpleNamespace(search=SearchSettings(algorithm="random")), seed=0)
    assert s.set_search_properties(None, None, {"student.lr": tune.uniform(1e-4, 1e-2)})
    s.suggest("a")
    views = {"marginal": 300.0, "full": 400.0, "amortized": 350.0}
    scores = final_metrics(RESULT, "student_quick_acc")
    final = trial_metrics(1.0, scores["quality"], views, "full", None, "a~x",
                          {"status": "finished", **scores}, quality_n=scores["quality_n"])
    s.on_trial_complete("a", final)
    assert [t.values for t in s._ot_study.trials] == [[0.4, 400.0]]


def test_an_objective_dev_does_not_score_is_rejected_listing_the_valid_ones(tmp_path):
    base = {"base": str(ROOT / "configs" / "tiny.yaml"),
            "params": {"distill.temperature": {"grid": [1.0]}}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**base, "objective": {
        "quality": "student_raydistill_test_acc"}}))
    with pytest.raises(ConfigError, match=r"not scored on dev; valid: student_quick_acc"):
        load_space(bad)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({**base, "objective": {"quality": "student_quick_acc"}}))
    assert load_space(good).objective.quality == "student_quick_acc"


def _table(rows):
    return pd.DataFrame([{"trial_id": t, "stage": "student_training", "energy_j": e}
                         for t, e in rows])


def test_the_pareto_set_is_selected_on_dev_with_test_beside():
    """B has the better test score, but on dev it is dominated by A (better dev, less energy):
    selected on dev, B is off the front although test alone would put it on."""
    from raydistill.search.tables import pareto_table, sweep_summary, trials_table

    table = _table([("A~1", 100.0), ("B~1", 200.0), ("C~1", 50.0)])
    dev_test = {"A": (0.7, 0.6), "B": (0.5, 0.9), "C": (0.1, 0.1)}
    results = [{"metrics": {"trial_id": t, "ledger_trial": f"{t}~1", "status": "finished",
                            "quality": d, "quality_test": q, "quality_n": 64.0,
                            "progress": 1.0, "dev_score.student_quick_acc": d,
                            "score.student_quick_acc": q},
                "config": {"student.lr": 1e-3}, "error": None}
               for t, (d, q) in dev_test.items()]
    trials = trials_table(results, table, {"energy_view": "marginal"})
    row = trials.set_index("trial_id").loc["B"]
    assert row["quality"] == 0.5 and row["quality_test"] == 0.9 and row["quality_n"] == 64.0
    assert row["quality_selected_on"] == "dev" and row["dev_score.student_quick_acc"] == 0.5
    pareto = pareto_table(trials, ["student.lr"])
    assert list(pareto["trial_id"]) == ["C", "A"]
    assert list(pareto["quality_dev"]) == [0.1, 0.7]
    assert list(pareto["quality_test"]) == [0.1, 0.6]
    space = SimpleNamespace(objective=SimpleNamespace(quality="student_quick_acc",
                                                      energy="marginal"),
                            search=SimpleNamespace(algorithm="grid", num_samples=1))
    summary = sweep_summary(space, trials, pareto, table, {}, {}, 1.0)
    assert summary["pareto_selected_on"] == "dev"


def test_the_report_says_the_set_was_selected_on_dev_and_shows_both(tmp_path):
    from raydistill.report.html import _selection_note, _trials_display

    trials = pd.DataFrame([{"trial_id": "A", "status": "finished", "quality": 0.7,
                            "quality_test": 0.6, "energy_j": 100.0}])
    data = SimpleNamespace(kind="sweep", trials=trials, quality_name="student_quick_acc",
                           summary={"pareto_selected_on": "dev"})
    shown = _trials_display(data)
    assert "dev quality (student_quick_acc)" in shown.columns
    assert "test quality (student_quick_acc)" in shown.columns
    assert "selected on dev" in _selection_note(data)
    old = SimpleNamespace(**{**vars(data), "summary": {}})
    assert "selected on test" in _selection_note(old)


def test_shipped_spaces_load_with_the_confidence_rule():
    for path in sorted((ROOT / "search_spaces").glob("*.yaml")):
        sch = load_space(path).scheduler
        assert sch.margin == 0.0 and sch.min_spread == 0.0 and sch.confidence == 0.95, path
    assert math.isclose(SchedulerSettings().confidence, 0.95)
