"""A live poll of a trial's energy ({stage: J}) at a cost that follows what can still change,
not the run's length (pure: no Ray).

A day-long run with a callback on every rank holds thousands of windows; the Trainer callback
asks for its trial's figure every `logging_steps`. Most of those windows can no longer change:
closed, ending well before the node's latest readings. Their joules are summed once
(`PollCache`) and each poll integrates only the others.

A window is *settled* on its node when it is closed and ends before the node's freeze time: each
device's latest measured time − `margin_s` (the earliest of them). Nothing a sampler appends in
order reaches that far back (appends change at most the last piece and the held edges after it),
and every window overlapping it has begun. Its share of every device is then final but for one
thing: a neighbour still open weighs the node's CPU and DRAM by its CPU time once it closes. So
what can still change it empties the cache (the next poll recomputes all): a device timeline
rebuilt (a late or out-of-order batch, a new idle baseline), a window opened, or closed, that
began before the node's freeze time, or a settled window closed again.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING

from raydistill.energy.samples import SHARED_KINDS, Window

if TYPE_CHECKING:
    from raydistill.energy.ledger import LedgerState

MARGIN_S = 30.0  # well past the last piece and held edges an append may redo (max_gap, hold)


class PollCache:
    def __init__(self, margin_s: float = MARGIN_S) -> None:
        self.margin_s = margin_s
        self.clear()

    def clear(self) -> None:
        self.settled: dict[str, set[str]] = defaultdict(set)  # trial -> windows summed once
        self.sums: dict[str, dict[str, float]] = defaultdict(dict)  # trial -> stage -> J
        self.horizon: dict[str, float] = {}  # node -> the latest freeze time relied on
        self.timelines: dict[tuple[str, str], object] = {}  # (node, device) -> timeline used
        self.settled_ids: set[str] = set()

    def on_window_event(self, state: LedgerState, before: Window | None, after: Window) -> None:
        """A window opened or closed: start over where it touches what was summed."""
        horizon = self.horizon.get(after.node_id)
        if horizon is None:
            return
        if after.window_id in self.settled_ids:
            self.clear()
            return
        # an open or a close before the horizon; or a close of a window that began before it
        # (its CPU time, known from its close, weighs its whole span's CPU share)
        edges = [(after.t_start_s, after.t_start_mono_s)]
        if after.t_end_s is not None:
            edges.append((after.t_end_s, after.t_end_mono_s))
        if any(state.to_timeline(after.node_id, wall, mono) < horizon for wall, mono in edges):
            self.clear()


def poll_energy(state: LedgerState, trial_id: str) -> dict[str, float]:
    """{stage: J} of one trial, equal to its rows' energy summed by stage."""
    cache = state._poll
    for key, tl in list(cache.timelines.items()):
        if state.timeline(*key) is not tl:  # rebuilt: its past may have changed
            cache.clear()
            break
    out = dict(cache.sums[trial_id])
    done = cache.settled[trial_id]
    pending = [state.windows[wid] for wid in state.trial_window_ids(trial_id)
               if wid not in done]
    for node_id in sorted({w.node_id for w in pending}):
        mine = [w for w in pending if w.node_id == node_id]
        _poll_node(state, cache, trial_id, node_id, mine, out)
    return out


def _freeze(state: LedgerState, node_id: str, devices: list[tuple[str, str]]) -> float:
    """Before this, nothing an in-order append brings changes any device of the node."""
    ends = [state.timeline(node_id, d).end_s for d, _ in devices]
    return min([e - state._poll.margin_s for e in ends], default=-math.inf)


def _poll_node(state: LedgerState, cache: PollCache, trial_id: str, node_id: str,
               mine: list[Window], out: dict[str, float]) -> None:
    from raydistill.energy.rows import _facts, _split

    devices = state.devices(node_id)
    freeze = _freeze(state, node_id, devices)
    settling = {w.window_id for w in mine
                if w.t_end_s is not None and state._span(w)[1] <= freeze}
    sums = cache.sums[trial_id]
    for w in mine:  # a stage whose devices no sampler measured is listed at 0 J
        out.setdefault(w.stage, 0.0)
        if w.window_id in settling:
            sums.setdefault(w.stage, 0.0)
    memo: dict = {}
    ids = {w.window_id for w in mine}
    for device_id, kind in devices:
        own = [w for w in mine if w.claims(device_id, kind)]
        if not own:
            continue
        spans = [_facts(state, w, memo)[0] for w in own]
        lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
        # every other window overlapping them, this trial's settled ones included
        others = [w for w in state.overlapping(node_id, lo, hi)
                  if w.window_id not in ids and w.claims(device_id, kind)]
        windows = own + others
        facts = {w.window_id: _facts(state, w, memo) for w in windows}
        tl = state.timeline(node_id, device_id)
        charged, _, _ = _split(windows, {k: f[0] for k, f in facts.items()}, tl,
                               kind in SHARED_KINDS, {k: f[1] for k, f in facts.items()},
                               memo=memo)
        for w in own:
            out[w.stage] = out.get(w.stage, 0.0) + charged[w.window_id]
            if w.window_id in settling:
                sums[w.stage] = sums.get(w.stage, 0.0) + charged[w.window_id]
        cache.timelines[(node_id, device_id)] = tl
    if settling:
        cache.settled[trial_id] |= settling
        cache.settled_ids |= settling
        cache.horizon[node_id] = max(cache.horizon.get(node_id, -math.inf), freeze)
