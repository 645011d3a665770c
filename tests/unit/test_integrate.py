"""Energy integration: exact on constant and piecewise-linear power, counters wrap and reset."""

import math
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raydistill.energy import CumulativeEnergy, counter_energy_j, integrate_energy_j, unwrap_counter


def test_constant_100w_over_known_window_is_exact():
    t = np.arange(0.0, 10.01, 0.1)
    p = np.full_like(t, 100.0)
    assert integrate_energy_j(t, p, 2.0, 7.5) == pytest.approx(550.0, abs=1e-9)


def test_padding_holds_first_and_last_power():
    # samples only inside [1, 2]; window [0, 4]: 1 s at 50 W + ramp 50->150 (100 J) + 2 s at 150 W
    assert integrate_energy_j([1.0, 2.0], [50.0, 150.0], 0.0, 4.0) == pytest.approx(450.0)


def test_single_sample_is_held_over_the_window():
    assert integrate_energy_j([5.0], [80.0], 0.0, 3.0) == pytest.approx(240.0)


def piecewise_linear_integral(knots_t, knots_p, a, b):
    """Closed form: integrate the linear interpolant of knots between a and b (a,b in range)."""
    total = 0.0
    knots = list(zip(knots_t, knots_p, strict=True))
    for (t0, p0), (t1, p1) in pairwise(knots):
        lo, hi = max(a, t0), min(b, t1)
        if hi <= lo:
            continue
        slope = (p1 - p0) / (t1 - t0)
        total += 0.5 * (p0 + slope * (lo - t0) + p0 + slope * (hi - t0)) * (hi - lo)
    return total


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.0, 700.0), min_size=2, max_size=12),
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
)
def test_piecewise_linear_trace_matches_closed_form(powers, fa, fb):
    t = np.cumsum(np.linspace(0.3, 1.7, len(powers)))
    a = t[0] + (t[-1] - t[0]) * min(fa, fb)
    b = t[0] + (t[-1] - t[0]) * max(fa, fb)
    expected = piecewise_linear_integral(list(t), powers, a, b)
    assert integrate_energy_j(t, powers, a, b) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_windows_add_up():
    t = np.linspace(0, 10, 37)
    p = 100 + 30 * np.sin(t)
    c = CumulativeEnergy(t, power_w=p)
    assert c.between(1, 4) + c.between(4, 9.3) == pytest.approx(c.between(1, 9.3))


def test_counter_difference_interpolates_at_the_edges():
    t = [0.0, 1.0, 2.0, 3.0]
    c = [1000.0, 1100.0, 1300.0, 1400.0]
    assert counter_energy_j(t, c, 0.5, 2.5) == pytest.approx(50 + 200 + 50)


def test_counter_wrap_with_known_range():
    mono, resets = unwrap_counter(np.array([90.0, 95.0, 3.0, 8.0]), max_range_j=100.0)
    assert list(mono) == [90.0, 95.0, 103.0, 108.0] and resets == 0
    assert counter_energy_j([0, 1, 2, 3], [90.0, 95.0, 3.0, 8.0], 0, 3, max_range_j=100) == 18.0


def test_counter_reset_counts_energy_since_reset():
    mono, resets = unwrap_counter(np.array([500.0, 600.0, 40.0, 140.0]))
    assert list(mono) == [500.0, 600.0, 640.0, 740.0] and resets == 1
    est = CumulativeEnergy([0, 1, 2, 3], counter_j=[500.0, 600.0, 40.0, 140.0]).estimate(0, 3, 5)
    assert est.energy_j == 240.0 and est.counter_resets == 1 and est.path == "counter"


def test_counter_preferred_over_power_and_power_used_when_counter_missing():
    t = [0.0, 1.0, 2.0]
    both = CumulativeEnergy(t, power_w=[10.0, 10.0, 10.0], counter_j=[0.0, 20.0, 40.0])
    assert both.path == "counter" and both.between(0, 2) == 40.0
    partial = CumulativeEnergy(t, power_w=[10.0, 10.0, 10.0], counter_j=[0.0, math.nan, 40.0])
    assert partial.path == "power" and partial.between(0, 2) == 20.0


def test_gaps_are_reported_not_hidden():
    t = [0.0, 0.5, 1.0, 6.0, 6.5]
    est = CumulativeEnergy(t, power_w=[100.0] * 5).estimate(0.0, 8.0, max_gap_s=2.0)
    assert est.energy_j == pytest.approx(800.0)
    assert est.gaps == ((1.0, 6.0),) and est.gap_s == 5.0
    edge = CumulativeEnergy(t, power_w=[100.0] * 5).estimate(0.0, 10.0, max_gap_s=2.0)
    assert edge.gaps == ((1.0, 6.0), (6.5, 10.0))


def test_bad_input_rejected():
    with pytest.raises(ValueError, match="before it starts"):
        integrate_energy_j([0, 1], [1, 1], 2, 1)
    with pytest.raises(ValueError, match="no samples"):
        integrate_energy_j([], [], 0, 1)
    with pytest.raises(ValueError, match="differ in length"):
        integrate_energy_j([0, 1], [1], 0, 1)
