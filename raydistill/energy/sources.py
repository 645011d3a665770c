"""Power sources behind one small Protocol, and the specs that choose them.

    nvml | rapl | cpu-estimate[:TDP_W] | replay:PATH | constant:WATTS | auto   (comma-joined)

Each source converts its vendor's units to joules and watts before anything else sees them, and
labels every reading with how it was obtained: counter, sampled, estimated or replayed.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from raydistill.energy.samples import Reading
from raydistill.errors import ConfigError, SourceUnavailable

log = logging.getLogger(__name__)

SPEC_FORMS = "nvml, rapl, cpu-estimate, cpu-estimate:TDP_W, replay:PATH, constant:WATTS, auto"


class PowerSource(Protocol):
    name: str

    def read(self) -> list[Reading]: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


# ---- CPU estimate ---------------------------------------------------------------------------

# (substring of /proc/cpuinfo "model name", package TDP in W, hardware threads per package),
# from the vendors' spec sheets. Matched in order: put specific names before general ones.
TDP_TABLE: tuple[tuple[str, float, int], ...] = (
    ("EPYC 9654", 360.0, 192), ("EPYC 9554", 360.0, 128), ("EPYC 7763", 280.0, 128),
    ("EPYC 7R13", 280.0, 96), ("EPYC 7742", 225.0, 128), ("EPYC 7B13", 240.0, 128),
    ("Platinum 8480", 350.0, 112), ("Platinum 8380", 270.0, 80), ("Platinum 8275CL", 240.0, 48),
    ("Platinum 8259CL", 210.0, 48), ("Gold 6338", 205.0, 64), ("Xeon(R) CPU @ 2.20GHz", 165.0, 44),
    ("Apple M1", 20.0, 8), ("Apple M2", 22.0, 8), ("Apple M3", 22.0, 8),
    ("Core(TM) i7", 65.0, 16), ("Core(TM) i5", 65.0, 12), ("Ryzen 9", 105.0, 24),
    ("Ryzen 7", 65.0, 16),
)
WATTS_PER_THREAD = 10.0  # fallback when the model is unknown: a mid-range server thread


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def visible_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def estimate_tdp_w(model: str, threads: int) -> tuple[float, str]:
    """TDP of the CPUs this process can use, and how it was chosen (for the label)."""
    for name, tdp_w, pkg_threads in TDP_TABLE:
        if name.lower() in model.lower():
            share = min(1.0, threads / pkg_threads)
            return tdp_w * share, f"{name} TDP {tdp_w:.0f} W × {threads}/{pkg_threads} threads"
    return WATTS_PER_THREAD * threads, (
        f"unknown CPU {model!r}: {WATTS_PER_THREAD:.0f} W per thread × {threads}")


class CpuEstimateSource:
    """power = idle + (TDP − idle) × utilisation; always labelled *estimated*."""

    name = "cpu-estimate"

    def __init__(self, tdp_w: float | None = None, idle_fraction: float = 0.3,
                 util_fn: Callable[[], float] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if not 0 <= idle_fraction <= 1:
            raise ConfigError(f"idle_fraction must lie in [0, 1], got {idle_fraction}")
        if tdp_w is not None:
            self.tdp_w, self.how = tdp_w, f"TDP {tdp_w:.0f} W (given)"
        else:
            self.tdp_w, self.how = estimate_tdp_w(cpu_model_name(), visible_cpus())
        self.idle_w = idle_fraction * self.tdp_w
        if util_fn is None:
            import psutil

            psutil.cpu_percent(interval=None)  # the first call only sets the reference
            util_fn = lambda: psutil.cpu_percent(interval=None) / 100.0  # noqa: E731
        self.util_fn, self.clock = util_fn, clock
        log.info("cpu-estimate: %s, idle %.0f%%", self.how, idle_fraction * 100)

    def read(self) -> list[Reading]:
        util = min(1.0, max(0.0, float(self.util_fn())))
        power = self.idle_w + (self.tdp_w - self.idle_w) * util
        return [Reading("cpu:estimate", "cpu", self.clock(), power, None, "cpu-estimate",
                        "estimated")]

    def describe(self) -> str:
        return f"cpu-estimate ({self.how})"

    def close(self) -> None:
        pass


# ---- synthetic sources: constant and replayed traces ---------------------------------------


class ConstantSource:
    """A fixed power. Its counter is power × wall time, so it is continuous across samplers."""

    name = "constant"

    def __init__(self, power_w: float, clock: Callable[[], float] = time.time) -> None:
        if not (math.isfinite(power_w) and power_w > 0):
            raise ConfigError(f"constant power must be a positive number of watts, got {power_w}")
        self.power_w, self.clock = power_w, clock

    def read(self) -> list[Reading]:
        now = self.clock()
        return [Reading("constant", "node", now, self.power_w, self.power_w * now, "constant",
                        "replayed")]

    def describe(self) -> str:
        return f"constant ({self.power_w:g} W)"

    def close(self) -> None:
        pass


class ReplaySource:
    """Plays a recorded trace (`t_s,power_w` or `t_s,energy_j`), looping, from its start time.

    Power is linear between the trace's points; the reported counter is its exact integral, so
    counter differences give the trace's closed-form energy.
    """

    name = "replay"

    def __init__(self, path: str | Path, loop: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.t, self.values, self.column = read_trace(self.path)
        self.loop, self.clock = loop, clock
        self.t0 = clock()
        self.period_s = float(self.t[-1] - self.t[0])
        if self.column == "power_w":
            dt = np.diff(self.t)
            self.cum = np.concatenate(([0.0], np.cumsum(0.5 * (self.values[1:] +
                                                               self.values[:-1]) * dt)))
        else:
            self.cum = self.values - self.values[0]
        self.device_id = f"replay:{self.path.stem}"

    def _phase(self, now: float) -> tuple[int, float]:
        elapsed = max(0.0, now - self.t0)
        if self.loop and self.period_s > 0:
            n, rem = divmod(elapsed, self.period_s)
            return int(n), float(self.t[0] + rem)
        return 0, float(min(self.t[0] + elapsed, self.t[-1]))

    def energy_at(self, now: float) -> float:
        n, x = self._phase(now)
        i = min(int(np.searchsorted(self.t, x, side="right")) - 1, len(self.t) - 2)
        i = max(i, 0)
        dt = x - self.t[i]
        if self.column == "power_w":
            slope = (self.values[i + 1] - self.values[i]) / (self.t[i + 1] - self.t[i])
            within = self.cum[i] + self.values[i] * dt + 0.5 * slope * dt * dt
        else:
            within = float(np.interp(x, self.t, self.cum))
        return n * float(self.cum[-1]) + float(within)

    def power_at(self, now: float) -> float:
        _, x = self._phase(now)
        if self.column == "power_w":
            return float(np.interp(x, self.t, self.values))
        i = max(min(int(np.searchsorted(self.t, x, side="right")) - 1, len(self.t) - 2), 0)
        return float((self.cum[i + 1] - self.cum[i]) / (self.t[i + 1] - self.t[i]))

    def read(self) -> list[Reading]:
        now = self.clock()
        return [Reading(self.device_id, "node", now, self.power_at(now), self.energy_at(now),
                        "replay", "replayed")]

    def describe(self) -> str:
        return f"replay ({self.path.name}, {self.column}, period {self.period_s:g} s)"

    def close(self) -> None:
        pass


def read_trace(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """A trace CSV: header t_s,power_w or t_s,energy_j; times strictly increasing."""
    if not path.is_file():
        raise ConfigError(f"trace {path} not found (replay:PATH takes a CSV t_s,power_w)")
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or rows[0][:1] != ["t_s"] or len(rows[0]) != 2 or \
            rows[0][1] not in ("power_w", "energy_j"):
        raise ConfigError(f"trace {path}: header must be t_s,power_w or t_s,energy_j")
    column = rows[0][1]
    t, v = [], []
    for line_no, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            a, b = float(row[0]), float(row[1])
        except (ValueError, IndexError):
            raise ConfigError(f"trace {path} line {line_no}: expected two numbers") from None
        if t and a <= t[-1]:
            raise ConfigError(f"trace {path} line {line_no}: t_s must increase")
        if not (math.isfinite(a) and math.isfinite(b)) or b < 0:
            raise ConfigError(f"trace {path} line {line_no}: values must be finite and >= 0")
        t.append(a)
        v.append(b)
    if len(t) < 2:
        raise ConfigError(f"trace {path}: needs at least two rows")
    return np.asarray(t), np.asarray(v), column


# ---- specs ----------------------------------------------------------------------------------


def _number(spec: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"source {spec!r}: {text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"source {spec!r}: watts must be > 0")
    return value


def validate_source_spec(spec: str) -> None:
    """Check a spec without touching hardware: syntax, numbers, and replay traces' contents."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"empty source spec; valid: {SPEC_FORMS}")
    for part in spec.split(","):
        kind, _, arg = part.strip().partition(":")
        if kind in ("nvml", "rapl", "auto") and not arg:
            continue
        if kind == "cpu-estimate":
            if arg:
                _number(part, arg)
            continue
        if kind == "constant" and arg:
            _number(part, arg)
            continue
        if kind == "replay" and arg:
            read_trace(Path(arg))  # a missing or malformed trace fails here, not in an actor
            continue
        raise ConfigError(f"unknown source spec {part.strip()!r}; valid: {SPEC_FORMS}")


def parse_source_spec(spec: str) -> list[PowerSource]:
    """Open the sources a spec names; `auto` picks the best available and logs its choice."""
    validate_source_spec(spec)
    sources: list[PowerSource] = []
    for part in (p.strip() for p in spec.split(",")):
        kind, _, arg = part.partition(":")
        if kind == "auto":
            sources.extend(auto_sources())
        elif kind == "nvml":
            from raydistill.energy.nvml import NvmlSource

            sources.append(NvmlSource())
        elif kind == "rapl":
            from raydistill.energy.rapl import RaplSource

            sources.append(RaplSource())
        elif kind == "cpu-estimate":
            sources.append(CpuEstimateSource(tdp_w=float(arg) if arg else None))
        elif kind == "constant":
            sources.append(ConstantSource(float(arg)))
        else:
            sources.append(ReplaySource(arg))
    return sources


def auto_sources() -> list[PowerSource]:
    """NVML for GPUs where it initialises, RAPL where readable, else the CPU estimate."""
    from raydistill.energy.nvml import NvmlSource
    from raydistill.energy.rapl import RaplSource

    found: list[PowerSource] = []
    for cls in (NvmlSource, RaplSource):
        try:
            found.append(cls())
        except SourceUnavailable as exc:
            log.info("auto: %s skipped: %s", cls.name, exc)
    if not any(isinstance(s, RaplSource) for s in found):
        found.append(CpuEstimateSource())
    log.info("auto chose: %s", describe_sources(found))
    return found


def describe_sources(sources: list[PowerSource]) -> str:
    return ", ".join(s.describe() for s in sources)
