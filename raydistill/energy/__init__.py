"""The pure energy core: samples, integration, ledger logic, durable log, footprint.

No Ray, no torch. Sources turn vendor units into SI at the edge; everything here is in
joules, watts and seconds.
"""

from raydistill.energy.integrate import (
    CumulativeEnergy,
    EnergyEstimate,
    counter_energy_j,
    integrate_energy_j,
    unwrap_counter,
)
from raydistill.energy.ledger import EnergyRow, LedgerState
from raydistill.energy.samples import ALL_DEVICES, DeviceInfo, Reading, SampleBatch, Window

__all__ = [
    "ALL_DEVICES",
    "CumulativeEnergy",
    "DeviceInfo",
    "EnergyEstimate",
    "EnergyRow",
    "LedgerState",
    "Reading",
    "SampleBatch",
    "Window",
    "counter_energy_j",
    "integrate_energy_j",
    "unwrap_counter",
]
