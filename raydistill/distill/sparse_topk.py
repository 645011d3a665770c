"""Top-k log-probabilities as an inference engine returns them → the logit cache's arrays.

vLLM returns, for each generated token (`logprobs=k`) or each prompt token (`prompt_logprobs=k`),
a dict {token id: Logprob(logprob, rank, ...)} holding the k most likely tokens, plus the token
that was sampled or read when it is not among them. The dense HF path computes the tail mass (the
probability outside the top-k) as a logsumexp over the other V − k logits; an engine that returns
only the top-k cannot, so here it is

    tail = log1mexp(L),  L = logsumexp(top-k logprobs)  (in float64),
    log1mexp(x) = log(−expm1(x)) for x > −ln 2, log1p(−exp(x)) otherwise   (Mächler, 2012)

which is exact given the k values: the naive `log(1 − Σ exp)` cancels catastrophically when the
top-k holds nearly all the mass, and log1mexp does not. What remains is the rounding of the
engine's own float32 logprobs (about 2⁻²⁴ relative each): a tail mass below ~k·10⁻⁷ is at that
noise level, and where rounding makes the top-k sum reach 1 the tail is log 0 (NEG, as the dense
path stores it). The tests hold the result to the dense path at 1e-5 absolute in tail *mass*.

Pure numpy: no torch, no vLLM.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from raydistill.errors import ConfigError

NEG = -1e4  # log 0 stand-in, the same as the dense path's (losses.NEG)
LN2 = math.log(2.0)


def log1mexp(x: np.ndarray) -> np.ndarray:
    """log(1 − exp(x)) for x ≤ 0, accurate on the whole range; x ≥ 0 (no mass left) → NEG."""
    x = np.asarray(x, dtype=np.float64)
    out = np.full(x.shape, NEG, dtype=np.float64)
    near = (x < 0) & (x > -LN2)
    far = x <= -LN2
    with np.errstate(divide="ignore"):
        out[near] = np.log(-np.expm1(x[near]))
        out[far] = np.log1p(-np.exp(x[far]))
    return np.maximum(out, NEG)


def tail_from_topk(values: np.ndarray) -> np.ndarray:
    """log of the probability outside the top-k, from the top-k log-probs alone ([..., k] →
    [...])."""
    v = np.asarray(values, dtype=np.float64)
    top = v.max(axis=-1, keepdims=True)
    lse = (top + np.log(np.exp(v - top).sum(axis=-1, keepdims=True)))[..., 0]
    return log1mexp(lse)


def _logprob(entry: Any) -> float:
    return float(entry if isinstance(entry, (int, float)) else entry.logprob)


def _rank(entry: Any) -> int | None:
    return None if isinstance(entry, (int, float)) else getattr(entry, "rank", None)


def topk_arrays(steps: Sequence[Mapping[int, Any] | None], k: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per position: (top-k logprobs float32 [T, k], their token ids int32 [T, k], log tail mass
    float32 [T]), highest first. Each step maps token id → Logprob (or a float); entries beyond
    the top k (the sampled token, when it ranked lower) are dropped."""
    if k < 1:
        raise ConfigError(f"top-k must be >= 1, got {k}")
    values = np.empty((len(steps), k), dtype=np.float64)
    indices = np.empty((len(steps), k), dtype=np.int64)
    for t, step in enumerate(steps):
        if step is None or len(step) < k:
            have = 0 if step is None else len(step)
            raise ValueError(f"position {t} has {have} log-probs, fewer than top_k={k}: the "
                             f"engine must be asked for logprobs={k} (and max_logprobs >= {k})")
        # by the engine's rank where it gives one (ties keep its order), else by value
        ordered = sorted(step.items(), key=lambda kv: (
            _rank(kv[1]) if _rank(kv[1]) is not None else 0, -_logprob(kv[1])))
        for j, (token, entry) in enumerate(ordered[:k]):
            values[t, j] = _logprob(entry)
            indices[t, j] = int(token)
    tail = tail_from_topk(values) if len(steps) else np.empty(0)
    return values.astype(np.float32), indices.astype(np.int32), tail.astype(np.float32)
