"""The teacher's logit cache: top-k of the true log-softmax over the tokenizer's vocabulary
(output rows a checkpoint pads past its tokenizer are no token: `cache_topk` leaves them out).

Unlike a cache renormalised over its top-k (which loses the true probabilities), each token keeps
its k largest log-probabilities (fp16/bf16), their vocabulary indices (int32) and the log of the
tail mass the top-k leaves out (fp32), so the KD loss can compare (k+1)-bucket distributions.
Rows are stored in zstd Parquet shards as raw little-endian blobs: one row per example, with
`seq_len` positions × `k` entries. The positions are the example's response: position j holds
the teacher's distribution for response token j (the last one for its EOS), read where the
teacher's own sequence (its chat template's prompt, then the response) predicts that token, so
a student with another template but the same vocabulary aligns by response position.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
SCHEMA = pa.schema([
    ("example_id", pa.int64()),
    ("seq_len", pa.int32()),
    ("k", pa.int32()),
    ("dtype", pa.string()),
    ("input_ids", pa.binary()),  # int32 [seq_len]: the response token each position predicts
    ("topk_logprobs", pa.binary()),  # dtype [seq_len, k]
    ("topk_indices", pa.binary()),  # int32 [seq_len, k]
    ("tail_logprob", pa.binary()),  # float32 [seq_len]
])


def topk_of(logits: torch.Tensor, k: int, temperature: float = 1.0):
    """(top-k log-probs, indices, log tail mass) of log_softmax(logits / T) over every column of
    `logits` (cut them to the tokenizer's rows first; `cache_topk.topk_rows` does it in place
    for the caching path)."""
    from raydistill.distill.losses import topk_from_logits

    cache = topk_from_logits(logits, k, temperature)
    return cache.logprobs, cache.indices, cache.tail_logprob


def _blob(t: torch.Tensor, dtype: str) -> bytes:
    t = t.detach().cpu().to(DTYPES[dtype]).contiguous()
    if dtype == "bfloat16":  # numpy has no bfloat16: store the raw 16-bit pattern
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def _unblob(data: bytes, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    if dtype == "bfloat16":
        raw = np.frombuffer(data, dtype="<i2").reshape(shape)
        return torch.from_numpy(raw.copy()).view(torch.bfloat16)
    np_dtype = {"float16": "<f2", "float32": "<f4"}[dtype]
    return torch.from_numpy(np.frombuffer(data, dtype=np_dtype).reshape(shape).copy())


def encode_rows(example_ids, input_ids, lengths, values, indices, tail, dtype: str) -> pa.Table:
    """A batch [B, T, k] (padded) → one Parquet row per example, cut to its length."""
    k = int(values.shape[-1])
    rows: dict[str, list] = {name: [] for name in SCHEMA.names}
    for b, ex in enumerate(example_ids):
        n = int(lengths[b])
        rows["example_id"].append(int(ex))
        rows["seq_len"].append(n)
        rows["k"].append(k)
        rows["dtype"].append(dtype)
        rows["input_ids"].append(input_ids[b, :n].to(torch.int32).numpy().tobytes())
        rows["topk_logprobs"].append(_blob(values[b, :n], dtype))
        rows["topk_indices"].append(indices[b, :n].to(torch.int32).numpy().tobytes())
        rows["tail_logprob"].append(tail[b, :n].float().numpy().tobytes())
    return pa.Table.from_pydict(rows, schema=SCHEMA)


# Rows per Parquet row group, and per block of ids a training rank owns (examples.owned):
# Arrow decompresses a row group whole, so small groups of consecutive ids let a rank of N read
# about 1/N of a cache. 16 rows of a 384-token top-64 bf16 response are ~2.4 MB raw.
ROW_BLOCK = 16


def write_shard(table: pa.Table, path: Path) -> int:
    pq.write_table(table, path, compression="zstd", row_group_size=ROW_BLOCK)
    return path.stat().st_size


def decode_row(row: dict) -> dict[str, torch.Tensor]:
    """One stored row: input_ids [T] (the response ids the positions predict), logprobs [T,k]
    (fp32), indices [T,k] and the log tail mass [T]."""
    n, k, dt = row["seq_len"], row["k"], row["dtype"]
    return {
        "input_ids": torch.from_numpy(np.frombuffer(row["input_ids"], "<i4").astype(np.int64)),
        "logprobs": _unblob(row["topk_logprobs"], dt, (n, k)).float(),
        "indices": torch.from_numpy(
            np.frombuffer(row["topk_indices"], "<i4").reshape(n, k).astype(np.int64)),
        "tail": torch.from_numpy(np.frombuffer(row["tail_logprob"], "<f4").copy()),
    }


def read_cache(directory: str | Path) -> dict[int, dict[str, torch.Tensor]]:
    """Every cached example by id (all in memory: for tests and tools; training streams)."""
    out: dict[int, dict[str, torch.Tensor]] = {}
    for shard in sorted(Path(directory).glob("*.parquet")):
        for row in pq.read_table(shard).to_pylist():
            out[row["example_id"]] = decode_row(row)
    return out


def iter_shards(directory: str | Path) -> Iterator[Path]:
    yield from sorted(Path(directory).glob("*.parquet"))


def bytes_per_token(k: int, dtype: str) -> int:
    """Uncompressed storage per token: values + int32 indices + fp32 tail."""
    return k * (torch.finfo(DTYPES[dtype]).bits // 8 + 4) + 4
