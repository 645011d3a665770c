"""The teacher's top-k over response positions, in memory bounded by a chunk of positions.

A forward pass that returns `.logits` holds [batch, sequence, output rows] (~160 GiB in bf16 +
fp32 copies for a batch of 256 × 2,048 positions at 152k rows). Only the response positions are
cached, and each needs its row of logits only until its top-k is taken, so here the model's body
runs for hidden states (the output layer on no position: `logits_to_keep` empty), the response
positions are picked out, and the output layer is applied `chunk_tokens` positions at a time;
each chunk's log-softmax, top-k and tail mass are taken in place on one fp32 buffer and freed.

Output rows past the tokenizer (hub checkpoints pad theirs: Qwen2.5 has 151,936 or 152,064 rows
for 151,665 tokens) are cut before the log-softmax: no token can be decoded to them, so they are
in no cached index and no tail mass (as TRL and DistillKit restrict to the shared vocabulary).

`raydistill.cache_memory.hf_cache_peak` gives this path's peak bytes (the dry run's figure).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from raydistill.cache_memory import DEFAULT_CHUNK_TOKENS
from raydistill.errors import ConfigError

NEG = -1e4  # log 0 stand-in, as losses.NEG


def topk_rows(logits: torch.Tensor, k: int, temperature: float = 1.0
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top-k of log_softmax(logits / T) [n, k] fp32, their row ids [n, k], log tail mass [n])
    for logits [n, V] that this call may overwrite (a fresh matmul output): one fp32 buffer of
    n × V is the only large allocation (besides the input, freed on conversion when the caller
    holds no other reference)."""
    vocab = logits.shape[-1]
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= vocab:
        raise ConfigError(f"top-k must be an integer in [1, {vocab}], got {k!r}")
    x = logits.float()  # the same tensor when it is already fp32: then worked on in place
    del logits
    if temperature != 1.0:
        x.div_(temperature)
    values, indices = x.topk(int(k), dim=-1)  # the top-k of logits is the top-k of log-probs
    # the tail's log-mass as a logsumexp over the other tokens, shifted by their own max (no
    # cancellation when the top-k holds nearly all the mass: see losses.tail_logmass)
    x.scatter_(-1, indices, float("-inf"))
    top = x.amax(dim=-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # k = V: nothing left
    out_lse = x.sub_(top).exp_().sum(dim=-1).log_().add_(top.squeeze(-1))
    del x
    lse = torch.logaddexp(torch.logsumexp(values, dim=-1), out_lse)
    return values - lse[:, None], indices, (out_lse - lse).clamp(min=NEG)


def check_chunk_tokens(chunk_tokens: int) -> None:
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ConfigError(f"cache chunk_tokens must be an integer >= 1 (generation."
                          f"cache_chunk_tokens), got {chunk_tokens!r}")


def _model_of(model):
    """The Hugging Face model: a DeepSpeed engine wraps it as `.module`."""
    return getattr(model, "module", model)


def hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The body's last hidden states [B, S, H] (after its final norm), with the output layer
    applied to no position. Through the model's own forward (not its body alone), so a
    ZeRO-3 engine's gather hooks run in the order they recorded."""
    net = _model_of(model)
    body = net.get_decoder()
    seen: list[torch.Tensor] = []
    hook = body.register_forward_hook(lambda _m, _a, out: seen.append(out[0]))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
              logits_to_keep=torch.zeros(0, dtype=torch.long))  # CPU ids index any device
    finally:
        hook.remove()
    return seen[-1]


@contextmanager
def output_layer(model) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """(weight [rows, H], bias or None) of the output layer, whole: under ZeRO-3 gathered once
    for the batch (a collective: every rank enters it once per batch, whatever its chunk
    count), so the chunks below are plain matmuls."""
    head = _model_of(model).get_output_embeddings()
    params = [p for p in (head.weight, getattr(head, "bias", None)) if p is not None]
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params):
            yield head.weight, getattr(head, "bias", None)
    else:
        yield head.weight, getattr(head, "bias", None)


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  softcap: float | None) -> torch.Tensor:
    logits = torch.nn.functional.linear(h, weight, bias)
    if softcap:  # Gemma 2/3 cap their logits: tanh(x / c) · c, as their forward does
        logits.div_(softcap).tanh_().mul_(softcap)
    return logits


@torch.no_grad()
def response_topk(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  starts: torch.Tensor, lengths: torch.Tensor, *, vocab_rows: int, top_k: int,
                  temperature: float, chunk_tokens: int = DEFAULT_CHUNK_TOKENS
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k over each row's positions starts[b] … starts[b] + lengths[b] − 1, flattened in row
    order: (log-probs [N, k] fp32, ids [N, k], log tail [N]), N = Σ lengths. Only the first
    `vocab_rows` output rows (the tokenizer's) count; at most `chunk_tokens` positions' logits
    exist at once."""
    check_chunk_tokens(chunk_tokens)
    hidden = hidden_states(model, input_ids, attention_mask)
    # a model split over several GPUs (accelerate) ends on another device than it starts
    lengths, starts = lengths.to(hidden.device), starts.to(hidden.device)
    rows_b = torch.repeat_interleave(torch.arange(len(lengths), device=hidden.device), lengths)
    offset = torch.arange(int(lengths.sum()), device=hidden.device) - torch.repeat_interleave(
        torch.cumsum(lengths, 0) - lengths, lengths)
    picked = hidden[rows_b, starts[rows_b] + offset]
    del hidden  # [B, S, H]: only the response positions go on
    softcap = getattr(_model_of(model).config, "final_logit_softcapping", None)
    values, indices, tails = [], [], []
    with output_layer(model) as (weight, bias):
        rows = min(int(weight.shape[0]), int(vocab_rows))
        weight, bias = weight[:rows], None if bias is None else bias[:rows]
        picked = picked.to(weight.device)
        for i in range(0, picked.shape[0], chunk_tokens):
            v, ix, t = topk_rows(_chunk_logits(picked[i:i + chunk_tokens], weight, bias, softcap),
                                 top_k, temperature)
            values.append(v)
            indices.append(ix)
            tails.append(t)
    if not values:  # no response position at all
        return (torch.zeros((0, top_k)), torch.zeros((0, top_k), dtype=torch.long),
                torch.zeros(0))
    return torch.cat(values), torch.cat(indices), torch.cat(tails)
