"""Logit cache: bytes per token at several k against dense storage, write and read throughput,
and the KL between the full teacher distribution and what the cache keeps.

A teacher is trained for `--steps` steps with `stages.train_lm` (what teacher_training runs) on a
config's gold rows, so its distributions are as peaked as a real teacher's, not uniform:
configs/tiny.yaml (tiny Llama, the built-in addition task, 259-token byte vocabulary) or
configs/local-chat.yaml (a `local:` Qwen2, ChatML template, 1,024-token BPE). Its logits over
the responses of `--examples` train rows are computed once, at the positions the cache keeps
(`cache_batch`'s: prompt_len - 1 ... len - 2, each predicting a response token or the EOS).
For each k and dtype, the top-k rows are built (`logit_cache.encode_rows`) and written as a zstd
Parquet shard; write throughput counts top-k + encode + write (the teacher forward is timed
apart), read throughput `read_cache` (+ `decode_row`). KL(p_full || p_cache) spreads the cached
tail mass uniformly over the V - k tokens left out (what the cache can reconstruct); the KD loss
compares the (k+1)-bucket coarsenings, whose KL is printed too. Tokens = cached positions.

    python bench/bench_logit_cache.py [--config PATH] [--steps 300] [--examples 2000] [--quick]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

from raydistill.config import load_experiment, to_dict
from raydistill.data.format import encode, response_ids
from raydistill.data.splits import make_splits, read_rows
from raydistill.distill.batches import pad_batch
from raydistill.distill.logit_cache import (
    DTYPES,
    bytes_per_token,
    encode_rows,
    read_cache,
    topk_of,
    write_shard,
)
from raydistill.distill.stages import train_lm
from raydistill.distill.teacher import load_model_and_tokenizer
from raydistill.local_models import resolve_models

QWEN_VOCAB = 151_936  # a real tokenizer's size, for the dense-storage projection


def teacher_logits(config: str, steps: int, n_examples: int, work: Path):
    """(final CE, response ids [B, W], lengths [B], logits at the response positions
    [B, W, V], forward tokens/s, description)."""
    cfg = load_experiment(config, [f"teacher.steps={steps}", f"data.splits.train={n_examples}"])
    cfg = resolve_models(cfg, work / "artifacts")
    data = make_splits(cfg.data, work / "data")
    info = train_lm(to_dict(cfg.teacher), str(data["teacher"]), str(work / "teacher"), cfg.seed,
                    to_dict(cfg.data))
    model, tok = load_model_and_tokenizer(str(work / "teacher"))
    d = cfg.data
    examples = [encode(tok, r["messages"], response_ids(tok, r["response"], d.max_response_tokens),
                       max_prompt_tokens=d.max_prompt_tokens, max_seq_len=cfg.training.max_seq_len)
                for r in read_rows(data["train"]) if r["response"] is not None]
    width = max(e.response_len for e in examples)
    resp = torch.zeros((len(examples), width), dtype=torch.long)
    lengths = torch.tensor([e.response_len for e in examples])
    picked, forward_s, read = [], 0.0, 0
    for i in range(0, len(examples), 250):
        chunk = examples[i:i + 250]
        batch = pad_batch([{"input_ids": e.input_ids, "prompt_len": e.prompt_len}
                           for e in chunk], tok.pad_token_id)
        t0 = time.perf_counter()
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits
        forward_s += time.perf_counter() - t0
        read += int(batch["attention_mask"].sum())
        starts = torch.tensor([e.prompt_len - 1 for e in chunk])
        pos = (starts[:, None] + torch.arange(width)[None, :]).clamp(max=logits.shape[1] - 1)
        picked.append(logits.gather(1, pos[..., None].expand(-1, -1, logits.shape[-1])).float())
        for j, e in enumerate(chunk):
            resp[i + j, : e.response_len] = torch.as_tensor(e.input_ids[e.prompt_len:])
    what = (f"{cfg.teacher.model or 'tiny ' + cfg.teacher.tiny.get('family', 'llama')} "
            f"trained {steps} steps on {data.counts['teacher']} gold rows of {d.source}")
    return info["final_loss"], resp, lengths, torch.cat(picked), read / forward_s, what


def cache_kl(full_logp: torch.Tensor, cached: dict, vocab: int) -> tuple[float, float]:
    """Mean per-token KL(p || reconstructed) and KL of the (k+1)-bucket coarsening (nats)."""
    lp, idx, tail = cached["logprobs"], cached["indices"], cached["tail"]
    rest = max(vocab - lp.shape[-1], 1)
    recon = torch.zeros_like(full_logp) + (tail.unsqueeze(-1) - math.log(rest))
    recon.scatter_(-1, idx, lp)
    recon = recon - torch.logsumexp(recon, -1, keepdim=True)  # stored values are rounded
    kl_full = (full_logp.exp() * (full_logp - recon)).sum(-1).mean()
    true_top = full_logp.gather(-1, idx)  # buckets: the k cached tokens and the rest
    true_tail = torch.log1p(-true_top.exp().sum(-1).clamp(max=1 - 1e-7))
    stored = torch.cat([lp, tail.unsqueeze(-1)], -1)
    stored = stored - torch.logsumexp(stored, -1, keepdim=True)
    true_b = torch.cat([true_top, true_tail.unsqueeze(-1)], -1)
    kl_bucket = (true_b.exp() * (true_b - stored)).sum(-1).mean()
    return float(kl_full), float(kl_bucket)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--quick", action="store_true", help="100 steps, 500 examples")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.examples = 100, 500
    torch.set_num_threads(2)
    out = Path(tempfile.mkdtemp(prefix="logit-cache-bench-"))
    loss, resp, lengths, logits, fwd_tps, what = teacher_logits(args.config, args.steps,
                                                                args.examples, out)
    n_ex, vocab = len(lengths), logits.shape[-1]
    n_tokens = int(lengths.sum())
    keep = torch.arange(logits.shape[1])[None, :] < lengths[:, None]
    logp = torch.log_softmax(logits / args.temperature, -1)
    full_logp = logp[keep]
    print(f"teacher: {what} (final CE {loss:.3f}); {n_ex} responses, {n_tokens} cached "
          f"positions, vocabulary {vocab}, T {args.temperature:g}; teacher forward "
          f"{fwd_tps:,.0f} tokens/s read (not counted below)")
    dense = encode_rows(range(n_ex), resp, lengths, logp, torch.arange(vocab).expand_as(logp),
                        torch.zeros(logp.shape[:2]), "float16")
    dense_disk = write_shard(dense, out / "dense.parquet") / n_tokens
    dense_raw = vocab * 2
    print(f"dense fp16 log-probs: {dense_raw} B/token raw ({QWEN_VOCAB * 2:,} B/token at a "
          f"{QWEN_VOCAB:,}-token vocabulary), {dense_disk:,.1f} B/token on disk (zstd Parquet, "
          f"with indices)")
    print(f"{'k':>5} {'dtype':>9} {'raw B/tok':>10} {'disk B/tok':>11} {'vs dense':>9} "
          f"{'vs dense@151,936':>17} {'write tok/s':>12} {'read tok/s':>11} "
          f"{'KL full nats':>13} {'KL buckets':>11} {'tail mass':>10}")
    for k in (16, 64, 128):
        if k > vocab:
            continue
        for dtype in ("bfloat16", "float16"):
            if dtype not in DTYPES:
                continue
            shard_dir = out / f"k{k}-{dtype}"
            shard_dir.mkdir()
            t0 = time.perf_counter()
            values, indices, tail = topk_of(logits, k, args.temperature)
            size = write_shard(encode_rows(range(n_ex), resp, lengths, values, indices, tail,
                                           dtype), shard_dir / "part-0.parquet")
            write_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            cache = read_cache(shard_dir)
            read_s = time.perf_counter() - t0
            assert all(torch.equal(cache[i]["input_ids"], resp[i, : lengths[i]])
                       for i in range(n_ex)), "cached response ids differ from the written ones"
            cached = {key: torch.cat([cache[i][key] for i in range(n_ex)])
                      for key in ("logprobs", "indices", "tail")}
            kl_full, kl_bucket = cache_kl(full_logp, cached, vocab)
            tail_mass = float(cached["tail"].exp().mean())
            raw = bytes_per_token(k, dtype)
            print(f"{k:>5} {dtype:>9} {raw:>10} {size / n_tokens:>11.1f} "
                  f"{raw / dense_raw:>9.3f} {raw / (QWEN_VOCAB * 2):>17.5f} "
                  f"{n_tokens / write_s:>12,.0f} {n_tokens / read_s:>11,.0f} {kl_full:>13.2e} "
                  f"{kl_bucket:>11.2e} {tail_mass:>10.2e}")
    print("raw = k x (value bytes + 4 B int32 index) + 4 B fp32 tail (+ 4 B response id per "
          "position on disk); KL full: the tail spread uniformly; KL buckets: what the KD loss "
          "sees (rounding only)")


if __name__ == "__main__":
    main()
