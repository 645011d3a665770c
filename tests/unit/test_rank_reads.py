"""Each rank reads only its rows of the synthetic data and of the logit cache: its stream is the
one it had when every rank read every shard whole, and the bytes it turns into Python are its
share, not the shard's."""

from __future__ import annotations

import gc
import json
import random
import tracemalloc
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raydistill.distill import examples as ex_mod
from raydistill.distill.examples import (
    ExampleStream,
    own_rows,
    owned,
    rank_block,
    read_synthetic,
)
from raydistill.distill.logit_cache import ROW_BLOCK, decode_row, encode_rows, write_shard
from raydistill.distill.tiny import make_tokenizer

N, K, RESPONSE = 96, 64, 40  # rows; top-k; response tokens per row (a ~16 KB cache row)


def make_data(root: Path) -> dict:
    """Synthetic rows and their cache in three shards each; the cache's shards hold row groups
    of 5 rows (a row group with none of a rank's rows must not be read)."""
    tok = make_tokenizer()
    gen = torch.Generator().manual_seed(0)
    (root / "syn").mkdir()
    (root / "cache").mkdir()
    order = list(range(N))
    random.Random(1).shuffle(order)  # shards are not in id order
    for s in range(3):
        ids = order[s::3]
        completions = [(f"answer {i:03d}; " * 4)[:RESPONSE - 1] for i in ids]  # one byte a token
        completion_ids = [tok(c, add_special_tokens=False)["input_ids"][:RESPONSE - 1]
                          for c in completions]
        pq.write_table(pa.table({
            "example_id": ids, "id": [f"row-{i}" for i in ids],
            "messages": [json.dumps([{"role": "user", "content": f"q{i}"}]) for i in ids],
            "completion": completions, "completion_ids": completion_ids,
            "finished": [True] * len(ids)}), root / "syn" / f"part-{s}.parquet")
        resp = torch.tensor([[*c, tok.eos_token_id] for c in completion_ids])
        values = torch.randn(len(ids), RESPONSE, K, generator=gen).log_softmax(-1)
        indices = torch.randint(0, len(tok), (len(ids), RESPONSE, K), generator=gen)
        table = encode_rows(ids, resp, [RESPONSE] * len(ids), values, indices,
                            torch.full((len(ids), RESPONSE), -3.0), "bfloat16")
        pq.write_table(table, root / "cache" / f"part-{s}.parquet", row_group_size=5,
                       compression="zstd")
    return {"method": "logit", "top_k": K, "seed": 3, "data_path": str(root / "syn"),
            "cache_path": str(root / "cache"), "max_prompt_tokens": 16, "max_seq_len": 64,
            "max_response_tokens": RESPONSE, "shared_vocab": True}


class WholeShards(ExampleStream):
    """The stream as it was: every shard read whole, then this rank's rows kept."""

    def _groups(self, rng):
        shards = ex_mod._shards(self.cfg["cache_path"])
        rng.shuffle(shards)
        for shard in shards:
            yield [self.build(self.rows[r["example_id"]], decode_row(r))
                   for r in pq.read_table(shard).to_pylist() if r["example_id"] in self.rows]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("rank_reads"))


def whole_synthetic(cfg: dict, rank: int, world: int) -> list[dict]:
    rows = [r for f in sorted(Path(cfg["data_path"]).glob("*.parquet"))
            for r in pq.read_table(f).to_pylist()
            if owned(r["example_id"], rank, world, rank_block(N, world))]
    return sorted(rows, key=lambda r: r["example_id"])


@pytest.mark.parametrize("world", [1, 3, 4])
def test_each_ranks_stream_is_unchanged(cfg, world):
    tok = make_tokenizer()
    for rank in range(world):
        assert read_synthetic(cfg["data_path"], rank, world) == whole_synthetic(cfg, rank, world)
        new = ExampleStream(cfg, tok, tok, rank, world)
        old = WholeShards(cfg, tok, tok, rank, world)
        per_epoch = len(new.rows)
        assert per_epoch == sum(owned(i, rank, world, rank_block(N, world)) for i in range(N))
        assert per_epoch >= N // world - rank_block(N, world)  # a fair share
        for a, b in zip(islice(new, 2 * per_epoch + 1), islice(old, 2 * per_epoch + 1),
                        strict=True):
            assert a.keys() == b.keys() and a["input_ids"] == b["input_ids"]
            for key in ("logprobs", "indices", "tail"):
                assert torch.equal(a[key], b[key])


def test_own_rows_reads_only_the_row_groups_that_hold_a_ranks_rows(cfg, monkeypatch):
    shard = Path(cfg["cache_path"]) / "part-0.parquet"
    read = []
    real = pq.ParquetFile.read_row_group

    def counting(self, i, columns=None, **kw):
        read.append((i, tuple(columns or ())))
        return real(self, i, columns=columns, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counting)
    ids = pq.read_table(shard, columns=["example_id"]).column(0).to_pylist()
    rank = ids[7] % 40  # of 40 ranks: at most 3 of the 96 ids, in one to three row groups
    rows = own_rows(shard, lambda i: i % 40 == rank)
    assert [r["example_id"] for r in rows] == [i for i in ids if i % 40 == rank]
    holding = sorted({pos // 5 for pos, i in enumerate(ids) if i % 40 == rank})  # 5 rows a group
    assert 0 < len(holding) < pq.ParquetFile(shard).metadata.num_row_groups
    assert [g for g, cols in read if cols != ("example_id",)] == holding


def _peak_python_bytes(stream: ExampleStream) -> int:
    """Peak Python allocations while a rank walks the cache's shards (examples not kept)."""
    stream.build = lambda row, cached=None: None
    rng = random.Random(0)
    gc.collect()
    tracemalloc.start()
    try:
        for group in stream._groups(rng):  # one shard's examples at a time, as training does
            del group
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_rank_decodes_its_share_of_the_bytes(cfg):
    tok = make_tokenizer()
    world = 4
    shard_bytes = max(pq.read_table(f).nbytes for f in Path(cfg["cache_path"]).glob("*.parquet"))
    own = _peak_python_bytes(ExampleStream(cfg, tok, tok, 1, world))
    whole = _peak_python_bytes(WholeShards(cfg, tok, tok, 1, world))
    # Reading whole holds a shard's every row as Python bytes; a rank's share is a quarter.
    assert whole > shard_bytes
    assert own < 0.5 * shard_bytes, (own, whole, shard_bytes)


def test_a_rank_decompresses_its_share_of_a_cache_as_the_pipeline_writes_it(tmp_path,
                                                                            monkeypatch):
    """The cache writers (`write_shard`, the actor pools' write_parquet) put ROW_BLOCK
    consecutive ids in a row group, and a rank owns blocks of consecutive ids: a rank of 4
    reads about a quarter of the compressed bytes. With one row group a shard (the writers'
    old default) and ids dealt mod world, every rank decompressed every shard whole."""
    gen = torch.Generator().manual_seed(0)
    n, world = 256, 4
    for s, start in enumerate(range(0, n, 100)):  # shards of consecutive ids, as Ray Data's
        ids = list(range(start, min(n, start + 100)))
        table = encode_rows(ids, torch.zeros(len(ids), RESPONSE, dtype=torch.long),
                            [RESPONSE] * len(ids),
                            torch.randn(len(ids), RESPONSE, K, generator=gen).log_softmax(-1),
                            torch.randint(0, 5000, (len(ids), RESPONSE, K), generator=gen),
                            torch.full((len(ids), RESPONSE), -3.0), "bfloat16")
        write_shard(table, tmp_path / f"part-{s}.parquet")
    total = read = 0
    real = pq.ParquetFile.read_row_group

    def counting(self, i, columns=None, **kw):
        nonlocal read
        if columns != ["example_id"]:
            read += self.metadata.row_group(i).total_byte_size
        return real(self, i, columns=columns, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counting)
    block = rank_block(n, world)
    assert block == ROW_BLOCK
    got = []
    for f in sorted(tmp_path.glob("*.parquet")):
        meta = pq.ParquetFile(f).metadata
        assert meta.num_row_groups > 1
        total += sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
        got += [r["example_id"] for r in own_rows(f, lambda i: owned(i, 1, world, block),
                                                   ["example_id"])]
    assert got == [i for i in range(n) if (i // block) % world == 1]
    assert read < 0.35 * total, (read, total)
