"""Pareto front, hypervolume, knee and margin dominance against brute force and hand values."""

import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raydistill.errors import ConfigError
from raydistill.pareto import dominated_by_margin, hypervolume_2d, knee_point, pareto_front

few = settings(max_examples=60, deadline=None)
senses2 = st.sampled_from([("max", "max"), ("max", "min"), ("min", "max"), ("min", "min")])
# small integers make ties and duplicates common, which is where fronts go wrong
coord = st.integers(-4, 4).map(float)


def point_sets(m: int) -> st.SearchStrategy:
    return st.lists(st.tuples(*[coord] * m), max_size=25)


def dominates(p, q, senses) -> bool:
    """p dominates q, written out the slow way."""
    better = [(a > b) if s == "max" else (a < b) for a, b, s in zip(p, q, senses, strict=True)]
    worse = [(a < b) if s == "max" else (a > b) for a, b, s in zip(p, q, senses, strict=True)]
    return any(better) and not any(worse)


@few
@given(data=st.data(), m=st.integers(1, 3))
def test_front_is_mutually_non_dominated_and_covers_the_rest(data, m):
    senses = data.draw(st.lists(st.sampled_from(["max", "min"]), min_size=m, max_size=m))
    pts = data.draw(point_sets(m))
    front = pareto_front(pts, senses)
    assert front == sorted(set(front))
    for i in front:
        assert not any(dominates(pts[j], pts[i], senses) for j in front)
    for i in set(range(len(pts))) - set(front):
        assert any(dominates(pts[j], pts[i], senses) for j in front)


@few
@given(pts=point_sets(2), senses=senses2, perm_seed=st.randoms(use_true_random=False))
def test_front_and_hypervolume_are_permutation_invariant(pts, senses, perm_seed):
    order = list(range(len(pts)))
    perm_seed.shuffle(order)
    shuffled = [pts[i] for i in order]
    assert sorted(order[i] for i in pareto_front(shuffled, senses)) == pareto_front(pts, senses)
    ref = (-5.0 if senses[0] == "max" else 5.0, -5.0 if senses[1] == "max" else 5.0)
    assert hypervolume_2d(shuffled, ref, senses) == hypervolume_2d(pts, ref, senses)


def brute_area(pts, ref, senses) -> int:
    """Count the unit cells covered by some point's box: exact for integer coordinates."""
    sign = [1 if s == "max" else -1 for s in senses]
    q = [(p[0] * sign[0], p[1] * sign[1]) for p in pts]
    r = (ref[0] * sign[0], ref[1] * sign[1])
    cells = 0
    for x in range(int(r[0]), 5):
        for y in range(int(r[1]), 5):
            cells += any(a >= x + 1 and b >= y + 1 for a, b in q)
    return cells


@few
@given(pts=point_sets(2), senses=senses2)
def test_hypervolume_matches_cell_count_and_ignores_dominated_points(pts, senses):
    ref = (-5.0 if senses[0] == "max" else 5.0, -5.0 if senses[1] == "max" else 5.0)
    hv = hypervolume_2d(pts, ref, senses)
    assert hv == brute_area(pts, ref, senses)
    assert hypervolume_2d([pts[i] for i in pareto_front(pts, senses)], ref, senses) == hv
    assert hypervolume_2d([*pts, (0.0, 0.0)], ref, senses) >= hv


def test_hypervolume_by_hand():
    assert hypervolume_2d([(1, 1), (2, 0.5)], (0, 0), ("max", "max")) == pytest.approx(1.5)
    # quality up, energy down: boxes [0, .8]×[10, 20] and [0, .6]×[5, 20] overlap in 6
    pts = [(0.8, 10.0), (0.6, 5.0), (0.5, 12.0)]  # the last is dominated
    assert hypervolume_2d(pts, (0.0, 20.0), ("max", "min")) == pytest.approx(8 + 9 - 6)
    # points that do not beat the reference in both objectives add nothing
    assert hypervolume_2d([(3, -1), (-1, 3), (0, 5)], (0, 0), ("max", "max")) == 0.0
    assert hypervolume_2d([(2, 2), (float("nan"), 9)], (0, 0), ("max", "max")) == 4.0
    assert hypervolume_2d([], (0, 0), ("max", "max")) == 0.0
    with pytest.raises(ConfigError, match="exactly 2 senses"):
        hypervolume_2d([(1, 1, 1)], (0, 0, 0), ("max", "max", "max"))
    with pytest.raises(ConfigError, match="reference"):
        hypervolume_2d([(1, 1)], (0, float("nan")), ("max", "max"))


def test_front_degenerate_cases():
    mm = ("max", "max")
    assert pareto_front([], mm) == []
    assert pareto_front([(1.0, 2.0)], mm) == [0]
    assert pareto_front([(1, 1), (1, 1), (0, 0)], mm) == [0, 1]  # duplicates all kept
    assert pareto_front([(1, 1), (1, 0)], mm) == [0]  # equal in one, worse in the other
    assert pareto_front([(2, 0), (0, 2), (1, 1), (0.5, 0.5)], mm) == [0, 1, 2]
    nan, inf = float("nan"), float("inf")
    assert pareto_front([(nan, 9), (1, 1), (inf, 0)], mm) == [1]  # NaN never on the front
    assert pareto_front([(1, 10), (1, 5)], ("max", "min")) == [1]


def test_bad_senses_and_shapes():
    with pytest.raises(ConfigError, match=r"unknown sense 'maximize'; valid: max, min"):
        pareto_front([(1, 2)], ("max", "maximize"))
    with pytest.raises(ConfigError, match="one of max, min per objective"):
        pareto_front([(1, 2)], "max")
    with pytest.raises(ConfigError, match=r"rows of 2 objective values"):
        pareto_front([(1, 2, 3)], ("max", "min"))
    with pytest.raises(ConfigError, match="rows of 2 numbers"):
        pareto_front([(1, 2), (3,)], ("max", "min"))


def test_knee_point():
    mm = ("max", "max")
    assert knee_point([(0, 1), (0.5, 0.9), (1, 0), (0.4, 0.4)], mm) == 1
    # energy (min) against quality (max): the cheap-and-good middle trial is the knee
    trials = [(100.0, 0.90), (20.0, 0.85), (5.0, 0.40), (60.0, 0.60)]
    assert knee_point(trials, ("min", "max")) == 1
    assert knee_point([], mm) is None
    assert knee_point([(float("nan"), 1.0)], mm) is None
    assert knee_point([(3, 3)], mm) == 0
    assert knee_point([(0, 1), (1, 0)], mm) == 0  # both on the line: the lowest index
    assert knee_point([(1, 1), (0, 0), (1, 1)], mm) == 0  # duplicates: the lowest index
    # scale-free: stretching one objective does not move the knee
    stretched = [(e * 1000.0, q) for e, q in trials]
    assert knee_point(stretched, ("min", "max")) == 1


def test_dominated_by_margin():
    mq = ("max", "min")  # quality, energy
    a = (0.80, 100.0)
    assert dominated_by_margin(a, (0.85, 90.0), mq, 0.0)
    assert not dominated_by_margin(a, a, mq, 0.0)  # equal is not domination
    assert dominated_by_margin(a, (0.81, 100.0), mq, 0.0)
    assert not dominated_by_margin(a, (0.81, 100.0), mq, 0.05)  # within the margin
    assert dominated_by_margin(a, (0.90, 80.0), mq, 0.05)  # beats 0.84 and 95
    assert not dominated_by_margin(a, (0.90, 97.0), mq, 0.05)  # energy not 5 % better
    assert not dominated_by_margin(a, (math.nan, 1.0), mq, 0.0)
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ConfigError, match="margin"):
            dominated_by_margin(a, a, mq, bad)


@few
@given(a=st.tuples(coord, coord), b=st.tuples(coord, coord), senses=senses2)
def test_margin_zero_is_pareto_dominance(a, b, senses):
    assert dominated_by_margin(a, b, senses, 0.0) == dominates(b, a, senses)


def test_pareto_module_is_pure():
    code = ("import sys, raydistill.pareto; "
            "assert not {'torch', 'ray'} & set(sys.modules), 'pareto imported torch or ray'")
    subprocess.run([sys.executable, "-c", code], check=True)
