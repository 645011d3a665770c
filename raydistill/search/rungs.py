"""Rung bookkeeping for the energy–Pareto scheduler (pure: raydistill.proportions only).

At each rung (a fraction of student training, e.g. 0.3 and 0.6) every trial that reaches it
records its dev quality so far (with `quality_n`, the dev rows it scored) and its energy so far
(with `energy_error_j`, the stated error of that energy, and `meter`, a string naming the
node/device/method set that measured it). Comparing at equal progress keeps it fair: a trial is
never judged against others' finished figures. A NaN quality or energy (nothing measured yet)
never stops a trial and never stops another.

A trial A is stopped at a rung only when another trial B there beats it beyond noise, in both:

- quality: B's dev score is higher than A's with one-sided confidence. The scores are
  proportions of dev rows, so the test is the lower end of Newcombe's hybrid score interval
  for q_B − q_A (Wilson interval on each, with each result's `quality_n`); it must exceed 0.
  The alpha (1 − `confidence`) is split Bonferroni-wise over the comparisons a trial can face:
  len(rungs) × the others at the rung when it is judged. Before the models learn every trial
  scores ~0 and nobody is better beyond noise, so nobody is stopped for "spending more so far".
- energy: B's energy is not higher than A's beyond the energies' stated errors. Two figures of
  the same `meter` share its bias, which cancels in their difference: the tolerance is
  |err_B − err_A| (zero for equal errors, r·|e_B − e_A| for a relative bias r, so B must
  simply not have spent more). Different (or unnamed) meters: errors add in quadrature.

A quality without `quality_n` (or outside [0, 1]) is not a proportion of rows: no interval can
be put on it, so such a trial never stops another and is never stopped (it is recorded and
judged "no sampling interval").

Parameters
- rungs: rising fractions of training in (0, 1) at which trials are compared.
- confidence: the family-wise confidence of a stop (default 0.95: ≤ 5% of trials of equal true
  quality and energy are stopped, whatever the number of rungs and rivals).
- min_trials: how many other trials a rung needs before it stops anyone.
- margin, min_spread: extra head starts A gets on top of the noise (defaults 0; old spaces set
  them): B's quality lower bound must exceed margin·|q_A| + min_spread, and B's energy is
  compared with A's energy × (1 − margin).
- senses: ("max", "min") for (quality, energy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from raydistill.errors import ConfigError
from raydistill.proportions import newcombe_difference, one_sided

CONTINUE, STOP = "continue", "stop"


class RungPoint(NamedTuple):
    """What a trial recorded at a rung."""

    quality: float
    energy_j: float
    quality_n: float | None = None  # dev rows the quality was scored on; None: not a proportion
    energy_error_j: float = 0.0  # stated error of energy_j (J)
    meter: str = ""  # node:device:method set; equal non-empty strings share their bias
    energy_independent_j: float = 0.0  # the part of energy_error_j no other figure shares


def is_proportion(p: RungPoint) -> bool:
    return p.quality_n is not None and p.quality_n > 0 and 0.0 <= p.quality <= 1.0


def beats_quality(b: RungPoint, a: RungPoint, alpha: float, sense: str = "max",
                  head_start: float = 0.0) -> bool:
    """B's quality is better than A's beyond sampling noise (one-sided, level 1 − alpha) and by
    more than `head_start` quality units. False where either is not a proportion of rows."""
    if not (is_proportion(a) and is_proportion(b)):
        return False
    conf = one_sided(alpha)
    if sense == "max":
        low, _ = newcombe_difference(b.quality, b.quality_n, a.quality, a.quality_n, conf)
    else:
        low, _ = newcombe_difference(a.quality, a.quality_n, b.quality, b.quality_n, conf)
    return low > head_start


def energy_not_worse(b: RungPoint, a: RungPoint, sense: str = "min",
                     margin: float = 0.0) -> bool:
    """B's energy is not worse than A's (given A's relative head start `margin`) beyond their
    stated errors: one meter's common bias cancels, different meters add in quadrature."""
    if b.meter and b.meter == a.meter:
        # the shared bias (error less its independent part) cancels but for the share the two
        # figures differ by; independent parts (window edges, unmeasured bounds) add in
        # quadrature
        bias_b = max(b.energy_error_j - b.energy_independent_j, 0.0)
        bias_a = max(a.energy_error_j - a.energy_independent_j, 0.0)
        tolerance = math.hypot(bias_b - bias_a, a.energy_independent_j, b.energy_independent_j)
    else:
        tolerance = math.hypot(a.energy_error_j, b.energy_error_j)
    if sense == "min":
        excess = b.energy_j - a.energy_j * (1.0 - margin)
    else:
        excess = a.energy_j * (1.0 + margin) - b.energy_j
    return excess <= tolerance


@dataclass
class RungBook:
    rungs: Sequence[float]
    margin: float = 0.0
    min_trials: int = 2
    senses: tuple[str, str] = ("max", "min")
    min_spread: float = 0.0
    confidence: float = 0.95
    records: dict[float, dict[str, RungPoint]] = field(default_factory=dict)
    passed: dict[str, int] = field(default_factory=dict)  # trial -> rungs already passed
    decisions: list[tuple[str, float, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        rungs = [float(r) for r in self.rungs]
        if not all(0 < r < 1 for r in rungs) or rungs != sorted(set(rungs)):
            raise ConfigError(f"rungs must rise strictly inside (0, 1), got {list(self.rungs)}")
        if self.margin < 0 or self.min_trials < 1 or not self.min_spread >= 0:
            raise ConfigError("margin and min_spread must be >= 0 and min_trials >= 1")
        if not 0.5 < self.confidence < 1:
            raise ConfigError(f"confidence must lie in (0.5, 1), got {self.confidence}")
        self.rungs = rungs
        self.records = {r: {} for r in rungs}

    def record(self, trial_id: str, progress: float, quality: float, energy_j: float,
               quality_n: float | None = None, energy_error_j: float = 0.0,
               meter: str = "", energy_independent_j: float = 0.0) -> str:
        """Feed one result; "stop" when the trial is beaten beyond noise at a rung it just
        reached."""
        point = RungPoint(quality, energy_j, quality_n, energy_error_j, meter,
                          min(energy_independent_j, energy_error_j))
        done = self.passed.get(trial_id, 0)
        action = CONTINUE
        while done < len(self.rungs) and progress >= self.rungs[done]:
            rung = self.rungs[done]
            done += 1
            if not (math.isfinite(quality) and math.isfinite(energy_j)):
                continue  # no quality measured: record nothing, judge nothing
            # a retried trial's own earlier record at this rung is not another trial
            others = {o: pt for o, pt in self.records[rung].items() if o != trial_id}
            self.records[rung][trial_id] = point
            if len(others) < self.min_trials:
                self.decisions.append((trial_id, rung, CONTINUE, f"{len(others)} others"))
                continue
            if not is_proportion(point):
                self.decisions.append((trial_id, rung, CONTINUE, "no sampling interval"))
                continue
            beaten = self._beaten_by(point, others)
            if beaten:
                self.decisions.append((trial_id, rung, STOP, f"dominated by {beaten[0]}"))
                action = STOP
                break
            self.decisions.append((trial_id, rung, CONTINUE, "not dominated beyond noise"))
        self.passed[trial_id] = done
        return action

    def _beaten_by(self, a: RungPoint, others: dict[str, RungPoint]) -> list[str]:
        # Bonferroni: the family of comparisons this trial can face is every rival at every
        # rung, so each gets alpha / (rungs × rivals) and a stop among equals stays ≤ alpha
        alpha = (1.0 - self.confidence) / (len(self.rungs) * len(others))
        head = self.margin * abs(a.quality) + self.min_spread
        q_sense, e_sense = self.senses
        return [o for o, b in others.items()
                if beats_quality(b, a, alpha, q_sense, head)
                and energy_not_worse(b, a, e_sense, self.margin)]

    def restart(self, trial_id: str) -> None:
        """The trial failed and will run again: its retry is judged at every rung it reaches,
        the ones its lost attempt passed included (its records there are replaced by the
        retry's when it reaches them)."""
        self.passed.pop(trial_id, None)
        self.decisions.append((trial_id, math.nan, CONTINUE, "restarted after an error"))

    def remove(self, trial_id: str) -> None:
        """Forget a trial's progress marker (its rung records stay: they are history)."""
        self.passed.pop(trial_id, None)
