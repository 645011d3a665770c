"""The per-trial ledger query gives a trial exactly its rows of the whole-sweep computation,
with windows of many trials sharing a node's CPU and GPUs (split by CPU time, GPUs by UUID),
and nested in one another (the innermost takes the device), across trials too."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raydistill.energy import LedgerState, Reading, SampleBatch, Window

DEVICES = (("GPU-a", "gpu", "counter"), ("GPU-b", "gpu", "counter"),
           ("cpu:package-0", "cpu", "counter"))


def _feed(state: LedgerState, node: str, t1: float, hz: int = 4) -> None:
    """Power that steps every second (a different level per device), absolute counters."""
    times = np.arange(0.0, t1 + 1e-9, 1.0 / hz)
    readings = []
    for k, (dev, kind, method) in enumerate(DEVICES):
        energy = 0.0
        for i, t in enumerate(times):
            watts = 50.0 + 20.0 * k + 30.0 * (int(t) % 3)
            if i:
                energy += watts / hz
            readings.append(Reading(dev, kind, float(t), watts, energy, "sim", method))
    readings.sort(key=lambda r: r.t_wall_s)
    for b, k in enumerate(range(0, len(readings), 40)):
        state.ingest(SampleBatch.from_readings(f"s-{node}", b, node, readings[k:k + 40]))


window_spec = st.tuples(
    st.sampled_from(["t1", "t2", "t3", "t4"]),
    st.sampled_from(["n1", "n2"]),
    st.sampled_from([("GPU-a",), ("GPU-b",), ("GPU-a", "GPU-b"), ()]),
    st.floats(0.0, 18.0), st.floats(0.2, 6.0),
    st.one_of(st.none(), st.floats(0.1, 4.0)),  # cpu time (None: split equally)
    st.booleans(),  # still open
    st.one_of(st.none(), st.integers(0, 12)))  # parent: an earlier window (any node) or unknown


def _build(specs) -> LedgerState:
    state = LedgerState()
    for node in ("n1", "n2"):
        _feed(state, node, 25.0)
    for i, (trial, node, gpus, start, length, cpu, is_open, *parent) in enumerate(specs):
        # nested windows: the parent is any window of any trial (on another node, or never
        # opened, it is no parent); a stage's tokens then count once
        p = parent[0] if parent else None
        w = Window(f"w{i}", trial, "student_training", node, gpus, start,
                   None if is_open else start + length, i % 3 * 10, cpu,
                   parent_id=None if p is None else f"w{p}")
        state.apply_event({"type": "window_open", **{**w.__dict__, "t_end_s": None}})
        if not is_open:
            state.apply_event({"type": "window_close", "window_id": w.window_id,
                               "t_end_s": start + length, "tokens": w.tokens,
                               "cpu_time_s": cpu})
    return state


@settings(max_examples=40, deadline=None)
@given(st.lists(window_spec, min_size=1, max_size=12))
def test_trial_rows_equal_the_trials_rows_of_the_whole_sweep(specs):
    state = _build(specs)
    everything = state.energy_rows()
    for trial in ("t1", "t2", "t3", "t4", "nobody"):
        want = [r for r in everything if r.trial_id == trial]
        got = state.trial_rows(trial)
        assert [(r.window_id, r.device_id) for r in got] == \
            [(r.window_id, r.device_id) for r in want]
        for g, w in zip(got, want, strict=True):
            assert g.energy_j == pytest.approx(w.energy_j, rel=1e-12, abs=1e-9)
            assert (g.shared, g.method) == (w.shared, w.method)
            assert (g.tokens, g.parent_id) == (w.tokens, w.parent_id)
        # the live poll's figure (no rows built) is the rows' energy summed by stage
        by_stage: dict[str, float] = {}
        for r in want:
            by_stage[r.stage] = by_stage.get(r.stage, 0.0) + r.energy_j
        assert state.trial_energy(trial) == pytest.approx(by_stage, rel=1e-12, abs=1e-9)


def test_trials_plus_nothing_else_add_up_to_the_ledger_total():
    specs = [("t1", "n1", ("GPU-a",), 1.0, 5.0, 1.0, False),
             ("t2", "n1", ("GPU-b",), 2.0, 5.0, 3.0, False),
             ("t3", "n2", ("GPU-a", "GPU-b"), 0.5, 9.0, None, True)]
    state = _build(specs)
    total = sum(r.energy_j for r in state.energy_rows())
    per_trial = sum(r.energy_j for t in ("t1", "t2", "t3") for r in state.trial_rows(t))
    assert per_trial == pytest.approx(total, rel=1e-12)
    # the shared CPU between 2 s and 6 s is split 1:3 by CPU time, not charged twice
    cpu = {r.trial_id: r for r in state.energy_rows() if r.device_id == "cpu:package-0"
           and r.node_id == "n1"}
    assert cpu["t1"].shared and cpu["t2"].shared
