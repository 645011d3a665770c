"""NVIDIA GPUs through NVML: the energy counter first, power as the fallback.

`nvmlDeviceGetTotalEnergyConsumption` (mJ since driver load, Volta and newer, updated about
every 100 ms) is preferred. Where it is not supported, or fails mid-run, a GPU falls back to the
instantaneous power field (`NVML_FI_DEV_POWER_INSTANT`), then to `nvmlDeviceGetPowerUsage`
(mW, a ~1 s moving average on Ampere and newer). Every reading names the path that made it.
GPUs are keyed by UUID: Ray's GPU ids follow CUDA order, NVML indexes by PCI bus.
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

FI_DEV_POWER_INSTANT = 186  # pynvml.NVML_FI_DEV_POWER_INSTANT
PATHS = ("nvml-counter", "nvml-power-instant", "nvml-power")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def visible_filter(uuids: list[str], environ: Mapping[str, str]) -> list[int]:
    """Indices (NVML order) of the GPUs CUDA_VISIBLE_DEVICES lets this process see."""
    spec = environ.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return list(range(len(uuids)))
    chosen: list[int] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item.isdigit():
            if int(item) < len(uuids):
                chosen.append(int(item))
            continue
        matches = [i for i, u in enumerate(uuids) if u.startswith(item)]
        chosen.extend(matches[:1])
    return chosen


class NvmlSource:
    name = "nvml"

    def __init__(self, pynvml_module: Any = None, visible_only: bool = False,
                 environ: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if pynvml_module is None:
            try:
                import pynvml as pynvml_module  # type: ignore[no-redef]
            except ImportError as exc:
                raise SourceUnavailable(
                    f"NVML not available: {exc}; pip install nvidia-ml-py, or use "
                    "--source cpu-estimate") from None
        self.nv = pynvml_module
        self.clock = clock
        try:
            self.nv.nvmlInit()
            count = self.nv.nvmlDeviceGetCount()
            handles = [self.nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            uuids = [_text(self.nv.nvmlDeviceGetUUID(h)) for h in handles]
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            raise SourceUnavailable(
                f"NVML not available: {exc}; install nvidia-ml-py and an NVIDIA driver, or use "
                "--source cpu-estimate") from None
        keep = visible_filter(uuids, environ if environ is not None else os.environ) \
            if visible_only else list(range(len(uuids)))
        if not keep:
            raise SourceUnavailable("NVML sees no GPU (CUDA_VISIBLE_DEVICES hides them all)")
        self.gpus = [(uuids[i], handles[i]) for i in keep]
        # per GPU: index into PATHS of the best path that still works
        self.path = {u: 0 for u, _ in self.gpus}

    def _read_one(self, uuid: str, handle: Any) -> Reading:
        while True:
            path = PATHS[self.path[uuid]]
            try:
                return self._read_path(uuid, handle, path)
            except self.nv.NVMLError as exc:
                if self.path[uuid] + 1 >= len(PATHS):
                    raise SourceUnavailable(
                        f"GPU {uuid}: no NVML power reading works: {exc}") from None
                self.path[uuid] += 1
                log.warning("GPU %s: %s failed (%s); falling back to %s", uuid, path, exc,
                            PATHS[self.path[uuid]])

    def _read_path(self, uuid: str, handle: Any, path: str) -> Reading:
        now = self.clock()
        if path == "nvml-counter":
            energy_j = self.nv.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0  # mJ → J
            try:
                power_w = self.nv.nvmlDeviceGetPowerUsage(handle) / 1000.0  # mW → W
            except self.nv.NVMLError:
                power_w = None
            return Reading(uuid, "gpu", now, power_w, energy_j, path, "counter")
        if path == "nvml-power-instant":
            (field,) = self.nv.nvmlDeviceGetFieldValues(handle, [FI_DEV_POWER_INSTANT])
            if field.nvmlReturn != 0:
                raise self.nv.NVMLError(field.nvmlReturn)
            return Reading(uuid, "gpu", now, field.value.uiVal / 1000.0, None, path, "sampled")
        power_w = self.nv.nvmlDeviceGetPowerUsage(handle) / 1000.0
        return Reading(uuid, "gpu", now, power_w, None, path, "sampled")

    def read(self) -> list[Reading]:
        return [self._read_one(u, h) for u, h in self.gpus]

    def describe(self) -> str:
        paths = sorted({PATHS[i] for i in self.path.values()})
        return f"nvml ({len(self.gpus)} GPU(s), {'/'.join(paths)})"

    def close(self) -> None:
        with contextlib.suppress(Exception):  # twice, or after a lost driver: harmless
            self.nv.nvmlShutdown()
