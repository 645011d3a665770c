"""Training examples for the student: token ids, where the answer starts, and cached top-k."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq


def read_pairs(directory: str | Path) -> list[dict]:
    """Rows {example_id, prompt, completion} of a Parquet directory, in example order."""
    files = sorted(Path(directory).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no Parquet files in {directory}")
    rows = []
    for f in files:
        rows.extend(pq.read_table(f, columns=["example_id", "prompt", "completion"]).to_pylist())
    return sorted(rows, key=lambda r: r["example_id"])


def tokenize_pair(tokenizer, prompt: str, completion: str) -> dict:
    """prompt + completion + eos. The loss covers the completion and eos; the boundary is the
    prompt's own token count, exact for byte/char tokenizers and the usual approximation for BPE."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
    return {"input_ids": [*full, tokenizer.eos_token_id], "prompt_len": max(1, len(prompt_ids))}


def load_examples(cfg: dict) -> list[dict]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg["tokenizer_path"])
    pairs = read_pairs(cfg["data_path"])
    examples = []
    cache = None
    if cfg["method"] == "logit" and cfg["top_k"] > 0:
        from raydistill.distill.logit_cache import read_cache

        cache = read_cache(cfg["cache_path"])
    for row in pairs:
        ex = tokenize_pair(tokenizer, row["prompt"], row["completion"])
        if cache is not None:
            cached = cache[row["example_id"]]
            # the cache holds the teacher's own tokenisation of the same text: use it
            ex["input_ids"] = cached["input_ids"].tolist()
            ex.update(logprobs=cached["logprobs"], indices=cached["indices"],
                      tail=cached["tail"])
        examples.append(ex)
    if not examples:
        raise ValueError(f"no training examples in {cfg['data_path']}")
    return examples
