"""What the student learns from, one rank's share, streamed shard by shard.

Sources: the teacher's synthetic data (Parquet shards of {example_id, messages, completion,
completion_ids, finished}), the labelled gold split (JSONL, for the no-teacher baseline) and the
teacher's logit cache (Parquet shards, top-k over each response). A rank keeps the rows whose
example_id ≡ rank (mod world), and reads only those rows (`own_rows`). The cache, the only large
source, is never held whole: each epoch walks its shards in a seeded order, one shard's rows of
this rank in memory at a time, and shuffles within it.

Each example is built with the student's own chat template; its response is the teacher's token
ids where the two share a vocabulary (logit and feature KD need that: the cache's positions and
the teacher's hidden states are over those ids), else the student's tokens of the same text.
An online teacher gets its own sequence too (its template, the same response).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq


def _shards(directory: str | Path) -> list[Path]:
    files = sorted(Path(directory).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no Parquet files in {directory}")
    return files


SYNTHETIC_COLUMNS = ["example_id", "id", "messages", "completion", "completion_ids", "finished"]


def rank_block(n: int, world: int) -> int:
    """Rows a rank owns in a row: blocks of up to ROW_BLOCK consecutive example ids (the
    writers' row group), smaller where the data set is small, so each rank keeps a share."""
    from raydistill.distill.logit_cache import ROW_BLOCK

    return max(1, min(ROW_BLOCK, n // (2 * world)))


def owned(ids, rank: int, world: int, block: int):
    """Which example ids rank `rank` of `world` trains on: blocks of `block` consecutive ids,
    dealt round-robin. Why blocks, not id mod world: the cache and the synthetic data are
    written in row groups of ROW_BLOCK consecutive ids, and Arrow decompresses a row group
    whole, so with blocks a rank of N reads about 1/N of the bytes; with mod every row group
    held every rank's rows and each rank decompressed the whole data set."""
    return (ids // block) % world == rank


def own_rows(path: str | Path, mine, columns: list[str] | None = None) -> list[dict]:
    """The rows of one Parquet file whose example_id `mine` (ids array → bool array) keeps,
    in file order: the id column is read first, a row group holding none of them is never
    read (nor decompressed), and of the others only those rows become Python objects."""
    import numpy as np

    parquet = pq.ParquetFile(path)
    out: list[dict] = []
    for g in range(parquet.metadata.num_row_groups):
        ids = parquet.read_row_group(g, columns=["example_id"]).column(0).to_numpy()
        keep = np.flatnonzero(mine(ids))
        if keep.size:
            out.extend(parquet.read_row_group(g, columns=columns).take(keep).to_pylist())
    return out


def read_synthetic(directory: str | Path, rank: int = 0, world: int = 1) -> list[dict]:
    """The synthetic rows of this rank (`owned`), in example order."""
    files = _shards(directory)
    n = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    block = rank_block(n, world)
    rows = [r for f in files for r in own_rows(
        f, lambda ids: owned(ids, rank, world, block), SYNTHETIC_COLUMNS)]
    return sorted(rows, key=lambda r: r["example_id"])


def read_prompts(path: str | Path, rank: int = 0, world: int = 1) -> list[dict]:
    """A split's prompts as synthetic-shaped rows with an empty response (on-policy at λ = 1:
    the student completes them itself; the train split needs no gold response)."""
    from raydistill.data.splits import read_rows

    rows = read_rows(path)
    block = rank_block(len(rows), world)
    return [{"example_id": i, "id": r["id"], "messages": json.dumps(r["messages"]),
             "completion": "", "completion_ids": None, "finished": False}
            for i, r in enumerate(rows) if owned(i, rank, world, block)]


def read_labelled(path: str | Path, rank: int = 0, world: int = 1) -> list[dict]:
    """Gold rows as synthetic-shaped rows (the response is the gold one, complete)."""
    from raydistill.data.splits import read_rows

    rows = read_rows(path)
    block = rank_block(len(rows), world)
    return [{"example_id": i, "id": r["id"], "messages": json.dumps(r["messages"]),
             "completion": r["response"], "completion_ids": None, "finished": True}
            for i, r in enumerate(rows) if owned(i, rank, world, block)]


class ExampleStream:
    """An endless, seeded stream of this rank's training examples (epoch after epoch)."""

    def __init__(self, cfg: dict[str, Any], student_tok, teacher_tok, rank: int,
                 world: int) -> None:
        self.cfg, self.student_tok, self.teacher_tok = cfg, student_tok, teacher_tok
        self.rank, self.world = rank, world
        if cfg["method"] == "none":
            rows = read_labelled(cfg["data_path"], rank, world)
        elif cfg["method"] == "onpolicy" and Path(cfg["data_path"]).is_file():
            rows = read_prompts(cfg["data_path"], rank, world)  # λ = 1: prompts, no teacher text
        else:
            rows = read_synthetic(cfg["data_path"], rank, world)
        if not rows:
            raise ValueError(f"rank {rank} of {world} has no training rows in "
                             f"{cfg['data_path']}: fewer rows than workers")
        self.rows = {r["example_id"]: r for r in rows}
        self.ids = np.fromiter(self.rows, dtype=np.int64)
        self.cached = cfg["method"] == "logit" and cfg["top_k"] > 0
        self.online = cfg["method"] in ("feature", "relational") or (
            cfg["method"] == "logit" and cfg["top_k"] == 0)

    def __iter__(self) -> Iterator[dict]:
        epoch = 0
        while True:
            rng = random.Random(self.cfg["seed"] * 1000 + epoch)
            for group in self._groups(rng):
                rng.shuffle(group)
                yield from group
            epoch += 1

    def _groups(self, rng: random.Random) -> Iterator[list[dict]]:
        if not self.cached:
            yield [self.build(r) for r in self.rows.values()]
            return
        from raydistill.distill.logit_cache import decode_row

        shards = _shards(self.cfg["cache_path"])
        rng.shuffle(shards)
        for shard in shards:  # one shard in memory at a time, and only this rank's rows of it
            group = []
            for raw in own_rows(shard, lambda ids: np.isin(ids, self.ids)):
                row = self.rows.get(raw["example_id"])
                if row is not None:
                    group.append(self.build(row, decode_row(raw)))
            yield group

    def build(self, row: dict, cached: dict | None = None) -> dict:
        """One example. Each model's own end of turn ends its sequence: the teacher's response
        ids end with the teacher's EOS (as it wrote and cached them), the student's with the
        student's EOS (a base student of an Instruct teacher learns to stop on <|endoftext|>,
        not on an <|im_end|> it never stops at). Where the KD target at that last position is
        the teacher's distribution, the teacher's EOS stands for the student's there: the two
        ids are swapped in the cached top-k (`own_eos_target`); an online teacher's logits
        carry `eos_swap` for `swap_eos_columns`. Elsewhere the teacher's ids are kept."""
        from raydistill.data.format import encode, response_ids

        c = self.cfg
        messages = json.loads(row["messages"])
        limits = {"max_prompt_tokens": c["max_prompt_tokens"], "max_seq_len": c["max_seq_len"]}
        t_eos, s_eos = self.teacher_tok.eos_token_id, self.student_tok.eos_token_id
        teacher_ids = None
        if cached is not None:
            teacher_ids = cached["input_ids"].tolist()
        elif row["completion_ids"] is not None:
            eos = [t_eos] if row["finished"] else []
            teacher_ids = [int(i) for i in row["completion_ids"]] + eos
        ends_on_eos = bool(row["finished"]) and bool(teacher_ids) and teacher_ids[-1] == t_eos
        swap = c["shared_vocab"] and ends_on_eos and t_eos != s_eos
        if teacher_ids is not None and c["shared_vocab"]:
            response = [*teacher_ids[:-1], s_eos] if swap else teacher_ids
        else:
            response = response_ids(self.student_tok, row["completion"],
                                    c["max_response_tokens"], bool(row["finished"]))
        ex = encode(self.student_tok, messages, response, **limits)
        swap = swap and ex.response_len == len(response)  # the EOS survived the length cut
        out: dict[str, Any] = {"input_ids": ex.input_ids, "prompt_len": ex.prompt_len}
        if cached is not None:  # the cache covers the response; keep what the student kept
            n = ex.response_len
            indices = cached["indices"][:n]
            if swap:
                indices = own_eos_target(indices, t_eos, s_eos)
            out.update(logprobs=cached["logprobs"][:n], indices=indices,
                       tail=cached["tail"][:n])
        if self.online:
            if teacher_ids is None:
                teacher_ids = response_ids(self.teacher_tok, row["completion"],
                                           c["max_response_tokens"], bool(row["finished"]))
            t = encode(self.teacher_tok, messages, teacher_ids, **limits)
            out.update(teacher_input_ids=t.input_ids, teacher_prompt_len=t.prompt_len)
            if swap:
                out["eos_swap"] = (t_eos, s_eos)
        return out

    def batches(self, size: int, skip: int = 0) -> Iterator[list[dict]]:
        """Batches of `size` examples; the first `skip` examples are passed over (a resumed
        run continues the stream where its checkpoint left it)."""
        it = iter(self)
        for _ in range(skip):
            next(it)
        while True:
            yield [next(it) for _ in range(size)]


def own_eos_target(indices, teacher_eos: int, student_eos: int):
    """A response's cached top-k ids [n, k] with the teacher's and the student's EOS ids
    swapped at the last position (the one that predicts the end of turn): the teacher's mass
    on ending its turn becomes the student's on ending its own. A copy; the cache is kept."""
    out = indices.clone()
    last = out[-1]
    t, s = last == teacher_eos, last == student_eos
    last[t], last[s] = student_eos, teacher_eos
    return out


def swap_eos_columns(logits, examples: list[dict]):
    """Online teacher logits [B, T, V] aligned to the student's positions, with the two EOS
    columns swapped at the position that predicts each swapped example's end of turn (see
    `ExampleStream.build`); examples without `eos_swap` are left as they are. A copy where
    anything changes."""
    rows = [(i, len(e["input_ids"]) - 2, *e["eos_swap"]) for i, e in enumerate(examples)
            if e.get("eos_swap")]
    if not rows:
        return logits
    out = logits.clone()
    for i, pos, t, s in rows:
        out[i, pos, t], out[i, pos, s] = logits[i, pos, s], logits[i, pos, t]
    return out
