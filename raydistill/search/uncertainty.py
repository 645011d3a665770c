"""Figures with their uncertainty: value ± error, sums, differences, ratios (pure: math only).

An `Interval` is a value with a half-width in the value's own unit. Two kinds of error meet
here, and are kept apart on purpose:

- a figure's *stated* error (raydistill.energy.accuracy): a bound on the meter's bias, the
  same in every repeat, so it is not divided down by repeating;
- the *spread* over repeats of one configuration: the standard error of their mean.

The two are independent, so they combine in quadrature (`mean_of_repeats`). Sums and
differences of figures use interval arithmetic (errors add): the interval of a difference then
contains the difference of any two values inside its inputs' intervals, which is what lets a
rule say "not distinguishable" and mean it. A ratio such as N* = T / Δ is a number only when
Δ's interval is clear of zero; its bounds come from the ends of both intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

DISTINGUISHABLE = "distinguishable"
NOT_DISTINGUISHABLE = "not distinguishable"
NEVER = "never"


@dataclass(frozen=True)
class Interval:
    """value ± error: the figure lies in [low, high]. Units are the caller's (J, J/token)."""

    value: float
    error: float = 0.0  # half-width, ≥ 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.value) and self.error >= 0 and not math.isnan(self.error)):
            raise ValueError(f"an interval needs a finite value and an error >= 0, got "
                             f"{self.value} ± {self.error}")

    @property
    def low(self) -> float:
        return self.value - self.error

    @property
    def high(self) -> float:
        return self.value + self.error

    def spans_zero(self) -> bool:
        """Zero is inside (ends included): the sign of the figure is not known."""
        return self.low <= 0.0 <= self.high

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


@dataclass(frozen=True)
class Ratio:
    """A ratio's verdict and, when it is distinguishable, its value with low/high bounds.

    `never`: the denominator is clearly negative (the saving is clearly a cost); `not
    distinguishable`: its interval spans zero, so neither a number nor "never" is supported.
    """

    verdict: str
    value: float | None = None
    low: float | None = None
    high: float | None = None

    @property
    def known(self) -> bool:
        return self.verdict == DISTINGUISHABLE


def combine_errors(*errors: float) -> float:
    """Independent errors in quadrature (a stated error and a spread over repeats)."""
    return math.hypot(*errors)


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean (sample std, ddof 1, over √n); 0 for fewer than 2 values:
    one run says nothing about its spread."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return math.sqrt(var / n)


def mean_of_repeats(values: Sequence[float], stated_errors: Sequence[float]) -> Interval:
    """The mean of a configuration's repeats with its error: the mean stated error (a bias the
    meter has in every repeat, so averaging does not shrink it) and the standard error of the
    mean over repeats, in quadrature."""
    if not values or len(values) != len(stated_errors):
        raise ValueError("mean_of_repeats needs one stated error per value, and a value")
    mean = sum(values) / len(values)
    stated = sum(stated_errors) / len(stated_errors)
    return Interval(mean, combine_errors(stated, standard_error(values)))


def total(parts: Sequence[Interval]) -> Interval:
    """The sum of figures; errors add (interval arithmetic: the true sum is inside)."""
    return Interval(sum(p.value for p in parts), sum(p.error for p in parts))


def difference(a: Interval, b: Interval) -> Interval:
    """a − b; errors add, so a − b for any a, b inside their intervals is inside."""
    return Interval(a.value - b.value, a.error + b.error)


def distinguishable(a: Interval, b: Interval) -> bool:
    """The two figures' intervals do not overlap: one is clearly below the other."""
    return not a.overlaps(b)


def ratio_bounds(numerator: Interval, denominator: Interval) -> Ratio:
    """numerator / denominator for a numerator ≥ 0 (an energy): a value with bounds from the
    intervals' ends when the denominator is clearly positive; `never` when it is clearly
    negative; `not distinguishable` when its interval spans zero."""
    if denominator.spans_zero():
        return Ratio(NOT_DISTINGUISHABLE)
    if denominator.high < 0:
        return Ratio(NEVER)
    num_value = max(numerator.value, 0.0)
    num_low = max(numerator.low, 0.0)  # an energy is never negative
    return Ratio(DISTINGUISHABLE, num_value / denominator.value,
                 num_low / denominator.high, numerator.high / denominator.low)


def fmt_number(x: float) -> str:
    """Three significant figures, thousands separated, exponent only past a million."""
    if x == 0:
        return "0"
    if abs(x) >= 1e6:
        return f"{x:.3g}"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def _fmt_j(x: float) -> str:
    """Joules as the other rules print them (one decimal), small ones to 3 figures."""
    return f"{x:,.1f}" if abs(x) >= 1 else fmt_number(x)


def fmt_interval(iv: Interval, unit: str = "J") -> str:
    """'450.0 J ± 45.0 J' (joules as the other rules print them), '0.5 ± 0.025 J/token'."""
    if unit == "J":
        return f"{_fmt_j(iv.value)} J ± {_fmt_j(iv.error)} J"
    return f"{fmt_number(iv.value)} ± {fmt_number(iv.error)} {unit}"


def fmt_ratio(r: Ratio) -> str:
    """'12.5 (8.33–25)', or the verdict when there is no number to give."""
    if not r.known or r.value is None or r.low is None or r.high is None:
        return r.verdict
    return f"{fmt_number(r.value)} ({fmt_number(r.low)}–{fmt_number(r.high)})"
