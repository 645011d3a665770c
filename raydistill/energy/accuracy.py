"""The stated error of an energy figure, from how and on what it was measured (pure: no numpy).

Every energy row says how it was measured (`method` in a ledger row, `energy_method` in the
results table: counter | sampled | modelled | estimated | replayed | interpolated | unmeasured,
"+"-joined when a figure mixes several). Each method maps to an error *class* (`CLASSES`): a
relative error, where it comes from, whether a published source backs it or it is our
judgement, and the sensor's refresh period. A row's stated error (`row_error_j`) is its class's
relative error plus an edge term that grows as the window shrinks towards the sensor's refresh
period, times the row's energy, plus the bound on energy nobody measured (`unmeasured_max_j`).
A stage's stated error is the sum of its rows' (one device's counter and another's estimate
each carry their own class); a figure whose rows are gone (an old results table) falls back to
`stated_error_j`: the worst class of its methods for all of it.

Stated errors are bounds on a bias of the meter, so they add linearly over the figures of one
sum (the same meter errs the same way in each) and do not shrink when a figure is repeated.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

NVML_REF = ("NVML API reference, nvmlDeviceGetPowerUsage: 'On Fermi and Kepler GPUs the "
            "reading is accurate to within +/- 5% of current power draw'")
YANG_SC24 = ("Yang, Adamek & Armour, 'Accurate and Convenient Energy Measurements for GPUs: A "
             "Detailed Study of NVIDIA GPU's Built-In Power Sensor', SC24 (arXiv 2312.02741): on "
             "A100 and H100 the sensor samples 25 ms of every 100 ms (25% of the runtime), so "
             "short or bursty windows carry more error")
SCHOENE_2021 = ("Schöne et al. 2021, 'Energy efficiency aspects of the AMD Zen 2 "
                "architecture' (IEEE CLUSTER): AMD's RAPL energy is modelled from activity, not "
                "measured")
NEWKIRK_2025 = ("Newkirk et al. 2025 (arXiv 2506.14551): TDP-based estimates are 27-37% off on "
                "8xH100 training")


@dataclass(frozen=True)
class ErrorClass:
    """How far a figure of one kind may be from the energy drawn: a stated, not measured, bound.

    `relative` is the fraction of the figure on long windows; `refresh_s` the sensor's update
    (or averaging) period and `coverage` the share of each period it actually measures. Each
    window edge may misplace up to one period's energy, and a part-time sensor (coverage < 1)
    sees only `coverage` of it, so a window of T seconds adds 2 × refresh_s / (coverage × T).
    `judgement` is True where no published figure gives the number; `source` then says why the
    number is what it is."""

    name: str
    relative: float
    source: str
    judgement: bool
    refresh_s: float = 0.0
    coverage: float = 1.0

    def relative_for(self, duration_s: float) -> float:
        """Relative error of a window of `duration_s`: the class's plus its edge term."""
        if self.refresh_s <= 0 or not duration_s > 0 or not math.isfinite(duration_s):
            return self.relative
        return self.relative + 2.0 * self.refresh_s / (self.coverage * duration_s)


_CLASSES = (
    # The board's own sensor through NVML's energy counter (Volta and newer), which updates
    # about every 100 ms. NVIDIA states ±5% only for Fermi/Kepler boards; no vendor figure
    # exists for newer ones, so carrying 5% over is our judgement.
    ErrorClass("counter", 0.05, f"{NVML_REF}; carried to newer boards as a judgement (no vendor "
               "figure since Kepler); counter update ~100 ms", True, refresh_s=0.1),
    # A100/H100: the same counter, fed by a sensor that sees 25% of each 100 ms period (Yang et
    # al.). Their corrections cut the error by 35% on average (65% at most) against a meter:
    # improvements, not absolute errors, so the base stays the 5% judgement; the 25% coverage
    # scales the edge term (short windows). H200/GH200/B200 are judged alike: no published
    # validation against a meter was found.
    ErrorClass("counter-part-time", 0.05, f"{YANG_SC24}; base 5% from the {NVML_REF} as a "
               "judgement; H200/GH200/B200 judged alike (no published meter validation)", True,
               refresh_s=0.1, coverage=0.25),
    # Intel RAPL package/DRAM counters (updated about every 1 ms, Intel SDM vol. 3B, RAPL
    # interfaces): validations find them close to a meter on Haswell and later, but they give
    # no bound we could cite for every part; 5% is a judgement.
    ErrorClass("counter-rapl", 0.05, "judgement: Intel RAPL counters (update ~1 ms, Intel SDM "
               "vol. 3B) track a meter closely on Haswell and later; no citable bound for all "
               "parts", True, refresh_s=0.001),
    # AMD's RAPL is a model of the cores' activity: it reads like a counter but measures
    # nothing (Schöne et al.). 20% is a judgement between a sensor and a TDP estimate.
    ErrorClass("modelled", 0.20, f"{SCHOENE_2021}; 20% is a judgement between a sensor and a "
               "TDP estimate", True, refresh_s=0.001),
    # Power polled here and integrated: the sensor's 5% plus the integration of a power that
    # Ampere and newer boards (but GA100) already average over 1 s (NVML reference): 10% is a
    # judgement; each edge may be smeared by the 1 s average.
    ErrorClass("sampled", 0.10, "judgement: the sensor's 5% plus integrating a 1 s average "
               "(NVML reference: nvmlDeviceGetPowerUsage averages over 1 s on Ampere and newer, "
               "but GA100)", True, refresh_s=1.0),
    # A recorded trace played back: as good as its recording, sampled power at best.
    ErrorClass("replayed", 0.10, "judgement: a trace is as good as its recording (sampled "
               "power at best), stated as sampled", True),
    # Power held across an edge or a gap: the power may have swung anywhere in between; the
    # table keeps no split of how much was held, so 20% of the whole figure.
    ErrorClass("interpolated", 0.20, "judgement: power held across a gap may have swung "
               "anywhere; applied to a row's held share of its time (held_s), to all of it "
               "where a window edge cuts a long counter segment", True),
    # No sensor: TDP × utilisation, a power the user asserts, or a MIG slice's share.
    ErrorClass("estimated", 0.50, f"judgement backed by {NEWKIRK_2025}; 50% keeps a margin over "
               "them", True),
    # Nothing measured: the figure holds none of that energy; its bound is `unmeasured_max_j`.
    ErrorClass("unmeasured", 0.0, "nothing measured: the figure holds 0 J of it and its bound "
               "(unmeasured seconds x peak power) is added instead", False),
)
CLASSES: dict[str, ErrorClass] = {c.name: c for c in _CLASSES}
# A method this table does not know (a newer ledger, a table without its method column): the
# worst stated error, so an unknown figure is never taken for a precise one.
UNKNOWN = ErrorClass("unknown", max(c.relative for c in _CLASSES),
                     "judgement: an unknown method gets the worst stated error", True)
UNKNOWN_RELATIVE_ERROR = UNKNOWN.relative

# Relative error per method on long windows: the fallback for figures without their rows.
STATED_RELATIVE_ERROR: dict[str, float] = {
    m: CLASSES[m].relative for m in ("counter", "sampled", "modelled", "replayed",
                                     "interpolated", "estimated", "unmeasured")}

# A100 and H100 (Yang et al.), and the later boards judged alike; an unknown GPU model too,
# since the part-time class is the more cautious one.
_PART_TIME = re.compile(r"A100|H100|H200|GH200|B200|B100", re.IGNORECASE)
_HOST_KINDS = frozenset({"cpu", "dram"})


def methods_of(method: object) -> list[str]:
    """The methods a "+"-joined label names ("counter+interpolated" → both); empty if none."""
    if not isinstance(method, str) or not method.strip():
        return []
    return [m for m in method.split("+") if m]


def error_class(method: str, device_kind: str = "", device_model: str = "") -> ErrorClass:
    """The class of one method on one device: a counter's depends on what it counts."""
    if method == "counter":
        if device_kind in _HOST_KINDS:
            return CLASSES["counter-rapl"]
        if device_kind == "gpu" and device_model and not _PART_TIME.search(device_model):
            return CLASSES["counter"]
        if device_kind == "gpu":
            return CLASSES["counter-part-time"]
        return CLASSES["counter"]
    return CLASSES.get(method, UNKNOWN)


def error_source(method: object, device_kind: str = "", device_model: str = "") -> str:
    """Where each class of `method` comes from ("; "-joined for a mixed label), for reports."""
    names = methods_of(method) or ["unknown"]
    classes = [error_class(m, device_kind, device_model) for m in names]
    return "; ".join(f"{c.name} ±{c.relative:.0%}: {c.source}" for c in classes)


def relative_error(method: object) -> float:
    """Stated relative error of a figure produced by `method` on long windows: the worst of a
    mixed label's methods; UNKNOWN_RELATIVE_ERROR for a missing or unknown label."""
    names = methods_of(method)
    if not names:
        return UNKNOWN_RELATIVE_ERROR
    return max(STATED_RELATIVE_ERROR.get(m, UNKNOWN_RELATIVE_ERROR) for m in names)


def _bound(unmeasured_max_j: object) -> float:
    ok = isinstance(unmeasured_max_j, (int, float)) and math.isfinite(unmeasured_max_j)
    return max(0.0, float(unmeasured_max_j)) if ok else 0.0  # type: ignore[arg-type]


def stated_error_j(energy_j: float, method: object, unmeasured_max_j: float = 0.0) -> float:
    """Absolute stated error (J) of one figure by its method alone (a figure without its rows):
    the method's relative error × |energy_j|, plus the bound on energy nobody measured (it may
    be anywhere from 0 to that bound)."""
    return relative_error(method) * abs(float(energy_j)) + _bound(unmeasured_max_j)


def row_error_j(energy_j: float, method: object, device_kind: str, duration_s: float,
                unmeasured_max_j: float = 0.0, device_model: str = "", held_s: float = 0.0,
                edge_cut: bool = True) -> float:
    """Absolute stated error (J) of one ledger row: one window on one device, plus the
    unmeasured bound. The worst class of the row's methods on that device, at the row's window
    length, × |energy_j|; except that where "interpolated" comes only from power held over
    `held_s` seconds (no window edge cutting a long counter segment: `edge_cut` False), the
    interpolated class weighs that share of the window's time and the measured classes the
    rest (time share for energy share: the held power is the power read beside it)."""
    names = methods_of(method)
    classes = [error_class(m, device_kind, device_model) for m in names] or [UNKNOWN]
    rel = max(c.relative_for(duration_s) for c in classes)
    measured = [error_class(m, device_kind, device_model) for m in names
                if m != "interpolated"]
    if "interpolated" in names and measured and not edge_cut and duration_s > 0 \
            and held_s > 0:
        held = min(1.0, held_s / duration_s)
        rel_measured = max(c.relative_for(duration_s) for c in measured)
        rel_held = error_class("interpolated", device_kind, device_model).relative_for(
            duration_s)
        rel = (1.0 - held) * rel_measured + held * rel_held
    return rel * abs(float(energy_j)) + _bound(unmeasured_max_j)


def summed_error_j(figures: Iterable[tuple[float, object, float]]) -> float:
    """Stated error (J) of a sum of figures (energy_j, method, unmeasured_max_j): their errors
    add linearly, as one meter's bias errs the same way in every part."""
    return sum(stated_error_j(e, m, u) for e, m, u in figures)


# ---- peak power of a GPU, for the bound on energy nobody measured ----------------------------

@dataclass(frozen=True)
class BoardPower:
    pattern: str  # matched against NVML's name ("NVIDIA H100 80GB HBM3"), case-insensitive
    peak_w: float  # the board's maximum power limit (TDP / TBP) from its datasheet
    source: str


# First match wins: the specific variants (PCIe, NVL, GH200) come before their family.
BOARD_POWER = (
    BoardPower(r"GH200", 1000.0, "NVIDIA GH200 datasheet: module 450-1000 W configurable"),
    BoardPower(r"B200", 1000.0, "NVIDIA HGX B200 datasheet: up to 1000 W per GPU"),
    BoardPower(r"H200.*NVL", 600.0, "NVIDIA H200 datasheet: H200 NVL up to 600 W"),
    BoardPower(r"H200", 700.0, "NVIDIA H200 datasheet: H200 SXM up to 700 W"),
    BoardPower(r"H100.*NVL", 400.0, "NVIDIA H100 datasheet: H100 NVL 350-400 W"),
    BoardPower(r"H100.*PCI", 350.0, "NVIDIA H100 datasheet: H100 PCIe 300-350 W"),
    BoardPower(r"H100", 700.0, "NVIDIA H100 datasheet: H100 SXM up to 700 W"),
    BoardPower(r"A100.*PCI", 300.0, "NVIDIA A100 datasheet: A100 PCIe 250 W (40GB) / 300 W "
               "(80GB)"),
    BoardPower(r"A100", 400.0, "NVIDIA A100 datasheet: A100 SXM 400 W"),
    BoardPower(r"L40S", 350.0, "NVIDIA L40S datasheet: 350 W"),
    BoardPower(r"\bL40\b", 300.0, "NVIDIA L40 datasheet: 300 W"),
    BoardPower(r"\bL4\b", 72.0, "NVIDIA L4 datasheet: 72 W"),
    BoardPower(r"\bA10\b", 150.0, "NVIDIA A10 datasheet: 150 W"),
    BoardPower(r"V100.*PCI", 250.0, "NVIDIA V100 datasheet: V100 PCIe 250 W"),
    BoardPower(r"V100", 300.0, "NVIDIA V100 datasheet: V100 SXM2 300 W"),
    BoardPower(r"\bT4\b", 70.0, "NVIDIA T4 datasheet: 70 W"),
)
# A GPU whose model is unknown (no sampler saw it): the largest board power in the table, so
# its bound is never below what it could have drawn. A stated default, not a measurement.
UNKNOWN_GPU_PEAK_W = max(b.peak_w for b in BOARD_POWER)


def board_power(device_model: str) -> BoardPower | None:
    """The datasheet power limit of a GPU model by its NVML name; None if not in the table."""
    if not device_model:
        return None
    return next((b for b in BOARD_POWER if re.search(b.pattern, device_model, re.IGNORECASE)),
                None)


def unmeasured_peak_w(device_kind: str, device_model: str, peak_seen_w: float | None) -> float:
    """The power that bounds a device's unmeasured seconds.

    A GPU of a known model: its board limit, or the peak seen if higher (a gap may be the busy
    part while the samples saw idle, so the peak seen alone is no bound). A GPU no sampler saw
    (`peak_seen_w` None): its board limit, else UNKNOWN_GPU_PEAK_W. Otherwise (a GPU of an
    unknown model that was sampled, e.g. a log from before models were recorded, or a host
    device): the peak seen, as before."""
    seen = peak_seen_w if peak_seen_w is not None and math.isfinite(peak_seen_w) else None
    board = board_power(device_model) if device_kind in ("gpu", "mig") else None
    if board is not None:
        return max(board.peak_w, seen or 0.0)
    if seen is None:
        return UNKNOWN_GPU_PEAK_W if device_kind in ("gpu", "mig") else 0.0
    return seen
