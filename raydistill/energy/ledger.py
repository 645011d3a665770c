"""Ledger logic: what the EnergyLedger actor knows, as plain state (no Ray).

- Sample batches are ingested once per `(sampler_id, batch_seq)`: a resent batch is a no-op.
- Windows are opened and closed by the code doing the work; times come from the node's clock.
- A window's energy per device is computed from that node's samples of that device, whatever
  sampler sent them (a replacement sampler continues the same series).
- A device claimed by several windows at once (a node's CPU package shared by two trials) is
  split interval by interval in proportion to each window's CPU-time rate, and marked shared.
- Above-idle energy subtracts each device's idle baseline measured by its sampler at start.

Every mutation is an `apply(kind, payload)` of a log record, so replaying the durable log
rebuilds exactly the same state.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from itertools import pairwise

import numpy as np

from raydistill.energy.integrate import CumulativeEnergy
from raydistill.energy.log import KIND_BATCH, KIND_EVENT, event_payload
from raydistill.energy.samples import SHARED_KINDS, DeviceInfo, SampleBatch, Window

DEFAULT_MAX_GAP_S = 2.0


@dataclass(frozen=True)
class EnergyRow:
    """One window's energy on one device, with how it was obtained."""

    window_id: str
    trial_id: str
    stage: str
    node_id: str
    device_id: str
    device_kind: str
    t_start_s: float
    t_end_s: float
    duration_s: float
    tokens: int
    energy_j: float
    idle_j: float
    above_idle_j: float
    method: str  # counter | sampled | estimated | replayed ("+"-joined if mixed)
    sources: str  # the sources whose samples were used
    shared: bool  # split with other windows on the node
    share: float  # fraction of the device's energy over the window charged here
    n_samples: int
    gap_s: float  # seconds of the window with no sample for longer than max_gap_s
    n_gaps: int
    counter_resets: int
    open: bool  # window not closed yet: t_end_s is the latest sample time


@dataclass
class _Series:
    infos: set[DeviceInfo]
    t: list[np.ndarray]
    p: list[np.ndarray]
    e: list[np.ndarray]


class LedgerState:
    def __init__(self, max_gap_s: float = DEFAULT_MAX_GAP_S) -> None:
        if not max_gap_s > 0:
            raise ValueError(f"max_gap_s must be > 0, got {max_gap_s}")
        self.max_gap_s = max_gap_s
        self.seen: set[tuple[str, int]] = set()
        self.windows: dict[str, Window] = {}
        self.samplers: dict[str, dict] = {}  # sampler_id -> {node_id, started_s, retired_s}
        self.idle_w: dict[tuple[str, str], float] = {}
        self.n_samples = 0
        self.duplicates = 0
        self._series: dict[tuple[str, str], _Series] = {}
        self._curves: dict[tuple[str, str], CumulativeEnergy] = {}
        self._latest_t_s: dict[str, float] = {}  # node_id -> latest sample time
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
        for i, info in enumerate(batch.devices):
            sel = batch.device_idx == i
            key = (batch.node_id, info.device_id)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series(set(), [], [], [])
            series.infos.add(info)
            series.t.append(batch.t_wall_s[sel])
            series.p.append(batch.power_w[sel])
            series.e.append(batch.energy_counter_j[sel])
            self._curves.pop(key, None)
        for device_id, idle in batch.idle_power_w.items():
            self.idle_w[(batch.node_id, device_id)] = float(idle)
        if len(batch):
            prev = self._latest_t_s.get(batch.node_id, -math.inf)
            self._latest_t_s[batch.node_id] = max(prev, float(batch.t_wall_s.max()))

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
                w, t_end_s=ev["t_end_s"], tokens=ev["tokens"], cpu_time_s=ev.get("cpu_time_s")
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
    def close_event(window_id: str, t_end_s: float, tokens: int, cpu_time_s: float | None) -> bytes:
        return event_payload(
            {"type": "window_close", "window_id": window_id, "t_end_s": t_end_s,
             "tokens": int(tokens), "cpu_time_s": cpu_time_s}
        )

    # ---- queries -----------------------------------------------------------------------------
    def curve(self, node_id: str, device_id: str) -> CumulativeEnergy:
        self._parse_pending()
        key = (node_id, device_id)
        cached = self._curves.get(key)
        if cached is None:
            s = self._series[key]
            cached = CumulativeEnergy(
                np.concatenate(s.t), power_w=np.concatenate(s.p), counter_j=np.concatenate(s.e)
            )
            self._curves[key] = cached
        return cached

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
            for device_id, kind in self.devices(node_id):
                claimants = [w for w in windows if w.claims(device_id, kind)]
                if claimants:
                    rows.extend(self._device_rows(node_id, device_id, kind, claimants))
        rows.sort(key=lambda r: (r.t_start_s, r.window_id, r.device_id))
        return rows

    def _end(self, w: Window) -> float:
        if w.t_end_s is not None:
            return w.t_end_s
        return max(self._latest_t_s.get(w.node_id, w.t_start_s), w.t_start_s)

    def _device_rows(
        self, node_id: str, device_id: str, kind: str, windows: list[Window]
    ) -> list[EnergyRow]:
        curve = self.curve(node_id, device_id)
        series = self._series[(node_id, device_id)]
        charged, idle_s, shared = _split(windows, curve, self._end, kind in SHARED_KINDS)
        idle_w = self.idle_w.get((node_id, device_id), 0.0)
        rows = []
        for w in windows:
            start, end = w.t_start_s, self._end(w)
            est = curve.estimate(start, end, self.max_gap_s)
            whole = est.energy_j
            rows.append(
                EnergyRow(
                    window_id=w.window_id, trial_id=w.trial_id, stage=w.stage, node_id=node_id,
                    device_id=device_id, device_kind=kind, t_start_s=start, t_end_s=end,
                    duration_s=end - start, tokens=w.tokens, energy_j=charged[w.window_id],
                    idle_j=idle_w * idle_s[w.window_id],
                    above_idle_j=charged[w.window_id] - idle_w * idle_s[w.window_id],
                    method=_method(series.infos, curve.path),
                    sources="+".join(sorted({i.source for i in series.infos})),
                    shared=shared[w.window_id],
                    share=charged[w.window_id] / whole if whole else 1.0,
                    n_samples=est.n_samples, gap_s=est.gap_s, n_gaps=len(est.gaps),
                    counter_resets=est.counter_resets, open=w.t_end_s is None,
                )
            )
        return rows


def _method(infos: set[DeviceInfo], path: str) -> str:
    methods = set()
    for info in infos:
        m = info.method
        if m == "counter" and path == "power":
            m = "sampled"  # a counter source whose counter went missing: integrated power
        methods.add(m)
    return "+".join(sorted(methods))


def _split(windows, curve, end_of, by_cpu: bool):
    """Charge a device's energy to overlapping windows, elementary interval by interval.

    Returns (joules per window, idle-seconds-equivalent per window, shared flag per window).
    Within an interval covered by several windows the energy goes in proportion to each
    window's CPU-time rate (CPU seconds per wall second) when `by_cpu` and every rate is known,
    else in equal parts.
    """
    spans = {w.window_id: (w.t_start_s, end_of(w)) for w in windows}
    rates = {}
    for w in windows:
        a, b = spans[w.window_id]
        known = by_cpu and w.cpu_time_s is not None and b > a
        rates[w.window_id] = (w.cpu_time_s / (b - a)) if known else None
    cuts = sorted({t for span in spans.values() for t in span})
    joules = dict.fromkeys(spans, 0.0)
    idle_s = dict.fromkeys(spans, 0.0)
    shared = dict.fromkeys(spans, False)
    for a, b in pairwise(cuts):
        active = [wid for wid, (s, e) in spans.items() if s <= a and e >= b]
        if not active or b <= a:
            continue
        energy = curve.between(a, b)
        r = [rates[wid] for wid in active]
        if None in r or sum(r) <= 0:
            weights = [1.0 / len(active)] * len(active)
        else:
            weights = [x / sum(r) for x in r]
        for wid, wt in zip(active, weights, strict=True):
            joules[wid] += energy * wt
            idle_s[wid] += (b - a) * wt
            if len(active) > 1:
                shared[wid] = True
    return joules, idle_s, shared
