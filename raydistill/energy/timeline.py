"""One device's measured energy over time: queries over its merged pieces (`DeviceTimeline`).

The ledger asks one question of a device: how many joules over [a, b], and how much of [a, b]
was measured at all. The pieces are built in `segments.py` (counter or trapezoid segments per
sampler's sequence, merged by priority, held edges; nothing invented); this module keeps them
in growable cumulative arrays so every query is a binary search.
"""

from __future__ import annotations

import numpy as np

from raydistill.energy.segments import HELD, Segments


class _Column:
    """An array that grows at its end in amortised O(new items) and can be cut back: a live
    timeline appends a few pieces per batch to hundreds of thousands."""

    def __init__(self, dtype: type, first: list | None = None) -> None:
        self.buf = np.empty(64, dtype=dtype)
        self.n = 0
        if first:
            self.extend(np.asarray(first, dtype=dtype))

    def view(self) -> np.ndarray:
        return self.buf[: self.n]

    def extend(self, x: np.ndarray) -> None:
        need = self.n + len(x)
        if need > len(self.buf):
            grown = np.empty(max(need, 2 * len(self.buf)), dtype=self.buf.dtype)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        self.buf[self.n : need] = x
        self.n = need

    def extend_accumulated(self, x: np.ndarray, op: np.ufunc, start: float) -> None:
        """Append the running `op` (add, maximum) of x continued from `start`: the same
        sequence of operations as over the whole array, so the values are bit-identical."""
        self.extend(op.accumulate(np.concatenate(([start], x)).astype(self.buf.dtype))[1:])


_FIELDS = (("a", float), ("b", float), ("pa", float), ("pb", float), ("method", np.int64),
           ("idle_w", float), ("gap", bool))


class DeviceTimeline:
    """Queries over merged pieces: energy, idle energy, measured / held seconds, methods.

    Every query is a binary search on cumulative arrays (O(log n), whatever the window's
    length), and the pieces can be cut back and extended at the end (`replace_tail`), so a live
    timeline follows new samples at a cost proportional to them, not to the run."""

    def __init__(self, pieces: Segments, sample_t_s: np.ndarray) -> None:
        self._col = {f: _Column(dt) for f, dt in _FIELDS}
        self._cum = {k: _Column(float, [0.0])
                     for k in ("energy", "idle", "measured", "held", "gap_s")}
        self._gap_n = _Column(np.int64, [0])
        self._by_method: dict[int, _Column] = {}  # code -> cumulative count of its pieces
        self._peak = _Column(float)  # running max of the pieces' power
        self._end = _Column(float)  # running max of the measured pieces' ends
        self._samples = _Column(float)
        self.resets = self.discontinuities = 0
        self.replace_tail(0, pieces, np.sort(sample_t_s))

    def __len__(self) -> int:
        return self._col["a"].n

    @property
    def s(self) -> Segments:
        c = {f: col.view() for f, col in self._col.items()}
        return Segments(**c, resets=self.resets, discontinuities=self.discontinuities)

    @property
    def samples(self) -> np.ndarray:
        return self._samples.view()

    @property
    def peak_w(self) -> float:
        n = len(self)
        return float(self._peak.buf[n - 1]) if n else 0.0

    @property
    def end_s(self) -> float:
        n = len(self)
        return float(self._end.buf[n - 1]) if n else -np.inf

    def replace_tail(self, keep: int, pieces: Segments, new_samples_sorted: np.ndarray) -> None:
        """Keep the first `keep` pieces, append `pieces` (all after them) and the sample times
        (sorted, none before the present ones); `pieces`' resets and discontinuities add up."""
        for f, col in self._col.items():
            col.n = keep
            col.extend(getattr(pieces, f))
        dur = pieces.b - pieces.a
        held = pieces.method == HELD
        parts = {"energy": 0.5 * (pieces.pa + pieces.pb) * dur, "idle": pieces.idle_w * dur,
                 "measured": np.where(held, 0.0, dur), "held": np.where(held, dur, 0.0),
                 "gap_s": np.where(pieces.gap, dur, 0.0)}
        for name, x in parts.items():
            self._extend_cum(self._cum[name], keep, x)
        self._extend_cum(self._gap_n, keep, pieces.gap.astype(np.int64))
        for code in np.unique(pieces.method):
            if int(code) not in self._by_method:  # counts 0 up to here
                self._by_method[int(code)] = _Column(np.int64, [0] * (keep + 1))
        for code, col in self._by_method.items():
            self._extend_cum(col, keep, (pieces.method == code).astype(np.int64))
        for col, x in ((self._peak, np.maximum(pieces.pa, pieces.pb)),
                       (self._end, np.where(held, -np.inf, pieces.b))):
            col.n = keep
            col.extend_accumulated(x, np.maximum, col.buf[keep - 1] if keep else -np.inf)
        self._samples.extend(new_samples_sorted)
        self.resets += pieces.resets
        self.discontinuities += pieces.discontinuities

    @staticmethod
    def _extend_cum(col: _Column, keep: int, x: np.ndarray) -> None:
        col.n = keep + 1
        col.extend_accumulated(x, np.add, col.buf[keep])

    def _at(self, name: str, t: float) -> float:
        """Cumulative `name` from -inf up to t."""
        c, cum = self._col, self._cum[name].buf
        i = int(np.searchsorted(c["a"].view(), t, side="right")) - 1
        if i < 0:
            return 0.0
        base = cum[i]
        a, b = c["a"].buf[i], c["b"].buf[i]
        if t >= b:
            return float(cum[i + 1])
        x = t - a
        held = c["method"].buf[i] == HELD
        if name == "energy":
            pa, pb = c["pa"].buf[i], c["pb"].buf[i]
            part = pa * x + 0.5 * ((pb - pa) / (b - a)) * x * x
        elif name == "idle":
            part = c["idle_w"].buf[i] * x
        elif name == "measured":
            part = 0.0 if held else x
        else:
            part = x if held else 0.0
        return float(base + part)

    def between(self, name: str, a: float, b: float) -> float:
        return self._at(name, b) - self._at(name, a) if b > a else 0.0

    def at_many(self, name: str, t: np.ndarray) -> np.ndarray:
        """`_at` at every time of `t` in one pass (the same arithmetic, element by element):
        a query over many window edges costs one binary search of them all."""
        t = np.asarray(t, dtype=float)
        n = len(self)
        if n == 0:
            return np.zeros(t.shape)
        c, cum = self._col, self._cum[name].view()
        i = np.searchsorted(c["a"].view(), t, side="right") - 1
        j = np.clip(i, 0, n - 1)
        a, b = c["a"].view()[j], c["b"].view()[j]
        x = t - a
        held = c["method"].view()[j] == HELD
        if name == "energy":
            pa, pb = c["pa"].view()[j], c["pb"].view()[j]
            with np.errstate(divide="ignore", invalid="ignore"):
                part = pa * x + 0.5 * ((pb - pa) / (b - a)) * x * x
        elif name == "idle":
            part = c["idle_w"].view()[j] * x
        elif name == "measured":
            part = np.where(held, 0.0, x)
        else:
            part = np.where(held, x, 0.0)
        inside = cum[j] + part
        return np.where(i < 0, 0.0, np.where(t >= b, cum[j + 1], inside))

    def _range(self, a: float, b: float) -> tuple[int, int]:
        """Indices [lo, hi) of the pieces that meet (a, b): pieces are disjoint and sorted, so
        their ends are sorted too."""
        lo = int(np.searchsorted(self._col["b"].view(), a, side="right"))
        hi = int(np.searchsorted(self._col["a"].view(), b, side="left"))
        return lo, max(lo, hi)

    def methods(self, a: float, b: float) -> set[int]:
        lo, hi = self._range(a, b)
        return {code for code, col in self._by_method.items() if col.buf[hi] > col.buf[lo]}

    def gaps(self, a: float, b: float) -> tuple[int, float]:
        lo, hi = self._range(a, b)
        n = int(self._gap_n.buf[hi] - self._gap_n.buf[lo])
        if n == 0:
            return 0, 0.0
        c, cum = self._col, self._cum["gap_s"].buf
        secs = float(cum[hi] - cum[lo])
        if c["gap"].buf[lo] and c["a"].buf[lo] < a:  # only the part inside [a, b] counts
            secs -= a - c["a"].buf[lo]
        if c["gap"].buf[hi - 1] and c["b"].buf[hi - 1] > b:
            secs -= c["b"].buf[hi - 1] - b
        return n, float(secs)

    def cuts_gap(self, a: float, b: float) -> bool:
        """Does an edge of [a, b] fall inside a long counter segment? Its energy is exact over
        the segment, but the share on either side of the edge is interpolated."""
        c = self._col
        for t in (a, b):
            i = int(np.searchsorted(c["a"].view(), t, side="left")) - 1
            if i >= 0 and c["b"].buf[i] > t and c["gap"].buf[i]:
                return True
        return False

    def n_samples(self, a: float, b: float) -> int:
        s = self.samples
        return int(np.searchsorted(s, b, "right") - np.searchsorted(s, a))

    def spans(self, a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray | list]:
        """What `between`, `methods`, `gaps`, `cuts_gap` and `n_samples` give for each span
        [a[k], b[k]], computed for all spans at once (the same arithmetic): the rows of a
        day-long run's windows cost a few array operations, not a few per window."""
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        pos = b > a
        out: dict[str, np.ndarray | list] = {
            name: np.where(pos, self.at_many(name, b) - self.at_many(name, a), 0.0)
            for name in ("energy", "measured", "held")}
        n = len(self)
        s = self.samples
        out["n_samples"] = np.searchsorted(s, b, "right") - np.searchsorted(s, a)
        if n == 0:
            k = len(a)
            out.update(methods=[set() for _ in range(k)], n_gaps=np.zeros(k, dtype=np.int64),
                       gap_s=np.zeros(k), cuts_gap=np.zeros(k, dtype=bool))
            return out
        c = self._col
        ca, cb, gap = c["a"].view(), c["b"].view(), c["gap"].view()
        lo = np.searchsorted(cb, a, side="right")
        hi = np.maximum(lo, np.searchsorted(ca, b, side="left"))
        has = {code: col.view()[hi] > col.view()[lo] for code, col in self._by_method.items()}
        out["methods"] = [{code for code, h in has.items() if h[k]} for k in range(len(a))]
        gap_n = self._gap_n.view()
        n_gaps = gap_n[hi] - gap_n[lo]
        cum = self._cum["gap_s"].view()
        secs = cum[hi] - cum[lo]
        first, last = np.clip(lo, 0, n - 1), np.clip(hi - 1, 0, n - 1)
        secs = secs - np.where(gap[first] & (ca[first] < a), a - ca[first], 0.0)
        secs = secs - np.where(gap[last] & (cb[last] > b), cb[last] - b, 0.0)
        out["n_gaps"] = n_gaps
        out["gap_s"] = np.where(n_gaps == 0, 0.0, secs)
        cut = np.zeros(len(a), dtype=bool)
        for t in (a, b):
            i = np.searchsorted(ca, t, side="left") - 1
            j = np.clip(i, 0, n - 1)
            cut |= (i >= 0) & (cb[j] > t) & gap[j]
        out["cuts_gap"] = cut
        return out
