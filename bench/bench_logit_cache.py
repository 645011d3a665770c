"""Logit cache: bytes per token at several k against dense storage, write throughput, and the KL
between the full teacher distribution and what the cache keeps.

A tiny Llama teacher is trained on the built-in addition task for `--steps` steps (so its
distributions are as peaked as a real teacher's, not uniform), then its logits over `--examples`
training texts are computed once. For each k and dtype, the top-k cache is built and written as
zstd Parquet shards exactly as the `teacher_logit_caching` stage does; throughput counts the
top-k + encode + write (the teacher forward is timed apart). The KL(p_full ‖ p_cache) puts the
cached tail mass uniformly over the V − k tokens left out (what the cache can reconstruct); the
KD loss itself compares the (k+1)-bucket coarsenings, whose KL is also printed.

    python bench/bench_logit_cache.py [--steps 300] [--examples 2000] [--quick]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

from raydistill.distill.examples import tokenize_pair
from raydistill.distill.logit_cache import (
    DTYPES,
    bytes_per_token,
    encode_rows,
    read_cache,
    topk_of,
    write_shard,
)
from raydistill.distill.tiny import build_tiny, make_tokenizer, split_task
from raydistill.distill.train import masked_ce, pad_batch

QWEN_VOCAB = 151_936  # a real tokenizer's size, for the dense-storage projection


def train_teacher(steps: int, rows: list[dict]):
    tok = make_tokenizer()
    model = build_tiny({"hidden_size": 64, "num_hidden_layers": 2}, len(tok), 0)
    examples = [tokenize_pair(tok, r["prompt"], r["answer"]) for r in rows]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        pick = torch.randint(len(examples), (128,), generator=gen).tolist()
        batch = pad_batch([examples[i] for i in pick], tok.pad_token_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = masked_ce(logits, batch["input_ids"], batch["mask"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return model, tok, float(loss)


def cache_kl(full_logp: torch.Tensor, cached: dict, vocab: int) -> tuple[float, float]:
    """Mean per-token KL(p ‖ reconstructed) and KL of the (k+1)-bucket coarsening (nats)."""
    lp, idx, tail = cached["logprobs"], cached["indices"], cached["tail"]
    k = lp.shape[-1]
    rest = max(vocab - k, 1)
    recon = torch.full_like(full_logp, 0.0) + (tail.unsqueeze(-1) - math.log(rest))
    recon.scatter_(-1, idx, lp)
    recon = recon - torch.logsumexp(recon, -1, keepdim=True)  # stored values are rounded
    p = full_logp.exp()
    kl_full = (p * (full_logp - recon)).sum(-1).mean()
    # buckets: the k cached tokens and the rest, true vs stored
    true_top = full_logp.gather(-1, idx)
    true_tail = torch.log1p(-true_top.exp().sum(-1).clamp(max=1 - 1e-7))
    stored = torch.cat([lp, tail.unsqueeze(-1)], -1)
    stored = stored - torch.logsumexp(stored, -1, keepdim=True)
    true_b = torch.cat([true_top, true_tail.unsqueeze(-1)], -1)
    kl_bucket = (true_b.exp() * (true_b - stored)).sum(-1).mean()
    return float(kl_full), float(kl_bucket)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="100 steps, 500 examples")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.examples = 100, 500
    torch.set_num_threads(2)
    split = split_task(2, 500, 400, args.examples, 0)
    model, tok, loss = train_teacher(args.steps, split["teacher"])
    texts = [r["prompt"] + r["answer"] for r in split["prompts"]]
    enc = tok(texts, return_tensors="pt", padding=True)
    t0 = time.perf_counter()
    with torch.no_grad():
        logits = model(**enc).logits
    forward_s = time.perf_counter() - t0
    lengths = enc["attention_mask"].sum(1)
    n_tokens = int(lengths.sum())
    vocab = logits.shape[-1]
    keep = enc["attention_mask"].bool()
    full_logp = torch.log_softmax(logits.float(), -1)[keep]
    print(f"teacher: tiny Llama trained {args.steps} steps (final CE {loss:.3f}); "
          f"{len(texts)} texts, {n_tokens} tokens, vocabulary {vocab}; "
          f"teacher forward {n_tokens / forward_s:,.0f} tokens/s (not counted below)")
    out = Path(tempfile.mkdtemp(prefix="logit-cache-bench-"))
    dense_path = out / "dense.parquet"
    dense_rows = encode_rows(range(len(texts)), enc["input_ids"], lengths,
                             torch.log_softmax(logits, -1), torch.arange(vocab).expand_as(logits),
                             torch.zeros(logits.shape[:2]), "float16")
    dense_disk = write_shard(dense_rows, dense_path) / n_tokens
    dense_raw = vocab * 2
    print(f"dense fp16 log-probs: {dense_raw} B/token raw ({QWEN_VOCAB * 2:,} B/token at a "
          f"{QWEN_VOCAB:,}-token vocabulary), {dense_disk:,.1f} B/token on disk (zstd Parquet, "
          f"with indices)")
    print(f"{'k':>5} {'dtype':>9} {'raw B/tok':>10} {'disk B/tok':>11} {'vs dense':>9} "
          f"{'vs dense@151,936':>17} {'write tok/s':>12} {'KL full nats':>13} "
          f"{'KL buckets':>11} {'tail mass':>10}")
    for k in (16, 64, 128):
        for dtype in ("bfloat16", "float16"):
            if dtype not in DTYPES:
                continue
            path = out / f"k{k}-{dtype}.parquet"
            t0 = time.perf_counter()
            values, indices, tail = topk_of(logits, k)
            size = write_shard(encode_rows(range(len(texts)), enc["input_ids"], lengths, values,
                                           indices, tail, dtype), path)
            write_s = time.perf_counter() - t0
            shard_dir = out / f"read-{k}-{dtype}"
            shard_dir.mkdir()
            path.rename(shard_dir / path.name)
            cache = read_cache(shard_dir)
            cached = {key: torch.cat([cache[i][key] for i in range(len(texts))])
                      for key in ("logprobs", "indices", "tail")}
            kl_full, kl_bucket = cache_kl(full_logp, cached, vocab)
            tail_mass = float(cached["tail"].exp().mean())
            raw = bytes_per_token(k, dtype)
            print(f"{k:>5} {dtype:>9} {raw:>10} {size / n_tokens:>11.1f} "
                  f"{raw / dense_raw:>9.3f} {raw / (QWEN_VOCAB * 2):>17.5f} "
                  f"{n_tokens / write_s:>12,.0f} {kl_full:>13.2e} {kl_bucket:>11.2e} "
                  f"{tail_mass:>10.2e}")
    print("raw = k × (value bytes + 4 B int32 index) + 4 B fp32 tail; KL full: the tail spread "
          "uniformly; KL buckets: what the KD loss sees (rounding only)")


if __name__ == "__main__":
    main()
