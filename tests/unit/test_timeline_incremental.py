"""The live timeline: a batch that appends extends the cached timeline, and whatever the batches
do (a second sampler, resent, late or out-of-order batches, counter resets, gaps, new idle
baselines, windows moving, a clock stepping back), the timeline a query sees is exactly the one a
build from scratch gives."""

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raydistill.energy.ledger import LedgerState
from raydistill.energy.samples import DeviceInfo, SampleBatch, Window
from raydistill.energy.segments import HELD

NODE = "n1"
DEVS = (DeviceInfo("GPU-0", "gpu", "nvml-counter", "counter"),
        DeviceInfo("cpu:package-0", "cpu", "rapl", "counter", 5000.0),
        DeviceInfo("GPU-1", "gpu", "nvml-power", "sampled"))


class Scenario:
    """Random batches from up to two samplers, fed to two ledgers alike."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.live, self.fresh = LedgerState(), LedgerState()
        self.t = {"s1": 0.0, "s2": 0.0}
        self.seq = {"s1": 0, "s2": 0}
        self.counter = {"s1": np.zeros(len(DEVS)), "s2": np.full(len(DEVS), 7.0)}
        self.held_back: list[SampleBatch] = []
        self.sent: list[SampleBatch] = []
        self.open: list[str] = []
        self.n_windows = 0

    def apply(self, fn) -> None:
        for state in (self.live, self.fresh):
            fn(state)

    def batch(self, sampler: str) -> SampleBatch:
        rng = self.rng
        n = int(rng.integers(1, 6))
        steps = rng.uniform(0.05, 0.4, n)
        if rng.random() < 0.1:
            steps[0] += 3.0  # longer than max_gap_s: a hole
        if rng.random() < 0.05:
            steps[0] = -0.3  # the clock stepped back
        t = self.t[sampler] + np.cumsum(steps)
        self.t[sampler] = float(t[-1])
        power = rng.uniform(50.0, 300.0, (n, len(DEVS)))
        energy = self.counter[sampler] + np.cumsum(power * np.abs(steps)[:, None], axis=0)
        if rng.random() < 0.05:
            energy[-1, 0] = 3.0  # a driver reload restarts the counter
        energy[:, 1] %= 5000.0  # RAPL wraps
        energy[:, 2] = np.nan  # power only
        if rng.random() < 0.1:
            energy[rng.integers(n), 0] = np.nan  # a failed counter read
        if rng.random() < 0.05:
            power[rng.integers(n), :] = np.nan
        self.counter[sampler] = np.nan_to_num(energy[-1], nan=0.0)
        idle = {}
        span = None
        if rng.random() < 0.08:
            idle = {d.device_id: float(rng.uniform(20, 60)) for d in DEVS}
            span = (float(t[0]), float(t[-1]))
        self.seq[sampler] += 1
        k = len(DEVS)
        return SampleBatch(sampler, self.seq[sampler], NODE, DEVS,
                           np.tile(np.arange(k, dtype=np.int32), n), np.repeat(t, k) + 1000.0,
                           power.ravel(), energy.ravel(), idle, span, np.repeat(t, k))

    def send(self, b: SampleBatch) -> None:
        self.sent.append(b)
        self.apply(lambda s: s.ingest(b))

    def step(self) -> None:
        rng, r = self.rng, self.rng.random()
        sampler = "s2" if (self.t["s2"] > 0 and rng.random() < 0.5) else "s1"
        if r < 0.6:
            self.send(self.batch(sampler))
        elif r < 0.67:
            if self.t["s2"] == 0.0:  # a second sampler starts (a replacement, or alongside)
                self.t["s2"] = self.t["s1"] + float(rng.choice([-1.0, 0.5, 4.0]))
            self.send(self.batch("s2"))
        elif r < 0.74 and self.sent:
            self.send(self.sent[int(rng.integers(len(self.sent)))])  # resent after a lost ack
        elif r < 0.8:
            self.held_back.append(self.batch(sampler))  # arrives later, out of order
        elif r < 0.85 and self.held_back:
            self.send(self.held_back.pop(0))
        elif r < 0.93:
            self.window_event()
        else:
            self.check()
        if self.rng.random() < 0.4:  # a live query between batches: the next ones append
            self.live.trial_rows("trial1")

    def window_event(self) -> None:
        t = max(self.t.values()) - float(self.rng.uniform(0.0, 1.0))
        if self.open and self.rng.random() < 0.5:
            wid = self.open.pop(0)
            ev = {"type": "window_close", "window_id": wid, "t_end_s": t + 1000.0,
                  "tokens": 1, "cpu_time_s": 0.5, "t_end_mono_s": t}
        else:
            self.n_windows += 1
            wid = f"w{self.n_windows}"
            self.open.append(wid)
            devices = ("GPU-0",) if self.rng.random() < 0.5 else ("GPU-0", "GPU-1")
            w = Window(wid, f"trial{self.n_windows % 2}", "stage", NODE, devices, t + 1000.0,
                       t_start_mono_s=t)
            ev = {"type": "window_open", **w.__dict__}
        self.apply(lambda s: s.apply_event(dict(ev)))

    def check(self) -> None:
        self.fresh._timelines.clear()  # the reference: built from all readings
        for dev in DEVS:
            if (NODE, dev.device_id) not in self.live._series:
                continue
            assert_same(self.live, self.fresh, dev.device_id, self.rng)
        for trial in ("trial0", "trial1"):
            assert self.live.trial_rows(trial) == self.fresh.trial_rows(trial)


def labels(state: LedgerState, codes: np.ndarray) -> list[str]:
    return ["held" if c == HELD else state._methods[c] for c in codes]


def assert_same(live: LedgerState, fresh: LedgerState, dev: str, rng) -> None:
    a, b = live.timeline(NODE, dev), fresh.timeline(NODE, dev)
    sa, sb = a.s, b.s
    for f in ("a", "b", "pa", "pb", "idle_w", "gap"):
        assert np.array_equal(getattr(sa, f), getattr(sb, f), equal_nan=True), f
    assert labels(live, sa.method) == labels(fresh, sb.method)
    assert (sa.resets, sa.discontinuities) == (sb.resets, sb.discontinuities)
    assert np.array_equal(a.samples, b.samples)
    assert (a.peak_w, a.end_s) == (b.peak_w, b.end_s)
    hi = float(sa.b[-1]) + 1.0 if len(sa) else 1.0
    for lo_s, hi_s in [(-1.0, hi), *np.sort(rng.uniform(-1.0, hi, (8, 2)), axis=1)]:
        for name in ("energy", "idle", "measured", "held"):
            assert a.between(name, lo_s, hi_s) == b.between(name, lo_s, hi_s), name
        assert sorted(labels(live, np.array(list(a.methods(lo_s, hi_s))))) == \
            sorted(labels(fresh, np.array(list(b.methods(lo_s, hi_s)))))
        assert a.gaps(lo_s, hi_s) == b.gaps(lo_s, hi_s)
        assert a.cuts_gap(lo_s, hi_s) == b.cuts_gap(lo_s, hi_s)
        assert a.n_samples(lo_s, hi_s) == b.n_samples(lo_s, hi_s)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_incremental_timeline_equals_a_build_from_scratch(seed):
    sc = Scenario(seed)
    for _ in range(60):
        sc.step()
    while sc.held_back:
        sc.send(sc.held_back.pop())
    sc.check()


def test_an_appended_batch_extends_the_cached_timeline():
    sc = Scenario(1)
    for _ in range(20):
        sc.send(sc.batch("s1"))
    before = sc.live.timeline(NODE, "GPU-0")
    sc.send(sc.batch("s1"))
    assert sc.live.timeline(NODE, "GPU-0") is before  # extended, not rebuilt
    sc.check()
    sc.send(sc.sent[3])  # a resend: a no-op
    assert sc.live.timeline(NODE, "GPU-0") is before
    late = sc.batch("s1")
    sc.send(sc.batch("s1"))
    sc.send(late)  # read before the one already in: the next query rebuilds
    assert sc.live.timeline(NODE, "GPU-0") is not before
    sc.check()


def _query_ms(sc: Scenario, n_batches: int) -> float:
    for _ in range(n_batches):
        sc.send(sc.batch("s1"))
    sc.live.trial_rows("trial1")
    costs = []
    for _ in range(5):
        sc.send(sc.batch("s1"))
        t0 = time.perf_counter()
        sc.live.trial_rows("trial1")
        costs.append(time.perf_counter() - t0)
    return 1e3 * sorted(costs)[2]


def test_a_live_query_costs_the_new_samples_not_the_run():
    """Before: each new batch dropped the cached timeline and the query rebuilt it from the
    start, so its cost grew with the run."""
    short, long_ = Scenario(2), Scenario(2)
    for sc in (short, long_):
        w = Window("w1", "trial1", "training", NODE, ("GPU-0",), 1000.0, t_start_mono_s=0.0)
        sc.apply(lambda s, w=w: s.apply_event({"type": "window_open", **w.__dict__}))
    short_ms = _query_ms(short, 50)
    long_ms = _query_ms(long_, 5000)  # 100× the samples
    assert long_ms < 4 * short_ms + 1.0, (short_ms, long_ms)


if __name__ == "__main__":
    pytest.main([__file__])
