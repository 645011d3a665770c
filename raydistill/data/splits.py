"""Rows → the run's splits, written as JSONL files every stage reads.

    test      only the final table reads it (scores reported)
    dev       what search decisions read (the in-training check, the scheduler's rungs)
    labelled  gold data the no-teacher baseline may train on
    train     prompts the teacher answers and the student learns from (gold not needed)
    teacher   gold rows outside dev and test: what a teacher that is trained learns from

Splits are drawn from one seeded shuffle of the pool in the order test, dev, labelled, train, so
that growing the train split never changes what the test split holds. Test, dev and labelled
need gold responses and take them from rows that have one.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from raydistill.config import SPLITS, DataConfig
from raydistill.errors import ConfigError
from raydistill.io import atomic_write_text

FILES = (*SPLITS, "teacher")


@dataclass(frozen=True)
class DataSplits:
    """Where each split's JSONL lies, how many rows it has and the sha256 of its bytes (the
    content address of everything a stage builds from it)."""

    paths: dict[str, Path]
    counts: dict[str, int]
    digests: dict[str, str]

    def __getitem__(self, split: str) -> Path:
        return self.paths[split]


def _size(spec: int | float | str, pool: int, name: str) -> int | None:
    if spec == "rest":
        return None
    if isinstance(spec, float):
        return round(spec * pool)
    if not isinstance(spec, int):
        raise ConfigError(f"data.splits.{name} must be a count or a fraction, got {spec!r}")
    return spec


def draw_splits(pool: list[dict], cfg: DataConfig,
                own: dict[str, list[dict]] | None = None) -> dict[str, list[dict]]:
    """The split rows (see the module docstring); `own` holds splits read from their own
    source, which are shuffled and cut to size but not drawn from the pool."""
    own = own or {}
    rng = random.Random(cfg.seed)
    pool = list(pool)
    rng.shuffle(pool)
    if cfg.sample:
        pool = pool[: cfg.sample]
    n_pool = len(pool)
    taken: set[int] = set()
    out: dict[str, list[dict]] = {}
    for name in SPLITS:
        spec = cfg.splits.get(name, "rest" if name == "train" else 0)
        if name in own:
            rows = list(own[name])
            missing = sum(r["response"] is None for r in rows)
            if missing and name != "train":
                raise ConfigError(f"data.split_sources.{name}: {missing} of {len(rows)} rows "
                                  f"have no gold response ({cfg.split_sources.get(name, name)}); "
                                  "test, dev and labelled need one")
            rng.shuffle(rows)
            size = _size(spec, len(rows), name)
            if size is not None and size > len(rows):
                raise ConfigError(f"data.splits.{name} asks for {size} rows but its own source "
                                  f"{cfg.split_sources[name]} has {len(rows)}; lower it")
            out[name] = rows if size is None else rows[:size]
            continue
        size = _size(spec, n_pool, name)
        gold_only = name != "train"
        free = [i for i in range(n_pool) if i not in taken
                and (not gold_only or pool[i]["response"] is not None)]
        if size is not None and size > len(free):
            kind = "rows with a gold response" if gold_only else "rows"
            raise ConfigError(f"data.splits.{name} asks for {size} rows but only {len(free)} "
                              f"{kind} are left in {cfg.source} (pool {n_pool}); lower it")
        chosen = free if size is None else free[:size]
        taken.update(chosen)
        out[name] = [pool[i] for i in chosen]
    held_out = {r["id"] for name in ("test", "dev") for r in out[name]}
    out["teacher"] = [r for r in pool if r["response"] is not None and r["id"] not in held_out]
    if not out["train"] and not out["labelled"]:
        raise ConfigError("data.splits leave nothing to train on: give train or labelled rows")
    return out


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


def write_splits(splits: dict[str, list[dict]], out: Path) -> DataSplits:
    """Each split as `out/<split>.jsonl`, written whole then renamed into place."""
    out.mkdir(parents=True, exist_ok=True)
    paths, counts, digests = {}, {}, {}
    for name in FILES:
        text = _jsonl(splits.get(name, []))
        paths[name] = atomic_write_text(out / f"{name}.jsonl", text)
        counts[name] = len(splits.get(name, []))
        digests[name] = hashlib.sha256(text.encode()).hexdigest()[:16]
    atomic_write_text(out / "splits.json", json.dumps(
        {"counts": counts, "sha256": digests}, indent=1, sort_keys=True))
    return DataSplits(paths, counts, digests)


def make_splits(cfg: DataConfig, out: Path) -> DataSplits:
    """Load the source, draw the splits, write them: the data stage of every run."""
    from raydistill.data.sources import load_pool, load_split_source

    own = {name: load_split_source(cfg, name) for name in cfg.split_sources}
    pool = load_pool(cfg) if set(SPLITS) - set(own) else []
    return write_splits(draw_splits(pool, cfg, own), out)


def read_rows(path: str | Path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def planned_count(cfg: DataConfig, split: str) -> float:
    """A split's size as the config states it, before any data is read (the forecast's unit
    of work): its count, or for the built-in task, the fraction or rest of its known pool.
    A fraction of a file not yet read counts as 1 (the forecast then scales per trial)."""
    spec = cfg.splits.get(split, "rest" if split == "train" else 0)
    if isinstance(spec, int):
        return float(spec)
    if cfg.source != "builtin:addition":  # only the addition pool's size is known unread
        return 1.0
    pool = float(10 ** (2 * cfg.addition.digits))
    if cfg.sample:
        pool = min(pool, float(cfg.sample))
    if isinstance(spec, float):
        return round(spec * pool)
    taken = sum(planned_count(cfg, s) for s in SPLITS if s != split)
    return max(0.0, pool - taken)
