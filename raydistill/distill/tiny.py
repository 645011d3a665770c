"""The built-in experiment: a task, a tokenizer and models that need no download.

Task: two-number addition, `"47+38="` → `"58"` — the answer's digits reversed, so a causal LM
writes the ones digit first and can carry, as people do. The space of n-digit pairs is split
once, by seed: a held-out evaluation set neither model ever sees, and the rest, from which the
teacher learns and the student's small labelled set and the unlabelled prompts are drawn.
Tokenizer: ByT5's byte-level tokenizer (no files). Models: Llama or Qwen2 configs of a given
size, randomly initialised.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from raydistill.errors import ConfigError

FAMILIES = ("llama", "qwen2")


def addition_pairs(digits: int, seed: int) -> list[tuple[int, int]]:
    top = 10**digits
    if top * top > 4_000_000:
        raise ConfigError(f"task.digits={digits} makes too many pairs for the built-in task")
    pairs = [(a, b) for a in range(top) for b in range(top)]
    random.Random(seed).shuffle(pairs)
    return pairs


def example(a: int, b: int) -> dict:
    return {"prompt": f"{a}+{b}=", "answer": str(a + b)[::-1]}


def split_task(digits: int, n_eval: int, n_labelled: int, n_prompts: int,
               seed: int) -> dict[str, list[dict]]:
    """Disjoint eval set; the teacher's data is everything else; the student's labelled set and
    the unlabelled prompts are drawn from the teacher's side (the teacher knows them)."""
    pairs = addition_pairs(digits, seed)
    if n_eval >= len(pairs) // 2:
        raise ConfigError(f"task.n_eval={n_eval} leaves too little to train on")
    evals, rest = pairs[:n_eval], pairs[n_eval:]
    return {
        "eval": [example(a, b) for a, b in evals],
        "teacher": [example(a, b) for a, b in rest],
        "labelled": [example(a, b) for a, b in rest[:n_labelled]],
        "prompts": [example(a, b) for a, b in rest[n_labelled:n_labelled + n_prompts]],
    }


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path


def make_tokenizer():
    from transformers import ByT5Tokenizer

    return ByT5Tokenizer(extra_ids=0)


def build_tiny(spec: dict, vocab_size: int, seed: int):
    """A randomly initialised causal LM from a small config dict."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    spec = dict(spec)
    family = spec.pop("family", "llama")
    if family not in FAMILIES:
        raise ConfigError(f"tiny.family {family!r} unknown; valid: {', '.join(FAMILIES)}")
    hidden = int(spec.get("hidden_size", 64))
    defaults = {"hidden_size": hidden, "num_hidden_layers": 2, "num_attention_heads": 4,
                "intermediate_size": 4 * hidden, "max_position_embeddings": 64,
                "vocab_size": vocab_size, "pad_token_id": 0, "eos_token_id": 1,
                "bos_token_id": None, "tie_word_embeddings": True}
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM),
                             "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[family]
    try:
        config = config_cls(**{**defaults, **spec})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"tiny model config: {exc}") from None
    torch.manual_seed(seed)
    return model_cls(config)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def greedy_accuracy(model, tokenizer, rows: list[dict], max_new_tokens: int,
                    batch_size: int = 256) -> tuple[float, int]:
    """Exact-match accuracy of greedy answers, and the number of tokens generated."""
    model.eval()
    tokenizer.padding_side = "left"
    correct = generated = 0
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        enc = tokenizer([r["prompt"] for r in chunk], return_tensors="pt", padding=True,
                        add_special_tokens=False)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
        for row, ids in zip(chunk, out[:, enc["input_ids"].shape[1]:].tolist(), strict=True):
            if tokenizer.eos_token_id in ids:
                ids = ids[: ids.index(tokenizer.eos_token_id) + 1]
            generated += len([t for t in ids if t != tokenizer.pad_token_id])
            text = tokenizer.decode(ids, skip_special_tokens=True)
            correct += int(text == row["answer"])
    return correct / max(1, len(rows)), generated
