"""Peak memory of the chunked α·CE + (1−α)·KD against plain autograd, at Qwen2.5's vocabulary.

Each case (logits dtype × teacher × implementation) runs in its own fresh subprocess (this script
re-invoked with `--one`): it allocates the inputs (student logits requiring grad, the teacher's
dense logits in the same dtype or a bfloat16 top-64 cache with its tail, targets, a mask with
~10% padding), reads the peak RSS, runs forward + backward once, and reports the increase of the
peak RSS (resource.getrusage ru_maxrss) over that baseline, and the wall time. Both compute
forward_kl at α = 0.5, T = 1 (the default configs); "unchunked" is masked CE on a full fp32
log_softmax plus `losses.forward_kl`, as in train.py. The gradient left in `logits.grad` (one
copy in the logits' dtype) is counted in both.

    python bench/bench_kd_memory.py [--batch 2] [--seq 256] [--vocab 152064] [--chunk-tokens 128]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time

import torch

from raydistill.distill import losses
from raydistill.distill.chunked import chunked_kd_objective

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ALPHA, TOP_K = 0.5, 64


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def unchunked(logits, targets, teacher, mask) -> torch.Tensor:
    nll = -torch.log_softmax(logits.float(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ce = torch.where(mask, nll, torch.zeros_like(nll)).sum() / mask.sum().clamp(min=1)
    kd = losses.forward_kl(logits, teacher, temperature=1.0, mask=mask)
    return ALPHA * ce + (1 - ALPHA) * kd


def one(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    b, t, v, dtype = args.batch, args.seq, args.vocab, DTYPES[args.dtype]
    if args.teacher == "dense":
        teacher = torch.randn(b, t, v, dtype=dtype).mul_(2)  # in place: no transient copy
    else:  # a top-k cache, built 32 positions at a time so no full-size transient sets the baseline
        parts = [losses.topk_from_logits(torch.randn(b, min(32, t - s), v) * 2, TOP_K)
                 for s in range(0, t, 32)]
        teacher = losses.TopK(torch.cat([p.logprobs for p in parts], 1).to(torch.bfloat16),
                              torch.cat([p.indices for p in parts], 1),
                              torch.cat([p.tail_logprob for p in parts], 1).to(torch.bfloat16))
        del parts
    logits = torch.randn(b, t, v, dtype=dtype).mul_(2).requires_grad_()
    targets = torch.randint(v, (b, t))
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, int(t * 0.8):] = False  # padding at the end of one row
    gc.collect()
    base = peak_mib()
    start = time.perf_counter()
    if args.one == "chunked":
        value = chunked_kd_objective(logits, targets, teacher, mask, loss="forward_kl",
                                     alpha=ALPHA, chunk_tokens=args.chunk_tokens)
    else:
        value = unchunked(logits, targets, teacher, mask)
    value.backward()
    seconds = time.perf_counter() - start
    print(json.dumps({"peak_mib": peak_mib() - base, "seconds": seconds, "value": value.item()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=152_064)
    parser.add_argument("--chunk-tokens", type=int, default=128)
    parser.add_argument("--one", choices=["chunked", "unchunked"], help=argparse.SUPPRESS)
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--teacher", choices=["dense", "topk"], default="dense",
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args)
        return
    b, t, v = args.batch, args.seq, args.vocab
    print(f"B={b} T={t} V={v:,} ({b * t} tokens), chunk_tokens={args.chunk_tokens}, forward_kl, "
          f"alpha={ALPHA}; one fp32 [B,T,V] copy = {b * t * v * 4 / 2**20:,.0f} MiB; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("peak = increase of peak RSS over the inputs, forward + backward (MiB)\n")
    head = (f"{'logits':<7}{'teacher':<10}{'unchunked':>11}{'chunked':>10}{'ratio':>7}"
            f"{'unchunked s':>13}{'chunked s':>11}{'|Δ loss|':>10}")
    print(head)
    print("-" * len(head))
    for dtype in DTYPES:
        for teacher in ("dense", f"topk{TOP_K}"):
            res = {}
            for impl in ("unchunked", "chunked"):
                cmd = [sys.executable, __file__, "--one", impl, "--dtype", dtype,
                       "--teacher", teacher.rstrip("0123456789"), "--batch", str(b),
                       "--seq", str(t), "--vocab", str(v), "--chunk-tokens",
                       str(args.chunk_tokens)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                res[impl] = json.loads(out.strip().splitlines()[-1])
            u, c = res["unchunked"], res["chunked"]
            print(f"{dtype:<7}{teacher:<10}{u['peak_mib']:>11,.0f}{c['peak_mib']:>10,.0f}"
                  f"{u['peak_mib'] / max(c['peak_mib'], 1e-9):>6.1f}x"
                  f"{u['seconds']:>13.2f}{c['seconds']:>11.2f}"
                  f"{abs(u['value'] - c['value']):>10.1e}", flush=True)


if __name__ == "__main__":
    main()
