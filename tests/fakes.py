"""Fakes that behave like the vendor interfaces: pynvml (mJ, mW) and a powercap sysfs tree."""

from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import Path

NOT_SUPPORTED, GPU_IS_LOST = 3, 15


class NVMLError(Exception):
    def __init__(self, value: int = 999):
        super().__init__(f"NVML error {value}")
        self.value = value


@dataclass
class FakeGpu:
    uuid: str
    counter_mj: int = 0
    power_mw: int = 100_000
    supports_counter: bool = True
    supports_instant: bool = True
    lost: bool = False


def make_fake_pynvml(gpus: list[FakeGpu], init_error: Exception | None = None):
    """A module-like object with the pynvml calls raydistill uses, over `gpus`."""

    def check(gpu: FakeGpu) -> None:
        if gpu.lost:
            raise NVMLError(GPU_IS_LOST)

    def init():
        if init_error is not None:
            raise init_error

    def energy(h):
        check(h)
        if not h.supports_counter:
            raise NVMLError(NOT_SUPPORTED)
        return h.counter_mj

    def power(h):
        check(h)
        return h.power_mw

    def fields(h, ids):
        check(h)
        ret = 0 if h.supports_instant else NOT_SUPPORTED
        return [types.SimpleNamespace(nvmlReturn=ret, value=types.SimpleNamespace(uiVal=h.power_mw))
                for _ in ids]

    return types.SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=init,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: len(gpus),
        nvmlDeviceGetHandleByIndex=lambda i: gpus[i],
        nvmlDeviceGetUUID=lambda h: h.uuid.encode(),
        nvmlDeviceGetTotalEnergyConsumption=energy,
        nvmlDeviceGetPowerUsage=power,
        nvmlDeviceGetFieldValues=fields,
    )


def make_rapl_tree(root: Path, packages: int = 1, dram: bool = True,
                   max_uj: int = 262_143_328_850) -> Path:
    for n in range(packages):
        pkg = root / f"intel-rapl:{n}"
        pkg.mkdir(parents=True)
        (pkg / "name").write_text(f"package-{n}\n")
        (pkg / "energy_uj").write_text("0\n")
        (pkg / "max_energy_range_uj").write_text(f"{max_uj}\n")
        if dram:
            sub = pkg / f"intel-rapl:{n}:0"
            sub.mkdir()
            (sub / "name").write_text("dram\n")
            (sub / "energy_uj").write_text("0\n")
            (sub / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return root
