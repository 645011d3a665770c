"""CPU package and DRAM energy from RAPL counters in powercap sysfs (µJ), wrap-aware.

Layout: `/sys/class/powercap/intel-rapl:N` is a top-level domain whose `name` file says
`package-K` (AMD Zen exposes its counters under the same names) or `psys` (the whole platform on
some laptops: skipped, it would count the package twice); `intel-rapl:N:M` subdomains named
`dram` hold the memory's counter. `energy_uj` wraps to 0 after `max_energy_range_uj`; each domain
is reported as read (µJ → J), with its range: the counter is absolute, so two samplers on one
node (an old one and its replacement) report one series, and the source keeps no state that two
threads could race on. The ledger unwraps it; a wrap is seen between two reads, so reads must
come more often than one wrap period (minutes even at full power).

On AMD (and Hygon, Zen-derived) CPUs the same files hold a *model* of the cores' activity, not a
measurement (Schöne et al. 2021, "Energy efficiency aspects of the AMD Zen 2 architecture"):
their readings are labelled method "modelled", whose stated error is its own class
(raydistill.energy.accuracy), never a counter's.
"""

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
        self.range_j = self.max_uj / 1e6

    def read_j(self) -> float:
        return int(self.reader(self.path / "energy_uj")) / 1e6  # µJ → J, absolute


def _read_text(path: Path) -> str:
    return path.read_text().strip()


# vendor_id of CPUs whose RAPL energy is modelled from activity rather than measured
MODELLED_VENDORS = frozenset({"AuthenticAMD", "HygonGenuine"})


SYSFS_POWERCAP = "/sys/class/powercap"


def rapl_method(cpuinfo: str | Path | None = "/proc/cpuinfo") -> str:
    """"modelled" on a CPU whose RAPL is a model (AMD, Hygon), else "counter". No or an
    unreadable cpuinfo keeps "counter": the powercap tree is Intel's own layout."""
    if cpuinfo is None:
        return "counter"
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id":
                    return "modelled" if value.strip() in MODELLED_VENDORS else "counter"
    except OSError:
        pass
    return "counter"


class RaplSource:
    """Readings "cpu:package-K" (kind cpu) and "dram:package-K" (kind dram), method counter
    (Intel) or modelled (AMD, Hygon: see `rapl_method`)."""

    name = "rapl"

    def __init__(self, root: str | Path = SYSFS_POWERCAP,
                 reader: Callable[[Path], str] = _read_text,
                 clock: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic,
                 cpuinfo: str | Path | None = None) -> None:
        self.clock, self.mono = clock, mono
        # The vendor of the host the tree belongs to: this host's for the real sysfs tree; a
        # tree elsewhere (a simulated node, a test) is Intel's unless `cpuinfo` names its host's.
        if cpuinfo is None and Path(root) == Path(SYSFS_POWERCAP):
            cpuinfo = "/proc/cpuinfo"
        self.method = rapl_method(cpuinfo)
        base = Path(root)
        tops = sorted(p for p in base.glob("intel-rapl:*") if p.name.count(":") == 1)
        if not tops:
            raise SourceUnavailable(f"no RAPL domains under {base} (not an x86 host, or a "
                                    "container without powercap); use --source cpu-estimate")
        try:
            self.domains = self._find_domains(tops, reader)
            self.read()  # the first read sets the counters' origin; fails early if unreadable
        except PermissionError:
            raise SourceUnavailable(f"RAPL counters under {base} are not readable. {HINT}") \
                from None
        except (OSError, ValueError) as exc:
            raise SourceUnavailable(f"RAPL unreadable under {base}: {exc}; use --source "
                                    "cpu-estimate") from None
        log.info("rapl: %s", ", ".join(d.device_id for d in self.domains))

    @staticmethod
    def _find_domains(tops: list[Path], reader: Callable[[Path], str]) -> list[_Domain]:
        domains: list[_Domain] = []
        for top in tops:
            name = reader(top / "name")
            if not name.startswith("package-"):
                log.info("rapl: skipping %s (%s): not a CPU package", top.name, name)
                continue
            k = name.removeprefix("package-")
            domains.append(_Domain(top, f"cpu:package-{k}", "cpu", reader))
            for sub in sorted(top.glob(f"{top.name}:*")):
                if reader(sub / "name") == "dram":
                    domains.append(_Domain(sub, f"dram:package-{k}", "dram", reader))
        if not domains:
            raise ValueError("no package domain (only psys or unknown ones)")
        return domains

    def read(self) -> list[Reading]:
        now, mono = self.clock(), self.mono()
        try:
            return [Reading(d.device_id, d.kind, now, None, d.read_j(), "rapl", self.method,
                            mono, d.range_j) for d in self.domains]
        except PermissionError:
            raise SourceUnavailable(f"RAPL permission lost. {HINT}") from None
        except (OSError, ValueError) as exc:
            raise SourceUnavailable(f"RAPL read failed: {exc}") from None

    def describe(self) -> str:
        modelled = ", modelled by the CPU, not measured" if self.method == "modelled" else ""
        return f"rapl ({', '.join(d.device_id for d in self.domains)}{modelled})"

    def close(self) -> None:
        pass
