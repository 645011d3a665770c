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

import bisect
import math
from collections import defaultdict

from raydistill.energy.ledger_view import LedgerView
from raydistill.energy.samples import SHARED_KINDS, Window

MARGIN_S = 30.0  # well past the last piece and held edges an append may redo (max_gap, hold)


class PollCache:
    """Per trial, the settled windows' joules by stage; per node, the settled windows by end
    time, so an event that touches the past drops only the windows it can change."""

    def __init__(self, margin_s: float = MARGIN_S) -> None:
        self.margin_s = margin_s
        self.clear()

    def clear(self) -> None:
        self.settled: dict[str, set[str]] = defaultdict(set)  # trial -> windows summed once
        self.sums: dict[str, dict[str, float]] = defaultdict(dict)  # trial -> stage -> J
        self.horizon: dict[str, float] = {}  # node -> the latest freeze time relied on
        self.timelines: dict[tuple[str, str], object] = {}  # (node, device) -> timeline used
        # window -> (trial, stage, J, whether it has rows: a stage with none is not listed)
        self.entries: dict[str, tuple[str, str, float, bool]] = {}
        self.ends: dict[str, list[tuple[float, str]]] = defaultdict(list)  # node -> by end

    @property
    def settled_ids(self) -> set[str]:
        return set(self.entries)

    def settle(self, trial_id: str, node_id: str, w: Window, end: float, joules: float,
               listed: bool) -> None:
        self.entries[w.window_id] = (trial_id, w.stage, joules, listed)
        self.settled[trial_id].add(w.window_id)
        bisect.insort(self.ends[node_id], (end, w.window_id))
        if listed:
            sums = self.sums[trial_id]
            sums[w.stage] = sums.get(w.stage, 0.0) + joules

    def drop_after(self, node_id: str, t: float, also: str | None = None) -> None:
        """Forget the node's settled windows that end at or after `t` (an event at `t` may
        change their share), and window `also`; the next poll integrates them again."""
        ends = self.ends[node_id]
        if also is not None and also in self.entries:
            ends[:] = [e for e in ends if e[1] != also]
            ends.append((math.inf, also))  # dropped below with the rest
        cut = bisect.bisect_left(ends, (t, ""))
        if cut == len(ends):
            return
        dropped, self.ends[node_id] = ends[cut:], ends[:cut]
        trials = set()
        for _, wid in dropped:
            trial_id = self.entries.pop(wid)[0]
            self.settled[trial_id].discard(wid)
            trials.add(trial_id)
        for trial_id in trials:  # summed again from what stays (no residue of subtraction)
            parts: dict[str, list[float]] = defaultdict(list)
            for wid in self.settled[trial_id]:
                _, stage, joules, listed = self.entries[wid]
                if listed:
                    parts[stage].append(joules)
            self.sums[trial_id] = {st: math.fsum(js) for st, js in parts.items()}

    def on_window_event(self, state: LedgerView, before: Window | None, after: Window) -> None:
        """A window opened or closed (or opened again): forget what it can change. Its edges
        are taken before and after the event; a window that began before the horizon weighs,
        once closed, its whole span's CPU share by its CPU time."""
        node = after.node_id
        if self.horizon.get(node) is None:
            return
        times = [state.to_timeline(node, after.t_start_s, after.t_start_mono_s)]
        for w in (before, after):
            if w is not None:
                times.append(state.to_timeline(node, w.t_start_s, w.t_start_mono_s))
                if w.t_end_s is not None:
                    times.append(state.to_timeline(node, w.t_end_s, w.t_end_mono_s))
        earliest = min(times)
        if earliest < self.horizon[node] or after.window_id in self.entries:
            self.drop_after(node, earliest, also=after.window_id)


def poll_energy(state: LedgerView, trial_id: str) -> dict[str, float]:
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


def _freeze(state: LedgerView, node_id: str, devices: list[tuple[str, str]]) -> float:
    """Before this, nothing an in-order append brings changes any device of the node."""
    ends = [state.timeline(node_id, d).end_s for d, _ in devices]
    return min([e - state._poll.margin_s for e in ends], default=-math.inf)


def _poll_node(state: LedgerView, cache: PollCache, trial_id: str, node_id: str,
               mine: list[Window], out: dict[str, float]) -> None:
    from raydistill.energy.rows import _facts, _neighbours, _split

    devices = state.devices(node_id)
    freeze = _freeze(state, node_id, devices)
    if node_id in state.wall_windows and state.uses_mono(node_id):
        freeze = -math.inf  # a window's span here follows wall-clock offsets that can move
    settling = {w.window_id for w in mine
                if w.t_end_s is not None and state._span(w)[1] <= freeze}
    settled_j: dict[str, list[float]] = defaultdict(list)  # window -> its devices' joules
    sampled = {d for d, _ in devices}
    listed = {w.window_id for w in mine  # windows with rows: their stage is listed
              if any(w.claims(d, k) for d, k in devices)
              or any(d != "*" and d not in sampled for d in w.devices)}
    for w in mine:
        if w.window_id in listed:  # at 0 J where no sampler measured its devices
            out.setdefault(w.stage, 0.0)
    memo: dict = {}
    ids = {w.window_id for w in mine}
    for device_id, kind in devices:
        own = [w for w in mine if w.claims(device_id, kind)]
        if not own:
            continue
        # every other window overlapping them, this trial's settled ones included
        others = _neighbours(state, node_id, device_id, kind, own,
                             lambda w: w.window_id in ids, memo)
        windows = own + others
        facts = {w.window_id: _facts(state, w, memo) for w in windows}
        tl = state.timeline(node_id, device_id)
        charged, _, _ = _split(windows, {k: f[0] for k, f in facts.items()}, tl,
                               kind in SHARED_KINDS, {k: f[1] for k, f in facts.items()},
                               memo=memo)
        for w in own:
            out[w.stage] = out.get(w.stage, 0.0) + charged[w.window_id]
            if w.window_id in settling:
                settled_j[w.window_id].append(charged[w.window_id])
        cache.timelines[(node_id, device_id)] = tl
    for w in mine:
        if w.window_id in settling:
            cache.settle(trial_id, node_id, w, _facts(state, w, memo)[0][1],
                         math.fsum(settled_j[w.window_id]), w.window_id in listed)
    if settling:
        cache.horizon[node_id] = max(cache.horizon.get(node_id, -math.inf), freeze)
