"""The pieces of one device's measured energy over time, built from every sampler that read it.

The ledger asks one question of a device: how many joules over [a, b], and how much of [a, b]
was measured at all. This module answers it without inventing joules:

- Each sampler's readings of the device form one *sequence*, in the order they were read. Two
  consecutive readings make a *segment*: the counter difference where both carry a counter
  (exact whatever the power did in between), else the trapezoid of their powers (only across
  segments no longer than `max_gap_s`: over a longer one it would be a guess).
- A counter step is checked against physics: at most `MAX_DEVICE_POWER_W` over the segment. A
  decrease is a wrap where the counter has a range (RAPL), a reset where the new value is
  itself plausible (a driver reload restarts NVML's counter at 0), and otherwise a
  discontinuity: a clock that stepped, or two readers interleaved. Such a segment is
  *unmeasured* (falls back to its powers where it can), never a billion joules.
- Sequences are merged by priority (the one that began first wins where two overlap: an old
  sampler and its replacement count once); stretches no sequence covers are unmeasured.
- Around the measured stretches the edge power is held for at most `max_hold_s` (a window that
  ends between two polls); that part is reported as `held_s`, method "interpolated".
- Idle baselines are properties of stretches: each piece carries the idle power of the
  baseline valid for it (see `idle_for`).

Pieces carry linear power (constant for counter segments), so any sub-interval's energy is
exact, and a piece never changes once a later reading arrives: reported figures stay put.
`timeline.py` answers the queries over them (`DeviceTimeline`); `incremental.py` extends them
as batches arrive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# No single metered device draws more (a GB200 superchip is ~2.7 kW): a faster counter step is
# a glitch or a different counter, not energy.
MAX_DEVICE_POWER_W = 5000.0
JITTER_J = 1.0  # counter decreases smaller than this are read-order jitter, not resets
HELD, MEASURED = -1, 0  # piece kinds (the method code of a held piece is HELD)


@dataclass(frozen=True)
class Sequence:
    """One sampler's readings of one device in read order (times on the node's timeline)."""

    t_s: np.ndarray
    power_w: np.ndarray  # NaN where absent
    counter_j: np.ndarray  # NaN where absent
    method: np.ndarray  # int code per reading into the caller's label table (counter path)
    power_method: np.ndarray  # int code per reading for its power path
    range_j: float | None
    idle_w: np.ndarray | None = None  # per reading: idle power valid at that time


@dataclass
class Segments:
    """Disjoint pieces sorted by start: [a, b], power linear from pa to pb."""

    a: np.ndarray
    b: np.ndarray
    pa: np.ndarray
    pb: np.ndarray
    method: np.ndarray  # int codes; HELD for held edges
    idle_w: np.ndarray
    gap: np.ndarray  # bool: a counter segment longer than max_gap_s (measured, but flagged)
    resets: int = 0
    discontinuities: int = 0

    @staticmethod
    def empty() -> Segments:
        z = np.empty(0)
        return Segments(z, z, z, z, np.empty(0, dtype=np.int64), z, np.empty(0, dtype=bool))

    def take(self, sel: np.ndarray) -> Segments:
        return Segments(self.a[sel], self.b[sel], self.pa[sel], self.pb[sel], self.method[sel],
                        self.idle_w[sel], self.gap[sel], self.resets, self.discontinuities)

    def __len__(self) -> int:
        return int(self.a.shape[0])


def sequence_segments(seq: Sequence, max_gap_s: float) -> Segments:
    t, p, c = seq.t_s, seq.power_w, seq.counter_j
    if t.size < 2:
        return Segments.empty()
    dt = np.diff(t)
    step = np.diff(c)
    slack = np.maximum(dt, 0.0) * MAX_DEVICE_POWER_W + JITTER_J
    has_c = ~np.isnan(c[:-1]) & ~np.isnan(c[1:]) & (dt > 0)
    energy = step.copy()
    neg = has_c & (step < 0)
    wrap = np.zeros_like(neg)
    if seq.range_j:  # a wrap only where the wrapped step is physically possible
        wrap = neg & (step + seq.range_j <= slack)
        energy[wrap] += seq.range_j
    jitter = neg & ~wrap & (step >= -JITTER_J)  # kept as is: the next step makes it up
    reset = neg & ~wrap & ~jitter & (c[1:] <= slack)
    energy[reset] = c[1:][reset]
    bad = (neg & ~wrap & ~jitter & ~reset) | (energy > slack)
    use_c = has_c & ~bad
    has_p = ~np.isnan(p[:-1]) & ~np.isnan(p[1:]) & (dt > 0) & (dt <= max_gap_s)
    use_p = ~use_c & has_p
    keep = use_c | use_p
    with np.errstate(divide="ignore", invalid="ignore"):
        seg_w = np.where(use_c, energy / np.where(dt > 0, dt, 1.0), 0.0)
    pa = np.where(use_c, seg_w, p[:-1])
    pb = np.where(use_c, seg_w, p[1:])
    method = np.where(use_c, seq.method[1:], seq.power_method[1:])
    idle = seq.idle_w[:-1] if seq.idle_w is not None else np.zeros(dt.shape)
    out = Segments(t[:-1].copy(), t[1:].copy(), pa, pb, method.astype(np.int64), idle,
                   use_c & (dt > max_gap_s), int(reset.sum()), int((has_c & bad).sum()))
    out = out.take(keep)
    return _clip_overlaps(out)


def _clip_overlaps(s: Segments) -> Segments:
    """Within one sequence segments follow each other; on a wall clock that stepped back they
    can overlap: cut each to start where the previous ones ended."""
    if len(s) < 2:
        return s
    prev_end = np.concatenate(([-np.inf], np.maximum.accumulate(s.b)[:-1]))
    if not (s.a < prev_end).any():
        return s
    new_a = np.maximum(s.a, prev_end)
    ok = new_a < s.b
    span = np.where(s.b > s.a, s.b - s.a, 1.0)
    s.pa = s.pa + (s.pb - s.pa) * (new_a - s.a) / span
    s.a = new_a
    return s.take(ok)


def merge(parts: list[Segments]) -> Segments:
    """Union of sequences' pieces, earlier parts first where they overlap."""
    if not parts:
        return Segments.empty()
    out = parts[0]
    for nxt in parts[1:]:
        if len(nxt) == 0:
            continue
        free = _free_intervals(out)
        pieces = [_within(nxt, lo, hi) for lo, hi in free]
        resets, disc = out.resets + nxt.resets, out.discontinuities + nxt.discontinuities
        out = _concat([out, *pieces])
        # a sequence's resets count once, however many free intervals its pieces fall in
        out.resets, out.discontinuities = resets, disc
    return out


def bridge(pieces: Segments, seqs: list[Sequence], max_gap_s: float) -> Segments:
    """Measure the holes between two samplers' sequences from the counter itself.

    A hardware counter is absolute: the last reading of the sampler that stopped and the first
    of the one that took over (in another process, maybe) are readings of one counter, so
    their difference is the energy in between, exactly, when it is physically plausible (no
    reset, and for a wrapping counter no room for a wrap it could hide)."""
    if len(pieces) < 2 or len(seqs) < 2:
        return pieces
    holes = np.nonzero(pieces.b[:-1] < pieces.a[1:])[0]
    if holes.size == 0:
        return pieces
    ends = [_edge_counter(q, last=True) for q in seqs]
    starts = [_edge_counter(q, last=False) for q in seqs]
    added = []
    for i in holes:
        h0, h1 = float(pieces.b[i]), float(pieces.a[i + 1])
        left = [(k, e) for k, e in enumerate(ends) if e is not None and e[0] == h0]
        right = [(k, e) for k, e in enumerate(starts) if e is not None and e[0] == h1]
        if not left or not right or left[0][0] == right[0][0]:
            continue
        (_, (t0, c0, _, rng)), (_, (t1, c1, code, _)) = left[0], right[0]
        step, dt = c1 - c0, t1 - t0
        fits = 0 <= step <= dt * MAX_DEVICE_POWER_W + JITTER_J
        if not fits or (rng and dt * MAX_DEVICE_POWER_W >= rng):
            continue
        w = step / dt
        added.append(Segments(np.array([h0]), np.array([h1]), np.array([w]), np.array([w]),
                              np.array([code]), np.array([pieces.idle_w[i]]),
                              np.array([h1 - h0 > max_gap_s])))
    return _concat([pieces, *added]) if added else pieces


def _edge_counter(q: Sequence, last: bool) -> tuple[float, float, int, float | None] | None:
    ok = np.nonzero(~np.isnan(q.counter_j))[0]
    if ok.size == 0:
        return None
    k = int(ok[-1] if last else ok[0])
    return float(q.t_s[k]), float(q.counter_j[k]), int(q.method[k]), q.range_j


def _free_intervals(s: Segments) -> list[tuple[float, float]]:
    if len(s) == 0:
        return [(-np.inf, np.inf)]
    holes = np.nonzero(s.b[:-1] < s.a[1:])[0]
    free = [(-np.inf, float(s.a[0]))]
    free += [(float(s.b[i]), float(s.a[i + 1])) for i in holes]
    free.append((float(s.b[-1]), np.inf))
    return free


def _within(s: Segments, lo: float, hi: float) -> Segments:
    sel = (s.b > lo) & (s.a < hi)
    part = s.take(sel)
    if len(part) == 0:
        return part
    span = np.where(part.b > part.a, part.b - part.a, 1.0)
    slope = (part.pb - part.pa) / span
    new_a, new_b = np.maximum(part.a, lo), np.minimum(part.b, hi)
    part.pa, part.pb = part.pa + slope * (new_a - part.a), part.pa + slope * (new_b - part.a)
    part.a, part.b = new_a, new_b
    return part


def _concat(parts: list[Segments]) -> Segments:
    fields = ("a", "b", "pa", "pb", "method", "idle_w", "gap")
    cat = {f: np.concatenate([getattr(p, f) for p in parts]) for f in fields}
    order = np.argsort(cat["a"], kind="stable")
    return Segments(**{f: v[order] for f, v in cat.items()},
                    resets=sum(p.resets for p in parts),
                    discontinuities=sum(p.discontinuities for p in parts))


def with_holds(s: Segments, max_hold_s: float, prev_b: float = -np.inf) -> Segments:
    """Add held-power pieces of at most max_hold_s around each run of measured pieces (split
    at the midpoint where two runs are closer than twice that).

    `prev_b` is the end of the measured piece just before `s` (-inf: none), so that the holds
    of a tail of the pieces come out exactly as those of the whole: a first piece that
    continues that one starts no run, one after a hole gets a hold split with it."""
    if len(s) == 0 or max_hold_s <= 0:
        return s
    holes = np.nonzero(s.b[:-1] < s.a[1:])[0] + 1  # runs that start after a hole
    ends = np.concatenate((holes - 1, [len(s) - 1]))  # every run's last piece
    next_start = np.concatenate((s.a[holes], [np.inf]))
    if prev_b < s.a[0]:
        starts = np.concatenate(([0], holes))
        prev_end = np.concatenate(([prev_b], s.b[holes - 1]))
    else:  # the first piece continues the run before `s`: no hold before it
        starts, prev_end = holes, s.b[holes - 1]
    lo = np.maximum(s.a[starts] - max_hold_s, (prev_end + s.a[starts]) / 2)
    hi = np.minimum(s.b[ends] + max_hold_s, (s.b[ends] + next_start) / 2)
    before = Segments(lo, s.a[starts].copy(), s.pa[starts], s.pa[starts],
                      np.full(len(starts), HELD), s.idle_w[starts], np.zeros(len(starts), bool))
    after = Segments(s.b[ends].copy(), hi, s.pb[ends], s.pb[ends], np.full(len(ends), HELD),
                     s.idle_w[ends], np.zeros(len(ends), bool))
    out = _concat([s, before.take(before.b > before.a), after.take(after.b > after.a)])
    out.resets, out.discontinuities = s.resets, s.discontinuities
    return out
