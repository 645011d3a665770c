"""A live poll (`trial_energy`) sums settled windows once and integrates only the rest: after
every new batch and window event, in order or late, it equals the trial's rows summed by stage
(which never use that cache), and a day of windows costs a poll no more than its last ones."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from raydistill.energy import LedgerState, Reading, SampleBatch, Window
from raydistill.energy.poll import PollCache
from raydistill.energy.samples import window_close_event, window_open_event

DEVICES = {"GPU-a": ("gpu", 200.0, 3.0), "GPU-b": ("gpu", 150.0, -1.0),
           "cpu:package-0": ("cpu", 60.0, 0.5)}
HZ = 5


def _batch(seq: int, t0: float, t1: float, devices=tuple(DEVICES),
           sampler: str = "s-n1") -> SampleBatch:
    times = np.arange(t0, t1, 1.0 / HZ)
    readings = [Reading(dev, kind, float(t), p0 + k * float(t % 17), None, "sim", "sampled",
                        float(t))
                for t in times for dev, (kind, p0, k) in DEVICES.items() if dev in devices]
    return SampleBatch.from_readings(sampler, seq, "n1", readings)


def _open(st: LedgerState, wid: str, trial: str, stage: str, t: float, devices,
          parent: str | None = None) -> None:
    w = Window(wid, trial, stage, "n1", tuple(devices), t, t_start_mono_s=t, parent_id=parent)
    st.apply_event(json.loads(window_open_event(w)))


def _close(st: LedgerState, wid: str, t: float, tokens: int = 10,
           cpu_s: float | None = None) -> None:
    st.apply_event(json.loads(window_close_event(wid, t, tokens, cpu_s, t)))


def _by_stage(st: LedgerState, trial: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in st.trial_rows(trial):
        out[r.stage] = out.get(r.stage, 0.0) + r.energy_j
    return out


@pytest.mark.parametrize("seed", range(6))
def test_the_poll_equals_the_rows_through_late_events_and_reclosed_windows(seed):
    rng = random.Random(seed)
    st = LedgerState()
    st._poll = PollCache(margin_s=3.0)  # settle within this short run
    t, seq, n = 0.0, 0, 0
    open_ids: list[str] = []
    closed: list[tuple[str, float]] = []
    missing: list[tuple[float, float]] = []  # GPU-b's readings its own sampler dropped
    for _step in range(70):
        if rng.random() < 0.1:  # GPU-b unread here: a second sampler sends it later
            st.ingest(_batch(seq, t, t + 2.0, devices=("GPU-a", "cpu:package-0")))
            missing.append((t, t + 2.0))
        else:
            st.ingest(_batch(seq, t, t + 2.0))
        seq, t = seq + 1, t + 2.0
        action = rng.random()
        if action < 0.3 or not open_ids:
            wid = f"w{n}"
            n += 1
            trial = rng.choice(["a", "b"])
            parent = rng.choice(open_ids) if open_ids and rng.random() < 0.4 else None
            late = rng.random() < 0.1  # an open event that arrives late: its start is past
            _open(st, wid, trial, rng.choice(["student_training", "evaluation"]),
                  t - (rng.uniform(5, 20) if late else rng.uniform(0, 1)),
                  rng.choice([("GPU-a",), ("GPU-b",), ("GPU-a", "GPU-b"), ("*",)]), parent)
            open_ids.append(wid)
        elif action < 0.75:
            wid = open_ids.pop(rng.randrange(len(open_ids)))
            end = t - rng.uniform(0, 1)
            _close(st, wid, end, cpu_s=rng.choice([None, rng.uniform(0.1, 30.0)]))
            closed.append((wid, end))
        elif action < 0.85 and closed:  # a checkpointed window closed again, later
            wid, _ = rng.choice(closed)
            _close(st, wid, t, cpu_s=rng.choice([None, rng.uniform(0.1, 30.0)]))
        elif action < 0.95 and missing:  # the late sampler: GPU-b's past changes (rebuilt)
            a, b = missing.pop(0)
            st.ingest(_batch(seq, a, b, devices=("GPU-b",), sampler="s2-n1"))
        for trial in ("a", "b"):
            assert st.trial_energy(trial) == pytest.approx(_by_stage(st, trial), rel=1e-9,
                                                           abs=1e-6)
    assert st._poll.settled_ids or not closed  # the cache was used, not only cleared


def test_settled_windows_are_summed_once_so_a_poll_follows_the_open_ones():
    """A long run of short windows: once settled, a poll integrates only the open window and
    its neighbours, however many windows came before."""
    st = LedgerState()
    st._poll = PollCache(margin_s=3.0)
    t, seq = 0.0, 0
    for k in range(200):
        _open(st, f"w{k}", "a", "evaluation" if k % 2 else "student_training", t, ("*",))
        st.ingest(_batch(seq, t, t + 2.0))
        seq, t = seq + 1, t + 2.0
        _close(st, f"w{k}", t)
        if k % 20 == 0:
            st.trial_energy("a")
    _open(st, "live", "a", "student_training", t, ("*",))
    st.ingest(_batch(seq, t, t + 2.0))
    assert st.trial_energy("a") == pytest.approx(_by_stage(st, "a"), rel=1e-9)
    assert len(st._poll.settled["a"]) >= 195  # all but the last few are summed already


def test_a_window_settled_at_zero_length_and_closed_again_is_integrated_again():
    """A leftover close can end a window at its own start (no reading after it yet); its
    process's own close then moves the end. The settled 0 J must not stay."""
    st = LedgerState()
    st._poll = PollCache(margin_s=3.0)
    for seq in range(10):
        st.ingest(_batch(seq, 2.0 * seq, 2.0 * seq + 2.0))
    _open(st, "w0", "a", "student_training", 4.0, ("GPU-a",))
    _close(st, "w0", 4.0)
    assert st.trial_energy("a") == pytest.approx(_by_stage(st, "a"))
    assert "w0" in st._poll.settled_ids
    _close(st, "w0", 10.0)
    assert st.trial_energy("a")["student_training"] == pytest.approx(
        _by_stage(st, "a")["student_training"]) and _by_stage(st, "a")["student_training"] > 0


def test_a_device_first_read_late_reaches_the_settled_windows_that_hold_it():
    """The CPU's sampler sends its first batches after the GPUs' windows settled: a window
    holding every device gains a CPU row, and the poll says so."""
    st = LedgerState()
    st._poll = PollCache(margin_s=3.0)
    _open(st, "w0", "a", "student_training", 1.0, ("*",))
    for seq in range(6):
        st.ingest(_batch(seq, 2.0 * seq, 2.0 * seq + 2.0, devices=("GPU-a", "GPU-b")))
    _close(st, "w0", 5.0)
    for seq in range(6, 12):
        st.ingest(_batch(seq, 2.0 * seq, 2.0 * seq + 2.0, devices=("GPU-a", "GPU-b")))
    assert st.trial_energy("a") == pytest.approx(_by_stage(st, "a"))
    assert "w0" in st._poll.settled_ids
    st.ingest(_batch(0, 0.0, 24.0, devices=("cpu:package-0",), sampler="s-cpu"))
    assert st.trial_energy("a") == pytest.approx(_by_stage(st, "a"))
