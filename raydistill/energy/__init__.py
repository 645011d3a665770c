"""The pure energy core: samples, integration, ledger logic, durable log, footprint.

No Ray, no torch. Sources turn vendor units into SI at the edge; everything here is in
joules, watts and seconds.
"""

from raydistill.energy.ledger import EnergyRow, LedgerState
from raydistill.energy.samples import ALL_DEVICES, DeviceInfo, Reading, SampleBatch, Window
from raydistill.energy.timeline import DeviceTimeline

__all__ = [
    "ALL_DEVICES",
    "DeviceInfo",
    "DeviceTimeline",
    "EnergyRow",
    "LedgerState",
    "Reading",
    "SampleBatch",
    "Window",
]
