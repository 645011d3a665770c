"""Recorded power or energy traces played back as a power source (tests, simulation).

A trace is a CSV with the header `t_s,power_w` or `t_s,energy_j` and strictly increasing times.
Trace time t maps to `start + (t − t_first)`; with `loop`, the trace repeats with period
`t_last − t_first`. Power is linear between points and its reported counter is the exact
integral, so counter differences are the trace's closed-form energy. An energy trace is linear
between points, its power the slope of the segment, and its counter keeps growing across loops.
Without `loop`, the last power is held after the end (and the counter grows with it).
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from raydistill.energy.samples import Reading
from raydistill.errors import ConfigError

COLUMNS = ("power_w", "energy_j")


def read_trace(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """(times, values, column) of a trace CSV; ConfigError naming the file and line if bad."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [[c.strip() for c in row] for row in csv.reader(fh)]
    except FileNotFoundError:
        raise ConfigError(f"trace {path} not found (replay:PATH takes a CSV t_s,power_w or "
                          "t_s,energy_j)") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"trace {path} cannot be read: {exc}") from None
    if not rows or len(rows[0]) != 2 or rows[0][0] != "t_s" or rows[0][1] not in COLUMNS:
        raise ConfigError(f"trace {path} line 1: header must be t_s,power_w or t_s,energy_j")
    column = rows[0][1]
    t: list[float] = []
    v: list[float] = []
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or row == [""]:
            continue
        _check_row(path, line_no, row, t, v, column)
        t.append(float(row[0]))
        v.append(float(row[1]))
    if len(t) < 2:
        raise ConfigError(f"trace {path}: needs at least two rows")
    return np.asarray(t), np.asarray(v), column


def _check_row(path: Path, line_no: int, row: list[str], t: list[float], v: list[float],
               column: str) -> None:
    where = f"trace {path} line {line_no}"
    try:
        if len(row) != 2:
            raise ValueError
        a, b = float(row[0]), float(row[1])
    except ValueError:
        raise ConfigError(f"{where}: expected two numbers, got {','.join(row)!r}") from None
    if not (math.isfinite(a) and math.isfinite(b)) or b < 0:
        raise ConfigError(f"{where}: values must be finite and >= 0")
    if t and a <= t[-1]:
        raise ConfigError(f"{where}: t_s must increase")
    if column == "energy_j" and v and b < v[-1]:
        raise ConfigError(f"{where}: energy_j must not decrease")


class ReplaySource:
    """One device "replay:<file stem>", kind node, source "replay", method "replayed"."""

    name = "replay"

    def __init__(self, path: str | Path, loop: bool = True,
                 clock: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.t, self.values, self.column = read_trace(self.path)
        self.loop, self.clock, self.mono = loop, clock, mono
        self.t0 = clock()
        self.period_s = float(self.t[-1] - self.t[0])
        if self.column == "power_w":
            seg_j = 0.5 * (self.values[1:] + self.values[:-1]) * np.diff(self.t)
            self.cum = np.concatenate(([0.0], np.cumsum(seg_j)))
            self.p_last = float(self.values[-1])
        else:
            self.cum = self.values - self.values[0]
            self.p_last = float((self.cum[-1] - self.cum[-2]) / (self.t[-1] - self.t[-2]))
        self.device_id = f"replay:{self.path.stem}"

    def _phase(self, now: float) -> tuple[int, float, float]:
        """(completed loops, position in the trace's time, seconds past its end if not looping)"""
        elapsed = max(0.0, now - self.t0)
        if self.loop:
            n, rem = divmod(elapsed, self.period_s)
            return int(n), float(self.t[0] + rem), 0.0
        return 0, float(min(self.t[0] + elapsed, self.t[-1])), max(0.0, elapsed - self.period_s)

    def _segment(self, x: float) -> int:
        return max(min(int(np.searchsorted(self.t, x, side="right")) - 1, len(self.t) - 2), 0)

    def energy_at(self, now: float) -> float:
        """The counter (J) at wall time `now`: 0 at the start, monotonic."""
        n, x, past_s = self._phase(now)
        i = self._segment(x)
        dt = x - self.t[i]
        if self.column == "power_w":
            slope = (self.values[i + 1] - self.values[i]) / (self.t[i + 1] - self.t[i])
            within = self.cum[i] + self.values[i] * dt + 0.5 * slope * dt * dt
        else:
            within = float(np.interp(x, self.t, self.cum))
        return n * float(self.cum[-1]) + float(within) + past_s * self.p_last

    def power_at(self, now: float) -> float:
        _, x, past_s = self._phase(now)
        if past_s > 0:
            return self.p_last
        if self.column == "power_w":
            return float(np.interp(x, self.t, self.values))
        i = self._segment(x)
        return float((self.cum[i + 1] - self.cum[i]) / (self.t[i + 1] - self.t[i]))

    def read(self) -> list[Reading]:
        now = self.clock()
        return [Reading(self.device_id, "node", now, self.power_at(now), self.energy_at(now),
                        "replay", "replayed", self.mono())]

    def describe(self) -> str:
        return f"replay ({self.path.name}, {self.column}, period {self.period_s:g} s)"

    def close(self) -> None:
        pass
