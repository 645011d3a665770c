"""Drive raydistill's real sources over a simulated node on a manual clock, as samplers would
(tests and `bench/bench_measurement.py`: every figure compared with the true integral).

    node = gpu_node(1, power_w=500.0)
    run = SimRun(node, tmp_path)
    a = run.sampler("a")                      # NvmlSource + RaplSource over the node
    run.until(10.0, hz=10)                    # poll every sampler at 10 Hz up to true t=10
    run.window("w", 0.5, 9.8)                 # stamped with the node's wall and mono clocks
    row = run.rows("w")[gpu_uuid]; truth = node.truth_j(gpu_uuid, 0.5, 9.8)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from raydistill.energy.ledger import EnergyRow, LedgerState
from raydistill.energy.log import KIND_BATCH, KIND_EVENT
from raydistill.energy.nvml import NvmlSource
from raydistill.energy.rapl import RaplSource
from raydistill.energy.samples import ALL_DEVICES, Reading, SampleBatch, Window
from raydistill.energy.simulate import NVML_ERROR_TIMEOUT, SimNode
from raydistill.errors import SourceUnavailable


@dataclass
class SimSampler:
    sampler_id: str
    sources: list
    readings: list[Reading] = field(default_factory=list)
    seq: int = 0
    alive: bool = True
    idle_w: dict[str, float] = field(default_factory=dict)
    idle_span: tuple[float, float] | None = None

    def poll(self) -> None:
        for src in list(self.sources):
            try:
                self.readings.extend(src.read())
            except SourceUnavailable:
                self.sources.remove(src)


class SimRun:
    def __init__(self, node: SimNode, tmp: Path, node_id: str = "node-1",
                 max_gap_s: float = 2.0) -> None:
        self.node, self.node_id = node, node_id
        self.root = node.write_sysfs(tmp / "powercap") if node.rapl else None
        self.samplers: list[SimSampler] = []
        self.state = LedgerState(max_gap_s=max_gap_s)
        self.records: list[tuple[int, bytes]] = []  # what the durable log would hold

    def apply(self, kind: int, payload: bytes) -> None:
        self.records.append((kind, payload))
        self.state.apply(kind, payload)

    def sampler(self, sampler_id: str, nvml: bool = True, rapl: bool = True,
                idle_s: float = 0.0) -> SimSampler:
        n = self.node
        sources: list = []
        if nvml and n.gpus:
            # as the sampler does: a node whose GPUs are all gone keeps its CPU source
            with contextlib.suppress(SourceUnavailable):
                sources.append(NvmlSource(n.pynvml(), clock=n.wall, mono=n.mono))
        if rapl and self.root is not None:
            sources.append(RaplSource(self.root, reader=n.rapl_reader(), clock=n.wall,
                                      mono=n.mono))
        s = SimSampler(sampler_id, sources)
        self.samplers.append(s)
        if idle_s > 0:
            self._measure_idle(s, idle_s)
        return s

    def _measure_idle(self, s: SimSampler, idle_s: float) -> None:
        """As the sampler does: mean power from two reads idle_s apart, with their span."""
        s.poll()
        first = list(s.readings)
        self.node.clock.advance(idle_s)
        s.poll()
        last = s.readings[len(first):]
        begin = {r.device_id: r for r in first}
        for r in last:
            b = begin.get(r.device_id)
            if b is not None and r.energy_counter_j is not None and b.energy_counter_j:
                step = r.energy_counter_j - b.energy_counter_j
                if b.counter_range_j and step < 0:
                    step += b.counter_range_j
                s.idle_w[r.device_id] = step / (r.t_mono_s - b.t_mono_s)
        s.idle_span = (first[0].t_mono_s, last[-1].t_mono_s)

    def until(self, true_s: float, hz: float = 10.0, only: list[SimSampler] | None = None,
              push_every: int = 20) -> None:
        """Advance the clock to true_s, polling the live samplers every 1/hz."""
        live = [s for s in (only or self.samplers) if s.alive]
        period = 1.0 / hz
        while self.node.true_s() + period <= true_s + 1e-9:
            self.node.clock.advance(period)
            for s in live:
                s.poll()
                if len(s.readings) >= push_every:
                    self.push(s)
        self.node.clock.set(true_s)

    def fault(self, kind: str, at_s: float) -> None:
        """Inject one fault now: `kill` the oldest live sampler (with none alive, start one),
        `start` a replacement (the live ones die), `overlap` a second live sampler, `errors`
        (three NVML timeouts), `lose` the first GPU at `at_s`."""
        live = [s for s in self.samplers if s.alive]
        if kind == "kill" and live:
            live[0].alive = False
            self.push(live[0])
        elif kind in ("start", "overlap", "kill"):
            if kind == "start":
                for s in live:
                    s.alive = False
            self.sampler(f"s{len(self.samplers)}")
        elif kind == "errors":
            self.node.fail_next(3, NVML_ERROR_TIMEOUT)
        elif kind == "lose":
            self.node.gpus[0].lost_at_s = at_s
        else:
            raise ValueError(f"unknown fault {kind!r}; valid: kill, start, overlap, errors, lose")

    def push(self, s: SimSampler) -> None:
        if s.readings:
            self.apply(KIND_BATCH, SampleBatch.from_readings(
                s.sampler_id, s.seq, self.node_id, s.readings, s.idle_w, s.idle_span).to_bytes())
            s.seq += 1
            s.readings = []

    def push_all(self) -> None:
        for s in self.samplers:
            self.push(s)

    def at(self, true_s: float) -> tuple[float, float]:
        """(wall, mono) of the node at a true time, without moving the clock."""
        now = self.node.true_s()
        self.node.clock.set(true_s)
        out = (self.node.wall(), self.node.mono())
        self.node.clock.set(now)
        return out

    def window(self, wid: str, start_true: float, end_true: float | None,
               devices: tuple[str, ...] = ALL_DEVICES, mono: bool = True) -> None:
        w0, m0 = self.at(start_true)
        w = Window(wid, "trial", "stage", self.node_id, devices, w0,
                   t_start_mono_s=m0 if mono else None)
        self.apply(KIND_EVENT, LedgerState.open_event(w))
        if end_true is not None:
            w1, m1 = self.at(end_true)
            self.apply(KIND_EVENT, LedgerState.close_event(wid, w1, 0, None,
                                                           m1 if mono else None))

    def rows(self, wid: str) -> dict[str, EnergyRow]:
        self.push_all()
        return {r.device_id: r for r in self.state.energy_rows() if r.window_id == wid}
