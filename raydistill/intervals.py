"""Figures with their uncertainty: value ± error, sums, differences, ratios (pure: math only).

Every interval here is a stated 95% interval. A figure's stated error
(raydistill.energy.accuracy) is taken as the 95% half-width of its error, and parts that are
independent of each other are combined in quadrature, as 95% half-widths of roughly normal
errors combine (a stated bound is not a standard deviation; quadrature of bounds is the usual
reading of independent 95% limits, and it is what makes a figure of two meters no worse than
its worse meter plus the other).

A `Figure` keeps its error in three parts, because they behave differently:

- a *common bias* per meter: the class's relative error × the energy, keyed by the meter that
  measured it (node:device:error class). One meter errs the same way in every figure it makes
  (a relative bias δ), so two figures of the same meter share it: it adds with sign, and
  CANCELS in a difference of two such figures (to δ × the difference) and exactly in their
  ratio. Different meters' biases are independent: quadrature.
- an *independent* part (edge terms of short windows, power held over gaps, the bound on
  energy nobody measured): quadrature with everything else.
- the *spread over repeats* of one configuration: the half-width of the 95% t-interval of their
  mean (t-quantile for n − 1 degrees of freedom, × the standard error); a single run says
  nothing about its spread, so `repeats` == 1 means "spread unknown", not "no spread".

An `Interval` is the older, flat form (value ± half-width). Tables from before figures carried
their meters fall back to it: their errors are as stated and add linearly (interval
arithmetic: the interval of a difference then holds the difference of any two values inside its
inputs' intervals).

A ratio such as N* = T / Δ is a number only when Δ's interval is clear of zero; "never" when
Δ is clearly negative. Its bounds come from first-order propagation in log space
(`figure_ratio`: common biases cancel exactly), or, for flat intervals, from their ends.
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
    # the denominator's 95% interval (a saving, J or J/token): what "never" and "not
    # distinguishable" rest on, printed beside them
    denominator: Interval | None = None

    @property
    def known(self) -> bool:
        return self.verdict == DISTINGUISHABLE


def combine_errors(*errors: float) -> float:
    """Independent errors in quadrature (a stated error and a spread over repeats)."""
    return math.hypot(*errors)


# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (any table of t).
_T95 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
        2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
        2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
_Z95 = 1.959964


def t_quantile_95(dof: int) -> float:
    """t_{0.975, dof}: the half-width of a two-sided 95% interval in standard errors. Past 30
    degrees of freedom a Cornish-Fisher expansion about the normal (error < 1e-4)."""
    if dof < 1:
        raise ValueError(f"a t-quantile needs at least one degree of freedom, got {dof}")
    if dof <= len(_T95):
        return _T95[dof - 1]
    z = _Z95
    return z + (z ** 3 + z) / (4 * dof) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * dof ** 2)


def spread_95(values: Sequence[float]) -> float:
    """Half-width of the 95% t-interval of the mean of `values` (0 for fewer than 2: one run
    says nothing about its spread; callers say so)."""
    n = len(values)
    return t_quantile_95(n - 1) * standard_error(values) if n >= 2 else 0.0


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
    """The mean of a configuration's repeats with its 95% error: the mean stated error (a bias
    the meter has in every repeat, so averaging does not shrink it) and the 95% t-interval of
    the mean over repeats (t-quantile for their count), in quadrature."""
    if not values or len(values) != len(stated_errors):
        raise ValueError("mean_of_repeats needs one stated error per value, and a value")
    mean = sum(values) / len(values)
    stated = sum(stated_errors) / len(stated_errors)
    return Interval(mean, combine_errors(stated, spread_95(values)))


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
        return Ratio(NOT_DISTINGUISHABLE, denominator=denominator)
    if denominator.high < 0:
        return Ratio(NEVER, denominator=denominator)
    num_value = max(numerator.value, 0.0)
    num_low = max(numerator.low, 0.0)  # an energy is never negative
    return Ratio(DISTINGUISHABLE, num_value / denominator.value,
                 num_low / denominator.high, numerator.high / denominator.low,
                 denominator=denominator)


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


def fmt_ratio(r: Ratio, unit: str = "J") -> str:
    """'12.5 (8.33–25)', or the verdict when there is no number to give, with the interval of
    the denominator it rests on where the ratio carries it: 'never (saving −73.0 J ± 36.6 J)'."""
    if not r.known or r.value is None or r.low is None or r.high is None:
        if r.denominator is None:
            return r.verdict
        return f"{r.verdict} (saving {fmt_interval(r.denominator, unit)}, 95%)"
    return f"{fmt_number(r.value)} ({fmt_number(r.low)}–{fmt_number(r.high)})"


# ---- figures that know their meters ----------------------------------------------------------

Bias = tuple[tuple[str, float], ...]


def _bias(parts: dict[str, float]) -> Bias:
    return tuple(sorted((k, v) for k, v in parts.items() if v != 0.0))


@dataclass(frozen=True)
class Figure:
    """A figure (J, J/token) with its 95% error in parts (see the module doc).

    `bias`: (meter, signed J) pairs: the figure is off by Σ bias_m × δ_m, δ_m ∈ [−1, 1] the
    meter's common relative bias; `independent_j` and `spread_j` are 95% half-widths combined
    in quadrature; `repeats` is how many runs the figure is a mean of (1: spread unknown)."""

    value: float
    bias: Bias = ()
    independent_j: float = 0.0
    spread_j: float = 0.0
    repeats: int = 1

    def __post_init__(self) -> None:
        bad = [x for x in (self.value, self.independent_j, self.spread_j, *dict(self.bias).values())
               if not math.isfinite(x)]
        if bad or self.independent_j < 0 or self.spread_j < 0:
            raise ValueError(f"a figure needs finite parts and errors >= 0, got {self}")

    @classmethod
    def of(cls, value: float, bias: dict[str, float] | None = None,
           independent_j: float = 0.0) -> Figure:
        return cls(float(value), _bias(bias or {}), float(independent_j))

    @property
    def biases(self) -> dict[str, float]:
        return dict(self.bias)

    @property
    def error(self) -> float:
        """The 95% half-width: each meter's bias, the independent part and the spread, in
        quadrature."""
        return math.hypot(*(b for _, b in self.bias), self.independent_j, self.spread_j)

    def interval(self) -> Interval:
        return Interval(self.value, self.error)

    def scaled(self, k: float) -> Figure:
        return Figure(self.value * k, _bias({m: b * k for m, b in self.bias}),
                      self.independent_j * abs(k), self.spread_j * abs(k), self.repeats)

    def __add__(self, other: Figure) -> Figure:
        parts = self.biases
        for m, b in other.bias:
            parts[m] = parts.get(m, 0.0) + b  # one meter errs the same way in both
        return Figure(self.value + other.value, _bias(parts),
                      math.hypot(self.independent_j, other.independent_j),
                      math.hypot(self.spread_j, other.spread_j), min(self.repeats, other.repeats))

    def __sub__(self, other: Figure) -> Figure:
        return self + other.scaled(-1.0)


def figure_sum(figures: Sequence[Figure]) -> Figure:
    out = Figure(0.0, repeats=max((f.repeats for f in figures), default=1))
    for f in figures:
        out = out + f
    return out


def mean_of_figures(figures: Sequence[Figure]) -> Figure:
    """The mean of repeats of one configuration: each meter's bias and the independent part
    are the repeats' means (a bias every repeat has does not shrink by repeating), and the
    spread is the 95% t-interval of the mean over the repeats (unknown for one run)."""
    if not figures:
        raise ValueError("mean_of_figures needs at least one figure")
    n = len(figures)
    parts: dict[str, float] = {}
    for f in figures:
        for m, b in f.bias:
            parts[m] = parts.get(m, 0.0) + b / n
    return Figure(sum(f.value for f in figures) / n, _bias(parts),
                  sum(f.independent_j for f in figures) / n,
                  spread_95([f.value for f in figures]), n)


def figure_ratio(numerator: Figure, denominator: Figure) -> Ratio:
    """numerator / denominator for a numerator ≥ 0 (an energy), with 95% bounds.

    A number only when the denominator's interval is clear of zero; `never` when it is clearly
    negative. Bounds by first-order propagation in log space: ln R moves by Σ_m (b_m^N / N −
    b_m^D / D) δ_m for the meters' common biases (a meter that measured both in the same
    proportion cancels exactly) and by the independent parts and spreads of each, relative, in
    quadrature: R × exp(∓h)."""
    den = denominator.interval()
    if den.spans_zero():
        return Ratio(NOT_DISTINGUISHABLE, denominator=den)
    if den.high < 0:
        return Ratio(NEVER, denominator=den)
    num, d = max(numerator.value, 0.0), denominator.value
    if num == 0.0:
        return Ratio(DISTINGUISHABLE, 0.0, 0.0, numerator.error / den.low, denominator=den)
    rel: dict[str, float] = {m: b / num for m, b in numerator.bias}
    for m, b in denominator.bias:
        rel[m] = rel.get(m, 0.0) - b / d
    h = math.hypot(*rel.values(), numerator.independent_j / num, numerator.spread_j / num,
                   denominator.independent_j / d, denominator.spread_j / d)
    value = num / d
    return Ratio(DISTINGUISHABLE, value, value * math.exp(-h), value * math.exp(h),
                 denominator=den)
