"""The stated error of an energy figure, from the method that produced it (pure: no numpy).

Every energy row says how it was measured (`method` in a ledger row, `energy_method` in the
results table: counter | sampled | estimated | replayed | interpolated | unmeasured, "+"-joined
when a figure mixes several). Each method gets a *stated* relative error below: a conservative,
documented assumption of how far the figure may be from the energy drawn, not something this
run measured. A figure that mixes methods takes the worst of them. Energy nobody measured is
not in `energy_j` at all; its bound (`unmeasured_max_j`) is added to the error instead.

Stated errors are bounds on a bias of the meter, so they add linearly over the figures of one
sum (the same meter errs the same way in each) and do not shrink when a figure is repeated.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

# Relative error stated per method (fraction of the figure), with where each comes from.
STATED_RELATIVE_ERROR: dict[str, float] = {
    # NVML's energy counter integrates the board's own power sensor; NVIDIA documents power
    # readings accurate to ±5% of the draw (nvmlDeviceGetPowerUsage) and nvidia-smi to ±5 W.
    # RAPL-type counters (CPU package, DRAM) are within a few % of a wall meter in published
    # validations. 5% covers both at the loads a training step draws.
    "counter": 0.05,
    # Power sampled and integrated here: the sensor's ±5%, plus the integration error of
    # sampling at ~10 Hz a power that newer boards already average over 1 s (NVML's note on
    # Ampere and later): a window of a few seconds can miss or smear its edges. Stated 10%.
    "sampled": 0.10,
    # A recorded trace played back: exact to the trace, but a trace is as good as its
    # recording, which is sampled power at best. Stated as sampled.
    "replayed": 0.10,
    # Part of the window's power was held across an edge or a gap between samples: the power
    # may have swung anywhere in between. Stated 20% of the whole figure, as the results table
    # keeps no split of how much was held.
    "interpolated": 0.20,
    # No sensor: TDP × utilisation, a constant power the user asserts, or a MIG slice's share
    # of its parent's counter. Such models are off by tens of percent; stated ±50%.
    "estimated": 0.50,
    # Nothing measured: the figure holds none of that energy (0 J) and its bound is carried in
    # `unmeasured_max_j`, added by `stated_error_j`; no relative error on top.
    "unmeasured": 0.0,
}

# A method this table does not know (a newer ledger, a table without its method column): the
# worst stated error, so an unknown figure is never taken for a precise one.
UNKNOWN_RELATIVE_ERROR = max(STATED_RELATIVE_ERROR.values())


def methods_of(method: object) -> list[str]:
    """The methods a "+"-joined label names ("counter+interpolated" → both); empty if none."""
    if not isinstance(method, str) or not method.strip():
        return []
    return [m for m in method.split("+") if m]


def relative_error(method: object) -> float:
    """Stated relative error of a figure produced by `method`: the worst of a mixed label's
    methods; UNKNOWN_RELATIVE_ERROR for a missing or unknown label."""
    names = methods_of(method)
    if not names:
        return UNKNOWN_RELATIVE_ERROR
    return max(STATED_RELATIVE_ERROR.get(m, UNKNOWN_RELATIVE_ERROR) for m in names)


def stated_error_j(energy_j: float, method: object, unmeasured_max_j: float = 0.0) -> float:
    """Absolute stated error (J) of one figure: its method's relative error × |energy_j|, plus
    the bound on energy nobody measured (it may be anywhere from 0 to that bound)."""
    bound = unmeasured_max_j if isinstance(unmeasured_max_j, (int, float)) and \
        math.isfinite(unmeasured_max_j) else 0.0
    return relative_error(method) * abs(float(energy_j)) + max(0.0, float(bound))


def summed_error_j(figures: Iterable[tuple[float, object, float]]) -> float:
    """Stated error (J) of a sum of figures (energy_j, method, unmeasured_max_j): their errors
    add linearly, as one meter's bias errs the same way in every part."""
    return sum(stated_error_j(e, m, u) for e, m, u in figures)
