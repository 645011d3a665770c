"""Ledger logic: what the EnergyLedger actor knows, as plain state (no Ray).

- Sample batches are ingested once per `(sampler_id, batch_seq)`: a resent batch is a no-op.
- Windows are opened and closed by the code doing the work; times come from the node's clocks.
  The ledger integrates on the node's monotonic clock where samples and windows carry it (NTP
  steps the wall clock, never the monotonic one), else on its wall clock.
- A window's energy per device comes from every sampler that read the device on that node,
  each sampler's readings a sequence of its own, merged so that nothing counts twice
  (`timeline.py`). What no sampler measured is reported as unmeasured seconds, never as joules.
- A device claimed by several windows at once (a node's CPU package shared by two trials) is
  split interval by interval in proportion to each window's CPU-time rate, and marked shared.
- Above-idle energy subtracts the idle baseline valid for each stretch: one measured while no
  window held the device (a sampler that restarts under load measures no idle).

Every mutation is an `apply(kind, payload)` of a log record, so replaying the durable log
rebuilds exactly the same state.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from itertools import pairwise

import numpy as np

from raydistill.energy.log import KIND_BATCH, KIND_EVENT, event_payload
from raydistill.energy.samples import SHARED_KINDS, DeviceInfo, SampleBatch, Window
from raydistill.energy.timeline import (
    HELD,
    DeviceTimeline,
    Sequence,
    bridge,
    merge,
    sequence_segments,
    with_holds,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_GAP_S = 2.0
DEFAULT_MAX_HOLD_S = 0.5
UNMEASURED = "unmeasured"


@dataclass(frozen=True)
class EnergyRow:
    """One window's energy on one device, with how it was obtained."""

    window_id: str
    trial_id: str
    stage: str
    node_id: str
    device_id: str
    device_kind: str
    t_start_s: float  # wall clock, for display
    t_end_s: float
    duration_s: float  # on the node's monotonic clock where it has one
    tokens: int
    energy_j: float  # measured (counter / sampled / estimated / replayed, + held edges)
    idle_j: float
    above_idle_j: float
    method: str  # counter | sampled | estimated | replayed | interpolated ("+"-joined if mixed)
    sources: str  # the sources whose samples were used
    shared: bool  # split with other windows on the node
    share: float  # fraction of the device's energy over the window charged here
    n_samples: int
    gap_s: float  # seconds spanned by counter segments longer than max_gap_s (measured)
    n_gaps: int
    counter_resets: int
    open: bool  # window not closed yet: t_end_s is the latest sample time
    unmeasured_s: float = 0.0  # seconds of the window no sample measured: not in energy_j
    unmeasured_max_j: float = 0.0  # bound on their energy: unmeasured_s × peak power seen
    held_s: float = 0.0  # seconds at the edges of measured stretches filled by holding power
    interpolated: bool = False  # fewer than 2 samples inside: the figure is interpolation
    final: bool = False  # closed and measured past its end: the figure will not change


@dataclass
class _Chunk:
    seq: int
    t_wall: np.ndarray
    t_mono: np.ndarray | None
    p: np.ndarray
    e: np.ndarray
    info: list[DeviceInfo]  # per reading


@dataclass
class _Baseline:
    sampler_id: str
    t_from: float
    t_to: float
    idle_w: float


@dataclass
class _Series:
    infos: set[DeviceInfo] = field(default_factory=set)
    chunks: dict[str, list[_Chunk]] = field(default_factory=lambda: defaultdict(list))
    baselines: dict[str, _Baseline] = field(default_factory=dict)  # sampler_id -> its baseline


class LedgerState:
    def __init__(self, max_gap_s: float = DEFAULT_MAX_GAP_S,
                 max_hold_s: float = DEFAULT_MAX_HOLD_S) -> None:
        if not max_gap_s > 0:
            raise ValueError(f"max_gap_s must be > 0, got {max_gap_s}")
        self.max_gap_s = max_gap_s
        self.max_hold_s = max_hold_s
        self.seen: set[tuple[str, int]] = set()
        self.windows: dict[str, Window] = {}
        self.samplers: dict[str, dict] = {}  # sampler_id -> {node_id, started_s, retired_s}
        self.n_samples = 0
        self.duplicates = 0
        self.warnings: list[str] = []
        self._series: dict[tuple[str, str], _Series] = {}
        self._timelines: dict[tuple[str, str], DeviceTimeline] = {}
        self._latest_t_s: dict[str, float] = {}  # node_id -> latest sample wall time
        self._latest_tl: dict[str, float] = {}  # node_id -> latest sample on its timeline
        self._wall_only: set[str] = set()  # nodes with samples that carry no monotonic time
        self._offsets: dict[str, list[tuple[float, float]]] = defaultdict(list)  # (wall, mono)
        self._methods: list[str] = []
        # Accepted batches not yet parsed into series: ingestion only checks the key and keeps
        # the bytes; queries parse (rare, and once per batch).
        self._unparsed: list[bytes] = []

    # ---- mutations (each one a log record) -------------------------------------------------
    def apply(self, kind: int, payload: bytes) -> bool:
        if kind == KIND_BATCH:
            return self.ingest_bytes(payload)
        if kind == KIND_EVENT:
            self.apply_event(json.loads(payload))
            return True
        raise ValueError(f"unknown record kind {kind}")

    def ingest(self, batch: SampleBatch) -> bool:
        """Add a batch; False (and nothing changed) if its key was ingested before."""
        return self.ingest_bytes(batch.to_bytes())

    def ingest_bytes(self, payload: bytes) -> bool:
        key, n = SampleBatch.peek(payload)
        if key in self.seen:
            self.duplicates += 1
            return False
        self.seen.add(key)
        self.n_samples += n
        self._unparsed.append(payload)
        return True

    def _parse_pending(self) -> None:
        pending, self._unparsed = self._unparsed, []
        for payload in pending:
            self._add(SampleBatch.from_bytes(payload))

    @property
    def latest_t_s(self) -> dict[str, float]:
        self._parse_pending()
        return self._latest_t_s

    def _add(self, batch: SampleBatch) -> None:
        node = batch.node_id
        mono = batch.t_mono_s
        if mono is None or (len(batch) and np.isnan(mono).any()):
            self._wall_only.add(node)
            mono = None
        for i, info in enumerate(batch.devices):
            sel = batch.device_idx == i
            key = (node, info.device_id)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series()
            series.infos.add(info)
            n = int(sel.sum())
            series.chunks[batch.sampler_id].append(_Chunk(
                batch.batch_seq, batch.t_wall_s[sel], None if mono is None else mono[sel],
                batch.power_w[sel], batch.energy_counter_j[sel], [info] * n))
            self._timelines.pop(key, None)
            idle = batch.idle_power_w.get(info.device_id)
            if idle is not None and batch.sampler_id not in series.baselines:
                span = batch.idle_span_s
                if span is None:  # logs from before spans: measured as the sampler began
                    t0 = float((mono if mono is not None else batch.t_wall_s)[sel].min()) \
                        if n else 0.0
                    span = (t0, t0)
                series.baselines[batch.sampler_id] = _Baseline(
                    batch.sampler_id, float(span[0]), float(span[1]), float(idle))
        if len(batch):
            prev = self._latest_t_s.get(node, -math.inf)
            self._latest_t_s[node] = max(prev, float(batch.t_wall_s.max()))
            tl = mono if mono is not None else batch.t_wall_s
            self._latest_tl[node] = max(self._latest_tl.get(node, -math.inf), float(tl.max()))
            if mono is not None:
                self._offsets[node].append((float(batch.t_wall_s[-1]), float(mono[-1])))

    def apply_event(self, ev: dict) -> None:
        kind = ev["type"]
        if kind == "window_open":
            w = Window(**{k: v for k, v in ev.items() if k != "type"})
            self.windows[w.window_id] = replace(w, devices=tuple(w.devices))
        elif kind == "window_close":
            w = self.windows.get(ev["window_id"])
            if w is None:
                raise KeyError(f"window {ev['window_id']!r} was never opened")
            self.windows[w.window_id] = replace(
                w, t_end_s=ev["t_end_s"], tokens=ev["tokens"], cpu_time_s=ev.get("cpu_time_s"),
                t_end_mono_s=ev.get("t_end_mono_s"),
            )
        elif kind == "sampler_start":
            self.samplers[ev["sampler_id"]] = {
                "node_id": ev["node_id"], "started_s": ev["t_s"], "retired_s": None
            }
        elif kind == "sampler_retire" and ev["sampler_id"] in self.samplers:
            self.samplers[ev["sampler_id"]]["retired_s"] = ev["t_s"]
        # unknown event types are ignored so that newer logs stay readable by this version

    # ---- events as records (the actor writes these before applying them) -------------------
    @staticmethod
    def open_event(w: Window) -> bytes:
        return event_payload({"type": "window_open", **asdict(w)})

    @staticmethod
    def close_event(window_id: str, t_end_s: float, tokens: int, cpu_time_s: float | None,
                    t_end_mono_s: float | None = None) -> bytes:
        ev = {"type": "window_close", "window_id": window_id, "t_end_s": t_end_s,
              "tokens": int(tokens), "cpu_time_s": cpu_time_s}
        if t_end_mono_s is not None:
            ev["t_end_mono_s"] = t_end_mono_s
        return event_payload(ev)

    # ---- queries -----------------------------------------------------------------------------
    def uses_mono(self, node_id: str) -> bool:
        self._parse_pending()
        return node_id not in self._wall_only and bool(self._offsets.get(node_id))

    def to_timeline(self, node_id: str, wall_s: float, mono_s: float | None) -> float:
        """A time on the node's timeline: its monotonic clock where every sample has one."""
        if not self.uses_mono(node_id):
            return wall_s
        if mono_s is not None:
            return mono_s
        pairs = self._offsets[node_id]  # a window recorded without monotonic time
        wall, mono = min(pairs, key=lambda p: abs(p[0] - wall_s))
        return wall_s - wall + mono

    def to_wall(self, node_id: str, t_s: float) -> float:
        if not self.uses_mono(node_id):
            return t_s
        wall, mono = min(self._offsets[node_id], key=lambda p: abs(p[1] - t_s))
        return t_s - mono + wall

    def timeline(self, node_id: str, device_id: str) -> DeviceTimeline:
        self._parse_pending()
        key = (node_id, device_id)
        cached = self._timelines.get(key)
        if cached is None:
            cached = self._timelines[key] = self._build_timeline(node_id, device_id)
        return cached

    def _code(self, method: str) -> int:
        if method not in self._methods:
            self._methods.append(method)
        return self._methods.index(method)

    def _build_timeline(self, node_id: str, device_id: str) -> DeviceTimeline:
        series = self._series[(node_id, device_id)]
        mono = self.uses_mono(node_id)
        seqs = []
        for sampler_id, chunks in series.chunks.items():
            chunks = sorted(chunks, key=lambda c: c.seq)  # read order: batches, then rows
            t = np.concatenate([c.t_mono if mono and c.t_mono is not None else c.t_wall
                                for c in chunks])
            infos = [i for c in chunks for i in c.info]
            counter_m = np.array([self._code(i.method) for i in infos], dtype=np.int64)
            power_m = np.array([self._code("sampled" if i.method == "counter" else i.method)
                                for i in infos], dtype=np.int64)
            ranges = {i.counter_range_j for i in infos}
            seqs.append((float(t.min()) if t.size else math.inf, sampler_id, Sequence(
                t, np.concatenate([c.p for c in chunks]), np.concatenate([c.e for c in chunks]),
                counter_m, power_m, next(iter(ranges)) if len(ranges) == 1 else None,
                self._idle_at(node_id, device_id, series, t))))
        seqs.sort(key=lambda x: (x[0], x[1]))  # the sampler that began first wins overlaps
        parts = [sequence_segments(seq, self.max_gap_s) for _, _, seq in seqs]
        merged = bridge(merge(parts), [seq for _, _, seq in seqs], self.max_gap_s)
        pieces = with_holds(merged, self.max_hold_s)
        all_t = np.concatenate([seq.t_s for _, _, seq in seqs])
        return DeviceTimeline(pieces, all_t)

    def _idle_at(self, node_id: str, device_id: str, series: _Series,
                 t: np.ndarray) -> np.ndarray:
        """Idle power valid at each time: the latest baseline measured before it (the earliest
        one for times before any), counting only baselines measured while no window held it."""
        kind = next(iter(series.infos)).device_kind
        valid = []
        for b in series.baselines.values():
            busy = any(w.claims(device_id, kind) and self._span(w)[0] < b.t_to
                       and self._span(w)[1] > b.t_from
                       for w in self.windows.values() if w.node_id == node_id)
            if not busy:
                valid.append(b)
        if not valid:
            return np.zeros(t.shape)
        valid.sort(key=lambda b: b.t_to)
        ends = np.array([b.t_to for b in valid])
        idx = np.clip(np.searchsorted(ends, t, side="right") - 1, 0, None)
        return np.array([b.idle_w for b in valid])[idx]

    def _span(self, w: Window) -> tuple[float, float]:
        start = self.to_timeline(w.node_id, w.t_start_s, w.t_start_mono_s)
        if w.t_end_s is not None:
            end = self.to_timeline(w.node_id, w.t_end_s, w.t_end_mono_s)
        else:
            end = self._latest_tl.get(w.node_id, start)
        return start, max(start, end)

    def nodes(self) -> list[str]:
        """Every node with samples."""
        self._parse_pending()
        return sorted({node for node, _ in self._series})

    def devices(self, node_id: str) -> list[tuple[str, str]]:
        """(device_id, device_kind) of every device with samples on a node."""
        self._parse_pending()
        out = {}
        for (node, dev), s in self._series.items():
            if node == node_id:
                out[dev] = next(iter(s.infos)).device_kind
        return sorted(out.items())

    def energy_rows(self) -> list[EnergyRow]:
        self._parse_pending()
        rows: list[EnergyRow] = []
        by_node: dict[str, list[Window]] = defaultdict(list)
        for w in self.windows.values():
            by_node[w.node_id].append(w)
        for node_id, windows in by_node.items():
            devices = self.devices(node_id)
            for device_id, kind in devices:
                claimants = [w for w in windows if w.claims(device_id, kind)]
                if claimants:
                    rows.extend(self._device_rows(node_id, device_id, kind, claimants))
            rows.extend(self._unmatched_rows(node_id, windows, {d for d, _ in devices}))
        rows.sort(key=lambda r: (r.t_start_s, r.window_id, r.device_id))
        return rows

    def _unmatched_rows(self, node_id: str, windows: list[Window],
                        sampled: set[str]) -> list[EnergyRow]:
        """A window that holds a device no sampler measured gets a row that says so (all of
        it unmeasured), and a warning: never a silent zero."""
        rows = []
        for w in windows:
            for device_id in w.devices:
                if device_id == "*" or device_id in sampled:
                    continue
                msg = (f"window {w.window_id} holds {device_id}, which no sampler on node "
                       f"{node_id[:12]} measured (sampled: {', '.join(sorted(sampled)) or 'none'})"
                       f"; its energy is unmeasured")
                if msg not in self.warnings:
                    self.warnings.append(msg)
                    log.warning(msg)
                start, end = self._span(w)
                rows.append(self._row(w, device_id, "gpu", start, end, energy_j=0.0, idle_j=0.0,
                                      method=UNMEASURED, sources="", shared=False, share=1.0,
                                      unmeasured_s=end - start))
        return rows

    def _row(self, w: Window, device_id: str, kind: str, start: float, end: float,
             **fields) -> EnergyRow:
        base = dict(n_samples=0, gap_s=0.0, n_gaps=0, counter_resets=0, held_s=0.0,
                    unmeasured_s=0.0, unmeasured_max_j=0.0, interpolated=False, final=False)
        base.update(fields)
        energy, idle = base.pop("energy_j"), base.pop("idle_j")
        t_end = w.t_end_s if w.t_end_s is not None else self.to_wall(w.node_id, end)
        return EnergyRow(
            window_id=w.window_id, trial_id=w.trial_id, stage=w.stage, node_id=w.node_id,
            device_id=device_id, device_kind=kind, t_start_s=w.t_start_s, t_end_s=t_end,
            duration_s=end - start, tokens=w.tokens, energy_j=energy, idle_j=idle,
            above_idle_j=energy - idle, open=w.t_end_s is None, **base)

    def _device_rows(
        self, node_id: str, device_id: str, kind: str, windows: list[Window]
    ) -> list[EnergyRow]:
        tl = self.timeline(node_id, device_id)
        series = self._series[(node_id, device_id)]
        spans = {w.window_id: self._span(w) for w in windows}
        charged, idle, shared = _split(windows, spans, tl, kind in SHARED_KINDS)
        sources = "+".join(sorted({i.source for i in series.infos}))
        rows = []
        for w in windows:
            start, end = spans[w.window_id]
            whole = tl.between("energy", start, end)
            measured = tl.between("measured", start, end)
            held = tl.between("held", start, end)
            unmeasured = max(0.0, (end - start) - measured - held)
            codes = tl.methods(start, end)
            labels = {"interpolated" if c == HELD else self._methods[c] for c in codes}
            if tl.cuts_gap(start, end):
                labels.add("interpolated")
            n_gaps, gap_s = tl.gaps(start, end)
            n = tl.n_samples(start, end)
            rows.append(self._row(
                w, device_id, kind, start, end, energy_j=charged[w.window_id],
                idle_j=idle[w.window_id], method="+".join(sorted(labels)) or UNMEASURED,
                sources=sources, shared=shared[w.window_id],
                share=charged[w.window_id] / whole if whole else 1.0, n_samples=n,
                gap_s=gap_s, n_gaps=n_gaps, counter_resets=tl.s.resets, held_s=held,
                unmeasured_s=unmeasured, unmeasured_max_j=unmeasured * tl.peak_w,
                interpolated=n < 2, final=w.t_end_s is not None and tl.end_s >= end))
        return rows


def _split(windows: list[Window], spans: dict[str, tuple[float, float]], tl: DeviceTimeline,
           by_cpu: bool) -> tuple[dict[str, float], dict[str, float], dict[str, bool]]:
    """Charge a device's energy to overlapping windows, elementary interval by interval.

    Returns (joules per window, idle joules per window, shared flag per window). Within an
    interval covered by several windows the energy goes in proportion to each window's CPU-time
    rate (CPU seconds per wall second) when `by_cpu` and every rate is known, else in equal
    parts.
    """
    rates = {}
    for w in windows:
        a, b = spans[w.window_id]
        known = by_cpu and w.cpu_time_s is not None and b > a
        rates[w.window_id] = (w.cpu_time_s / (b - a)) if known else None
    cuts = sorted({t for span in spans.values() for t in span})
    joules = dict.fromkeys(spans, 0.0)
    idle_j = dict.fromkeys(spans, 0.0)
    shared = dict.fromkeys(spans, False)
    for a, b in pairwise(cuts):
        active = [wid for wid, (s, e) in spans.items() if s <= a and e >= b]
        if not active or b <= a:
            continue
        energy, idle = tl.between("energy", a, b), tl.between("idle", a, b)
        r = [rates[wid] for wid in active]
        if None in r or sum(r) <= 0:
            weights = [1.0 / len(active)] * len(active)
        else:
            weights = [x / sum(r) for x in r]
        for wid, wt in zip(active, weights, strict=True):
            joules[wid] += energy * wt
            idle_j[wid] += idle * wt
            if len(active) > 1:
                shared[wid] = True
    return joules, idle_j, shared
