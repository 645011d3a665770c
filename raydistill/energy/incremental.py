"""A device's timeline kept up to date as batches arrive, at a cost in proportion to them.

A live run asks for its energy every few seconds while its samplers send a batch every few
seconds; rebuilding the device's timeline from the start for each query costs the whole run
(seconds per node after a day). The common batch is an *append*: a sampler's next batch, read
after everything the device has so far. It only changes the end of the timeline: the pieces
from the sampler's last reading on, and the held edge after the last measured piece. Those are
recomputed with the same code and the same arithmetic as a full build (`segments.py`), so the
appended timeline equals a rebuilt one exactly. Anything else (a new sampler's sequence, a late
or out-of-order batch, a changed idle baseline or clock, a counter whose edges a bridge between
two samplers uses, a changed counter range) makes the next query rebuild, correctly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from raydistill.energy.samples import DeviceInfo
from raydistill.energy.segments import (
    HELD,
    Sequence,
    _concat,
    _within,
    bridge,
    merge,
    sequence_segments,
    with_holds,
)
from raydistill.energy.timeline import DeviceTimeline

Baselines = tuple[tuple[float, float], ...]  # (end of its measurement, idle W), by end
Code = Callable[[str], int]  # method label -> int code (the ledger's table)


@dataclass
class Chunk:
    seq: int
    t_wall: np.ndarray
    t_mono: np.ndarray | None
    p: np.ndarray
    e: np.ndarray
    info: DeviceInfo  # one per chunk: a batch's readings of a device by one source

    def times(self, mono: bool) -> np.ndarray:
        return self.t_mono if mono and self.t_mono is not None else self.t_wall


@dataclass
class _Last:
    """A sampler's facts that decide whether its next chunk appends."""

    max_seq: int
    first_t: float  # its first reading: sequences that began first win overlaps
    ranges: frozenset  # counter ranges of its chunks (one: the sequence's; several: none)
    reading: tuple[float, float, float, str] | None  # last in read order: t, p, e, method


@dataclass
class Entry:
    """A cached timeline and what it was built from."""

    tl: DeviceTimeline
    mono: bool
    baselines: Baselines
    last: dict[str, _Last]
    max_t: float  # the device's latest reading, any sampler
    first: str  # the sampler whose sequence has priority
    pending: list[tuple[str, tuple[float, float, float, str], Chunk]] = field(
        default_factory=list)


def _range_of(ranges: frozenset) -> float | None:
    return next(iter(ranges)) if len(ranges) == 1 else None


def _power_label(method: str) -> str:
    return "sampled" if method == "counter" else method


def idle_at(baselines: Baselines, t: np.ndarray) -> np.ndarray:
    """Idle power valid at each time: the latest valid baseline measured before it (the
    earliest one for times before any)."""
    if not baselines:
        return np.zeros(t.shape)
    ends = np.array([b[0] for b in baselines])
    idx = np.clip(np.searchsorted(ends, t, side="right") - 1, 0, None)
    return np.array([b[1] for b in baselines])[idx]


def _sequence(chunks: list[Chunk], mono: bool, baselines: Baselines, code: Code,
              head: tuple[float, float, float, str] | None, range_j: float | None) -> Sequence:
    """One sampler's readings as a Sequence; `head` is a reading to put first (the one before
    the chunks, for a tail)."""
    ts, ps, es, ms, pms = [], [], [], [], []
    if head is not None:
        ts.append([head[0]])
        ps.append([head[1]])
        es.append([head[2]])
        ms.append([code(head[3])])
        pms.append([code(_power_label(head[3]))])
    for c in chunks:
        n = len(c.t_wall)
        ts.append(c.times(mono))
        ps.append(c.p)
        es.append(c.e)
        ms.append(np.full(n, code(c.info.method)))
        pms.append(np.full(n, code(_power_label(c.info.method))))
    t = np.concatenate(ts).astype(float)
    return Sequence(t, np.concatenate(ps).astype(float), np.concatenate(es).astype(float),
                    np.concatenate(ms).astype(np.int64), np.concatenate(pms).astype(np.int64),
                    range_j, idle_at(baselines, t))


def _last_reading(c: Chunk, mono: bool) -> tuple[float, float, float, str] | None:
    if len(c.t_wall) == 0:
        return None
    return float(c.times(mono)[-1]), float(c.p[-1]), float(c.e[-1]), c.info.method


def build(chunks_by_sampler: dict[str, list[Chunk]], mono: bool, baselines: Baselines,
          code: Code, max_gap_s: float, max_hold_s: float) -> Entry:
    """The device's timeline from all its readings."""
    seqs, last = [], {}
    max_t = -math.inf
    for sampler_id, chunks in chunks_by_sampler.items():
        chunks = sorted(chunks, key=lambda c: c.seq)  # read order: batches, then rows
        ranges = frozenset(c.info.counter_range_j for c in chunks)
        seq = _sequence(chunks, mono, baselines, code, None, _range_of(ranges))
        first_t = float(seq.t_s.min()) if seq.t_s.size else math.inf
        seqs.append((first_t, sampler_id, seq))
        reading = next((r for r in (_last_reading(c, mono) for c in reversed(chunks))
                        if r is not None), None)
        last[sampler_id] = _Last(chunks[-1].seq if chunks else -1, first_t, ranges, reading)
        if seq.t_s.size:
            max_t = max(max_t, float(seq.t_s.max()))
    seqs.sort(key=lambda x: (x[0], x[1]))  # the sampler that began first wins overlaps
    parts = [sequence_segments(seq, max_gap_s) for _, _, seq in seqs]
    merged = bridge(merge(parts), [seq for _, _, seq in seqs], max_gap_s)
    pieces = with_holds(merged, max_hold_s)
    all_t = np.concatenate([seq.t_s for _, _, seq in seqs]) if seqs else np.empty(0)
    return Entry(DeviceTimeline(pieces, all_t), mono, baselines, last, max_t,
                 seqs[0][1] if seqs else "")


def note(entry: Entry, sampler_id: str, chunk: Chunk) -> bool:
    """Queue a new chunk for appending; False if it cannot append (the entry is then stale)."""
    last = entry.last.get(sampler_id)
    if last is None or last.reading is None or chunk.seq <= last.max_seq:
        return False  # a new sequence, or a batch resent or read out of order
    ranges = last.ranges | {chunk.info.counter_range_j}
    if _range_of(ranges) != _range_of(last.ranges):
        return False  # the sequence's counter range changes for all of it
    last.ranges, last.max_seq = ranges, chunk.seq
    reading = _last_reading(chunk, entry.mono)
    if reading is None:
        return True
    t = chunk.times(entry.mono)
    t_last = last.reading[0]
    if t_last < entry.max_t or float(t.min()) < t_last:
        return False  # not after everything the device has: merge, clips and holds move
    if not np.isnan(chunk.e).all() and math.isnan(last.reading[2]):
        # the sequence's first or last counter reading moves: bridges between samplers use it
        return False
    entry.pending.append((sampler_id, last.reading, chunk))
    last.reading = reading
    entry.max_t = max(entry.max_t, float(t.max()))
    return True


def refresh(entry: Entry, mono: bool, baselines: Baselines, code: Code, max_gap_s: float,
            max_hold_s: float) -> bool:
    """Append the queued chunks; False if the entry must be rebuilt instead (its clock or its
    idle baselines changed)."""
    if entry.mono != mono or entry.baselines != baselines:
        return False
    pending, entry.pending = entry.pending, []
    i = 0
    while i < len(pending):  # consecutive chunks of one sampler append as one tail
        sampler_id, head, _ = pending[i]
        j = i
        while j < len(pending) and pending[j][0] == sampler_id:
            j += 1
        chunks = [c for _, _, c in pending[i:j]]
        _append(entry, sampler_id, head, chunks, code, max_gap_s, max_hold_s)
        i = j
    return True


def _append(entry: Entry, sampler_id: str, head: tuple[float, float, float, str],
            chunks: list[Chunk], code: Code, max_gap_s: float, max_hold_s: float) -> None:
    seq = _sequence(chunks, entry.mono, entry.baselines, code, head,
                    _range_of(entry.last[sampler_id].ranges))
    seg = sequence_segments(seq, max_gap_s)
    if sampler_id != entry.first:  # `merge` passes a later sequence's pieces through this
        seg = _within(seg, -np.inf, np.inf) if len(seg) else seg
    tl = entry.tl
    s = tl.s
    measured = np.flatnonzero(s.method[-4:] != HELD)  # the last measured piece is near the end
    if measured.size == 0:  # nothing measured yet (hence no holds either)
        ctx, prev_b, keep_from = seg, -np.inf, 0
    else:
        k = len(s) - min(4, len(s)) + int(measured[-1])
        ctx = _concat([s.take(np.array([k])), seg])
        ctx.resets, ctx.discontinuities = seg.resets, seg.discontinuities
        before = np.flatnonzero(s.method[max(0, k - 4):k] != HELD)
        prev_b = float(s.b[max(0, k - 4) + int(before[-1])]) if before.size else -np.inf
        keep_from = k
    out = with_holds(ctx, max_hold_s, prev_b)
    # keep every piece before the first one recomputed (the last measured one's held start)
    keep = int(np.searchsorted(s.a, out.a[0], side="left")) if len(out) else keep_from
    tl.replace_tail(min(keep, keep_from), out, np.sort(seq.t_s[1:]))
