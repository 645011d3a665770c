"""HF logit caching bounded by a chunk of positions, over the tokenizer's rows only.

Reference: what `cache_batch` did before the chunking (a full forward's `.logits`, the response
positions gathered, `losses.topk_from_logits` over every output row). The chunked path must give
the same cache where the vocabulary is unpadded, never cache a padded row, and never hold the
[batch, sequence, rows] logits.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from raydistill.distill.cache_topk import response_topk, topk_rows
from raydistill.distill.logit_cache import decode_row
from raydistill.distill.losses import topk_from_logits
from raydistill.distill.teacher import cache_batch, teacher_examples
from raydistill.distill.tiny import make_tokenizer
from raydistill.errors import ConfigError

PROMPTS = ["12+7=", "what is 3+3?", "hello there, say something long", "9"]
RESPONSES = [[52, 53, 1], [54], [60, 61, 62, 63, 64, 65, 66, 67], [70, 71]]


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def _model(vocab_rows: int, dtype: torch.dtype = torch.float32, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=128, vocab_size=vocab_rows,
                      max_position_embeddings=128, tie_word_embeddings=False, pad_token_id=0)
    model = Qwen2ForCausalLM(cfg).eval().to(dtype)
    with torch.no_grad():  # peaked distributions, as a trained teacher's are
        model.lm_head.weight.mul_(40.0)
    return model


def _batch(tok) -> dict:
    return {"example_id": list(range(len(PROMPTS))),
            "messages": [json.dumps([{"role": "user", "content": p}]) for p in PROMPTS],
            "completion_ids": [r[:-1] if r[-1] == 1 else r for r in RESPONSES],
            "finished": [r[-1] == 1 for r in RESPONSES]}


def _reference(model, tok, batch: dict, k: int, temperature: float) -> list[dict]:
    """The pre-chunking cache_batch: one padded forward's full logits, every output row."""
    from raydistill.distill.batches import pad_batch

    examples = teacher_examples(tok, batch, 64, 96)
    padded = pad_batch([{"input_ids": e.input_ids, "prompt_len": e.prompt_len}
                        for e in examples], tok.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=padded["input_ids"],
                       attention_mask=padded["attention_mask"]).logits
    out = []
    for i, e in enumerate(examples):
        at = logits[i, e.prompt_len - 1: len(e.input_ids) - 1]
        top = topk_from_logits(at, k, temperature)
        out.append({"logprobs": top.logprobs, "indices": top.indices, "tail": top.tail_logprob,
                    "logp": torch.log_softmax(at.float() / temperature, -1),
                    "scale": float(at.float().abs().max())})
    return out


def _rows(table) -> list[dict]:
    return [decode_row(r) for r in table.to_pylist()]


def test_topk_rows_equals_the_full_log_softmax_top_k():
    torch.manual_seed(1)
    logits = torch.randn(7, 300) * 6
    for k, temperature in ((1, 1.0), (16, 1.0), (16, 2.5), (300, 1.0)):
        want = topk_from_logits(logits, k, temperature)
        v, ix, tail = topk_rows(logits.clone(), k, temperature)
        assert torch.equal(ix, want.indices)
        assert torch.allclose(v, want.logprobs, atol=1e-5)
        assert torch.allclose(tail.exp(), want.tail_logprob.exp(), atol=1e-6)
    with pytest.raises(ConfigError, match="top-k must be an integer"):
        topk_rows(logits.clone(), 301)


@pytest.mark.parametrize("chunk_tokens", [1, 3, 4096])
def test_chunked_cache_equals_the_full_logits_cache_unpadded_fp32(tok, chunk_tokens):
    model = _model(len(tok))
    batch = _batch(tok)
    table, tokens = cache_batch(model, tok, batch, 8, 1.5, "float32", 64, 96,
                                chunk_tokens=chunk_tokens)
    assert tokens == sum(len(e.input_ids) for e in teacher_examples(tok, batch, 64, 96))
    for got, want in zip(_rows(table), _reference(model, tok, batch, 8, 1.5), strict=True):
        assert torch.equal(got["indices"], want["indices"])
        assert torch.allclose(got["logprobs"], want["logprobs"], atol=1e-5)
        assert torch.allclose(got["tail"].exp(), want["tail"].exp(), atol=1e-6)


def test_chunked_cache_of_a_bf16_teacher_equals_the_full_logits_cache_to_bf16(tok):
    """A bf16 teacher (what a GPU runs) stored as bf16: equal to the old cache to bf16 rounding.
    The body now runs one row at a time (chunk_tokens 5 < max_seq_len), and a bf16 forward's
    logits depend on its batch's shape to their own rounding: 2⁻⁸ of their magnitude, twice
    (log-softmax subtracts two), plus the stored value's own bf16 rounding. Ties among bf16
    logits may order differently, so each cached id's log-prob is checked against the full
    distribution too."""
    model = _model(len(tok), torch.bfloat16)
    batch = _batch(tok)
    table, _ = cache_batch(model, tok, batch, 8, 1.0, "bfloat16", 64, 96, chunk_tokens=5)
    for got, want in zip(_rows(table), _reference(model, tok, batch, 8, 1.0), strict=True):
        tol = 2 * 2**-8 * want["scale"] + 0.02
        assert torch.allclose(got["logprobs"], want["logprobs"], atol=tol)
        assert torch.allclose(want["logp"].gather(-1, got["indices"]), got["logprobs"], atol=tol)
        assert torch.allclose(got["tail"], want["tail"], atol=tol)  # a logsumexp of the same


def test_a_padded_output_layer_never_reaches_the_cache(tok):
    """Hub checkpoints pad their output rows past the tokenizer (Qwen2.5: 151,936 rows for
    151,665 tokens). Rows no token decodes to must be in no cached index nor in the tail: the
    cache is the log-softmax over the tokenizer's rows. The padded rows here are made the
    largest logits, so the old cache held them first."""
    v = len(tok)
    model = _model(v + 125)
    with torch.no_grad():
        model.lm_head.weight[v:] = model.lm_head.weight[:v].abs().amax(0) * 3
    batch = _batch(tok)
    table, _ = cache_batch(model, tok, batch, 8, 1.0, "float32", 64, 96, chunk_tokens=4)
    rows = _rows(table)
    assert max(int(r["indices"].max()) for r in rows) < v
    for got, e in zip(rows, teacher_examples(tok, batch, 64, 96), strict=True):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([e.input_ids])).logits[0, :, :v]
        want = topk_from_logits(logits[e.prompt_len - 1: len(e.input_ids) - 1], 8)
        assert torch.equal(got["indices"], want.indices)
        assert torch.allclose(got["logprobs"], want.logprobs, atol=1e-5)
        assert torch.allclose(got["tail"].exp(), want.tail_logprob.exp(), atol=1e-6)


def test_the_output_layer_never_runs_over_the_whole_sequence(tok):
    """The model's forward applies its output layer to no position; the chunks apply it to
    at most chunk_tokens response positions each (never [batch, sequence, rows])."""
    model = _model(len(tok))
    shapes: list[tuple[int, ...]] = []
    model.lm_head.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
    real_linear = torch.nn.functional.linear
    widths: list[int] = []

    def linear(x, w, b=None):
        widths.append(x.shape[0])
        return real_linear(x, w, b)

    examples = teacher_examples(tok, _batch(tok), 64, 96)
    ids = torch.zeros((len(examples), max(len(e.input_ids) for e in examples)), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(examples):
        ids[i, : len(e.input_ids)], mask[i, : len(e.input_ids)] = torch.tensor(e.input_ids), 1
    lengths = torch.tensor([e.response_len for e in examples])
    torch.nn.functional.linear = linear
    try:
        v, ix, tail = response_topk(model, ids, mask,
                                    torch.tensor([e.prompt_len - 1 for e in examples]), lengths,
                                    vocab_rows=len(tok), top_k=4, temperature=1.0,
                                    chunk_tokens=3)
    finally:
        torch.nn.functional.linear = real_linear
    assert shapes == [(len(examples), 0, len(tok))]
    n = int(lengths.sum())
    assert widths[-int(np.ceil(n / 3)):] == [3] * (n // 3) + ([n % 3] if n % 3 else [])
    assert v.shape == (n, 4) and ix.shape == (n, 4) and tail.shape == (n,)


def test_chunk_tokens_is_checked(tok):
    with pytest.raises(ConfigError, match="chunk_tokens must be an integer >= 1"):
        cache_batch(_model(len(tok)), tok, _batch(tok), 4, 1.0, "float32", 64, 96,
                    chunk_tokens=0)


def test_vllm_steps_drop_padded_rows_into_the_tail():
    """vLLM's prompt/generation logprobs range over every output row, padding included: those
    ids are dropped (their mass stays in the tail), the next real ids fill the top-k, and a
    position short of k real ids gets unlisted real ids at log 0."""
    from types import SimpleNamespace

    from raydistill.distill.teacher_vllm import cache_table

    def lp(value: float, rank: int):
        return SimpleNamespace(logprob=value, rank=rank)

    rows = 300  # the tokenizer's; ids 300+ are the output layer's padding
    steps = [[{305: lp(-0.5, 1), 7: lp(-1.5, 2), 9: lp(-2.0, 3), 11: lp(-3.0, 4)},
              {301: lp(-0.2, 1), 302: lp(-2.5, 2), 4: lp(-3.0, 3), 0: lp(-4.0, 4)}]]
    table = cache_table([0], [[7, 4]], steps, 3, "float32", vocab_rows=rows)
    row = decode_row(table.to_pylist()[0])
    assert row["indices"].tolist() == [[7, 9, 11], [4, 0, 1]]
    assert int(row["indices"].max()) < rows
    assert torch.allclose(row["logprobs"][0], torch.tensor([-1.5, -2.0, -3.0]))
    assert row["logprobs"][1, 2] <= -1e4 + 1  # a filler: log 0
    kept = torch.logsumexp(torch.tensor([-1.5, -2.0, -3.0]), 0)
    assert torch.allclose(row["tail"][0], torch.log1p(-kept.exp()), atol=1e-5)  # 305's mass
