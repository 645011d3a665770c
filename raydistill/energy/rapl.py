"""Intel/AMD RAPL through powercap sysfs: package and DRAM energy counters (µJ), wrap-aware."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from raydistill.energy.samples import Reading
from raydistill.errors import SourceUnavailable

log = logging.getLogger(__name__)

HINT = ("RAPL is readable by root only since Linux 5.10: run `sudo chmod a+r "
        "/sys/class/powercap/intel-rapl:*/energy_uj`, or use --source cpu-estimate")


class _Domain:
    def __init__(self, path: Path, device_id: str, kind: str, reader: Callable[[Path], str]):
        self.path, self.device_id, self.kind, self.reader = path, device_id, kind, reader
        self.max_uj = int(reader(path / "max_energy_range_uj"))
        self.last_uj: int | None = None
        self.total_uj = 0  # monotonic across wraps

    def read_j(self) -> float:
        now = int(self.reader(self.path / "energy_uj"))
        if self.last_uj is not None:
            step = now - self.last_uj
            if step < 0:  # the counter wrapped at max_energy_range_uj
                step += self.max_uj
            self.total_uj += step
        self.last_uj = now
        return self.total_uj / 1e6  # µJ → J


def _read_text(path: Path) -> str:
    return path.read_text().strip()


class RaplSource:
    name = "rapl"

    def __init__(self, root: str | Path = "/sys/class/powercap",
                 reader: Callable[[Path], str] = _read_text,
                 clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        base = Path(root)
        packages = sorted(p for p in base.glob("intel-rapl:*") if p.name.count(":") == 1)
        if not packages:
            raise SourceUnavailable(f"no RAPL domains under {base}; use --source cpu-estimate")
        self.domains: list[_Domain] = []
        try:
            for pkg in packages:
                n = pkg.name.split(":")[1]
                self.domains.append(_Domain(pkg, f"cpu:package-{n}", "cpu", reader))
                for sub in sorted(pkg.glob(f"intel-rapl:{n}:*")):
                    if reader(sub / "name") == "dram":
                        self.domains.append(_Domain(sub, f"dram:package-{n}", "dram", reader))
            self.read()  # first read sets the counters' origin; fails early if unreadable
        except PermissionError:
            raise SourceUnavailable(f"RAPL counters under {base} are not readable. {HINT}") \
                from None
        except (OSError, ValueError) as exc:
            raise SourceUnavailable(f"RAPL unreadable under {base}: {exc}") from None

    def read(self) -> list[Reading]:
        now = self.clock()
        try:
            return [Reading(d.device_id, d.kind, now, None, d.read_j(), "rapl", "counter")
                    for d in self.domains]
        except PermissionError:
            raise SourceUnavailable(f"RAPL permission lost. {HINT}") from None

    def describe(self) -> str:
        return f"rapl ({', '.join(d.device_id for d in self.domains)})"

    def close(self) -> None:
        pass
