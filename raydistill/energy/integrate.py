"""Energy over a window from samples: counter differences where a counter exists, else the
trapezoid integral of power, sample-and-hold padded to the window edges.

Both paths build one object, a cumulative-energy curve E(t) for a device, so that any interval's
energy is E(b) - E(a). That lets the ledger split a device's energy between overlapping windows
exactly. The power path is exact for piecewise-linear power (the curve is piecewise quadratic);
the counter path is exact for power that is constant between counter samples.

Gaps (sample intervals, or edge padding, longer than `max_gap_s`) are reported with the result,
never silently bridged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

Gap = tuple[float, float]


@dataclass(frozen=True)
class EnergyEstimate:
    energy_j: float
    path: str  # "counter" | "power"
    n_samples: int  # samples inside the window
    gaps: tuple[Gap, ...]  # stretches of the window with no sample for longer than max_gap_s
    counter_resets: int = 0

    @property
    def gap_s(self) -> float:
        return sum(b - a for a, b in self.gaps)


def unwrap_counter(
    values_j: np.ndarray, max_range_j: float | None = None
) -> tuple[np.ndarray, int]:
    """Turn a counter that may wrap or reset into a monotonic one.

    A decrease is a wrap when `max_range_j` is known (add the range), else a reset to zero
    (the counter restarted: its new value is the energy since then). Returns the monotonic
    series and the number of resets seen (wraps are normal and not counted).
    """
    values = np.asarray(values_j, dtype=np.float64)
    if values.size < 2:
        return values.copy(), 0
    steps = np.diff(values)
    down = steps < 0
    resets = 0
    if down.any():
        if max_range_j is not None:
            steps = np.where(down, steps + max_range_j, steps)
        else:
            steps = np.where(down, values[1:], steps)
            resets = int(down.sum())
    return np.concatenate(([values[0]], values[0] + np.cumsum(steps))), resets


class CumulativeEnergy:
    """E(t) for one device, in joules relative to the first sample, for any t.

    Outside the sampled range the power is held (sample-and-hold padding): the first/last power
    for the power path; for the counter path the power of the nearest sample where known, else
    the slope of the nearest counter segment.
    """

    def __init__(
        self,
        times_s: Sequence[float] | np.ndarray,
        power_w: Sequence[float] | np.ndarray | None = None,
        counter_j: Sequence[float] | np.ndarray | None = None,
        max_range_j: float | None = None,
    ) -> None:
        t = np.asarray(times_s, dtype=np.float64)
        if t.size == 0:
            raise ValueError("no samples to integrate")
        order = np.argsort(t, kind="stable")
        self.t = t[order]
        if np.any(np.diff(self.t) == 0):
            # Equal times (two samplers on one node while a replacement starts): keep the first.
            keep = np.concatenate(([True], np.diff(self.t) > 0))
            self.t, order = self.t[keep], order[keep]
        p = None if power_w is None else np.asarray(power_w, dtype=np.float64)[order]
        c = None if counter_j is None else np.asarray(counter_j, dtype=np.float64)[order]
        self.resets = 0
        if c is not None and not np.isnan(c).any():
            self.path = "counter"
            mono, self.resets = unwrap_counter(c, max_range_j)
            self.cum = mono - mono[0]
            seg = _segment_power(self.t, self.cum)
            has_p = p is not None and not np.isnan(p[0])
            self.p_first = float(p[0]) if has_p else seg[0]
            has_p = p is not None and not np.isnan(p[-1])
            self.p_last = float(p[-1]) if has_p else seg[-1]
            self.p = None
        elif p is not None and not np.isnan(p).all():
            self.path = "power"
            good = ~np.isnan(p)
            self.t, self.p = self.t[good], p[good]
            dt = np.diff(self.t)
            self.cum = np.concatenate(([0.0], np.cumsum(0.5 * (self.p[1:] + self.p[:-1]) * dt)))
            self.p_first, self.p_last = float(self.p[0]), float(self.p[-1])
        else:
            raise ValueError("samples carry neither power nor a complete energy counter")

    def at(self, when_s: float) -> float:
        t, cum = self.t, self.cum
        if when_s <= t[0]:
            return float(-(t[0] - when_s) * self.p_first)
        if when_s >= t[-1]:
            return float(cum[-1] + (when_s - t[-1]) * self.p_last)
        i = int(np.searchsorted(t, when_s, side="right")) - 1
        dt = when_s - t[i]
        if self.p is None:  # counter: linear between samples
            return float(cum[i] + (cum[i + 1] - cum[i]) * dt / (t[i + 1] - t[i]))
        # power: linear between samples, so the integral is quadratic within the segment
        slope = (self.p[i + 1] - self.p[i]) / (t[i + 1] - t[i])
        return float(cum[i] + self.p[i] * dt + 0.5 * slope * dt * dt)

    def between(self, start_s: float, end_s: float) -> float:
        return self.at(end_s) - self.at(start_s)

    def gaps(self, start_s: float, end_s: float, max_gap_s: float) -> tuple[Gap, ...]:
        """Stretches of [start, end] longer than max_gap_s with no sample inside."""
        inside = self.t[(self.t > start_s) & (self.t < end_s)]
        edges = np.concatenate(([start_s], inside, [end_s]))
        found = []
        for a, b in pairwise(edges):
            if b - a > max_gap_s:
                found.append((float(a), float(b)))
        return tuple(found)

    def estimate(self, start_s: float, end_s: float, max_gap_s: float) -> EnergyEstimate:
        n = int(((self.t >= start_s) & (self.t <= end_s)).sum())
        return EnergyEstimate(
            energy_j=self.between(start_s, end_s),
            path=self.path,
            n_samples=n,
            gaps=self.gaps(start_s, end_s, max_gap_s),
            counter_resets=self.resets,
        )


def _segment_power(t: np.ndarray, cum: np.ndarray) -> tuple[float, float]:
    if t.size < 2:
        return (0.0, 0.0)
    return (
        float((cum[1] - cum[0]) / (t[1] - t[0])),
        float((cum[-1] - cum[-2]) / (t[-1] - t[-2])),
    )


def integrate_energy_j(
    times_s: Sequence[float] | np.ndarray,
    power_w: Sequence[float] | np.ndarray,
    start_s: float,
    end_s: float,
) -> float:
    """Energy (J) of sampled power over [start_s, end_s].

    Trapezoid rule between samples, cut exactly at the window edges, and sample-and-hold
    padding where the window reaches past the first or last sample. Exact for power that is
    piecewise linear between the sample times.
    """
    if end_s < start_s:
        raise ValueError(f"window ends before it starts ({start_s} > {end_s})")
    if len(times_s) != len(power_w):
        raise ValueError("times_s and power_w differ in length")
    return CumulativeEnergy(times_s, power_w=power_w).between(start_s, end_s)


def counter_energy_j(
    times_s: Sequence[float] | np.ndarray,
    counter_j: Sequence[float] | np.ndarray,
    start_s: float,
    end_s: float,
    max_range_j: float | None = None,
) -> float:
    """Energy (J) over [start_s, end_s] from an energy counter, wrap- and reset-aware."""
    if end_s < start_s:
        raise ValueError(f"window ends before it starts ({start_s} > {end_s})")
    if any(math.isnan(float(v)) for v in counter_j):
        raise ValueError("counter series has missing values")
    return CumulativeEnergy(times_s, counter_j=counter_j, max_range_j=max_range_j).between(
        start_s, end_s
    )
