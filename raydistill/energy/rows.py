"""A ledger's rows: one window's energy on one device, with how it was obtained.

Each row says what was measured (`energy_j`, by counter, sampled power, estimate or replay),
what was only interpolated (`held_s`, `interpolated`), and what nobody measured (`unmeasured_s`,
with a bound): a number we print is one someone will cite. Each row carries its window's
`phase`, so that loading a model is never reported as what a token costs, and its window's
`tokens` with the part of them the model generated (`generated_tokens`).

Nesting: a window may run inside another (`Window.parent_id`, resolved by `LedgerState.parent`).
A device-second belongs to the innermost window that holds the device: where a window and one of
its descendants both hold a device, the descendant takes it (an evaluation inside a training
stage is charged its whole interval, the training the rest). This holds for the node's shared
devices too (CPU, DRAM, estimates): while a child is open it is the work its parent is doing.
Only what remains, windows that really run side by side (two trials on one node, two ranks),
split a device, by CPU share or equally. Ancestry counts whatever the trials.

Tokens: a stage's tokens are counted once. Where a window sits inside a window of the same
trial and stage that carries tokens of its own (`measure --stage S --tokens N` around ranks
whose callback counts too), the outer window's count is the stage's (the one the user stated)
and the inner window's row carries 0 tokens; without such an outer count, the inner windows'
tokens add up as before.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from raydistill.energy.accuracy import row_error_j, unmeasured_peak_w
from raydistill.energy.samples import ROLLOUT, SHARED_KINDS, WORK, Window
from raydistill.energy.timeline import HELD, DeviceTimeline

if TYPE_CHECKING:
    from raydistill.energy.ledger import LedgerState

log = logging.getLogger(__name__)

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
    # bound on their energy: unmeasured_s × the device's peak (energy.accuracy.unmeasured_peak_w)
    unmeasured_max_j: float = 0.0
    held_s: float = 0.0  # seconds at the edges of measured stretches filled by holding power
    interpolated: bool = False  # fewer than 2 samples inside: the figure is interpolation
    final: bool = False  # closed and measured past its end: the figure will not change
    phase: str = WORK  # the window's: "load" (model load, start-up) or "work" (steady state)
    generated_tokens: int = 0  # the part of `tokens` the model generated (the window's)
    device_model: str = ""  # the board as its driver names it; "" when unknown
    # This row's own stated error (energy.accuracy.row_error_j: its device's class at its
    # window's length, plus the unmeasured bound): a stage's error is the sum of its rows'.
    stated_error_j: float = 0.0
    parent_id: str | None = None  # the window this one runs inside, where the ledger knows it
    # what closed the window (`lifetime.py`): "" while open and for logs from before closings
    # were marked; anything but "stage" means its process did not end it where the work did
    closed_by: str = ""


def energy_rows(state: LedgerState) -> list[EnergyRow]:
    rows: list[EnergyRow] = []
    memo: dict = {}  # per query: each window's span, ancestors and counted tokens, once
    by_node: dict[str, list[Window]] = defaultdict(list)
    for w in state.windows.values():
        by_node[w.node_id].append(w)
    for node_id, windows in by_node.items():
        devices = state.devices(node_id)
        for device_id, kind in devices:
            claimants = [w for w in windows if w.claims(device_id, kind)]
            if claimants:
                rows.extend(_device_rows(state, node_id, device_id, kind, claimants,
                                         memo=memo))
        rows.extend(_unmatched_rows(state, node_id, windows, {d for d, _ in devices}))
    rows.sort(key=lambda r: (r.t_start_s, r.window_id, r.device_id))
    return rows


def trial_rows(state: LedgerState, trial_id: str) -> list[EnergyRow]:
    """The rows of one trial's windows only, equal to its rows in `energy_rows(state)`.

    A device's energy is split among the windows that hold it at the same time, so each of the
    trial's devices is charged against the windows that overlap the trial's own span on it; the
    rest of the sweep's windows are skipped before any integration. Cost: the trial's windows
    and their neighbours in time, not every window of the sweep (what a trial polls)."""
    rows: list[EnergyRow] = []
    memo: dict = {}  # per query: each window's span, ancestors and counted tokens, once
    for node_id, device_id, kind, own, others in _trial_devices(state, trial_id, memo):
        if device_id is None:  # the node's devices no sampler measured
            rows.extend(_unmatched_rows(state, node_id, own, others))
            continue
        rows.extend(_device_rows(state, node_id, device_id, kind, own + others,
                                 report=own, memo=memo))
    rows.sort(key=lambda r: (r.t_start_s, r.window_id, r.device_id))
    return rows


def _trial_devices(state: LedgerState, trial_id: str, memo: dict):
    """(node, device, kind, the trial's windows holding it, the other windows overlapping
    them) per sampled device of the trial's nodes; then (node, None, "", the trial's windows
    of the node, the node's sampled device ids) for the unmatched rows."""
    mine = [state.windows[wid] for wid in state.trial_window_ids(trial_id)]
    for node_id in sorted({w.node_id for w in mine}):
        own_node = [w for w in mine if w.node_id == node_id]
        devices = state.devices(node_id)
        for device_id, kind in devices:
            own = [w for w in own_node if w.claims(device_id, kind)]
            if not own:
                continue
            yield node_id, device_id, kind, own, _neighbours(
                state, node_id, device_id, kind, own, lambda w: w.trial_id == trial_id, memo)
        yield node_id, None, "", own_node, {d for d, _ in devices}


def _neighbours(state: LedgerState, node_id: str, device_id: str, kind: str,
                own: list[Window], excluded, memo: dict) -> list[Window]:
    """The windows holding the device that overlap the span of `own` (those `excluded` left
    out): what `own`'s share of the device is split against."""
    spans = [_facts(state, w, memo)[0] for w in own]
    lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
    return [w for w in state.overlapping(node_id, lo, hi)
            if not excluded(w) and w.claims(device_id, kind)]


def _unmatched_rows(state: LedgerState, node_id: str, windows: list[Window],
                sampled: set[str]) -> list[EnergyRow]:
    """A window that holds a device no sampler measured gets a row that says so (all of
    it unmeasured, bounded by a GPU's peak power), and a warning: never a silent zero."""
    rows = []
    peak_w = _unsampled_gpu_peak_w(state, node_id)
    for w in windows:
        for device_id in w.devices:
            if device_id == "*" or device_id in sampled:
                continue
            msg = (f"window {w.window_id} holds {device_id}, which no sampler on node "
                   f"{node_id[:12]} measured (sampled: {', '.join(sorted(sampled)) or 'none'})"
                   f"; its energy is unmeasured")
            if msg not in state.warnings:
                state.warnings.append(msg)
                log.warning(msg)
            start, end = state._span(w)
            rows.append(_row(state, w, device_id, "gpu", start, end, energy_j=0.0, idle_j=0.0,
                                  method=UNMEASURED, sources="", shared=False, share=1.0,
                                  unmeasured_s=end - start,
                                  unmeasured_max_j=(end - start) * peak_w))
    return rows


def _unsampled_gpu_peak_w(state: LedgerState, node_id: str) -> float:
    """The power that bounds a GPU of `node_id` no sampler saw. Its model is unknown, but nodes
    are built of one model: the largest board power among the models of the node's sampled
    GPUs (a mixed node: the largest), else the stated default for an unknown GPU."""
    models = {i.model for (n, _), series in state._series.items() if n == node_id
              for i in series.infos if i.device_kind == "gpu" and i.model}
    return max((unmeasured_peak_w("gpu", m, None) for m in models),
               default=unmeasured_peak_w("gpu", "", None))


def _facts(state: LedgerState, w: Window, memo: dict | None
           ) -> tuple[tuple[float, float], set[str], str | None, int, int]:
    """(span, ancestors' ids, parent id, tokens, generated tokens) of a window as its rows
    count them, computed once per query (`memo`) rather than once per device."""
    got = None if memo is None else memo.get(w.window_id)
    if got is None:
        parent = state.parent(w)
        got = (state._span(w), {a.window_id for a in state.ancestors(w)},
               None if parent is None else parent.window_id, *_counted_tokens(state, w))
        if memo is not None:
            memo[w.window_id] = got
    return got


def _row(state: LedgerState, w: Window, device_id: str, kind: str, start: float, end: float,
         memo: dict | None = None, edge_cut: bool = True, **fields) -> EnergyRow:
    base = dict(n_samples=0, gap_s=0.0, n_gaps=0, counter_resets=0, held_s=0.0,
                unmeasured_s=0.0, unmeasured_max_j=0.0, interpolated=False, final=False,
                device_model="")
    base.update(fields)
    base["stated_error_j"] = row_error_j(base["energy_j"], base["method"], kind, end - start,
                                         base["unmeasured_max_j"], base["device_model"],
                                         base["held_s"], edge_cut)
    energy, idle = base.pop("energy_j"), base.pop("idle_j")
    t_end = w.t_end_s if w.t_end_s is not None else state.to_wall(w.node_id, end)
    _, _, parent_id, tokens, generated = _facts(state, w, memo)
    return EnergyRow(
        window_id=w.window_id, trial_id=w.trial_id, stage=w.stage, node_id=w.node_id,
        device_id=device_id, device_kind=kind, t_start_s=w.t_start_s, t_end_s=t_end,
        duration_s=end - start, tokens=tokens, energy_j=energy, idle_j=idle,
        above_idle_j=energy - idle, open=w.t_end_s is None, phase=w.phase,
        generated_tokens=generated, parent_id=parent_id,
        closed_by=w.closed_by or "", **base)


def _counted_tokens(state: LedgerState, w: Window) -> tuple[int, int]:
    """(tokens, generated) of `w` as its stage counts them: none where an enclosing window
    of the same trial and stage carries tokens (those already count this work's). A rollout
    window keeps its own: the training window around it counts the update's tokens, never
    the ones the student generated."""
    if w.phase == ROLLOUT:
        return w.tokens, w.generated_tokens
    for a in state.ancestors(w):
        if a.trial_id == w.trial_id and a.stage == w.stage and a.tokens > 0:
            return 0, 0
    return w.tokens, w.generated_tokens


def _device_rows(
state: LedgerState, node_id: str, device_id: str, kind: str, windows: list[Window],
report: list[Window] | None = None, memo: dict | None = None,
) -> list[EnergyRow]:
    """Rows of `report` (default: all `windows`), charged against all of `windows`."""
    tl = state.timeline(node_id, device_id)
    series = state._series[(node_id, device_id)]
    facts = {w.window_id: _facts(state, w, memo) for w in windows}
    spans = {wid: f[0] for wid, f in facts.items()}
    ancestors = {wid: f[1] for wid, f in facts.items()}
    charged, idle, shared = _split(windows, spans, tl, kind in SHARED_KINDS, ancestors,
                                   memo=memo)
    sources = "+".join(sorted({i.source for i in series.infos}))
    model = next((i.model for i in series.infos if i.model), "")
    peak_w = unmeasured_peak_w(kind, model, tl.peak_w)
    rows = []
    mine = windows if report is None else report
    edges = np.array([spans[w.window_id] for w in mine], dtype=float).reshape(-1, 2)
    stats = tl.spans(edges[:, 0], edges[:, 1])
    resets = tl.s.resets
    for k, w in enumerate(mine):
        start, end = spans[w.window_id]
        whole = float(stats["energy"][k])
        measured, held = float(stats["measured"][k]), float(stats["held"][k])
        unmeasured = max(0.0, (end - start) - measured - held)
        labels = {"interpolated" if c == HELD else state._methods[c]
                  for c in stats["methods"][k]}
        if stats["cuts_gap"][k]:
            labels.add("interpolated")
        n_gaps, gap_s = int(stats["n_gaps"][k]), float(stats["gap_s"][k])
        n = int(stats["n_samples"][k])
        rows.append(_row(state,
            w, device_id, kind, start, end, memo=memo,
            edge_cut=bool(stats["cuts_gap"][k]) or n < 2, energy_j=charged[w.window_id],
            idle_j=idle[w.window_id], method="+".join(sorted(labels)) or UNMEASURED,
            sources=sources, shared=shared[w.window_id],
            share=charged[w.window_id] / whole if whole else 1.0, n_samples=n,
            gap_s=gap_s, n_gaps=n_gaps, counter_resets=resets, held_s=held,
            unmeasured_s=unmeasured, unmeasured_max_j=unmeasured * peak_w,
            interpolated=n < 2, final=w.t_end_s is not None and tl.end_s >= end,
            device_model=model))
    return rows


def _split(windows: list[Window], spans: dict[str, tuple[float, float]], tl: DeviceTimeline,
           by_cpu: bool, ancestors: dict[str, set[str]] | None = None,
           memo: dict | None = None,
           ) -> tuple[dict[str, float], dict[str, float], dict[str, bool]]:
    """Charge a device's energy to overlapping windows, elementary interval by interval.

    Returns (joules per window, idle joules per window, shared flag per window). Within an
    interval, a window that is an ancestor (`ancestors`: window id -> its ancestors' ids) of
    another window active there gets nothing: the innermost takes the device-second. The rest,
    windows really side by side, share it in proportion to each window's CPU-time rate (CPU
    seconds per wall second) when `by_cpu` and every rate is known, else in equal parts.

    Vectorised over windows × intervals (a day-long run's live query has hundreds of both);
    each window's joules are the correctly rounded sum of its parts (`math.fsum`), so the
    figure does not depend on which other windows were in the query.
    """
    ids = list(spans)
    zero = dict.fromkeys(ids, 0.0)
    if not ids:
        return zero, dict(zero), dict.fromkeys(ids, False)
    # the node's GPUs are held by the same windows: their shares are worked out once a query
    key = ("split", tuple(ids), by_cpu)
    plan = None if memo is None else memo.get(key)
    if plan is None:
        plan = _split_plan(windows, spans, by_cpu, ancestors)
        if memo is not None:
            memo[key] = plan
    cuts, _owner, on, weight, bounds, shared_of = plan
    if cuts is None:
        return zero, dict(zero), dict.fromkeys(ids, False)
    energy, idle = np.diff(tl.at_many("energy", cuts)), np.diff(tl.at_many("idle", cuts))
    parts_e, parts_i = energy[on] * weight, idle[on] * weight
    joules, idle_j, shared = {}, {}, {}
    for k, wid in enumerate(ids):
        a, b = bounds[k], bounds[k + 1]
        joules[wid] = math.fsum(parts_e[a:b])
        idle_j[wid] = math.fsum(parts_i[a:b])
        shared[wid] = bool(shared_of[k])
    return joules, idle_j, shared


def _split_plan(windows: list[Window], spans: dict[str, tuple[float, float]], by_cpu: bool,
                ancestors: dict[str, set[str]] | None):
    """Which windows take which elementary interval, and in what share: the same for every
    device the same windows hold. Sparse: one entry per (window, interval it spans), so the
    cost follows the windows' overlaps, not windows × intervals.

    Returns (cuts, owner, interval, weight, bounds, shared): the entries sorted by window
    (window k's are entries bounds[k]:bounds[k + 1]), each one's interval index and share;
    shared[k] whether window k shares any interval. (None, ...) with fewer than two cuts."""
    ids = list(spans)
    by_id = {w.window_id: w for w in windows}
    lo = np.array([spans[i][0] for i in ids])
    hi = np.array([spans[i][1] for i in ids])
    cuts = np.unique(np.concatenate([lo, hi]))
    if len(cuts) < 2:
        return None, None, None, None, None, None
    # window k is active on intervals [first[k], last[k]) (lo <= cut[j] and hi >= cut[j + 1])
    first = np.searchsorted(cuts, lo, side="left")
    last = np.maximum(first, np.searchsorted(cuts, hi, side="left"))
    sizes = last - first
    owner = np.repeat(np.arange(len(ids)), sizes)
    on = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes) \
        + np.repeat(first, sizes)
    keep = np.ones(len(on), dtype=bool)
    if ancestors:  # an ancestor gives up the intervals where a descendant of it is active
        index = {wid: k for k, wid in enumerate(ids)}
        starts = np.cumsum(sizes) - sizes
        covered: dict[int, list[tuple[int, int]]] = {}
        for c, wid in enumerate(ids):
            for anc in ancestors.get(wid, ()):
                if anc in index:
                    covered.setdefault(index[anc], []).append((first[c], last[c]))
        for k, ranges in covered.items():
            n = int(sizes[k])
            diff = np.zeros(n + 1, dtype=np.int64)
            for a, b in ranges:
                a, b = max(a, first[k]) - first[k], min(b, last[k]) - first[k]
                if b > a:
                    diff[a] += 1
                    diff[b] -= 1
            keep[starts[k]:starts[k] + n] = np.cumsum(diff[:n]) == 0
    owner, on = owner[keep], on[keep]
    rates = np.full(len(ids), np.nan)
    for k, wid in enumerate(ids):
        w, (a, b) = by_id[wid], spans[wid]
        # an open window's rate is unknown: its CPU time is only final when it closes
        if by_cpu and w.cpu_time_s is not None and w.t_end_s is not None and b > a:
            rates[k] = w.cpu_time_s / (b - a)
    n_int = len(cuts) - 1
    count = np.bincount(on, minlength=n_int)
    r = rates[owner]
    unknown = np.bincount(on, weights=np.isnan(r).astype(float), minlength=n_int) > 0
    total = np.bincount(on, weights=np.nan_to_num(r), minlength=n_int)
    by_rate = ~unknown & (total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.where(by_rate[on], np.nan_to_num(r) / total[on], 1.0 / count[on])
    bounds = np.searchsorted(owner, np.arange(len(ids) + 1), side="left")
    shared = np.bincount(owner, weights=(count[on] > 1).astype(float),
                         minlength=len(ids)) > 0
    return cuts, owner, on, weight, bounds, shared
