"""Power sources behind one small Protocol, and the specs that choose them.

    nvml | rapl | cpu-estimate[:TDP_W] | replay:PATH | constant:WATTS | simulate:PATH | auto
    (comma-joined)

Each source converts its vendor's units to joules and watts before anything else sees them, and
labels every reading with how it was obtained: counter, sampled, estimated or replayed. The
hardware sources live in `nvml.py` and `rapl.py`, the trace player in `replay.py`. `simulate:PATH`
reads a simulated node (`simulate.py`, a JSON description) through those same NVML and RAPL
sources, in real time, so Ray actors sample it exactly as they sample hardware.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from raydistill.energy.replay import ReplaySource, read_trace
from raydistill.energy.samples import Reading
from raydistill.errors import ConfigError, SourceUnavailable

if TYPE_CHECKING:
    from raydistill.energy.simulate import SimNode

log = logging.getLogger(__name__)

SPEC_FORMS = ("nvml, rapl, cpu-estimate, cpu-estimate:TDP_W, replay:PATH, constant:WATTS, "
              "simulate:PATH, auto")

__all__ = ["SPEC_FORMS", "ConstantSource", "CpuEstimateSource", "PowerSource", "ReplaySource",
           "cpu_sockets", "describe_sources", "estimate_tdp_w", "load_simulated_node",
           "parse_source_spec", "read_trace", "simulated_sources", "validate_source_spec"]


class PowerSource(Protocol):
    name: str

    def read(self) -> list[Reading]:
        """One Reading per device; raises SourceUnavailable when the source is gone."""
        ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


# ---- CPU estimate ---------------------------------------------------------------------------

# (substring of /proc/cpuinfo "model name", package TDP in W, hardware threads per package),
# from the vendors' spec sheets (Apple publishes no TDP: the figure is the CPU cluster's
# measured peak). Matched in order: put specific names before general ones.
TDP_TABLE: tuple[tuple[str, float, int], ...] = (
    ("EPYC 9654", 360.0, 192), ("EPYC 9554", 360.0, 128), ("EPYC 7763", 280.0, 128),
    ("EPYC 7713", 225.0, 128), ("EPYC 7742", 225.0, 128), ("EPYC 7543", 225.0, 64),
    ("Platinum 8480", 350.0, 112), ("Platinum 8380", 270.0, 80), ("Platinum 8275CL", 240.0, 48),
    ("Platinum 8259CL", 210.0, 48), ("Gold 6338", 205.0, 64), ("Gold 6248", 150.0, 40),
    ("Apple M1", 20.0, 8), ("Apple M2", 22.0, 8), ("Apple M3", 22.0, 8),
    ("Ryzen 9", 105.0, 24), ("Ryzen 7", 65.0, 16),
)
# Unknown model: watts per hardware thread. The server parts above give 1.8–5.0 W per thread
# (median about 3.2); 4 W leans high on purpose, so an unknown CPU is not under-counted.
WATTS_PER_THREAD = 4.0
# Idle package power as a share of TDP: server CPUs idle at roughly a quarter to a third of it.
IDLE_FRACTION = 0.3


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:  # macOS, or a sandbox without /proc
        return ""


def cpu_model_name() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ""


def cpu_sockets(cpus: Sequence[int], cpuinfo: str | None = None) -> int:
    """How many CPU packages the CPUs `cpus` span, from each processor's `physical id` in
    /proc/cpuinfo (or the text given); 1 where that is unknown (no /proc, ARM, no match)."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    package: dict[int, str] = {}
    processor: int | None = None
    for line in text.splitlines():
        key, _, value = (x.strip() for x in line.partition(":"))
        if key == "processor":
            processor = int(value) if value.isdigit() else None
        elif key == "physical id" and processor is not None:
            package[processor] = value
    return len({package[c] for c in cpus if c in package}) or 1


def visible_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return list(range(os.cpu_count() or 1))


def estimate_tdp_w(model: str, threads: float, sockets: int = 1) -> tuple[float, str]:
    """TDP of the `threads` CPUs this process can use, spread over `sockets` packages, and how
    it was chosen (for the label).

    A listed CPU counts each package's TDP by the share of its threads in use, and never more
    packages than the CPUs span (2 × Xeon 8480C, all 224 threads: 700 W). An unlisted one is
    `WATTS_PER_THREAD` × threads, whatever the sockets: per thread, the sockets need no cap.
    """
    sockets = max(1, int(sockets))
    on = f"{threads:g} thread{'s' * (threads != 1)} on {sockets} socket{'s' * (sockets != 1)}"
    for name, tdp_w, pkg_threads in TDP_TABLE:
        if name.lower() in model.lower():
            packages = min(float(sockets), threads / pkg_threads)
            capped = " (capped at the sockets)" if packages < threads / pkg_threads else ""
            return tdp_w * packages, (f"{name} TDP {tdp_w:.0f} W per socket of {pkg_threads} "
                                      f"threads × {packages:g} socket(s){capped}; {on}")
    return WATTS_PER_THREAD * threads, (
        f"CPU {model or 'unknown'!r} not in the table: {WATTS_PER_THREAD:g} W per thread; {on}")


def _affinity_util(cpus: list[int]) -> Callable[[], float]:
    """Mean utilisation (0–1) of the CPUs this process may run on, since the previous call."""
    import psutil

    psutil.cpu_percent(interval=None, percpu=True)  # the first call only sets the reference

    def util() -> float:
        per_cpu = psutil.cpu_percent(interval=None, percpu=True)
        mine = [per_cpu[i] for i in cpus if i < len(per_cpu)] or per_cpu
        return sum(mine) / len(mine) / 100.0

    return util


class CpuEstimateSource:
    """power = idle + (TDP − idle) × utilisation; device "cpu:estimate", always *estimated*.

    It follows what this process may use: in a cgroup with a CPU quota (a container), the TDP of
    min(quota, affinity mask) CPUs and the cgroup's own CPU time as utilisation; else the
    affinity mask's CPUs and their host-wide utilisation. `root` is where /proc and
    /sys/fs/cgroup are read (tests lay out a fake tree), `cpus` the affinity mask."""

    name = "cpu-estimate"

    def __init__(self, tdp_w: float | None = None, idle_fraction: float = IDLE_FRACTION,
                 cpu_model: str | None = None, util_fn: Callable[[], float] | None = None,
                 clock: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic,
                 sockets: int | None = None, root: Path = Path("/"),
                 cpus: Sequence[int] | None = None) -> None:
        from raydistill.energy.cgroup import cgroup_cpu, cgroup_util, in_container

        if not 0 <= idle_fraction <= 1:
            raise ConfigError(f"idle_fraction must lie in [0, 1], got {idle_fraction}")
        cpus = list(cpus) if cpus is not None else visible_cpus()
        group = cgroup_cpu(Path(root))
        # a quota of 4 CPUs on a 192-thread host: the pod may use 4 CPUs' worth, not 192
        quota = group.quota_cpus if group is not None else None
        if group is not None and quota is None and not in_container(Path(root)):
            # a bare host without a quota: this process's cgroup (a systemd session, Ray's own
            # worker cgroup) need not hold the tracked work, so the host's load is the figure
            group = None
        usable = min(float(len(cpus)), quota) if quota is not None else float(len(cpus))
        if tdp_w is not None:
            if not (math.isfinite(tdp_w) and tdp_w > 0):
                raise ConfigError(f"cpu-estimate TDP must be > 0 W, got {tdp_w}")
            self.tdp_w, self.how = float(tdp_w), f"TDP {tdp_w:g} W (given)"
        else:
            model = cpu_model if cpu_model is not None else cpu_model_name()
            spans = sockets if sockets is not None else cpu_sockets(cpus)
            self.tdp_w, self.how = estimate_tdp_w(model, usable, spans)
        if group is not None and quota is not None:
            self.how += (f"; followed the cgroup's CPU quota ({quota:g} CPUs, "
                         f"{group.quota_file}; {len(cpus)} in the affinity mask), utilisation "
                         f"from the cgroup's own CPU time ({group.usage_file.name})")
        elif group is not None:
            self.how += (f"; followed the affinity mask (a container without a CPU quota), "
                         f"utilisation from the cgroup's own CPU time ({group.usage_file})")
        else:
            self.how += "; followed the affinity mask (no cgroup CPU quota), host-wide utilisation"
        self.idle_w = idle_fraction * self.tdp_w
        if util_fn is None:
            util_fn = (cgroup_util(group, usable, mono) if group is not None
                       else _affinity_util(cpus))
        self.util_fn = util_fn
        self.clock, self.mono = clock, mono
        log.info("cpu-estimate: %s, idle %.0f%% of it", self.how, idle_fraction * 100)

    def read(self) -> list[Reading]:
        util = min(1.0, max(0.0, float(self.util_fn())))
        power_w = self.idle_w + (self.tdp_w - self.idle_w) * util
        return [Reading("cpu:estimate", "cpu", self.clock(), power_w, None, "cpu-estimate",
                        "estimated", self.mono())]

    def describe(self) -> str:
        return f"cpu-estimate ({self.how})"

    def close(self) -> None:
        pass


# ---- constant -------------------------------------------------------------------------------


class ConstantSource:
    """A fixed power the user asserts, so method "estimated". Device "constant", kind node.

    Its counter is power × wall-clock time (not time since start): two samplers on one node,
    say a dead one and its replacement, report one continuous counter, and counter and power
    paths agree exactly.
    """

    name = "constant"

    def __init__(self, power_w: float, clock: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic) -> None:
        if not (math.isfinite(power_w) and power_w > 0):
            raise ConfigError(f"constant power must be a positive number of watts, got {power_w}")
        self.power_w, self.clock, self.mono = float(power_w), clock, mono

    def read(self) -> list[Reading]:
        now, mono = self.clock(), self.mono()
        # The counter runs on the monotonic clock, as the ledger's timeline does.
        return [Reading("constant", "node", now, self.power_w, self.power_w * mono, "constant",
                        "estimated", mono)]

    def describe(self) -> str:
        return f"constant ({self.power_w:g} W, estimated)"

    def close(self) -> None:
        pass


# ---- specs ----------------------------------------------------------------------------------


def _watts(part: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"source {part!r}: {text!r} is not a number of watts") from None
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"source {part!r}: watts must be a number > 0")
    return value


def _parts(spec: str) -> list[tuple[str, str, str]]:
    """[(part, kind, arg)] of a spec, syntax checked, without touching hardware or files."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"empty source spec; valid: {SPEC_FORMS}")
    parts = []
    for raw in spec.split(","):
        part = raw.strip()
        kind, _, arg = part.partition(":")
        ok = (kind in ("nvml", "rapl", "auto") and not arg) or kind == "cpu-estimate" or (
            kind in ("constant", "replay", "simulate") and arg)
        if not ok:
            raise ConfigError(f"unknown source spec {part!r}; valid: {SPEC_FORMS}")
        if kind in ("constant", "cpu-estimate") and arg:
            _watts(part, arg)
        parts.append((part, kind, arg))
    _check_combination(spec, parts)
    return parts


def _check_combination(spec: str, parts: list[tuple[str, str, str]]) -> None:
    kinds = [k for _, k, _ in parts]
    if "auto" in kinds and len(parts) > 1:
        raise ConfigError(f"source {spec!r}: auto picks every source itself; use it alone")
    if "rapl" in kinds and "cpu-estimate" in kinds:
        raise ConfigError(f"source {spec!r}: rapl and cpu-estimate both count the CPU; keep one")
    hardware = sorted({"nvml", "rapl", "auto"} & set(kinds))
    if "simulate" in kinds and hardware:
        raise ConfigError(f"source {spec!r}: simulate reads a simulated node in place of this "
                          f"one's GPUs and CPU packages; drop {', '.join(hardware)}")
    names = [f"replay:{Path(a).stem}" if k == "replay" else k for _, k, a in parts]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"source {spec!r}: {', '.join(twice)} given twice (its energy would "
                          "count twice); name each source once")


def validate_source_spec(spec: str) -> None:
    """Check a spec without touching hardware: syntax, numbers, replay traces' contents and
    simulated nodes' descriptions."""
    for _, kind, arg in _parts(spec):
        if kind == "replay":
            read_trace(Path(arg))  # a missing or malformed trace fails here, not in an actor
        elif kind == "simulate":
            load_simulated_node(arg)


def parse_source_spec(spec: str) -> list[PowerSource]:
    """Open the sources a spec names; `auto` picks the best available and logs its choice."""
    sources: list[PowerSource] = []
    for _, kind, arg in _parts(spec):
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
        elif kind == "simulate":
            sources.extend(simulated_sources(arg))
        else:
            sources.append(ReplaySource(arg))
    return sources


# ---- simulated node -------------------------------------------------------------------------

# The powercap trees laid out for simulated nodes' RaplSources, removed when the process exits.
_SIM_TREES: list[tempfile.TemporaryDirectory[str]] = []


def load_simulated_node(path: str) -> SimNode:
    """The node a `simulate:PATH` spec names; a ConfigError naming the file if it will not do."""
    from raydistill.energy.simulate import load_node

    how = "a JSON node description, see raydistill.energy.simulate.node_from_dict"
    try:
        node = load_node(path)
    except FileNotFoundError:
        raise ConfigError(f"simulate:{path}: file not found ({how})") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"simulate:{path}: not a simulated node ({type(exc).__name__}: "
                          f"{exc}; {how})") from None
    if not node.gpus and not node.rapl:
        raise ConfigError(f"simulate:{path}: the node has no GPU and no RAPL package to read")
    return node


def simulated_sources(path: str) -> list[PowerSource]:
    """NVML (its GPUs) and RAPL (its packages) reading the simulated node in `path` as they
    read hardware; the node runs in real time, readings carry time.monotonic()."""
    from raydistill.energy.nvml import NvmlSource
    from raydistill.energy.rapl import RaplSource

    node = load_simulated_node(path)
    sources: list[PowerSource] = []
    if node.gpus:
        sources.append(NvmlSource(pynvml_module=node.pynvml(), clock=node.wall,
                                  mono=time.monotonic))
    if node.rapl:
        tree = tempfile.TemporaryDirectory(prefix="raydistill-sim-rapl-")
        _SIM_TREES.append(tree)
        sources.append(RaplSource(root=node.write_sysfs(Path(tree.name)),
                                  reader=node.rapl_reader(), clock=node.wall,
                                  mono=time.monotonic))
    log.info("simulate: node %s with %d GPU(s) and %d CPU package(s), read in real time", path,
             len(node.gpus), len(node.rapl))
    return sources


def auto_sources() -> list[PowerSource]:
    """NVML for the GPUs where it initialises, plus RAPL where readable, else the CPU estimate."""
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
    """One line naming each source and how it measures, for logs and the run's record."""
    return ", ".join(s.describe() for s in sources)
