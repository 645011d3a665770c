"""Energy budgets of a sweep (pure): whole-sweep and per-trial, plus what was wasted.

`spent_j` is set from the ledger by the caller before each check; the tracker never trusts
trials' own claims. A trial may start only if spent + its forecast fits in the total; trials
stopped by the scheduler or a budget, and failed ones, are waste and are kept in the bill.
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

    def __post_init__(self) -> None:
        for name, v in (("total budget", self.total_j), ("trial budget", self.trial_j)):
            if v is not None and not v > 0:
                raise ConfigError(f"{name} must be > 0 J, got {v}")

    def start_check(self, forecast_j: float) -> tuple[bool, str]:
        if self.total_j is None:
            return True, "no sweep budget"
        left = self.total_j - self.spent_j
        if self.spent_j + forecast_j > self.total_j:
            return False, (f"forecast {forecast_j:,.1f} J does not fit: {left:,.1f} J of "
                           f"{self.total_j:,.1f} J left")
        return True, f"forecast {forecast_j:,.1f} J fits in {left:,.1f} J left"

    def admit(self, trial_id: str, forecast_j: float) -> tuple[bool, str]:
        """Whether `trial_id` may start. The first refusal ends admission: every later trial is
        refused too (so a cheaper one cannot slip in after a dearer one was turned away and the
        sweep's set of trials stays the searcher's order), while trials already admitted run
        to their end; they were admitted with the budget they need."""
        if self.closed_by is not None:
            return False, f"admission closed since trial {self.closed_by} was refused"
        ok, reason = self.start_check(forecast_j)
        if not ok:
            self.closed_by = trial_id
        return ok, reason

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
                "wasted_j": self.wasted_j,
                "by_status": {s: sum(1 for _, st in self.trials.values() if st == s)
                              for s in STATUSES}}
