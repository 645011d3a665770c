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
from raydistill.distill.examples import ExampleStream, own_rows, read_synthetic
from raydistill.distill.logit_cache import decode_row, encode_rows
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
            for r in pq.read_table(f).to_pylist() if r["example_id"] % world == rank]
    return sorted(rows, key=lambda r: r["example_id"])


@pytest.mark.parametrize("world", [1, 3, 4])
def test_each_ranks_stream_is_unchanged(cfg, world):
    tok = make_tokenizer()
    for rank in range(world):
        assert read_synthetic(cfg["data_path"], rank, world) == whole_synthetic(cfg, rank, world)
        new = ExampleStream(cfg, tok, tok, rank, world)
        old = WholeShards(cfg, tok, tok, rank, world)
        per_epoch = len(new.rows)
        assert per_epoch == len(range(rank, N, world))
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
    rows = own_rows(shard, rank, 40)
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
