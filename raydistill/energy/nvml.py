"""NVIDIA GPUs through NVML: the energy counter first, power as the fallback.

`nvmlDeviceGetTotalEnergyConsumption` (mJ since driver load, Volta and newer, updated about
every 100 ms) is preferred. Where it is not supported, a GPU falls back to the instantaneous
power field (`NVML_FI_DEV_POWER_INSTANT`), then to `nvmlDeviceGetPowerUsage` (mW, a ~1 s moving
average on Hopper). A transient error (Unknown, Timeout) skips one reading and changes nothing
else: one glitch must not turn a counter into 1 s-averaged power for the rest of the run. Every
reading names the path that made it, and a GPU that is lost (GPU_IS_LOST) is dropped with an
error in the log: its samples stop, and the ledger reports the rest as unmeasured.

GPUs are keyed by UUID: Ray's GPU ids follow CUDA order, NVML indexes by PCI bus. Selecting by
index through CUDA_VISIBLE_DEVICES is only right when CUDA_DEVICE_ORDER=PCI_BUS_ID (or all GPUs
are alike); UUIDs are always right.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from raydistill.energy.samples import Reading
from raydistill.errors import SourceUnavailable

log = logging.getLogger(__name__)

FI_DEV_POWER_INSTANT = 186  # pynvml.NVML_FI_DEV_POWER_INSTANT, for pynvml builds without it
PATHS = ("nvml-counter", "nvml-power-instant", "nvml-power")
# c_nvmlValue_t member for each NVML_VALUE_TYPE_* (0 double, 1 uint, 2 ulong, 3 ull, 4 sll, ...)
_VALUE_MEMBER = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def visible_filter(uuids: list[str], environ: Mapping[str, str]) -> list[int]:
    """Indices (NVML order) of the GPUs CUDA_VISIBLE_DEVICES lets this process see.

    Entries are indices, UUIDs or unique UUID prefixes; as in CUDA, the list ends at the first
    entry that names no GPU (so "" and "-1" hide every GPU), and a repeated GPU counts once.
    """
    spec = environ.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return list(range(len(uuids)))
    chosen: list[int] = []
    for item in (s.strip() for s in spec.split(",")):
        if item.isdigit():
            matches = [int(item)] if int(item) < len(uuids) else []
        else:
            matches = [i for i, u in enumerate(uuids) if item and u.startswith(item)]
        if len(matches) != 1:
            if item:
                log.warning("CUDA_VISIBLE_DEVICES entry %r names no single GPU: the list "
                            "ends there", item)
            break
        if matches[0] not in chosen:
            chosen.append(matches[0])
    return chosen


def _field_value(field: Any) -> float:
    member = _VALUE_MEMBER[int(getattr(field, "valueType", 1)) % len(_VALUE_MEMBER)]
    return float(getattr(field.value, member))


# Errors that say a path will never work on this GPU (fall back to the next one); GPU_IS_LOST
# drops the GPU; anything else (Unknown, Timeout, ...) is transient: skip this poll, keep the path.
NOT_SUPPORTED, NO_PERMISSION, FUNCTION_NOT_FOUND, GPU_IS_LOST = 3, 4, 13, 15
PERMANENT = frozenset({NOT_SUPPORTED, FUNCTION_NOT_FOUND})
MIG_SLICES = 7  # compute slices of an A100 / H100 GPU


def _code(exc: Exception) -> int | None:
    return getattr(exc, "value", None)


class NvmlSource:
    """One Reading per GPU per read(); device_id is the GPU's UUID ("GPU-…").

    A GPU whose handle cannot be opened (NO_PERMISSION: a cgroup-limited job sees every GPU of
    the node but may open only its own) is skipped and named in the log; the others are read.
    """

    name = "nvml"

    def __init__(self, pynvml_module: Any = None, visible_only: bool = False,
                 environ: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.nv = pynvml_module if pynvml_module is not None else _import_pynvml()
        self.clock, self.mono = clock, mono
        self.instant_field = getattr(self.nv, "NVML_FI_DEV_POWER_INSTANT", FI_DEV_POWER_INSTANT)
        try:
            self.nv.nvmlInit()
            count = self.nv.nvmlDeviceGetCount()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            raise SourceUnavailable(
                f"NVML not available: {exc}; install nvidia-ml-py and an NVIDIA driver, or use "
                "--source cpu-estimate") from None
        handles, uuids, self.skipped = self._open(count)
        if not uuids:
            why = f" ({'; '.join(self.skipped)})" if self.skipped else ""
            raise SourceUnavailable(f"NVML sees no GPU it may read on this node{why}; use "
                                    "--source cpu-estimate, or check the job's GPU cgroup")
        env = environ if environ is not None else os.environ
        keep = visible_filter(uuids, env) if visible_only else list(range(len(uuids)))
        if not keep:
            raise SourceUnavailable("NVML sees no GPU (CUDA_VISIBLE_DEVICES hides them all)")
        self.gpus: dict[str, Any] = {uuids[i]: handles[i] for i in keep}
        self.path = {u: 0 for u in self.gpus}  # per GPU: index into PATHS of the working path
        self.transient_errors = {u: 0 for u in self.gpus}
        self.lost: list[str] = []
        self.mig = {u: self._mig_instances(u, h) for u, h in self.gpus.items()}
        self.models = {u: self._model(h) for u, h in self.gpus.items()}

    def _model(self, handle: Any) -> str:
        """NVML's name of the board ("NVIDIA H100 80GB HBM3"): it picks the stated error's
        class and the peak power of unmeasured seconds; "" where NVML cannot tell."""
        try:
            return _text(self.nv.nvmlDeviceGetName(handle))
        except (self.nv.NVMLError, AttributeError):
            return ""

    def _open(self, count: int) -> tuple[list[Any], list[str], list[str]]:
        """Open each GPU on its own: one that refuses is skipped, not the whole node."""
        handles, uuids, skipped = [], [], []
        for i in range(count):
            for attempt in range(3):  # an open can fail transiently too
                try:
                    handle = self.nv.nvmlDeviceGetHandleByIndex(i)
                    uuid = _text(self.nv.nvmlDeviceGetUUID(handle))
                except self.nv.NVMLError as exc:
                    if _code(exc) in (NO_PERMISSION, GPU_IS_LOST, NOT_SUPPORTED) or attempt == 2:
                        skipped.append(f"GPU index {i}: {exc}")
                        break
                    continue
                handles.append(handle)
                uuids.append(uuid)
                break
        if skipped:
            log.warning("nvml: %d of %d GPUs on this node cannot be opened and are not "
                        "measured: %s", len(skipped), count, "; ".join(skipped))
        return handles, uuids, skipped

    def _mig_instances(self, uuid: str, handle: Any) -> list[tuple[str, float]]:
        """(MIG UUID, share of the GPU) of each MIG instance; [] when MIG is off.

        NVML meters only the whole GPU (energy and power on a MIG handle are NOT_SUPPORTED), so
        an instance is charged its share of the GPU's compute slices: an attribution, labelled
        `estimated` with source `nvml-mig-slice-share`, never a measurement of the instance."""
        try:
            current, _ = self.nv.nvmlDeviceGetMigMode(handle)
            if current != getattr(self.nv, "NVML_DEVICE_MIG_ENABLE", 1):
                return []
            count = self.nv.nvmlDeviceGetMaxMigDeviceCount(handle)
        except (self.nv.NVMLError, AttributeError):
            return []  # no MIG on this GPU or this pynvml
        out = []
        for i in range(count):
            try:
                mig = self.nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, i)
                slices = self.nv.nvmlDeviceGetAttributes(mig).gpuInstanceSliceCount
                out.append((_text(self.nv.nvmlDeviceGetUUID(mig)), slices / MIG_SLICES))
            except self.nv.NVMLError:
                continue  # an empty slot
        if out:
            log.info("GPU %s: MIG on, %d instances charged by slice share (%s)", uuid, len(out),
                     ", ".join(f"{m} {sh:.2f}" for m, sh in out))
        return out

    def read(self) -> list[Reading]:
        out = []
        for uuid, handle in list(self.gpus.items()):
            reading = self._read_one(uuid, handle)
            if reading is not None:
                out.append(reading)
                out.extend(_mig_share(reading, self.mig.get(uuid, [])))
        if not self.gpus:
            raise SourceUnavailable("NVML: every GPU failed (lost or driver gone); see the log")
        return out

    def _read_one(self, uuid: str, handle: Any) -> Reading | None:
        while True:
            path = PATHS[self.path[uuid]]
            try:
                return self._read_path(uuid, handle, path)
            except AttributeError as exc:  # an old pynvml without the call: never works
                if not self._fall_back(uuid, path, exc):
                    return None
            except self.nv.NVMLError as exc:
                code = _code(exc)
                if code == GPU_IS_LOST:
                    log.error("GPU %s is lost (%s); dropping it: its energy from now on is "
                              "unmeasured", uuid, exc)
                    self._drop(uuid)
                    return None
                if code in PERMANENT:
                    if not self._fall_back(uuid, path, exc):
                        return None
                    continue
                self.transient_errors[uuid] += 1  # skip this poll; the path stays
                level = logging.WARNING if self.transient_errors[uuid] == 1 else logging.DEBUG
                log.log(level, "GPU %s: transient NVML error on %s (%s); reading skipped "
                        "(%d so far)", uuid, path, exc, self.transient_errors[uuid])
                return None

    def _fall_back(self, uuid: str, path: str, exc: Exception) -> bool:
        if self.path[uuid] + 1 >= len(PATHS):
            log.error("GPU %s: no NVML reading works on it (%s); dropping it, its energy from "
                      "now on is unmeasured", uuid, exc)
            self._drop(uuid)
            return False
        self.path[uuid] += 1
        log.warning("GPU %s: %s is not supported (%s); falling back to %s", uuid, path, exc,
                    PATHS[self.path[uuid]])
        return True

    def _drop(self, uuid: str) -> None:
        del self.gpus[uuid], self.path[uuid]
        self.lost.append(uuid)

    def _read_path(self, uuid: str, handle: Any, path: str) -> Reading:
        now, mono = self.clock(), self.mono()
        if path == "nvml-counter":
            energy_j = self.nv.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0  # mJ → J
            try:
                power_w: float | None = self.nv.nvmlDeviceGetPowerUsage(handle) / 1000.0  # mW
            except self.nv.NVMLError:
                power_w = None
            return Reading(uuid, "gpu", now, power_w, energy_j, path, "counter", mono,
                           model=self.models.get(uuid, ""))
        if path == "nvml-power-instant":
            (field,) = self.nv.nvmlDeviceGetFieldValues(handle, [self.instant_field])
            if field.nvmlReturn != 0:
                raise self.nv.NVMLError(field.nvmlReturn)
            return Reading(uuid, "gpu", now, _field_value(field) / 1000.0, None, path,
                           "sampled", mono, model=self.models.get(uuid, ""))  # mW → W
        power_w = self.nv.nvmlDeviceGetPowerUsage(handle) / 1000.0  # mW → W
        return Reading(uuid, "gpu", now, power_w, None, path, "sampled", mono,
                       model=self.models.get(uuid, ""))

    def describe(self) -> str:
        paths = sorted({PATHS[i] for i in self.path.values()})
        extra = f", {len(self.skipped)} not readable" if self.skipped else ""
        return f"nvml ({len(self.gpus)} GPU(s), {'/'.join(paths) or 'none left'}{extra})"

    def close(self) -> None:
        with contextlib.suppress(Exception):  # twice, or after a lost driver: harmless
            self.nv.nvmlShutdown()


def _mig_share(parent: Reading, instances: list[tuple[str, float]]) -> list[Reading]:
    def part(x: float | None, share: float) -> float | None:
        return None if x is None else x * share

    return [Reading(mig, "mig", parent.t_wall_s, part(parent.power_w, share),
                    part(parent.energy_counter_j, share), "nvml-mig-slice-share", "estimated",
                    parent.t_mono_s) for mig, share in instances]


def _import_pynvml() -> Any:
    try:
        import pynvml
    except ImportError as exc:
        raise SourceUnavailable(f"NVML not available: {exc}; pip install nvidia-ml-py, or use "
                                "--source cpu-estimate") from None
    return pynvml
