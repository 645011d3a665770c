"""Budgets that hold: forecasts before the first trial finishes, reservations for running
trials, the sweep budget stopping running trials, and the forecast's score (pure, no cluster)."""

from __future__ import annotations

import math

import pytest

from raydistill.search import control as control_mod
from raydistill.search.budget import BudgetTracker
from raydistill.search.forecast import admission_forecast, score_forecasts


def test_first_trials_get_a_forecast_before_any_has_finished():
    # learned beats everything; then the stated prior, the trial cap, an even split
    assert admission_forecast(120.0, 50.0, 80.0, 1000.0, 8) == (120.0, "learned")
    assert admission_forecast(None, 50.0, 80.0, 1000.0, 8) == (50.0, "prior")
    assert admission_forecast(None, None, 80.0, 1000.0, 8) == (80.0, "trial_cap")
    assert admission_forecast(None, None, None, 1000.0, 8) == (125.0, "even_split")
    assert admission_forecast(None, None, None, None, 8) == (None, "none")


def test_reservations_keep_concurrent_admissions_inside_the_budget():
    """Four trials asking at once, before any has spent a joule: with reservations only as many
    as the budget covers start; without them (the old check) all four would."""
    b = BudgetTracker(total_j=1000.0)
    admitted = [t for t in ("a", "b", "c", "d") if b.admit(t, 300.0, {})[0]]
    assert admitted == ["a", "b", "c"]  # 900 J reserved; the fourth does not fit in 100 J
    assert b.closed_by == "trial d was refused"
    # what the running trials used is no longer reserved: 3 × (300 − 200) = 300 J held back
    b.spent_j = 600.0
    assert b.reserved_j({"a": 200.0, "b": 200.0, "c": 200.0}) == pytest.approx(300.0)
    # a trial that overran its forecast holds nothing back (never a negative reservation)
    assert b.reserved_j({"a": 500.0, "b": 0.0, "c": 0.0}) == pytest.approx(600.0)


def test_profile_replaces_a_reservation_and_ending_releases_it():
    b = BudgetTracker(total_j=1000.0)
    assert b.admit("a", 125.0, {})[0]  # an even split, before the profile
    b.reserve("a", 700.0)  # its own first steps say it needs 700 J
    assert not b.admit("b", 400.0, {"a": 0.0})[0]
    b2 = BudgetTracker(total_j=1000.0)
    b2.admit("a", 700.0, {})
    b2.release("a")
    b2.reserve("a", 900.0)  # a released trial is not re-reserved by a late profile
    assert b2.reserved_j() == 0.0 and b2.admit("b", 900.0, {})[0]


def test_spent_budget_closes_admission():
    b = BudgetTracker(total_j=100.0)
    assert not b.exhausted
    b.spent_j = 100.0
    assert b.exhausted
    b.close("the sweep budget was spent")
    ok, why = b.admit("late", 1.0, {})
    assert not ok and why == "admission closed since the sweep budget was spent"


class FakeControl:
    """The control actor's two stopper-facing methods, as Ray handles answer them."""

    def __init__(self, over: bool) -> None:
        self.over, self.stops = over, []
        self.over_budget = self._remote(lambda: self.over)
        self.note_stop = self._remote(lambda t, why: self.stops.append((t, why)))

    @staticmethod
    def _remote(fn):
        class Method:
            def remote(self, *a):
                return fn(*a)
        return Method()


def test_stopper_ends_running_trials_once_the_sweep_budget_is_spent(monkeypatch):
    fake = FakeControl(over=False)
    monkeypatch.setattr(control_mod.ray, "get", lambda x: x)
    monkeypatch.setattr(control_mod.BudgetStopper, "_control", lambda self: fake)
    stopper = control_mod.BudgetStopper("ns", trial_j=500.0, total_j=1000.0)
    running = {"status": "running", "progress": 0.0, "energy_marginal_j": 40.0}
    assert not stopper("t1", running)
    fake.over = True
    assert stopper("t1", running) and stopper("t2", {**running, "progress": 0.5})
    assert fake.stops == [("t1", "stopped_by_budget"), ("t2", "stopped_by_budget")]
    # a finished trial's last result is never relabelled as stopped
    assert not stopper("t3", {**running, "status": "finished"})
    # the per-trial cap is read during the teacher stages too (progress 0, live energy)
    fake.over = False
    assert stopper("t4", {**running, "energy_marginal_j": 501.0})
    assert fake.stops[-1] == ("t4", "stopped_by_budget")
    assert not stopper.stop_all()


def test_forecast_score_counts_from_the_fourth_trial():
    forecasts = {}
    errors = [0.9, -0.8, 0.5, 0.10, -0.05, 0.20, math.nan]
    for i, e in enumerate(errors, start=1):
        forecasts[f"t{i}~x"] = {"before": 100.0 * (1 + e), "actual": 100.0, "order": i,
                                "before_error": e, "profile_error": e / 2}
    forecasts["refused~y"] = {"before": 5.0}  # never ran: not scored
    score = score_forecasts(forecasts)
    assert score["trials"] == 7 and score["before_n"] == 3
    assert score["before_median_abs_error"] == pytest.approx(0.10)  # of 0.10, 0.05, 0.20
    assert score["profile_median_abs_error"] == pytest.approx(0.05)
    assert score_forecasts({})["before_median_abs_error"] is None


def test_in_training_decisions_read_dev_never_test(tmp_path):
    from raydistill.search.trial import training_check

    data = {"dev": tmp_path / "dev.jsonl", "test": tmp_path / "test.jsonl"}
    check = training_check(data, every=5)
    assert check["dev_path"] == str(data["dev"]) and check["progress_every"] == 5
    with pytest.raises(ValueError, match="decisions would be taken on the test set"):
        training_check({"dev": data["test"], "test": data["test"]}, every=5)
