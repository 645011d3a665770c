"""Properties of the measurement over random fault schedules on the simulated node.

Samplers are killed and replaced (sometimes overlapping, as an old one not yet dead and its
replacement), the wall clock steps, NVML fails transiently, the GPU may be lost, the ledger is
rebuilt from its log; the power trace is random. For every window and device:
- measured + held + unmeasured seconds cover the window exactly;
- the figure lies within the counter's tolerance of the truth, short of at most what the
  unmeasured seconds could hold (never above the truth: nothing counted twice);
- windows that partition a stretch add up to no more than the truth over it;
- a figure marked final never changes as more samples and windows arrive;
- a ledger rebuilt from the same records reports the same rows.
"""

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from raydistill.energy.ledger import LedgerState
from raydistill.energy.simrun import SimRun
from raydistill.energy.simulate import PowerTrace, SimGpu, cpu_node

T_END = 40.0
P_MAX = 700.0


@dataclass(frozen=True)
class Fault:
    at_s: float
    kind: str  # kill | start | overlap | step | errors | lose
    arg: float = 0.0


faults = st.lists(st.builds(
    Fault, st.floats(1.0, T_END - 2.0).map(lambda x: round(x, 1)),
    st.sampled_from(["kill", "start", "overlap", "step", "errors", "lose"]),
    st.floats(-0.5, 0.5)), max_size=6)
traces = st.lists(st.floats(50.0, P_MAX), min_size=2, max_size=6)
cuts = st.lists(st.floats(0.5, T_END - 0.5).map(lambda x: round(x, 2)), min_size=2,
                max_size=6, unique=True)


def build(tmp_path, powers, schedule):
    node = cpu_node()
    times = [i * T_END / (len(powers) - 1) for i in range(len(powers))]
    node.gpus = [SimGpu("GPU-prop-0000", PowerTrace(times, powers), counter_origin_j=3.3e9)]
    node.rapl = node.rapl[:1]
    node.clock_steps = [(f.at_s, f.arg) for f in schedule if f.kind == "step"]
    run = SimRun(node, tmp_path)
    run.sampler("s0")
    for f in sorted(schedule, key=lambda f: f.at_s):
        run.until(f.at_s)
        if f.kind != "step":  # steps are scheduled on the clock above
            run.fault(f.kind, f.at_s)
    run.until(T_END)
    return node, run


def check_row(node, row, start, end):
    covered = row.unmeasured_s + row.held_s
    seen = row.duration_s - covered
    assert seen >= -1e-6 and covered <= row.duration_s + 1e-6
    truth = node.truth_j(row.device_id, start, end)
    # counter lag at each edge; held edges and edges inside a long counter segment (split by
    # interpolation) may be off by up to the peak power over them
    tol = 2 * 0.1 * P_MAX + (row.held_s + row.gap_s) * P_MAX + 1.0
    assert row.energy_j <= truth + tol
    assert row.energy_j >= truth - row.unmeasured_s * P_MAX - tol


@settings(max_examples=60, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(powers=traces, schedule=faults, edges=cuts)
def test_every_window_is_covered_bounded_and_final_figures_never_move(tmp_path, powers,
                                                                      schedule, edges):
    node, run = build(tmp_path, powers, schedule)
    edges = sorted(edges)
    wids = []
    for i, (a, b) in enumerate(itertools.pairwise(edges)):
        run.window(f"w{i}", a, b)
        wids.append((f"w{i}", a, b))
    run.push_all()
    first = {(r.window_id, r.device_id): r for r in run.state.energy_rows()}
    for wid, a, b in wids:
        for row in (r for (w, _), r in first.items() if w == wid):
            check_row(node, row, a, b)
    for dev in {d for _, d in first}:
        total = sum(r.energy_j for (_, d), r in first.items() if d == dev)
        held = sum(r.held_s + r.gap_s for (_, d), r in first.items() if d == dev)
        truth = node.truth_j(dev, edges[0], edges[-1])
        assert total <= truth + 2 * 0.1 * P_MAX + held * P_MAX + 1.0  # nothing twice

    # more time, more samples, another window: final figures stay as reported
    run.until(T_END + 5.0)
    run.window("later", T_END + 1.0, T_END + 4.0)
    later = {(r.window_id, r.device_id): r for r in run.state.energy_rows()}
    for key, row in first.items():
        if row.final:
            assert later[key].energy_j == pytest.approx(row.energy_j, rel=1e-9, abs=1e-9)
            assert later[key].unmeasured_s == pytest.approx(row.unmeasured_s, abs=1e-9)

    # a ledger rebuilt from its records reports the same rows
    again = LedgerState()
    for kind, payload in run.records:
        again.apply(kind, payload)
    assert again.energy_rows() == run.state.energy_rows()
