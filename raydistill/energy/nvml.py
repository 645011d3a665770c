"""NVIDIA GPUs through NVML: the energy counter first, power as the fallback.

`nvmlDeviceGetTotalEnergyConsumption` (mJ since driver load, Volta and newer, updated about
every 100 ms) is preferred. Where it is not supported, or fails mid-run, a GPU falls back to the
instantaneous power field (`NVML_FI_DEV_POWER_INSTANT`), then to `nvmlDeviceGetPowerUsage`
(mW, a ~1 s moving average on Ampere and newer). Every reading names the path that made it, and
a GPU on which no path works any more (lost, fallen off the bus) is dropped with an error in the
log: its samples stop, so the integrator flags the gap instead of seeing stale values.

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


class NvmlSource:
    """One Reading per GPU per read(); device_id is the GPU's UUID ("GPU-…")."""

    name = "nvml"

    def __init__(self, pynvml_module: Any = None, visible_only: bool = False,
                 environ: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.nv = pynvml_module if pynvml_module is not None else _import_pynvml()
        self.clock = clock
        self.instant_field = getattr(self.nv, "NVML_FI_DEV_POWER_INSTANT", FI_DEV_POWER_INSTANT)
        try:
            self.nv.nvmlInit()
            count = self.nv.nvmlDeviceGetCount()
            handles = [self.nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            uuids = [_text(self.nv.nvmlDeviceGetUUID(h)) for h in handles]
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            raise SourceUnavailable(
                f"NVML not available: {exc}; install nvidia-ml-py and an NVIDIA driver, or use "
                "--source cpu-estimate") from None
        if not uuids:
            raise SourceUnavailable("NVML sees no GPU on this node; use --source cpu-estimate")
        env = environ if environ is not None else os.environ
        keep = visible_filter(uuids, env) if visible_only else list(range(len(uuids)))
        if not keep:
            raise SourceUnavailable("NVML sees no GPU (CUDA_VISIBLE_DEVICES hides them all)")
        self.gpus: dict[str, Any] = {uuids[i]: handles[i] for i in keep}
        self.path = {u: 0 for u in self.gpus}  # per GPU: index into PATHS of the working path
        self.last_counter_j: dict[str, float] = {}

    def read(self) -> list[Reading]:
        out = []
        for uuid, handle in list(self.gpus.items()):
            reading = self._read_one(uuid, handle)
            if reading is not None:
                out.append(reading)
        if not self.gpus:
            raise SourceUnavailable("NVML: every GPU failed (lost or driver gone); see the log")
        return out

    def _read_one(self, uuid: str, handle: Any) -> Reading | None:
        while True:
            path = PATHS[self.path[uuid]]
            try:
                return self._read_path(uuid, handle, path)
            except (self.nv.NVMLError, AttributeError) as exc:  # AttributeError: old pynvml
                if self.path[uuid] + 1 >= len(PATHS):
                    log.error("GPU %s: no NVML reading works any more (%s); dropping it, its "
                              "energy from now on is missing (flagged as a gap)", uuid, exc)
                    del self.gpus[uuid], self.path[uuid]
                    return None
                self.path[uuid] += 1
                log.warning("GPU %s: %s failed (%s); falling back to %s", uuid, path, exc,
                            PATHS[self.path[uuid]])

    def _read_path(self, uuid: str, handle: Any, path: str) -> Reading:
        now = self.clock()
        if path == "nvml-counter":
            energy_j = self.nv.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0  # mJ → J
            self._check_reset(uuid, energy_j)
            try:
                power_w: float | None = self.nv.nvmlDeviceGetPowerUsage(handle) / 1000.0  # mW
            except self.nv.NVMLError:
                power_w = None
            return Reading(uuid, "gpu", now, power_w, energy_j, path, "counter")
        if path == "nvml-power-instant":
            (field,) = self.nv.nvmlDeviceGetFieldValues(handle, [self.instant_field])
            if field.nvmlReturn != 0:
                raise self.nv.NVMLError(field.nvmlReturn)
            return Reading(uuid, "gpu", now, _field_value(field) / 1000.0, None, path,
                           "sampled")  # mW → W
        power_w = self.nv.nvmlDeviceGetPowerUsage(handle) / 1000.0  # mW → W
        return Reading(uuid, "gpu", now, power_w, None, path, "sampled")

    def _check_reset(self, uuid: str, energy_j: float) -> None:
        last = self.last_counter_j.get(uuid)
        if last is not None and energy_j < last:  # driver reload: the integrator counts it
            log.warning("GPU %s: energy counter went back from %.3f J to %.3f J (reset)", uuid,
                        last, energy_j)
        self.last_counter_j[uuid] = energy_j

    def describe(self) -> str:
        paths = sorted({PATHS[i] for i in self.path.values()})
        return f"nvml ({len(self.gpus)} GPU(s), {'/'.join(paths) or 'none left'})"

    def close(self) -> None:
        with contextlib.suppress(Exception):  # twice, or after a lost driver: harmless
            self.nv.nvmlShutdown()


def _import_pynvml() -> Any:
    try:
        import pynvml
    except ImportError as exc:
        raise SourceUnavailable(f"NVML not available: {exc}; pip install nvidia-ml-py, or use "
                                "--source cpu-estimate") from None
    return pynvml
