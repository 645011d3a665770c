"""Confidence intervals for proportions and their differences (pure: math and statistics only).

A dev score such as exact match is a proportion of n scored rows, so its sampling noise is
binomial: at accuracy 0.5 on 64 rows one standard error is 0.0625. The rungs of the
energy-Pareto scheduler ask "is B's dev score higher than A's beyond that noise?"; the answer is
the lower end of an interval for the difference of two proportions.

- `wilson`: the Wilson score interval of one proportion (it stays inside [0, 1] and keeps its
  coverage near 0 and 1 and for small n, where the Wald interval p ± z·se fails).
- `newcombe_difference`: Newcombe's hybrid score interval for p1 − p2 (his method 10, 1998),
  built from the two Wilson intervals: L = d − √((p1−l1)² + (u2−p2)²),
  U = d + √((u1−p1)² + (p2−l2)²). Its coverage is close to nominal for small samples.

Both take the two-sided confidence; a one-sided test at level 1 − a reads the lower end of
the two-sided 1 − 2a interval (`one_sided`).
"""

from __future__ import annotations

import math
from statistics import NormalDist


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _check(p: float, n: float) -> None:
    if not (n > 0 and math.isfinite(n)):
        raise ValueError(f"a proportion needs n > 0 rows, got {n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"a proportion lies in [0, 1], got {p}")


def wilson(p: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (two-sided, `confidence`) for a proportion p observed on n rows."""
    _check(p, n)
    z = _z(confidence)
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_difference(p1: float, n1: float, p2: float, n2: float,
                        confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid score interval (two-sided, `confidence`) for p1 − p2."""
    l1, u1 = wilson(p1, n1, confidence)
    l2, u2 = wilson(p2, n2, confidence)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return max(-1.0, low), min(1.0, high)  # rounding can step past the possible range


def one_sided(alpha: float) -> float:
    """The two-sided confidence whose lower end is a one-sided bound at level 1 − alpha."""
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"a one-sided alpha must lie in (0, 0.5), got {alpha}")
    return 1.0 - 2.0 * alpha
