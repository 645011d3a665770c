"""What one rank of N reads from a logit-cache shard: every row (the old whole-shard read, then
a filter) against `examples.own_rows` (the id column first, then only this rank's rows).

A shard of `--rows` cached responses (`--seq` positions, top-`--k` bf16 values and int32 ids, as
`logit_cache.encode_rows` writes them, zstd) is written twice: one row group (what
`pq.write_table` gives by default) and the writers' row groups of ROW_BLOCK (16) rows. For
each world size, rank 1's read is timed (best of 3) and its peak Python allocations are
traced (tracemalloc: the bytes turned into Python objects, every blob of a row copied into `bytes`).

    python bench/bench_rank_reads.py [--rows 1024] [--seq 128] [--k 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import torch

from raydistill.distill.examples import own_rows, owned, rank_block
from raydistill.distill.logit_cache import ROW_BLOCK, encode_rows

VOCAB_ROWS, TOKENS = 151_936, 151_665  # Qwen2.5-0.5B's output rows, its tokenizer's length


def measure(fn: Callable[[], list]) -> tuple[float, int, list]:
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    tracemalloc.start()
    try:
        rows = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return best, peak, rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--k", type=int, default=64)
    a = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(a.rows, a.seq, a.k, generator=gen).log_softmax(-1)
    indices = torch.randint(0, VOCAB_ROWS, (a.rows, a.seq, a.k), generator=gen)
    table = encode_rows(list(range(a.rows)), torch.randint(0, TOKENS, (a.rows, a.seq)),
                        [a.seq] * a.rows, values, indices, torch.full((a.rows, a.seq), -3.0),
                        "bfloat16")
    with tempfile.TemporaryDirectory() as d:
        for name, group in (("one row group", a.rows), (f"groups of {ROW_BLOCK}", ROW_BLOCK)):
            path = Path(d) / "shard.parquet"
            pq.write_table(table, path, compression="zstd", row_group_size=group)
            mib = path.stat().st_size / 2**20
            for world in (1, 4, 8):
                rank, block = 1 % world, rank_block(a.rows, world)

                def whole(path=path, world=world, rank=rank, block=block) -> list:
                    return [r for r in pq.read_table(path).to_pylist()
                            if owned(r["example_id"], rank, world, block)]

                def mine(p=path, w=world, r=rank, b=block) -> list:
                    return own_rows(p, lambda i: owned(i, r, w, b))

                t_old, py_old, old = measure(whole)
                t_new, py_new, new = measure(mine)
                if [r["example_id"] for r in new] != [r["example_id"] for r in old]:
                    raise SystemExit("own_rows returned other rows than the whole-shard read")
                print(f"{name:14s} {mib:5.1f} MiB  world {world}: whole {t_old * 1e3:6.0f} ms "
                      f"{py_old / 2**20:5.1f} MiB in Python | own_rows {t_new * 1e3:6.0f} ms "
                      f"{py_new / 2**20:5.1f} MiB in Python ({py_old / max(py_new, 1):.1f}x less)")


if __name__ == "__main__":
    main()
