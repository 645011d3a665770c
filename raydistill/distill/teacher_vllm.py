"""The teacher on vLLM: continuous batching, a paged KV cache, tensor parallelism.

Why a `vllm.LLM` inside our own Ray Data actor pool rather than `ray.data.llm`'s processor: the
bill is the point. Each pool actor opens its ledger window on its own node for the GPUs it holds
(by UUID) before the engine starts, marks the load done when the engine is up, and moves the
window's end after every batch: `ray.data.llm` runs the engine in actors of its own where no
window can be opened around the load. It also lets one pass write two artifacts: the top-k
logprobs of each generated token (`logprobs=k`, raw: before temperature or top-p touch them) go
straight into logit-cache shards next to the synthetic rows, so no second teacher pass is run.
Caching over text that exists already uses `prompt_logprobs=k`.

The engine core runs in the actor's own process (VLLM_ENABLE_V1_MULTIPROCESSING=0): its CPU time
is then the actor's, which is how the ledger splits a node's shared devices, and no process is
spawned from inside a Ray worker. With `gpus_per_actor` > 1 the actor's GPUs are one
tensor-parallel group (vLLM's multiprocessing executor, on the GPUs Ray gave the actor).
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from raydistill.distill.sampling import Completion, end_completion
from raydistill.distill.teacher import (
    _threads,
    _WindowedActor,
    synthetic_rows,
    teacher_examples,
)

log = logging.getLogger(__name__)

def make_llm(model_path: str, *, gpus: int, max_model_len: int, top_k: int, seed: int,
             memory_fraction: float, tokenizer: bool, threads: int):
    """A vllm.LLM for the teacher, in the precision the HF path uses (bf16 on a GPU, fp32 on
    CPU), so the two engines compute the same numbers up to kernel rounding."""
    import torch

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    # ERROR: every start logs a harmless "chat template warmup failed" traceback at WARNING
    # (we pass token ids, so vLLM needs no tokenizer); real failures still raise
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    on_gpu = torch.cuda.is_available()
    if not on_gpu:  # vLLM sizes its CPU threads from OMP_NUM_THREADS (else: 1 per worker)
        os.environ["OMP_NUM_THREADS"] = str(max(1, threads))
    from vllm import LLM

    kwargs: dict[str, Any] = {
        "model": model_path, "dtype": "bfloat16" if on_gpu else "float32", "seed": seed,
        "max_model_len": max_model_len, "max_logprobs": max(20, top_k),
        "logprobs_mode": "raw_logprobs",  # the model's own distribution, not the sampler's
        "gpu_memory_utilization": memory_fraction or (0.9 if on_gpu else 0.1),
        "tensor_parallel_size": max(1, gpus) if on_gpu else 1,
        # we tokenize with the chat template ourselves; vLLM needs the tokenizer only to
        # detokenize for stop strings
        "skip_tokenizer_init": not tokenizer,
        "enforce_eager": not on_gpu,  # CUDA graphs pay off on a GPU; on CPU nothing to capture
        # decoding stated, never inherited: vLLM's default ("auto") loads the checkpoint's
        # generation_config.json as default sampling parameters (Qwen2.5-Instruct's
        # repetition_penalty 1.05, top_k 20, ...); "vllm" keeps vLLM's neutral defaults and
        # `sampling_params` sets every field itself
        "generation_config": "vllm",
    }
    if not on_gpu:
        # on CPU the share is of the machine's memory, and vLLM gives the KV cache that share
        # minus this process's RSS: in a process that already holds models (an actor, a test
        # session) that goes negative and the engine refuses to start. The KV cache gets the
        # share itself, stated in bytes.
        import psutil

        kwargs["kv_cache_memory_bytes"] = int(kwargs["gpu_memory_utilization"]
                                              * psutil.virtual_memory().total)
    if on_gpu and gpus > 1:
        kwargs["distributed_executor_backend"] = "mp"
    return LLM(**kwargs)


def warm_up(llm, top_k: int) -> None:
    """One short request through the paths the work will take (decode with top-k logprobs,
    prefill with prompt logprobs): their first use builds kernels and buffers (2.7 s against
    0.5 s for the same batch warm, seen on CPU), start-up cost that belongs to the load
    phase, not to the first batch's J per token."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=2, temperature=0.0, logprobs=top_k or None,
                            prompt_logprobs=top_k or None, detokenize=False, ignore_eos=True)
    llm.generate([{"prompt_token_ids": [0, 1, 2, 3]}], params, use_tqdm=False)


def sampling_params(sampling: dict, stop_ids: list[int], max_tokens: int, top_k: int,
                    seed: int, allowed: list[int] | None = None):
    from vllm import SamplingParams

    """Every field that changes the output, from `sampling` alone (as `teacher.
    stated_generation` for the HF engine); `top_k` here is the logprobs kept, the sampler's
    top-k is `sampling["top_k"]` (0 = off)."""
    sample = sampling.get("decoding") == "sample"
    return SamplingParams(
        n=int(sampling.get("n", 1)), temperature=float(sampling["temperature"]) if sample else 0.0,
        top_p=float(sampling.get("top_p", 1.0)) if sample else 1.0,
        top_k=int(sampling.get("top_k", 0)) if sample else 0, min_p=0.0,
        repetition_penalty=float(sampling.get("repetition_penalty", 1.0)),
        presence_penalty=0.0, frequency_penalty=0.0, min_tokens=0, seed=seed,
        stop=list(sampling.get("stop", [])) or None, stop_token_ids=list(stop_ids),
        max_tokens=max_tokens, logprobs=top_k or None, detokenize=bool(sampling.get("stop")),
        allowed_token_ids=allowed)


def vllm_generate(llm, prompts: list[list[int]], first_ids: list[int], sampling: dict,
                  stop_ids: list[int], max_new_tokens: int, top_k: int, decode,
                  allowed: list[int] | None = None) -> list[list[Completion]]:
    """n completions of each prompt; request i is seeded with seed + its example id, so a
    completion does not depend on which batch or actor it landed in."""
    seed = int(sampling.get("seed", 0))
    params = [sampling_params(sampling, stop_ids, max_new_tokens, top_k, seed + ex, allowed)
              for ex in first_ids]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    stops = list(sampling.get("stop", []))
    return [[end_completion(c.token_ids, stop_ids, stops, decode,
                            c.logprobs if top_k else None)
             for c in sorted(o.outputs, key=lambda c: c.index)] for o in outs]


def cache_table(example_ids: list[int], responses: list[list[int]], steps: list[list],
                top_k: int, dtype: str, vocab_rows: int | None = None):
    """Logit-cache rows (logit_cache.SCHEMA) from engine top-k steps over each response. With
    `vocab_rows` (the tokenizer's length), ids past it are dropped first (`real_rows`)."""
    import torch

    from raydistill.distill.logit_cache import encode_rows
    from raydistill.distill.sparse_topk import topk_arrays

    width = max(1, max(len(r) for r in responses))
    b = len(responses)
    values = torch.zeros((b, width, top_k))
    indices = torch.zeros((b, width, top_k), dtype=torch.int32)
    tail = torch.zeros((b, width))
    ids = torch.zeros((b, width), dtype=torch.long)
    for i, (resp, st) in enumerate(zip(responses, steps, strict=True)):
        st = st[: len(resp)]
        if vocab_rows is not None:
            st = [real_rows(step, vocab_rows, top_k) for step in st]
        v, ix, t = topk_arrays(st, top_k)
        n = len(resp)
        values[i, :n], indices[i, :n] = torch.from_numpy(v), torch.from_numpy(ix)
        tail[i, :n] = torch.from_numpy(t)
        ids[i, :n] = torch.as_tensor(resp)
    lengths = torch.tensor([len(r) for r in responses])
    return encode_rows(example_ids, ids, lengths, values, indices, tail, dtype)


def real_rows(step: dict | None, vocab_rows: int, k: int) -> dict | None:
    """One position's {id: logprob} without the output rows past the tokenizer.

    vLLM's log-softmax runs over every row of the checkpoint's output layer, padding included
    (Qwen2.5: 151,936 or 152,064 rows for 151,665 tokens), so a padded id can be among its
    top-k. No student has that row (a gather past its rows crashes), so it is dropped and its
    mass stays in the tail (the tail is 1 − the kept mass). The HF path instead excludes the
    rows before its log-softmax (renormalised over the tokenizer); the two differ by the padded
    rows' mass, which a trained checkpoint keeps near zero. Where fewer than k real ids remain,
    the freed slots hold the lowest unlisted ids at log 0 (NEG): their true mass, at most the
    k-th's each, is then in the tail, not in their bucket."""
    from types import SimpleNamespace

    from raydistill.distill.sparse_topk import NEG

    if step is None:
        return None
    kept = {t: e for t, e in step.items() if int(t) < vocab_rows}
    free = (t for t in range(vocab_rows) if t not in kept)
    for _ in range(max(0, min(k, vocab_rows) - len(kept))):
        kept[next(free)] = SimpleNamespace(logprob=NEG, rank=10**9)
    return kept


def _response(c: Completion, eos: int, max_seq_len: int) -> list[int]:
    """The response a student learns (+ EOS when finished), cut as `format.encode` cuts it."""
    return ([*c.ids, eos] if c.finished else list(c.ids))[: max_seq_len - 1]


class _VllmActor(_WindowedActor):
    def _start(self, model_path: str, namespace: str, trial_id: str, *, gpus: int,
               max_model_len: int, top_k: int, seed: int, memory_fraction: float,
               tokenizer: bool, threads: int) -> None:
        from raydistill.data.format import stop_ids
        from raydistill.distill.teacher import load_tokenizer

        _threads(threads)
        self._open(namespace, trial_id)  # the engine's start-up is the window's load phase
        self.tokenizer = load_tokenizer(model_path)
        self.stop = stop_ids(self.tokenizer, model_path)
        self.allowed = _allowed_ids(model_path, len(self.tokenizer))
        self.llm = make_llm(model_path, gpus=gpus, max_model_len=max_model_len, top_k=top_k,
                            seed=seed, memory_fraction=memory_fraction, tokenizer=tokenizer,
                            threads=threads)
        warm_up(self.llm, top_k)
        self.window.loaded()


def _allowed_ids(model_path: str, tokenizer_rows: int) -> list[int] | None:
    """The tokenizer's ids when the output layer is padded past them (as HF's suppress_tokens
    in `teacher.stated_generation`: a padded row is never written), else None (no mask)."""
    from transformers import AutoConfig

    rows = AutoConfig.from_pretrained(model_path).get_text_config().vocab_size
    return list(range(tokenizer_rows)) if rows > tokenizer_rows else None


class VllmTeacherGenerator(_VllmActor):
    """Ray Data UDF: conversations → teacher completions on vLLM; with `cache` ({dir, top_k,
    dtype, max_seq_len}) the same pass writes the logit cache over each response."""

    stage = "teacher_generation"

    def __init__(self, model_path: str, namespace: str, trial_id: str, max_new_tokens: int,
                 max_prompt_tokens: int, sampling: dict, gpus: int = 1,
                 memory_fraction: float = 0.0, cache: dict | None = None,
                 threads: int = 1) -> None:
        self.sampling, self.cache = sampling, cache
        self.max_new_tokens, self.max_prompt_tokens = max_new_tokens, max_prompt_tokens
        self.top_k = int(cache["top_k"]) if cache else 0
        self._start(model_path, namespace, trial_id, gpus=gpus,
                    max_model_len=max_prompt_tokens + max_new_tokens + 1, top_k=self.top_k,
                    seed=int(sampling.get("seed", 0)), memory_fraction=memory_fraction,
                    tokenizer=bool(sampling.get("stop")), threads=threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import json

        from raydistill.data.format import prompt_ids

        prompts = [prompt_ids(self.tokenizer, json.loads(m), self.max_prompt_tokens)
                   for m in batch["messages"]]
        out = vllm_generate(self.llm, prompts, [int(e) for e in batch["example_id"]],
                            self.sampling, self.stop, self.max_new_tokens, self.top_k,
                            self.tokenizer.decode, self.allowed)
        rows = synthetic_rows(batch, prompts, out, self.tokenizer)
        if self.cache:
            flat = [c for cs in out for c in cs]
            eos, seq = self.tokenizer.eos_token_id, int(self.cache["max_seq_len"])
            table = cache_table([int(e) for e in rows["example_id"]],
                                [_response(c, eos, seq) for c in flat],
                                [list(c.steps or ()) for c in flat], self.top_k,
                                self.cache["dtype"], len(self.tokenizer))
            _write_shard(table, Path(self.cache["dir"]))
        generated = int(rows["generated_tokens"].sum())
        self._done(sum(len(p) for p in prompts) + generated, generated)
        return rows


class VllmTeacherLogitCacher(_VllmActor):
    """Ray Data UDF: synthetic rows → the teacher's top-k over each response, read with
    `prompt_logprobs=k` over its own sequence (template prompt + response) in one prefill."""

    stage = "teacher_logit_caching"

    def __init__(self, model_path: str, namespace: str, trial_id: str, top_k: int, dtype: str,
                 max_prompt_tokens: int, max_seq_len: int, gpus: int = 1,
                 memory_fraction: float = 0.0, threads: int = 1) -> None:
        self.top_k, self.dtype = top_k, dtype
        self.max_prompt_tokens, self.max_seq_len = max_prompt_tokens, max_seq_len
        self._start(model_path, namespace, trial_id, gpus=gpus, max_model_len=max_seq_len + 1,
                    top_k=top_k, seed=0, memory_fraction=memory_fraction, tokenizer=False,
                    threads=threads)

    def __call__(self, batch: dict[str, np.ndarray]):
        table, tokens = prompt_cache(self.llm, self.tokenizer, batch, self.top_k, self.dtype,
                                     self.max_prompt_tokens, self.max_seq_len)
        self._done(tokens)
        return table


def prompt_cache(llm, tokenizer, batch: dict, top_k: int, dtype: str, max_prompt_tokens: int,
                 max_seq_len: int):
    """(cache rows over each response, tokens read): prompt_logprobs[i] is the teacher's
    distribution for token i given the ones before it, so the response's positions are
    prompt_len ... len - 1 (the same positions the dense path reads)."""
    from vllm import SamplingParams

    examples = teacher_examples(tokenizer, batch, max_prompt_tokens, max_seq_len)
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=top_k,
                            detokenize=False)
    outs = llm.generate([{"prompt_token_ids": e.input_ids} for e in examples], params,
                        use_tqdm=False)
    steps = [list(o.prompt_logprobs[e.prompt_len:]) for o, e in zip(outs, examples, strict=True)]
    responses = [list(e.input_ids[e.prompt_len:]) for e in examples]
    table = cache_table([int(x) for x in batch["example_id"]], responses, steps, top_k, dtype,
                        len(tokenizer))
    return table, int(sum(len(e.input_ids) for e in examples))


def _write_shard(table, directory: Path) -> None:
    """A cache shard written whole, then renamed (a crashed actor leaves no half shard)."""
    from raydistill.distill.logit_cache import write_shard

    directory.mkdir(parents=True, exist_ok=True)
    name = uuid.uuid4().hex
    tmp = directory / f".{name}.tmp"
    write_shard(table, tmp)
    os.replace(tmp, directory / f"{name}.parquet")
