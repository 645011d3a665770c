"""Fakes that behave like the vendor interfaces: pynvml (mJ, mW) and a powercap sysfs tree.

    gpus = [FakeGpu("GPU-a", counter_mj=5_000), FakeGpu("GPU-old", supports_counter=False)]
    nv = make_fake_pynvml(gpus)          # pass as NvmlSource(pynvml_module=nv)
    gpus[0].counter_mj += 1_000          # the GPU used 1 J
    gpus[0].lost = True                  # every call on it now raises GPU_IS_LOST
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import Path

NOT_SUPPORTED, GPU_IS_LOST, UNKNOWN = 3, 15, 999
FI_DEV_POWER_INSTANT = 186
VALUE_TYPE_UNSIGNED_INT = 1


class NVMLError(Exception):
    """Like pynvml.NVMLError: constructed from an error code, kept in `.value`."""

    def __init__(self, value: int = UNKNOWN):
        super().__init__(f"NVML error {value}")
        self.value = value


@dataclass
class FakeGpu:
    uuid: str
    counter_mj: int = 0
    power_mw: int = 100_000
    supports_counter: bool = True  # False: a pre-Volta GPU (counter NOT_SUPPORTED)
    supports_instant: bool = True  # False: the instant power field reports NOT_SUPPORTED
    counter_error: int | None = None  # an NVML error code the counter call raises
    lost: bool = False  # every call raises GPU_IS_LOST

    def reset_counter(self, to_mj: int = 0) -> None:
        """What a driver reload does to the energy counter."""
        self.counter_mj = to_mj


def make_fake_pynvml(gpus: list[FakeGpu], init_error: Exception | None = None):
    """A module-like object with the pynvml calls raydistill uses, over `gpus`."""
    calls: list[str] = []

    def check(gpu: FakeGpu) -> None:
        if gpu.lost:
            raise NVMLError(GPU_IS_LOST)

    def init():
        calls.append("init")
        if init_error is not None:
            raise init_error

    def energy(h):
        check(h)
        if not h.supports_counter:
            raise NVMLError(NOT_SUPPORTED)
        if h.counter_error is not None:
            raise NVMLError(h.counter_error)
        return h.counter_mj

    def power(h):
        check(h)
        return h.power_mw

    def fields(h, ids):
        check(h)
        ret = 0 if h.supports_instant else NOT_SUPPORTED
        return [types.SimpleNamespace(fieldId=i, nvmlReturn=ret,
                                      valueType=VALUE_TYPE_UNSIGNED_INT,
                                      value=types.SimpleNamespace(uiVal=h.power_mw))
                for i in ids]

    return types.SimpleNamespace(
        NVMLError=NVMLError,
        NVML_ERROR_NOT_SUPPORTED=NOT_SUPPORTED,
        NVML_ERROR_GPU_IS_LOST=GPU_IS_LOST,
        NVML_FI_DEV_POWER_INSTANT=FI_DEV_POWER_INSTANT,
        calls=calls,
        nvmlInit=init,
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetCount=lambda: len(gpus),
        nvmlDeviceGetHandleByIndex=lambda i: gpus[i],
        nvmlDeviceGetUUID=lambda h: h.uuid.encode(),
        nvmlDeviceGetTotalEnergyConsumption=energy,
        nvmlDeviceGetPowerUsage=power,
        nvmlDeviceGetFieldValues=fields,
    )


def make_rapl_tree(root: Path, packages: int = 1, dram: bool = True,
                   max_uj: int = 262_143_328_850, psys: bool = False) -> Path:
    """intel-rapl:N (package-N) with an intel-rapl:N:0 dram subdomain; psys adds a platform
    domain after the packages, as some laptops have."""

    def domain(path: Path, name: str) -> None:
        path.mkdir(parents=True)
        (path / "name").write_text(f"{name}\n")
        (path / "energy_uj").write_text("0\n")
        (path / "max_energy_range_uj").write_text(f"{max_uj}\n")

    for n in range(packages):
        domain(root / f"intel-rapl:{n}", f"package-{n}")
        (root / f"intel-rapl:{n}" / f"intel-rapl:{n}:1").mkdir()  # core: no counter we use
        (root / f"intel-rapl:{n}" / f"intel-rapl:{n}:1" / "name").write_text("core\n")
        if dram:
            domain(root / f"intel-rapl:{n}" / f"intel-rapl:{n}:0", "dram")
    if psys:
        domain(root / f"intel-rapl:{packages}", "psys")
    return root
