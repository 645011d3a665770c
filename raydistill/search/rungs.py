"""Rung bookkeeping for the energy–Pareto scheduler (pure: raydistill.pareto only).

At each rung (a fraction of student training, e.g. 0.3 and 0.6) every trial that reaches it
records (quality so far, energy so far). A trial is stopped at a rung when at least `min_trials`
other trials were recorded there and one of them dominates it by `margin`: at least as good in
quality and energy even after this trial is given a head start of margin × its own values, and
strictly better in one (`raydistill.pareto.dominated_by_margin`). Comparing at equal progress
keeps it fair: a trial is never judged against others' finished figures. A NaN quality (nothing
measured yet) never stops a trial and never stops another.

A rung judges only once quality carries signal there: while the qualities recorded at it (this
trial's included) lie within `min_spread` of each other, nobody is stopped. Before a model starts
to learn, every trial scores ~0 and "dominated" would mean only "spent more so far" — at equal
progress a longer run always has, so early rungs would stop the long runs that end up best (seen
on the search bench's recorded grid: quality stays at noise level until ~70% of training).

Parameters
- rungs: rising fractions of training in (0, 1) at which trials are compared.
- margin: relative head start (0 = plain Pareto dominance); larger is more forgiving.
- min_trials: how many other trials a rung needs before it stops anyone (early rungs with one
  or two trials say little).
- min_spread: quality units (e.g. 0.05 accuracy, a few dev examples); a rung whose qualities
  differ by no more than this stops nobody. 0 judges every rung.
- senses: ("max", "min") for (quality, energy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from raydistill.errors import ConfigError
from raydistill.pareto import dominated_by_margin

CONTINUE, STOP = "continue", "stop"


@dataclass
class RungBook:
    rungs: Sequence[float]
    margin: float = 0.05
    min_trials: int = 2
    senses: tuple[str, str] = ("max", "min")
    min_spread: float = 0.0
    records: dict[float, dict[str, tuple[float, float]]] = field(default_factory=dict)
    passed: dict[str, int] = field(default_factory=dict)  # trial -> rungs already passed
    decisions: list[tuple[str, float, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        rungs = [float(r) for r in self.rungs]
        if not all(0 < r < 1 for r in rungs) or rungs != sorted(set(rungs)):
            raise ConfigError(f"rungs must rise strictly inside (0, 1), got {list(self.rungs)}")
        if self.margin < 0 or self.min_trials < 1 or not self.min_spread >= 0:
            raise ConfigError("margin and min_spread must be >= 0 and min_trials >= 1")
        self.rungs = rungs
        self.records = {r: {} for r in rungs}

    def record(self, trial_id: str, progress: float, quality: float, energy_j: float) -> str:
        """Feed one result; "stop" when the trial is dominated at a rung it just reached."""
        done = self.passed.get(trial_id, 0)
        action = CONTINUE
        while done < len(self.rungs) and progress >= self.rungs[done]:
            rung = self.rungs[done]
            done += 1
            if not (math.isfinite(quality) and math.isfinite(energy_j)):
                continue  # no quality measured: record nothing, judge nothing
            # a retried trial's own earlier record at this rung is not another trial
            others = {o: pt for o, pt in self.records[rung].items() if o != trial_id}
            self.records[rung][trial_id] = (quality, energy_j)
            if len(others) < self.min_trials:
                self.decisions.append((trial_id, rung, CONTINUE, f"{len(others)} others"))
                continue
            qualities = [q for q, _ in self.records[rung].values()]
            if max(qualities) - min(qualities) <= self.min_spread:
                self.decisions.append((trial_id, rung, CONTINUE, "no quality signal yet"))
                continue
            beaten = [o for o, pt in others.items()
                      if dominated_by_margin((quality, energy_j), pt, self.senses, self.margin)]
            if beaten:
                self.decisions.append((trial_id, rung, STOP, f"dominated by {beaten[0]}"))
                action = STOP
                break
            self.decisions.append((trial_id, rung, CONTINUE, "not dominated"))
        self.passed[trial_id] = done
        return action

    def restart(self, trial_id: str) -> None:
        """The trial failed and will run again: its retry is judged at every rung it reaches,
        the ones its lost attempt passed included (its records there are replaced by the
        retry's when it reaches them)."""
        self.passed.pop(trial_id, None)
        self.decisions.append((trial_id, math.nan, CONTINUE, "restarted after an error"))

    def remove(self, trial_id: str) -> None:
        """Forget a trial's progress marker (its rung records stay: they are history)."""
        self.passed.pop(trial_id, None)
