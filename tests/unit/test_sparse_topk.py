"""The tail mass from an engine's top-k alone (`sparse_topk`) against the dense exact path
(`losses.topk_from_logits`: a logsumexp over the V - k other logits), log1mexp against a
50-digit reference, and `topk_arrays` on the shapes vLLM returns (no vLLM, no torch beyond the
dense reference)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from raydistill.distill.losses import topk_from_logits
from raydistill.distill.sparse_topk import NEG, log1mexp, tail_from_topk, topk_arrays
from raydistill.errors import ConfigError

mpmath.mp.dps = 50

MASS_ATOL = 1e-5  # tail mass, absolute (what the integration test holds vLLM to)
LOG_ATOL = 1e-2  # log tail, where the tail mass is >= BIG
BIG = 1e-3
PEAKED = 1e-6  # peaked inputs: the top-k holds more than 1 - PEAKED of the mass


def _logits(v: int):
    return arrays(np.float32, v, elements=st.floats(-4.0, 4.0, width=32))


def _dense_tail(logits: torch.Tensor, k: int) -> float:
    return float(topk_from_logits(logits[None], k).tail_logprob[0])


def _engine_topk(logits: torch.Tensor, k: int) -> np.ndarray:
    """What an engine returns: the float32 top-k of log_softmax(logits)."""
    return torch.log_softmax(logits.float(), dim=-1).topk(k).values.numpy()


def _exact_given(values: np.ndarray) -> mpmath.mpf:
    """1 - sum(exp(values)) with the float32 values taken exactly, to 50 digits."""
    return 1 - mpmath.fsum(mpmath.exp(mpmath.mpf(float(x))) for x in values)


def _naive_f32(values: np.ndarray) -> float:
    """log(1 - sum(exp(top-k))) in float32: what log1mexp replaces."""
    v = np.asarray(values, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.log(np.float32(1.0) - np.exp(v).sum(dtype=np.float32)))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_tail_from_topk_matches_the_dense_exact_tail_on_random_logits(data):
    vocab = data.draw(st.integers(1, 64), label="V")
    scale = data.draw(st.floats(0.1, 5.0), label="scale")
    logits = torch.from_numpy(data.draw(_logits(vocab), label="logits")) * scale
    k = data.draw(st.integers(1, vocab), label="k")
    dense = _dense_tail(logits, k)
    ours = float(tail_from_topk(_engine_topk(logits, k)))
    assert math.isfinite(ours) and ours >= NEG
    assert abs(math.exp(ours) - math.exp(dense)) <= MASS_ATOL
    if math.exp(dense) >= BIG:
        assert abs(ours - dense) <= LOG_ATOL


def _peaked(data) -> tuple[torch.Tensor, int]:
    """Logits × 20–60 and a k whose top-k holds > 1 - 1e-6 of the mass (by the dense path)."""
    vocab = data.draw(st.integers(2, 64), label="V")
    scale = data.draw(st.floats(20.0, 60.0), label="scale")
    logits = torch.from_numpy(data.draw(_logits(vocab), label="logits")) * scale
    ks = [k for k in range(1, vocab + 1) if math.exp(_dense_tail(logits, k)) < PEAKED]
    return logits, data.draw(st.sampled_from(ks), label="k")  # k = V always qualifies


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_tail_from_topk_matches_the_dense_exact_tail_on_peaked_logits(data):
    logits, k = _peaked(data)
    dense = _dense_tail(logits, k)
    assert math.exp(dense) < PEAKED
    ours = float(tail_from_topk(_engine_topk(logits, k)))
    assert math.isfinite(ours) and ours >= NEG
    assert abs(math.exp(ours) - math.exp(dense)) <= MASS_ATOL


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_tail_from_topk_is_exact_given_the_values_on_peaked_logits(data):
    """Given the k float32 values, log1mexp(logsumexp) is the tail to ~1e-16 in mass: the
    naive float32 form (`_naive_f32`) misses by ~1e-8 (its 1 - sum rounds on float32's grid
    near 1), so this fails if tail_from_topk computed it that way."""
    logits, k = _peaked(data)
    values = _engine_topk(logits, k)
    exact = _exact_given(values)
    ours = float(tail_from_topk(values))
    assert abs(math.exp(ours) - float(max(exact, 0))) <= 1e-14
    if exact >= 1e-9:
        assert abs(ours - float(mpmath.log(exact))) <= 1e-6


def test_naive_float32_tail_is_worse_than_log1mexp_on_peaked_logits():
    gen = torch.Generator().manual_seed(0)
    ours_err, naive_err = [], []
    for _ in range(300):
        vocab = int(torch.randint(2, 65, (1,), generator=gen))
        scale = float(torch.empty(1).uniform_(20.0, 60.0, generator=gen))
        logits = torch.randn(vocab, generator=gen) * scale
        for k in range(1, vocab + 1):
            if math.exp(_dense_tail(logits, k)) >= PEAKED:
                continue
            values = _engine_topk(logits, k)
            exact = _exact_given(values)
            if exact < 1e-12:  # no mass left given the values: nothing to compare in log space
                continue
            ref = float(mpmath.log(exact))
            ours_err.append(abs(float(tail_from_topk(values)) - ref))
            naive = _naive_f32(values)
            naive_err.append(abs(naive - ref) if math.isfinite(naive) else math.inf)
    assert len(ours_err) > 500
    ours_err, naive_err = np.asarray(ours_err), np.asarray(naive_err)
    assert ours_err.max() <= 1e-4
    # the naive form is off by > 1e-2 in log tail (or returns log 0 / nan) on most of them
    assert (naive_err > 1e-2).mean() > 0.5
    assert (naive_err >= ours_err).mean() > 0.99


@settings(max_examples=500, deadline=None)
@given(st.floats(-50.0, -1e-12))
def test_log1mexp_is_accurate_on_its_whole_range(x):
    ref = mpmath.log(-mpmath.expm1(mpmath.mpf(x)))
    got = float(log1mexp(np.asarray([x]))[0])
    assert abs(got - float(ref)) <= 1e-14 * abs(float(ref)) + 1e-300


def test_log1mexp_grid_and_edges():
    xs = -np.logspace(-12, math.log10(50.0), 2000)
    xs = np.concatenate([xs, [-math.log(2.0), -math.log(2.0) * (1 + 1e-15),
                              -math.log(2.0) * (1 - 1e-15)]])
    got = log1mexp(xs)
    ref = np.asarray([float(mpmath.log(-mpmath.expm1(mpmath.mpf(float(x))))) for x in xs])
    np.testing.assert_allclose(got, ref, rtol=1e-14, atol=0)
    # far from 0, log(-expm1(x)) in float64 rounds to log 1 = 0; log1mexp keeps the -exp(x)
    assert float(log1mexp(np.asarray([-50.0]))[0]) == pytest.approx(-math.exp(-50.0), rel=1e-14)
    assert log1mexp(np.asarray([-np.inf]))[0] == 0.0  # no mass in the top-k: the tail is all


@pytest.mark.parametrize("x", [0.0, -0.0, 1e-12, 0.5, 3.0, np.inf])
def test_log1mexp_of_no_mass_left_is_neg(x):
    assert log1mexp(np.asarray([x]))[0] == NEG


def test_tail_from_topk_keeps_shape_and_floors_at_neg():
    with np.errstate(divide="ignore"):
        v = np.log(np.asarray([[[0.5, 0.25], [0.6, 0.3]], [[1.0, 0.0], [0.125, 0.125]]]))
    tail = tail_from_topk(v)
    assert tail.shape == (2, 2)
    np.testing.assert_allclose(tail[[0, 0, 1], [0, 1, 1]], np.log([0.25, 0.1, 0.75]),
                               rtol=1e-12)
    assert tail[1, 0] == NEG  # the top-k holds all the mass: log 0 -> NEG


# ---- topk_arrays ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Logprob:  # the fields of vllm.logprobs.Logprob that topk_arrays reads
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


def test_topk_arrays_orders_by_rank_and_drops_the_sampled_entry_beyond_k():
    steps = [
        {7: Logprob(-2.0, 3), 3: Logprob(-0.5, 1), 9: Logprob(-1.0, 2)},
        # the sampled token ranked 40th comes back as a (k+1)-th entry: dropped
        {11: Logprob(-9.0, 40), 5: Logprob(-1.5, 2), 2: Logprob(-0.3, 1), 4: Logprob(-2.5, 3)},
    ]
    values, indices, tail = topk_arrays(steps, 3)
    assert values.dtype == np.float32 and indices.dtype == np.int32 and tail.dtype == np.float32
    assert indices.tolist() == [[3, 9, 7], [2, 5, 4]]
    np.testing.assert_allclose(values, [[-0.5, -1.0, -2.0], [-0.3, -1.5, -2.5]])
    np.testing.assert_allclose(tail, tail_from_topk(values.astype(np.float64)), rtol=1e-6)
    assert 11 not in indices


def test_topk_arrays_keeps_the_engine_rank_over_the_value():
    """Ranks are the engine's order (ties included), even where a value says otherwise."""
    steps = [{1: Logprob(-1.0, 2), 2: Logprob(-1.0, 1)}]
    _, indices, _ = topk_arrays(steps, 2)
    assert indices.tolist() == [[2, 1]]


def test_topk_arrays_accepts_plain_floats_ordered_by_value():
    steps = [{4: -3.0, 8: -0.1, 1: -1.2}, {0: -0.7, 6: -0.7}]
    values, indices, tail = topk_arrays(steps, 2)
    assert indices.tolist() == [[8, 1], [0, 6]]
    np.testing.assert_allclose(values, [[-0.1, -1.2], [-0.7, -0.7]])
    assert np.all(np.isfinite(tail))
    v, i, t = topk_arrays([{3: 0}], 1)  # an int logprob (0: all the mass) is a float too
    assert v.tolist() == [[0.0]] and i.tolist() == [[3]] and t.tolist() == [NEG]


@pytest.mark.parametrize("steps, have", [
    ([{1: Logprob(-0.1, 1), 2: Logprob(-2.0, 2)}, {1: Logprob(-0.1, 1)}], 1),
    ([{1: -0.1, 2: -2.0}, None], 0),
])
def test_topk_arrays_names_the_short_position(steps, have):
    with pytest.raises(ValueError) as exc:
        topk_arrays(steps, 2)
    msg = str(exc.value)
    assert f"position 1 has {have} log-probs, fewer than top_k=2" in msg
    assert "logprobs=2" in msg and "max_logprobs >= 2" in msg


def test_topk_arrays_rejects_k_below_one_and_takes_no_steps():
    with pytest.raises(ConfigError, match="top-k must be >= 1"):
        topk_arrays([{1: -0.1}], 0)
    values, indices, tail = topk_arrays([], 4)
    assert values.shape == (0, 4) and indices.shape == (0, 4) and tail.shape == (0,)
