"""Ledger logic: what the EnergyLedger actor knows, as plain state (no Ray).

- Sample batches are ingested once per `(sampler_id, batch_seq)`: a resent batch is a no-op.
- Windows are opened and closed by the code doing the work; times come from the node's clocks.
  The ledger integrates on the node's monotonic clock where samples and windows carry it (NTP
  steps the wall clock, never the monotonic one), else on its wall clock.
- A window's energy per device comes from every sampler that read the device on that node,
  each sampler's readings a sequence of its own, merged so that nothing counts twice
  (`segments.py`). What no sampler measured is reported as unmeasured seconds, never as joules.
- A window may run inside another (`Window.parent_id`): a device-second belongs to the
  innermost window that holds the device. Only windows that really run side by side (a node's
  CPU package shared by two trials) split a device, interval by interval in proportion to each
  window's CPU-time rate, and are marked shared.
- Above-idle energy subtracts the idle baseline valid for each stretch: one measured while no
  window held the device (a sampler that restarts under load measures no idle).
- A window has a phase, "load" (model load, start-up) or "work" (steady state; older logs have
  only these): the tables charge a stage's tokens with its work alone (`results.py`).

Every mutation is an `apply(kind, payload)` of a log record, so replaying the durable log
rebuilds exactly the same state.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from raydistill.energy import incremental
from raydistill.energy.incremental import Baselines, Chunk
from raydistill.energy.log import KIND_BATCH, KIND_EVENT
from raydistill.energy.poll import PollCache, poll_energy
from raydistill.energy.rows import EnergyRow, energy_rows, trial_rows
from raydistill.energy.samples import (
    DeviceInfo,
    SampleBatch,
    Window,
    window_close_event,
    window_open_event,
)
from raydistill.energy.timeline import DeviceTimeline

log = logging.getLogger(__name__)

DEFAULT_MAX_GAP_S = 2.0
DEFAULT_MAX_HOLD_S = 0.5


@dataclass
class _Baseline:
    sampler_id: str
    t_from: float
    t_to: float
    idle_w: float


@dataclass
class _Series:
    infos: set[DeviceInfo] = field(default_factory=set)
    chunks: dict[str, list[Chunk]] = field(default_factory=lambda: defaultdict(list))
    baselines: dict[str, _Baseline] = field(default_factory=dict)  # sampler_id -> its baseline


class _Offsets:
    """A node's (wall, monotonic) clock pairs, one per batch, sorted both ways: the pair
    nearest a time is a binary search, not a scan of the run's batches."""

    def __init__(self) -> None:
        self.by_wall: list[tuple[float, float]] = []
        self.by_mono: list[tuple[float, float]] = []

    def __len__(self) -> int:
        return len(self.by_wall)

    def add(self, wall: float, mono: float) -> None:
        bisect.insort(self.by_wall, (wall, mono))  # at the end, in O(log n), when in order
        bisect.insort(self.by_mono, (mono, wall))

    @staticmethod
    def nearest(pairs: list[tuple[float, float]], x: float) -> tuple[float, float]:
        i = bisect.bisect_left(pairs, (x, -math.inf))
        if i == len(pairs) or (i > 0 and x - pairs[i - 1][0] <= pairs[i][0] - x):
            return pairs[i - 1]
        return pairs[i]


class LedgerState:
    def __init__(self, max_gap_s: float = DEFAULT_MAX_GAP_S,
                 max_hold_s: float = DEFAULT_MAX_HOLD_S) -> None:
        if not max_gap_s > 0:
            raise ValueError(f"max_gap_s must be > 0, got {max_gap_s}")
        self.max_gap_s = max_gap_s
        self.max_hold_s = max_hold_s
        self.seen: set[tuple[str, int]] = set()
        self.windows: dict[str, Window] = {}
        # indexes for per-trial queries: window ids by trial and by node, in opening order
        self._by_trial: dict[str, list[str]] = defaultdict(list)
        self._by_node: dict[str, list[str]] = defaultdict(list)
        self._opened: dict[str, int] = {}  # window id -> its place in the log's opening order
        self._open: dict[str, None] = {}  # ids of the open windows, in opening order
        # per node: the timeline spans of its closed windows with monotonic times (they never
        # move), as arrays, so a per-trial query finds its neighbours without a Python loop
        self._span_index: dict[str, tuple[np.ndarray, np.ndarray, list[str], list[str]]] = {}
        self.samplers: dict[str, dict] = {}  # sampler_id -> {node_id, started_s, retired_s}
        self.n_samples = 0
        self.duplicates = 0
        self.warnings: list[str] = []
        self._series: dict[tuple[str, str], _Series] = {}
        self._timelines: dict[tuple[str, str], incremental.Entry] = {}
        self._latest_t_s: dict[str, float] = {}  # node_id -> latest sample wall time
        self._latest_tl: dict[str, float] = {}  # node_id -> latest sample on its timeline
        self._wall_only: set[str] = set()  # nodes with samples that carry no monotonic time
        self._offsets: dict[str, _Offsets] = defaultdict(_Offsets)
        self._methods: list[str] = []
        # Accepted batches not yet parsed into series: ingestion only checks the key and keeps
        # the bytes; queries parse (rare, and once per batch).
        self._unparsed: list[bytes] = []
        self._poll = PollCache()  # a live poll's settled windows, summed once (`poll.py`)
        # nodes with a window recorded without monotonic times: its span on a monotonic
        # timeline follows the wall clock's offsets, which can still move (no poll settles there)
        self.wall_windows: set[str] = set()

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
            self._span_index.pop(node, None)
            mono = None
        for i, info in enumerate(batch.devices):
            sel = batch.device_idx == i
            key = (node, info.device_id)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series()
                self._poll.clear()  # a device no poll has seen: settled windows may hold it
            series.infos.add(info)
            n = int(sel.sum())
            chunk = Chunk(batch.batch_seq, batch.t_wall_s[sel], None if mono is None
                          else mono[sel], batch.power_w[sel], batch.energy_counter_j[sel], info)
            series.chunks[batch.sampler_id].append(chunk)
            cached = self._timelines.get(key)
            if cached is not None and not incremental.note(cached, batch.sampler_id, chunk):
                del self._timelines[key]  # not an append: the next query rebuilds it
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
                self._offsets[node].add(float(batch.t_wall_s[-1]), float(mono[-1]))

    def apply_event(self, ev: dict) -> None:
        kind = ev["type"]
        if kind == "window_open":
            w = Window.from_event(ev)
            before = self.windows.get(w.window_id)
            if w.window_id not in self.windows:
                self._opened[w.window_id] = len(self._opened)
                self._by_trial[w.trial_id].append(w.window_id)
                self._by_node[w.node_id].append(w.window_id)
            self.windows[w.window_id] = w
            if w.t_end_s is None:
                self._open[w.window_id] = None
            if w.t_start_mono_s is None:
                self.wall_windows.add(w.node_id)
            self._span_index.pop(w.node_id, None)
            self._poll.on_window_event(self, before, w)
        elif kind == "window_close":
            w = self.windows.get(ev["window_id"])
            if w is None:
                raise KeyError(f"window {ev['window_id']!r} was never opened")
            self.windows[w.window_id] = w.closed(ev)
            self._open.pop(w.window_id, None)
            if self.windows[w.window_id].t_end_mono_s is None:
                self.wall_windows.add(w.node_id)
            self._span_index.pop(w.node_id, None)
            self._poll.on_window_event(self, w, self.windows[w.window_id])
        elif kind == "sampler_start":
            self.samplers[ev["sampler_id"]] = {
                "node_id": ev["node_id"], "started_s": ev["t_s"], "retired_s": None
            }
        elif kind == "sampler_retire" and ev["sampler_id"] in self.samplers:
            self.samplers[ev["sampler_id"]]["retired_s"] = ev["t_s"]
        # unknown event types are ignored so that newer logs stay readable by this version

    # ---- events as records (the actor writes these before applying them) -------------------
    open_event = staticmethod(window_open_event)
    close_event = staticmethod(window_close_event)

    def open_windows(self, node_id: str | None = None) -> list[Window]:
        """The windows not closed yet (of one node, or all), in opening order."""
        return [w for w in (self.windows[wid] for wid in self._open)
                if node_id is None or w.node_id == node_id]

    def leftover_close(self, window_id: str, t_end_s: float, t_end_mono_s: float | None,
                       closed_by: str) -> bytes | None:
        """The close record of an open window that its process did not close (it is gone, or
        the run finished first), or None when it is no longer open. It keeps what the ledger
        knows of it (no tokens beyond those recorded: a dead process cannot tell), and ends no
        earlier than it began."""
        w = self.windows.get(window_id)
        if w is None or w.t_end_s is not None:
            return None
        t_end_s = max(t_end_s, w.t_start_s)
        if t_end_mono_s is not None and w.t_start_mono_s is not None:
            t_end_mono_s = max(t_end_mono_s, w.t_start_mono_s)
        return window_close_event(window_id, t_end_s, w.tokens, w.cpu_time_s, t_end_mono_s,
                                  generated_tokens=w.generated_tokens, closed_by=closed_by)

    def latest_clocks(self, node_id: str) -> tuple[float, float | None] | None:
        """(wall, monotonic or None) of the node's latest sample: the end an open window has;
        None for a node without samples."""
        self._parse_pending()
        if node_id not in self._latest_tl:
            return None
        t = self._latest_tl[node_id]
        if self.uses_mono(node_id):
            return self.to_wall(node_id, t), t
        return t, None

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
        # a window recorded without monotonic time: the nearest batch's clock offset
        wall, mono = _Offsets.nearest(self._offsets[node_id].by_wall, wall_s)
        return wall_s - wall + mono

    def to_wall(self, node_id: str, t_s: float) -> float:
        if not self.uses_mono(node_id):
            return t_s
        mono, wall = _Offsets.nearest(self._offsets[node_id].by_mono, t_s)
        return t_s - mono + wall

    def timeline(self, node_id: str, device_id: str) -> DeviceTimeline:
        """The device's timeline: the cached one extended by the batches since the last query
        where they append (`incremental.py`), else rebuilt from all its readings."""
        self._parse_pending()
        key = (node_id, device_id)
        series = self._series[key]
        mono = self.uses_mono(node_id)
        baselines: Baselines = tuple(
            (b.t_to, b.idle_w) for b in self._valid_baselines(node_id, device_id, series))
        args = (self._code, self.max_gap_s, self.max_hold_s)
        cached = self._timelines.get(key)
        if cached is None or not incremental.refresh(cached, mono, baselines, *args):
            cached = self._timelines[key] = incremental.build(series.chunks, mono, baselines,
                                                              *args)
        return cached.tl

    def _code(self, method: str) -> int:
        if method not in self._methods:
            self._methods.append(method)
        return self._methods.index(method)

    def _valid_baselines(self, node_id: str, device_id: str,
                         series: _Series) -> list[_Baseline]:
        """The device's idle baselines measured while no window held it, by end time."""
        kind = next(iter(series.infos)).device_kind
        valid = [b for b in series.baselines.values()
                 if not any(w.claims(device_id, kind) and self._inside(w, b.t_from, b.t_to)
                            for w in self.overlapping(node_id, b.t_from, b.t_to))]
        return sorted(valid, key=lambda b: b.t_to)

    def parent(self, w: Window) -> Window | None:
        """The window `w` runs inside: its recorded parent where that is a window of the same
        node opened before it, else None (a parent on another node shares no device with it;
        an id the ledger never saw, from a stale environment, is no parent). Parents opened
        first can form no cycle, so no device-second is ever left without a window."""
        p = self.windows.get(w.parent_id) if w.parent_id is not None else None
        if p is None or p.node_id != w.node_id:
            return None
        if self._opened.get(p.window_id, 0) >= self._opened.get(w.window_id, 0):
            return None
        if p.t_end_s is not None and self.to_timeline(p.node_id, p.t_end_s, p.t_end_mono_s) \
                < self.to_timeline(w.node_id, w.t_start_s, w.t_start_mono_s):
            return None  # closed before `w` opened (on the node's timeline): a stale name
        return p

    def ancestors(self, w: Window) -> list[Window]:
        """`w`'s parent, its parent's parent, ... (innermost first)."""
        out: list[Window] = []
        p = self.parent(w)
        while p is not None:
            out.append(p)
            p = self.parent(p)
        return out

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
        """One row per window × device, in time order (see `rows.py`)."""
        self._parse_pending()
        return energy_rows(self)

    def trial_window_ids(self, trial_id: str) -> list[str]:
        return list(self._by_trial.get(trial_id, ()))

    def node_windows(self, node_id: str) -> list[Window]:
        return [self.windows[wid] for wid in self._by_node.get(node_id, ())]

    def overlapping(self, node_id: str, lo: float, hi: float) -> list[Window]:
        """The node's windows whose span meets [lo, hi] on its timeline (open ones included)."""
        self._parse_pending()
        index = self._span_index.get(node_id)
        if index is None:
            index = self._span_index[node_id] = self._build_span_index(node_id)
        starts, ends, fixed, moving = index
        hit = np.flatnonzero((starts <= hi) & (ends >= lo))
        out = [self.windows[fixed[i]] for i in hit]
        for wid in moving:  # open, or without monotonic times: their spans can still move
            w = self.windows[wid]
            a, b = self._span(w)
            if a <= hi and b >= lo:
                out.append(w)
        return out

    def _inside(self, w: Window, t_from: float, t_to: float) -> bool:
        """Whether the window held its devices strictly inside (t_from, t_to)."""
        a, e = self._span(w)
        return a < t_to and e > t_from

    def _build_span_index(self, node_id: str):
        fixed, moving, spans = [], [], []
        mono = self.uses_mono(node_id)
        for w in self.node_windows(node_id):
            if (mono and w.t_end_s is not None and w.t_start_mono_s is not None
                    and w.t_end_mono_s is not None):
                fixed.append(w.window_id)
                spans.append(self._span(w))
            else:
                moving.append(w.window_id)
        arr = np.array(spans, dtype=float).reshape(-1, 2)
        return arr[:, 0], arr[:, 1], fixed, moving

    def trial_rows(self, trial_id: str) -> list[EnergyRow]:
        """One trial's rows, as in `energy_rows` (see `rows.trial_rows`)."""
        self._parse_pending()
        return trial_rows(self, trial_id)

    def trial_energy(self, trial_id: str) -> dict[str, float]:
        """{stage: J} of one trial: its rows' energy summed by stage, without the rows, the
        settled windows summed once (`poll.py`): what a live poll asks for."""
        self._parse_pending()
        return poll_energy(self, trial_id)
