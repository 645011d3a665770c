"""Energy budgets of a sweep (pure): whole-sweep and per-trial, plus what was wasted.

`spent_j` is set from the ledger by the caller before each check, and so is what each running
trial has used; the tracker never trusts trials' own claims. A trial may start only if

    spent + Σ over running trials max(0, forecast − used so far) + its forecast ≤ total,

so the forecasts of trials already running are reserved and concurrency cannot overshoot. A
running trial's reservation is replaced by its profile forecast once it has one, and released
when it ends. Trials stopped by the scheduler or a budget, and failed ones, are waste and are
kept in the bill.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raydistill.errors import ConfigError

STATUSES = ("finished", "stopped_by_scheduler", "stopped_by_budget", "failed")


@dataclass
class BudgetTracker:
    total_j: float | None = None
    trial_j: float | None = None
    spent_j: float = 0.0
    trials: dict[str, tuple[float, str]] = field(default_factory=dict)
    closed_by: str | None = None  # the first trial refused: admission ends there
    reserved: dict[str, float] = field(default_factory=dict)  # running trial -> forecast J

    def __post_init__(self) -> None:
        for name, v in (("total budget", self.total_j), ("trial budget", self.trial_j)):
            if v is not None and not v > 0:
                raise ConfigError(f"{name} must be > 0 J, got {v}")

    def reserved_j(self, used_j: dict[str, float] | None = None) -> float:
        """What the running trials may still spend: their forecasts less what they used."""
        used_j = used_j or {}
        return sum(max(0.0, f - used_j.get(t, 0.0)) for t, f in self.reserved.items())

    def start_check(self, forecast_j: float, reserved_j: float = 0.0) -> tuple[bool, str]:
        if self.total_j is None:
            return True, "no sweep budget"
        left = self.total_j - self.spent_j - reserved_j
        held = f" ({reserved_j:,.1f} J reserved by running trials)" if reserved_j else ""
        if forecast_j > left:
            return False, (f"forecast {forecast_j:,.1f} J does not fit: {left:,.1f} J of "
                           f"{self.total_j:,.1f} J left{held}")
        return True, f"forecast {forecast_j:,.1f} J fits in {left:,.1f} J left{held}"

    def admit(self, trial_id: str, forecast_j: float,
              used_j: dict[str, float] | None = None) -> tuple[bool, str]:
        """Whether `trial_id` may start, given what each running trial has used so far
        (`used_j`). The first refusal ends admission: every later trial is refused too (so a
        cheaper one cannot slip in after a dearer one was turned away and the sweep's set of
        trials stays the searcher's order), while trials already admitted run on; they hold
        reservations for what they need."""
        if self.closed_by is not None:
            return False, f"admission closed since {self.closed_by}"
        ok, reason = self.start_check(forecast_j, self.reserved_j(used_j))
        if ok:
            self.reserved[trial_id] = float(forecast_j)
        else:
            self.closed_by = f"trial {trial_id} was refused"
        return ok, reason

    def reserve(self, trial_id: str, forecast_j: float) -> None:
        """Replace a running trial's reservation (its profile forecast, once it has one)."""
        if trial_id in self.reserved:
            self.reserved[trial_id] = float(forecast_j)

    def release(self, trial_id: str) -> None:
        self.reserved.pop(trial_id, None)

    @property
    def exhausted(self) -> bool:
        return self.total_j is not None and self.spent_j >= self.total_j

    def close(self, why: str) -> None:
        if self.closed_by is None:
            self.closed_by = why

    def trial_over(self, energy_j: float) -> bool:
        return self.trial_j is not None and energy_j > self.trial_j

    def record(self, trial_id: str, energy_j: float, status: str) -> None:
        if status not in STATUSES:
            raise ValueError(f"status {status!r}; valid: {', '.join(STATUSES)}")
        self.trials[trial_id] = (float(energy_j), status)

    @property
    def wasted_j(self) -> float:
        return sum(e for e, s in self.trials.values() if s != "finished")

    def summary(self) -> dict:
        return {"total_j": self.total_j, "trial_j": self.trial_j, "spent_j": self.spent_j,
                "wasted_j": self.wasted_j, "closed_by": self.closed_by,
                "by_status": {s: sum(1 for _, st in self.trials.values() if st == s)
                              for s in STATUSES}}
