"""Feed readings into a LedgerState as samplers would, and read a window's rows back."""

from __future__ import annotations

from raydistill.energy.ledger import EnergyRow, LedgerState
from raydistill.energy.samples import ALL_DEVICES, Reading, SampleBatch, Window


def feed(state: LedgerState, sampler_id: str, readings: list[Reading], node: str = "node-1",
         per_batch: int = 50, idle_power_w: dict[str, float] | None = None,
         idle_span_s: tuple[float, float] | None = None, first_seq: int = 0) -> None:
    for k in range(0, len(readings), per_batch):
        state.ingest(SampleBatch.from_readings(
            sampler_id, first_seq + k // per_batch, node, readings[k:k + per_batch],
            idle_power_w, idle_span_s))


def window(state: LedgerState, wid: str, start: float, end: float | None,
           devices: tuple[str, ...] = ALL_DEVICES, node: str = "node-1",
           start_mono: float | None = None, end_mono: float | None = None,
           trial: str = "t", stage: str = "s") -> None:
    w = Window(wid, trial, stage, node, devices, start, t_start_mono_s=start_mono)
    state.apply_event({"type": "window_open", **w.__dict__})
    if end is not None:
        ev = {"type": "window_close", "window_id": wid, "t_end_s": end, "tokens": 0,
              "cpu_time_s": None}
        if end_mono is not None:
            ev["t_end_mono_s"] = end_mono
        state.apply_event(ev)


def rows_of(state: LedgerState, wid: str) -> dict[str, EnergyRow]:
    return {r.device_id: r for r in state.energy_rows() if r.window_id == wid}
