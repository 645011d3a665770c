"""hf_cache_peak: HF logit caching's peak bytes, against the old unchunked path and against a
peak measured on CPU.

How it is measured: `torch.profiler` with `profile_memory=True` records every allocation and
free of torch's CPU allocator (`[memory]` events with signed byte counts); their running sum in
time order, from the start of the profiled `cache_batch` call, peaks at the bytes that call
held above what was resident before (the weights). tracemalloc does not see torch's allocator,
and RSS is blurred by the allocator's pooling; the event sum is exact.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from raydistill.cache_memory import CacheShape, hf_cache_peak, unchunked_logits_bytes
from raydistill.config import GenerationConfig
from raydistill.distill.teacher import cache_batch, teacher_examples
from raydistill.distill.tiny import make_tokenizer
from raydistill.errors import ConfigError

GIB = 2**30
QWEN_ROWS = 151_936


def test_the_qwen_batch_that_did_not_fit_is_bounded_by_its_chunk():
    """Qwen2.5-7B (hidden 3,584, 28 layers, MLP 18,944, 152,064 rows padded, 151,665 tokens),
    the Qwen config's batch of 256 × 2,048 positions, 1,024 response positions each, k 64:
    the full-logits path needed ~160 GiB beside the weights; the chunked one a few GiB."""
    shape = CacheShape(hidden=3584, layers=28, vocab_rows=151_665, output_rows=152_064,
                       batch=256, seq=2048, response_positions=256 * 1024, top_k=64,
                       dtype="bf16", intermediate=18_944, kv_dim=512, response_width=1024)
    old = unchunked_logits_bytes(shape)
    new = hf_cache_peak(shape)
    assert old > 150 * GIB
    # 2 rows a forward: 2,048 positions × 151,665 rows × 6 B, beside the batch's results
    assert 1.7 * GIB < new.chunk_bytes < 2.2 * GIB
    assert new.body_bytes < 1 * GIB  # 2 rows of 2,048 positions per forward
    assert new.transient_bytes < 4 * GIB
    assert 14 * GIB < new.weights_bytes < 16 * GIB  # 7.6 B parameters in bf16


def test_the_chunk_term_follows_chunk_tokens_and_the_body_rows():
    """chunk_tokens 64 at max_seq_len 64: one row a forward (32 positions, one chunk); 128: two
    rows (64 positions): 32 more positions' logits (6 B × rows) and hidden states (2 B × H)."""
    base = dict(hidden=64, layers=2, vocab_rows=QWEN_ROWS, batch=8, seq=64, max_seq_len=64,
                response_positions=200, response_width=32, top_k=16)
    small = hf_cache_peak(CacheShape(**base, chunk_tokens=64))
    big = hf_cache_peak(CacheShape(**base, chunk_tokens=128))
    assert big.chunk_bytes - small.chunk_bytes == 32 * (QWEN_ROWS * 6 + 64 * 2)
    assert big.output_bytes == small.output_bytes
    assert big.body_bytes > small.body_bytes  # two rows through the body at once
    huge = hf_cache_peak(CacheShape(**base, chunk_tokens=10**6))  # the whole batch at once
    assert huge.chunk_bytes == 200 * (QWEN_ROWS * 6 + 64 * 2) + 200 * (12 * 16 + 4)


def test_bad_shapes_and_chunk_sizes_are_refused():
    with pytest.raises(ValueError, match="chunk_tokens must be an integer >= 1"):
        CacheShape(hidden=64, layers=2, vocab_rows=10, batch=1, seq=4, response_positions=2,
                   chunk_tokens=0)
    with pytest.raises(ValueError, match="response_positions must lie in"):
        CacheShape(hidden=64, layers=2, vocab_rows=10, batch=1, seq=4, response_positions=5)
    with pytest.raises(ValueError, match="dtype 'int8' unknown"):
        CacheShape(hidden=64, layers=2, vocab_rows=10, batch=1, seq=4, response_positions=2,
                   dtype="int8")
    with pytest.raises(ConfigError, match=r"generation\.cache_chunk_tokens must be an integer"):
        GenerationConfig(cache_chunk_tokens=0)
    assert GenerationConfig().cache_chunk_tokens == 4096


class _Rows:
    """A tokenizer whose length is the model's row count (memory depends on how many rows the
    cache reads, not on the tokens' text)."""

    def __init__(self, tok, rows: int) -> None:
        self._tok, self._rows = tok, rows

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __len__(self) -> int:
        return self._rows

    def __call__(self, *args, **kwargs):
        return self._tok(*args, **kwargs)


def _measured_peak(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    now = peak = 0
    for _, nbytes in events:
        now += nbytes
        peak = max(peak, now)
    return peak


@pytest.mark.parametrize(("batch", "rows", "chunk", "k", "dtype", "tolerance"), [
    (8, QWEN_ROWS, 64, 64, torch.bfloat16, 0.05),  # the chunk's logits dominate
    (8, QWEN_ROWS, 128, 128, torch.float32, 0.05),
    (96, 259, 4096, 64, torch.bfloat16, 0.15),  # the body (42 rows a forward) dominates
])
def test_estimate_agrees_with_the_measured_peak(batch, rows, chunk, k, dtype, tolerance):
    """A Qwen2-shaped teacher with the real 151,936 output rows (or the byte tokenizer's 259);
    the estimate's transient bytes (above the resident weights) within `tolerance` of the
    profiler's peak. The chunk's term is exact arithmetic (5%); the body's a per-layer model of
    the forward (15%)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=128, vocab_size=rows,
                      max_position_embeddings=256, tie_word_embeddings=False, pad_token_id=0)
    model = Qwen2ForCausalLM(cfg).eval().to(dtype)
    tok = make_tokenizer()
    rng = random.Random(0)
    synthetic = {"example_id": list(range(batch)),
            "messages": [json.dumps([{"role": "user", "content": "x" * rng.randint(5, 40)}])
                         for _ in range(batch)],
            "completion_ids": [[rng.randint(3, 250) for _ in range(rng.randint(5, 40))]
                               for _ in range(batch)],
            "finished": [True] * batch}
    examples = teacher_examples(tok, synthetic, 64, 96)
    wide = _Rows(tok, rows)

    def run() -> None:
        cache_batch(model, wide, synthetic, k, 1.0, "bfloat16", 64, 96, chunk_tokens=chunk)

    run()  # first-call allocations (rotary tables, kernels' scratch) are not the path's
    measured = _measured_peak(run)
    est = hf_cache_peak(CacheShape(
        hidden=64, layers=2, vocab_rows=rows, batch=batch, max_seq_len=96,
        seq=max(len(e.input_ids) for e in examples),
        response_positions=sum(e.response_len for e in examples), chunk_tokens=chunk, top_k=k,
        dtype="bf16" if dtype == torch.bfloat16 else "fp32", intermediate=128, kv_dim=32,
        response_width=max(e.response_len for e in examples)))
    assert abs(measured - est.transient_bytes) <= tolerance * measured, (measured, est)


def test_a_hub_config_gives_the_worst_case_shape():
    """Llama-3.1-70B's config.json fields (128,256 rows, no padding) at a batch of 256 × 2,048:
    the weights are 70.6 B parameters (141 GB in bf16), what caching adds stays under 4 GiB;
    Qwen2.5-7B's padded rows: the cache reads the tokenizer's."""
    llama70b = {"hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64,
                "num_key_value_heads": 8, "intermediate_size": 28_672, "vocab_size": 128_256,
                "tie_word_embeddings": False}
    from raydistill.cache_memory import shape_from_hf_config

    shape = shape_from_hf_config(llama70b, tokenizer_rows=128_256, batch=256, max_seq_len=2048,
                                 max_response_tokens=1024)
    assert (shape.kv_dim, shape.response_positions, shape.vocab_rows) == (1024, 256 * 1025,
                                                                          128_256)
    peak = hf_cache_peak(shape)
    assert 140e9 < peak.weights_bytes < 142e9
    assert peak.transient_bytes < 4 * GIB  # chunked: 2 rows a forward, 2,050 positions
    qwen = shape_from_hf_config({"hidden_size": 3584, "num_hidden_layers": 28,
                                 "num_attention_heads": 28, "num_key_value_heads": 4,
                                 "intermediate_size": 18_944, "vocab_size": 152_064},
                                tokenizer_rows=151_665, batch=4, max_seq_len=512,
                                max_response_tokens=64)
    assert (qwen.vocab_rows, qwen.output_rows, qwen.kv_dim) == (151_665, 152_064, 512)
