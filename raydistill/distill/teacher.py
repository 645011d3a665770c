"""Teacher-side stages as Ray Data actor pools: synthetic generation and logit caching.

Each pool actor opens a ledger window on its own node when it starts (loading the model is part
of the bill) and moves the window's end to the end of every batch it finishes, so the window ends
where the actor's work did, whenever Ray Data retires the actor.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

log = logging.getLogger(__name__)


def load_model_and_tokenizer(path: str, for_generation: bool = False):
    """A causal LM and its tokenizer from a hub id or a directory made by save_pretrained."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if torch.cuda.is_available() and torch.cuda.device_count() > 1:
        # a teacher too big for one GPU: shard it over this actor's GPUs (accelerate)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16,
                                                     device_map="auto")
    elif torch.cuda.is_available():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to("cuda")
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # decoder-only generation needs the prompts aligned on the right edge
    tokenizer.padding_side = "left" if for_generation else "right"
    return model, tokenizer


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


class _WindowedActor:
    stage = ""

    def _open(self, namespace: str, trial_id: str) -> None:
        from raydistill.cluster.windows import StageWindow, worker_devices

        self.window = StageWindow(namespace, trial_id, self.stage, devices=worker_devices())
        self.window.__enter__()

    def _done(self, tokens: int) -> None:
        self.window.add_tokens(tokens)
        self.window.checkpoint()


class TeacherGenerator(_WindowedActor):
    """Ray Data UDF: prompts → greedy teacher completions (the synthetic data set)."""

    stage = "teacher_generation"

    def __init__(self, model_path: str, namespace: str, trial_id: str, max_new_tokens: int,
                 threads: int = 1) -> None:
        _threads(threads)
        self._open(namespace, trial_id)
        self.model, self.tokenizer = load_model_and_tokenizer(model_path, for_generation=True)
        self.max_new_tokens = max_new_tokens
        self.window.checkpoint()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        prompts = [str(p) for p in batch["prompt"]]
        completions, generated, read = generate_batch(self.model, self.tokenizer, prompts,
                                                      self.max_new_tokens)
        # tokens the teacher processed: the prompts it read plus the tokens it wrote
        self._done(read + int(sum(generated)))
        return {"example_id": batch["example_id"], "prompt": prompts,
                "completion": completions, "generated_tokens": np.asarray(generated)}


def generate_batch(model, tokenizer, prompts: list[str],
                   max_new_tokens: int) -> tuple[list[str], list[int], int]:
    """Greedy completions, tokens generated per prompt, and prompt tokens read."""
    import torch

    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    enc = {k: v.to(model.device) for k, v in enc.items()}
    with torch.no_grad():
        out = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
    completions, generated = [], []
    for row in out[:, enc["input_ids"].shape[1]:]:
        ids = row.tolist()
        if tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(tokenizer.eos_token_id)]
        ids = [i for i in ids if i != tokenizer.pad_token_id]
        completions.append(tokenizer.decode(ids, skip_special_tokens=True))
        generated.append(len(ids))
    return completions, generated, int(enc["attention_mask"].sum())


class TeacherLogitCacher(_WindowedActor):
    """Ray Data UDF: texts → top-k of the teacher's true log-softmax, as Parquet rows."""

    stage = "teacher_logit_caching"

    def __init__(self, model_path: str, namespace: str, trial_id: str, top_k: int,
                 temperature: float, dtype: str, threads: int = 1) -> None:
        _threads(threads)
        self._open(namespace, trial_id)
        self.model, self.tokenizer = load_model_and_tokenizer(model_path)
        self.top_k, self.temperature, self.dtype = top_k, temperature, dtype
        self.window.checkpoint()

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        table, tokens = cache_batch(self.model, self.tokenizer, batch, self.top_k,
                                    self.temperature, self.dtype)
        self._done(tokens)
        return table


def cache_batch(model, tokenizer, batch: dict, top_k: int, temperature: float,
                dtype: str) -> tuple[pa.Table, int]:
    """Rows {example_id, prompt, completion} → (cache rows, tokens the teacher read)."""
    import torch

    from raydistill.distill.logit_cache import encode_rows, topk_of

    texts = [str(p) + str(c) for p, c in zip(batch["prompt"], batch["completion"], strict=True)]
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**{k: v.to(model.device) for k, v in enc.items()}).logits.float().cpu()
    values, indices, tail = topk_of(logits, top_k, temperature)
    lengths = enc["attention_mask"].sum(dim=1)
    return encode_rows(batch["example_id"], enc["input_ids"], lengths, values, indices, tail,
                       dtype), int(lengths.sum())


def pool_size(num_actors: int, gpus_per_actor: int) -> int:
    """Actors for a teacher pool: as configured, or (0) as many as the cluster holds."""
    import ray

    if num_actors > 0:
        return num_actors
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus:
        return max(1, gpus // gpus_per_actor)
    return max(1, len([n for n in ray.nodes() if n["Alive"]]))


def run_pool(stage_cls: type, rows: list[dict], out_dir: Path, *, batch_size: int,
             num_actors: int, use_gpu: bool, ctor: dict, gpus_per_actor: int = 1) -> None:
    """Map `rows` through an actor pool of `stage_cls` and write Parquet into out_dir."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    # Ray Data schedules with an explicit strategy (SPREAD), so inside a Tune trial its actors
    # are not captured by the trial's placement group and spread over the cluster's nodes
    ds = ray.data.from_items(rows)
    resources = {"num_gpus": gpus_per_actor} if use_gpu else {"num_cpus": 1}
    num_actors = pool_size(num_actors, gpus_per_actor if use_gpu else 1)
    ds = ds.map_batches(stage_cls, fn_constructor_kwargs=ctor, batch_size=batch_size,
                        compute=ray.data.ActorPoolStrategy(size=num_actors), **resources)
    ds.write_parquet(str(out_dir))
