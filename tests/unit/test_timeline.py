"""Integration through the ledger's timeline: exact on piecewise-linear power and on counters,
wraps and resets, per-segment choice of counter or power, gaps and edges never invented."""

import math
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raydistill.energy.ledger import LedgerState
from raydistill.energy.samples import Reading
from tests.ledger_helpers import feed, rows_of, window

DEV = "GPU-t"


def readings(t, power=None, counter=None, range_j=None):
    out = []
    for i, ti in enumerate(t):
        p = None if power is None or math.isnan(power[i]) else power[i]
        c = None if counter is None or math.isnan(counter[i]) else counter[i]
        method = "counter" if counter is not None else "sampled"
        out.append(Reading(DEV, "gpu", ti, p, c, "src", method, ti, range_j))
    return out


def energy(rs, a, b, **kw):
    state = LedgerState(**kw)
    feed(state, "s", rs)
    window(state, "w", a, b, devices=(DEV,), start_mono=a, end_mono=b)
    return rows_of(state, "w")[DEV]


def test_constant_100w_over_known_window_is_exact():
    t = [i / 10 for i in range(101)]
    row = energy(readings(t, power=[100.0] * len(t)), 2.0, 7.5)
    assert row.energy_j == pytest.approx(550.0, abs=1e-9) and row.unmeasured_s == 0.0
    assert row.method == "sampled" and row.final


def piecewise_linear_integral(knots_t, knots_p, a, b):
    total = 0.0
    for (t0, p0), (t1, p1) in pairwise(zip(knots_t, knots_p, strict=True)):
        lo, hi = max(a, t0), min(b, t1)
        if hi > lo:
            slope = (p1 - p0) / (t1 - t0)
            total += 0.5 * (p0 + slope * (lo - t0) + p0 + slope * (hi - t0)) * (hi - lo)
    return total


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 700.0), min_size=2, max_size=12), st.floats(0.0, 1.0),
       st.floats(0.0, 1.0))
def test_piecewise_linear_trace_matches_closed_form(powers, fa, fb):
    t, now = [], 0.0
    for k in range(len(powers)):
        now += 0.3 + 1.4 * k / max(1, len(powers) - 1)
        t.append(now)
    a = t[0] + (t[-1] - t[0]) * min(fa, fb)
    b = t[0] + (t[-1] - t[0]) * max(fa, fb)
    row = energy(readings(t, power=powers), a, b)
    assert row.energy_j == pytest.approx(piecewise_linear_integral(t, powers, a, b), rel=1e-9,
                                         abs=1e-9)


def test_windows_add_up():
    t = [i * 0.25 for i in range(41)]
    p = [100 + 30 * math.sin(x) for x in t]
    parts = [energy(readings(t, power=p), a, b).energy_j for a, b in ((1, 4), (4, 9.3))]
    assert sum(parts) == pytest.approx(energy(readings(t, power=p), 1, 9.3).energy_j)


def test_counter_difference_interpolates_at_the_edges():
    row = energy(readings([0.0, 1.0, 2.0, 3.0], counter=[1000.0, 1100.0, 1300.0, 1400.0]),
                 0.5, 2.5)
    assert row.energy_j == pytest.approx(50 + 200 + 50) and row.method == "counter"


def test_counter_wrap_with_known_range():
    row = energy(readings([0, 1, 2, 3], counter=[90.0, 95.0, 3.0, 8.0], range_j=100.0), 0, 3)
    assert row.energy_j == 18.0 and row.counter_resets == 0


def test_counter_reset_counts_energy_since_reset():
    row = energy(readings([0, 1, 2, 3], counter=[500.0, 600.0, 40.0, 140.0]), 0, 3)
    assert row.energy_j == 240.0 and row.counter_resets == 1


def test_implausible_counter_step_is_unmeasured_not_a_billion_joules():
    # a counter that goes back by a large amount is not a reset: 1e9 J cannot be the energy
    # of one second; that segment is left unmeasured (its power fills in where it has one)
    row = energy(readings([0, 1, 2, 3], counter=[2e9, 2e9 + 100, 1e9, 1e9 + 100]), 0, 3,
                 max_hold_s=0.1)
    assert row.energy_j == pytest.approx(200.0 + 0.2 * 100.0)  # the edges held 0.1 s each
    assert row.unmeasured_s == pytest.approx(0.8) and "interpolated" in row.method


def test_counter_used_per_segment_and_power_where_the_counter_is_missing():
    t = [0.0, 1.0, 2.0, 3.0]
    rs = readings(t, power=[10.0] * 4, counter=[0.0, 20.0, math.nan, 60.0])
    row = energy(rs, 0, 3)
    assert row.energy_j == pytest.approx(20.0 + 10.0 + 10.0)
    assert row.method == "counter+sampled"


def test_power_gaps_are_unmeasured_and_counter_gaps_flagged():
    t = [0.0, 0.5, 1.0, 6.0, 6.5]
    row = energy(readings(t, power=[100.0] * 5), 0.0, 6.5, max_gap_s=2.0)
    # 1 s measured, 0.5 s held on each side of the gap, the other 4 s unmeasured
    assert row.energy_j == pytest.approx(150.0 + 100.0) and row.held_s == pytest.approx(1.0)
    assert row.unmeasured_s == pytest.approx(4.0) and row.unmeasured_max_j == pytest.approx(400)
    c = energy(readings(t, counter=[0.0, 50.0, 100.0, 600.0, 650.0]), 0.0, 6.5, max_gap_s=2.0)
    assert c.energy_j == pytest.approx(650.0) and c.unmeasured_s == 0.0
    assert c.n_gaps == 1 and c.gap_s == pytest.approx(5.0)


def test_edges_held_briefly_then_unmeasured():
    row = energy(readings([1.0, 2.0], power=[50.0, 150.0]), 0.0, 4.0, max_hold_s=0.5)
    assert row.held_s == pytest.approx(1.0) and row.unmeasured_s == pytest.approx(2.0)
    assert row.energy_j == pytest.approx(0.5 * 50 + 100 + 0.5 * 150)
    assert "interpolated" in row.method and not row.final
