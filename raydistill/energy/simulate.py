"""A simulated node that the sources read exactly as they read a real one.

The node is a pure function of its *true* time: every device has a ground-truth power trace,
and whatever a vendor interface reports at true time t is computed from that trace, the way the
real driver would report it:

- NVML (the `pynvml` module surface raydistill uses: same calls, same units, same error class
  with its codes): `nvmlDeviceGetTotalEnergyConsumption` is mJ since driver load (the origin is
  1e9–1e10 J, not 0), refreshed every `refresh_s`; `nvmlDeviceGetPowerUsage` is the mean power
  over the last `power_avg_s` (1 s on H100, 0 = instantaneous as on A100); the instant field
  reports the power now. Transient errors (Unknown, Timeout) on any call at a seeded rate,
  NO_PERMISSION on the handles a cgroup hides, a GPU lost at a given time (GPU_IS_LOST from
  then on), a driver reload (the counter restarts at 0), MIG instances, and a CUDA order that
  differs from the PCI (NVML) order.
- RAPL powercap sysfs: `intel-rapl:N` package domains with `intel-rapl:N:0` DRAM subdomains;
  `energy_uj` is an absolute counter (a realistic origin) that wraps at `max_energy_range_uj`.
- Clocks: `mono()` never steps (CLOCK_MONOTONIC); `wall()` is the wall clock, which NTP may
  step back or forward at given true times.

Because every reading is a function of true time only, two samplers in two processes reading
one device see one counter, and any thread may call at any moment. `truth_j` gives the exact
energy over any stretch, so tests compare the ledger's figure with the true integral.

`simulate:PATH` in a source spec loads a node from a JSON file (see `node_from_dict`) and reads
it in real time (true time = `time.time()`), so Ray actors can sample it like hardware.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
import types
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

# NVML return codes (nvml.h), the ones the simulation raises.
NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999
NVML_FI_DEV_POWER_INSTANT = 186
NVML_DEVICE_MIG_ENABLE = 1
MIG_SLICES = 7  # compute slices of an A100 / H100


class NVMLError(Exception):
    """As in nvidia-ml-py: `NVMLError(code)` carries the code in `.value`."""

    def __init__(self, value: int = NVML_ERROR_UNKNOWN) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


# ---- ground truth ---------------------------------------------------------------------------


class PowerTrace:
    """Power (W) linear between points over true time; held before the first and after the
    last. Equal consecutive times make a step. `energy_j(a, b)` is the exact integral."""

    def __init__(self, times_s: Sequence[float], power_w: Sequence[float]) -> None:
        if len(times_s) != len(power_w) or not times_s:
            raise ValueError("a trace needs as many times as powers, at least one")
        if any(b < a for a, b in pairwise(times_s)):
            raise ValueError("trace times must not decrease")
        self.t = [float(x) for x in times_s]
        self.p = [float(x) for x in power_w]
        self._cum = [0.0]
        for i in range(1, len(self.t)):
            dt = self.t[i] - self.t[i - 1]
            self._cum.append(self._cum[-1] + 0.5 * (self.p[i] + self.p[i - 1]) * dt)

    @staticmethod
    def constant(power_w: float) -> PowerTrace:
        return PowerTrace([0.0], [power_w])

    @staticmethod
    def square(period_s: float, on_w: float, off_w: float, until_s: float,
               start_s: float = 0.0) -> PowerTrace:
        """On for the first half of each period, off for the second (a 1 Hz on/off load)."""
        t, p, now = [start_s], [on_w], start_s
        while now < until_s:
            half = now + period_s / 2
            t += [half, half, now + period_s, now + period_s]
            p += [on_w, off_w, off_w, on_w]
            now += period_s
        return PowerTrace(t, p)

    def power_w(self, t_s: float) -> float:
        i = bisect_right(self.t, t_s) - 1
        if i < 0:
            return self.p[0]
        if i >= len(self.t) - 1:
            return self.p[-1]
        span = self.t[i + 1] - self.t[i]
        return self.p[i] + (self.p[i + 1] - self.p[i]) * (t_s - self.t[i]) / span

    def _cum_at(self, t_s: float) -> float:
        if t_s <= self.t[0]:
            return -(self.t[0] - t_s) * self.p[0]
        i = bisect_right(self.t, t_s) - 1
        if i >= len(self.t) - 1:
            return self._cum[-1] + (t_s - self.t[-1]) * self.p[-1]
        return self._cum[i] + 0.5 * (self.p[i] + self.power_w(t_s)) * (t_s - self.t[i])

    def energy_j(self, start_s: float, end_s: float) -> float:
        return self._cum_at(end_s) - self._cum_at(start_s)


# ---- devices --------------------------------------------------------------------------------


@dataclass
class SimGpu:
    uuid: str
    trace: PowerTrace
    name: str = "NVIDIA H100 80GB HBM3"
    counter_origin_j: float = 4.2e9  # energy since driver load when true time is 0
    refresh_s: float = 0.1  # the counter and the averaged power update this often
    power_avg_s: float = 1.0  # nvmlDeviceGetPowerUsage window; 0 = instantaneous (A100)
    supports_counter: bool = True
    supports_instant: bool = True
    no_permission: bool = False  # the job's cgroup hides it: opening the handle fails
    lost_at_s: float | None = None  # true time it falls off the bus
    reload_at_s: float | None = None  # true time of a driver reload (counter restarts at 0)
    cuda_index: int | None = None  # position in CUDA's default order (None = PCI order)
    mig_slices: tuple[int, ...] = ()  # slices of each MIG instance; () = MIG off

    def _tick(self, t_s: float) -> float:
        """The last refresh at or before t_s (the driver updates its figures every refresh_s)."""
        return math.floor(t_s / self.refresh_s + 1e-9) * self.refresh_s

    def counter_mj(self, t_s: float) -> int:
        q = self._tick(t_s)
        if self.reload_at_s is not None and q >= self.reload_at_s:
            return int(self.trace.energy_j(self.reload_at_s, q) * 1000)
        return int((self.counter_origin_j + self.trace.energy_j(0.0, q)) * 1000)

    def power_usage_mw(self, t_s: float) -> int:
        q = self._tick(t_s)
        if self.power_avg_s <= 0:
            return int(self.trace.power_w(q) * 1000)
        return int(self.trace.energy_j(q - self.power_avg_s, q) / self.power_avg_s * 1000)


@dataclass
class SimRapl:
    package: int
    trace: PowerTrace  # the package
    dram_trace: PowerTrace | None = None
    origin_uj: int = 123_456_789_012
    max_range_uj: int = 262_143_328_850  # what Sapphire Rapids reports (~262 kJ)

    def energy_uj(self, trace: PowerTrace, t_s: float) -> int:
        # RAPL updates about every 1 ms: fine enough to be continuous for a 10 Hz reader.
        return int(self.origin_uj + trace.energy_j(0.0, t_s) * 1e6) % self.max_range_uj


class SimClock:
    """True time. Manual (tests move it with `advance`/`set`) or real (`time.time()`)."""

    def __init__(self, start_s: float = 0.0, realtime: bool = False) -> None:
        self.realtime = realtime
        self._t = start_s
        self._lock = threading.Lock()

    def __call__(self) -> float:
        if self.realtime:
            return time.time()
        with self._lock:
            return self._t

    def advance(self, dt_s: float) -> float:
        with self._lock:
            self._t += dt_s
            return self._t

    def set(self, t_s: float) -> None:
        with self._lock:
            self._t = t_s


# ---- the node -------------------------------------------------------------------------------


@dataclass
class SimNode:
    """GPUs in PCI order (NVML's index order), RAPL packages, and the node's clocks."""

    gpus: list[SimGpu] = field(default_factory=list)
    rapl: list[SimRapl] = field(default_factory=list)
    clock: SimClock = field(default_factory=SimClock)
    wall_base_s: float = 1.7e9  # wall time at true time 0
    mono_base_s: float = 5_000.0  # monotonic time at true time 0 (seconds since boot)
    clock_steps: list[tuple[float, float]] = field(default_factory=list)  # (true t, step s)
    error_rate: float = 0.0  # chance that any NVML call fails with a transient error
    error_codes: tuple[int, ...] = (NVML_ERROR_UNKNOWN, NVML_ERROR_TIMEOUT)
    seed: int = 0
    calls: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._forced: list[int] = []

    # clocks
    def true_s(self) -> float:
        return self.clock()

    def wall(self) -> float:
        t = self.clock()
        if self.clock.realtime:
            return t
        return self.wall_base_s + t + sum(d for at, d in self.clock_steps if t >= at)

    def mono(self) -> float:
        t = self.clock()
        return t if self.clock.realtime else self.mono_base_s + t

    def true_of_mono(self, mono_s: float) -> float:
        return mono_s if self.clock.realtime else mono_s - self.mono_base_s

    # faults
    def fail_next(self, n: int = 1, code: int = NVML_ERROR_UNKNOWN) -> None:
        """The next `n` NVML calls (from any thread) fail with `code`."""
        with self._lock:
            self._forced += [code] * n

    def _maybe_fail(self, call: str) -> None:
        with self._lock:
            self.calls.append(call)
            if self._forced:
                raise NVMLError(self._forced.pop(0))
            if self.error_rate and self._rng.random() < self.error_rate:
                raise NVMLError(self._rng.choice(self.error_codes))

    # ground truth
    def device(self, device_id: str) -> tuple[PowerTrace, SimGpu | None]:
        for g in self.gpus:
            if g.uuid == device_id:
                return g.trace, g
        for r in self.rapl:
            if device_id == f"cpu:package-{r.package}":
                return r.trace, None
            if device_id == f"dram:package-{r.package}" and r.dram_trace is not None:
                return r.dram_trace, None
        raise KeyError(f"no simulated device {device_id!r}")

    def truth_j(self, device_id: str, start_true_s: float, end_true_s: float) -> float:
        """The exact energy a device used over a stretch of true time."""
        trace, _ = self.device(device_id)
        return trace.energy_j(start_true_s, end_true_s)

    def cuda_order(self) -> list[SimGpu]:
        """GPUs in CUDA's default (fastest-first) order: what CUDA index i means."""
        return sorted(self.gpus, key=lambda g: (g.cuda_index is None, g.cuda_index or 0))

    # vendor interfaces
    def pynvml(self) -> types.SimpleNamespace:
        return _pynvml_module(self)

    def write_sysfs(self, root: Path) -> Path:
        """Lay out the powercap tree (names, ranges); `rapl_reader` serves `energy_uj`."""
        for r in self.rapl:
            top = root / f"intel-rapl:{r.package}"
            _domain(top, f"package-{r.package}", r.max_range_uj)
            sub = top / f"intel-rapl:{r.package}:0"
            if r.dram_trace is not None:
                _domain(sub, "dram", r.max_range_uj)
            core = top / f"intel-rapl:{r.package}:1"
            core.mkdir(parents=True, exist_ok=True)
            (core / "name").write_text("core\n")
        return root

    def rapl_reader(self) -> Callable[[Path], str]:
        def read(path: Path) -> str:
            if path.name != "energy_uj":
                return path.read_text().strip()
            domain = path.parent
            top = domain if domain.name.count(":") == 1 else domain.parent
            pkg = next(r for r in self.rapl if top.name == f"intel-rapl:{r.package}")
            dram = domain is not top
            trace = pkg.dram_trace if dram and pkg.dram_trace is not None else pkg.trace
            return str(pkg.energy_uj(trace, self.true_s()))

        return read


def _domain(path: Path, name: str, max_uj: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "name").write_text(f"{name}\n")
    (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
    (path / "energy_uj").write_text("0\n")  # never read: the reader computes it


@dataclass(frozen=True)
class _MigHandle:
    parent: SimGpu
    index: int

    @property
    def uuid(self) -> str:
        return f"MIG-{self.parent.uuid[4:]}-{self.index}"


def _pynvml_module(node: SimNode) -> types.SimpleNamespace:
    state = {"init": 0}

    def gpu(h: Any) -> SimGpu:
        if state["init"] <= 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        g = h.parent if isinstance(h, _MigHandle) else h
        if g.lost_at_s is not None and node.true_s() >= g.lost_at_s:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        return g

    def init() -> None:
        node._maybe_fail("init")
        state["init"] += 1

    def shutdown() -> None:
        state["init"] = max(0, state["init"] - 1)

    def count() -> int:
        node._maybe_fail("count")
        return len(node.gpus)

    def handle(i: int) -> SimGpu:
        node._maybe_fail("handle")
        if not 0 <= i < len(node.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        if node.gpus[i].no_permission:
            raise NVMLError(NVML_ERROR_NO_PERMISSION)
        return node.gpus[i]

    def handle_by_uuid(uuid: bytes | str) -> SimGpu:
        text = uuid.decode() if isinstance(uuid, bytes) else uuid
        for i, g in enumerate(node.gpus):
            if g.uuid == text:
                return handle(i)
        raise NVMLError(NVML_ERROR_NOT_FOUND)

    def uuid_of(h: Any) -> str:
        node._maybe_fail("uuid")
        gpu(h)
        return h.uuid

    def energy(h: Any) -> int:
        node._maybe_fail("energy")
        g = gpu(h)
        if isinstance(h, _MigHandle) or not g.supports_counter:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return g.counter_mj(node.true_s())

    def power(h: Any) -> int:
        node._maybe_fail("power")
        g = gpu(h)
        if isinstance(h, _MigHandle):
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return g.power_usage_mw(node.true_s())

    def fields(h: Any, ids: list[int]) -> list[types.SimpleNamespace]:
        node._maybe_fail("fields")
        g = gpu(h)
        out = []
        for fid in ids:
            ok = fid == NVML_FI_DEV_POWER_INSTANT and g.supports_instant and \
                not isinstance(h, _MigHandle)
            mw = int(g.trace.power_w(node.true_s()) * 1000) if ok else 0
            out.append(types.SimpleNamespace(
                fieldId=fid, nvmlReturn=NVML_SUCCESS if ok else NVML_ERROR_NOT_SUPPORTED,
                valueType=1, value=types.SimpleNamespace(uiVal=mw)))
        return out

    def mig_mode(h: Any) -> tuple[int, int]:
        mode = NVML_DEVICE_MIG_ENABLE if gpu(h).mig_slices else 0
        return (mode, mode)

    def mig_handle(h: Any, i: int) -> _MigHandle:
        g = gpu(h)
        if not 0 <= i < len(g.mig_slices):
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return _MigHandle(g, i)

    def attributes(h: Any) -> types.SimpleNamespace:
        g = gpu(h)
        slices = g.mig_slices[h.index] if isinstance(h, _MigHandle) else MIG_SLICES
        return types.SimpleNamespace(gpuInstanceSliceCount=slices, multiprocessorCount=0)

    return types.SimpleNamespace(
        NVMLError=NVMLError,
        NVML_ERROR_NOT_SUPPORTED=NVML_ERROR_NOT_SUPPORTED,
        NVML_ERROR_NO_PERMISSION=NVML_ERROR_NO_PERMISSION,
        NVML_ERROR_GPU_IS_LOST=NVML_ERROR_GPU_IS_LOST,
        NVML_ERROR_UNKNOWN=NVML_ERROR_UNKNOWN,
        NVML_ERROR_TIMEOUT=NVML_ERROR_TIMEOUT,
        NVML_ERROR_NOT_FOUND=NVML_ERROR_NOT_FOUND,
        NVML_FI_DEV_POWER_INSTANT=NVML_FI_DEV_POWER_INSTANT,
        NVML_DEVICE_MIG_ENABLE=NVML_DEVICE_MIG_ENABLE,
        nvmlInit=init,
        nvmlShutdown=shutdown,
        nvmlDeviceGetCount=count,
        nvmlDeviceGetHandleByIndex=handle,
        nvmlDeviceGetHandleByUUID=handle_by_uuid,
        nvmlDeviceGetUUID=uuid_of,
        nvmlDeviceGetName=lambda h: gpu(h).name,
        nvmlDeviceGetTotalEnergyConsumption=energy,
        nvmlDeviceGetPowerUsage=power,
        nvmlDeviceGetFieldValues=fields,
        nvmlDeviceGetMigMode=mig_mode,
        nvmlDeviceGetMaxMigDeviceCount=lambda h: len(gpu(h).mig_slices),
        nvmlDeviceGetMigDeviceHandleByIndex=mig_handle,
        nvmlDeviceGetDeviceHandleFromMigDeviceHandle=lambda h: h.parent,
        nvmlDeviceIsMigDeviceHandle=lambda h: isinstance(h, _MigHandle),
        nvmlDeviceGetAttributes=attributes,
    )


# ---- node types and the JSON form -----------------------------------------------------------


def gpu_node(n_gpus: int = 8, power_w: float = 300.0, model: str = "h100",
             clock: SimClock | None = None, **kw: Any) -> SimNode:
    """An 8-GPU node as in a p5 / p4d: H100 (1 s averaged power) or A100 (instantaneous),
    CUDA order reversed from PCI order, two CPU packages with DRAM."""
    avg = 1.0 if model == "h100" else 0.0
    name = "NVIDIA H100 80GB HBM3" if model == "h100" else "NVIDIA A100-SXM4-80GB"
    gpus = [SimGpu(f"GPU-{i:08x}-sim0-4000-8000-{i:012x}", PowerTrace.constant(power_w),
                   name=name, power_avg_s=avg, counter_origin_j=1e9 + i * 1.1e9,
                   cuda_index=n_gpus - 1 - i) for i in range(n_gpus)]
    return SimNode(gpus=gpus, rapl=cpu_packages(2), clock=clock or SimClock(), **kw)


def cpu_node(clock: SimClock | None = None, **kw: Any) -> SimNode:
    """A node without any GPU (the CPU head of cluster.yaml): RAPL only."""
    return SimNode(rapl=cpu_packages(2), clock=clock or SimClock(), **kw)


def cpu_packages(n: int, power_w: float = 180.0, dram_w: float = 25.0) -> list[SimRapl]:
    return [SimRapl(k, PowerTrace.constant(power_w), PowerTrace.constant(dram_w),
                    origin_uj=98_765_432_100 + k * 7_000_000_000) for k in range(n)]


def _trace_from(spec: Any) -> PowerTrace:
    if isinstance(spec, (int, float)):
        return PowerTrace.constant(float(spec))
    if isinstance(spec, dict) and "square" in spec:
        s = spec["square"]
        return PowerTrace.square(s["period_s"], s["on_w"], s["off_w"], s["until_s"],
                                 s.get("start_s", 0.0))
    return PowerTrace([float(t) for t, _ in spec], [float(p) for _, p in spec])


def node_from_dict(d: dict) -> SimNode:
    """{"gpus": [{"uuid": .., "power_w": 300 | [[t, w], ..] | {"square": {..}}, ..}],
    "rapl": [{"package": 0, "power_w": .., "dram_w": ..}], "error_rate": 0.0, "seed": 0};
    times are seconds of wall-clock time (the node runs in real time)."""
    gpus = []
    for g in d.get("gpus", []):
        extra = {k: v for k, v in g.items() if k not in ("uuid", "power_w", "mig_slices")}
        gpus.append(SimGpu(g["uuid"], _trace_from(g.get("power_w", 300.0)),
                           mig_slices=tuple(g.get("mig_slices", ())), **extra))
    rapl = [SimRapl(r["package"], _trace_from(r.get("power_w", 150.0)),
                    _trace_from(r["dram_w"]) if "dram_w" in r else None)
            for r in d.get("rapl", [])]
    return SimNode(gpus=gpus, rapl=rapl, clock=SimClock(realtime=True),
                   error_rate=float(d.get("error_rate", 0.0)), seed=int(d.get("seed", 0)))


def load_node(path: str | Path) -> SimNode:
    return node_from_dict(json.loads(Path(path).read_text()))
