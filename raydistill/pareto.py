"""Pareto front, 2-D hypervolume, knee point and margin dominance (pure: numpy only).

Every function takes points as rows of objective values and one sense per objective, "max" or
"min" (quality is maximised, energy minimised). Internally each column is turned into a
maximisation (min columns are negated), so one comparison rule serves every mix of senses.

A point with a NaN or infinite coordinate (a failed or unfinished trial) is never on the front,
never counts towards a hypervolume and never dominates anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from raydistill.errors import ConfigError

SENSES: dict[str, float] = {"max": 1.0, "min": -1.0}  # sense → sign that makes it a maximisation


def _signs(senses: Sequence[str]) -> np.ndarray:
    if isinstance(senses, str) or len(senses) == 0:
        raise ConfigError(f"senses must be a list with one of {', '.join(SENSES)} per objective")
    bad = [s for s in senses if s not in SENSES]
    if bad:
        raise ConfigError(f"unknown sense {bad[0]!r}; valid: {', '.join(SENSES)}")
    return np.array([SENSES[s] for s in senses])


def _oriented(points: Sequence[Sequence[float]], senses: Sequence[str]) -> np.ndarray:
    """[n, m] float array with every objective turned into a maximisation."""
    signs = _signs(senses)
    try:
        arr = np.asarray(points, dtype=float)
    except (TypeError, ValueError) as exc:  # ragged rows, strings
        raise ConfigError(f"points must be rows of {len(signs)} numbers: {exc}") from None
    if arr.size == 0:
        return np.empty((0, len(signs)))
    if arr.ndim != 2 or arr.shape[1] != len(signs):
        raise ConfigError(f"points must be rows of {len(signs)} objective values (one per sense), "
                          f"got shape {arr.shape}")
    return arr * signs


def _dominates(q: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Which rows of q dominate the point p (all oriented): no worse in all, better in one."""
    return np.all(q >= p, axis=-1) & np.any(q > p, axis=-1)


def pareto_front(points: Sequence[Sequence[float]], senses: Sequence[str]) -> list[int]:
    """Indices (ascending) of the non-dominated points. Identical points are all kept.

    O(n² · m) with numpy: a sweep has at most a few thousand trials.
    """
    q = _oriented(points, senses)
    finite = np.flatnonzero(np.all(np.isfinite(q), axis=1))
    cand = q[finite]
    return [int(finite[i]) for i in range(len(cand)) if not _dominates(cand, cand[i]).any()]


def hypervolume_2d(points: Sequence[Sequence[float]], reference: Sequence[float],
                   senses: Sequence[str]) -> float:
    """Area dominated by the points and bounded by the reference point.

    The reference is the worst acceptable corner (e.g. quality 0, the energy budget). A point
    contributes only the box between it and the reference, so a point that does not strictly
    beat the reference in both objectives contributes nothing.
    """
    if len(senses) != 2:
        raise ConfigError(f"hypervolume_2d needs exactly 2 senses, got {len(senses)}")
    ref = _oriented([reference], senses)[0]
    if not np.all(np.isfinite(ref)):
        raise ConfigError(f"hypervolume reference must be 2 finite numbers, got {reference!r}")
    q = _oriented(points, senses)
    q = q[np.all(np.isfinite(q), axis=1) & np.all(q > ref, axis=1)]
    # sweep from the best x down; each point adds the strip it raises above the best y so far
    area, y_best = 0.0, ref[1]
    for x, y in sorted(q.tolist(), key=lambda p: (-p[0], -p[1])):
        if y > y_best:
            area += (x - ref[0]) * (y - y_best)
            y_best = y
    return float(area)


def knee_point(points: Sequence[Sequence[float]], senses: Sequence[str]) -> int | None:
    """Index of the front point farthest beyond the line that joins the front's extremes.

    Each objective is scaled to [0, 1] over the front (1 = best). In two objectives the extremes
    (best in one objective, hence worst in the other) land on (1, 0) and (0, 1), the line joining
    them is x + y = 1, and the signed distance of a point beyond it is (x + y − 1)/√2: so the knee
    is the point with the largest sum of scaled objectives, the best trade-off of the two. With
    more objectives the same sum measures the distance beyond the hyperplane through the unit
    points. An objective that is constant over the front is ignored. Ties (and a front of one or
    two points, where every point lies on the line) go to the lowest index; None if no point is
    finite.
    """
    front = pareto_front(points, senses)
    if not front:
        return None
    q = _oriented(points, senses)[front]
    lo, span = q.min(axis=0), np.ptp(q, axis=0)
    scaled = np.divide(q - lo, span, out=np.zeros_like(q), where=span > 0)
    return front[int(np.argmax(scaled.sum(axis=1)))]  # argmax takes the first of equal maxima


def dominated_by_margin(a: Sequence[float], b: Sequence[float], senses: Sequence[str],
                        margin: float) -> bool:
    """True when b dominates a even after a is given a head start of margin·|a_i| in every
    objective: b no worse than the improved a in all objectives, strictly better in one.

    margin = 0 is plain Pareto dominance. A scheduler stops a trial only when another beats it
    by more than its measurement noise, so near-ties at an early rung survive.
    """
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
        raise ConfigError(f"dominance margin must be a finite number ≥ 0, got {margin!r}")
    qa, qb = _oriented([a, b], senses)
    if not (np.all(np.isfinite(qa)) and np.all(np.isfinite(qb))):
        return False
    return bool(_dominates(qb, qa + margin * np.abs(qa)))
