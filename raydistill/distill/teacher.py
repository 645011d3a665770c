"""Teacher-side stages as Ray Data actor pools: synthetic generation and logit caching.

Each pool actor opens a ledger window on its own node when it starts (loading the model is part
of the bill) and moves the window's end to the end of every batch it finishes, so the window ends
where the actor's work did, whenever Ray Data retires the actor.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from raydistill.cache_memory import DEFAULT_CHUNK_TOKENS
from raydistill.distill.sampling import GREEDY

log = logging.getLogger(__name__)


def load_model_and_tokenizer(path: str, single_device: bool = False, train: bool = False,
                             spread: bool = True):
    """A causal LM and its tokenizer from a hub id or a directory made by save_pretrained.

    On GPUs the model's layers are spread over every GPU this task or actor holds
    (device_map="auto": a 70B teacher over the 8 GPUs of an evaluation task), within their
    memory alone: nothing spills to the CPU, so a model too big fails instead of running
    slowly. `single_device`: a Ray Train worker, its GPU is `ray.train.torch.get_device()`.
    Weights are bf16 on a GPU, or fp32 where `train` (the master copy the optimizer updates;
    the caller runs the forward under bf16 autocast); always fp32 on CPU. `spread=False`
    fills the GPUs in order instead (device_map="sequential"): a model that fits one GPU sits
    on the first alone (evaluation's student beside a teacher split over all of them), so its
    inference probe meters the GPU it runs on, not eight."""
    import torch
    from transformers import AutoModelForCausalLM

    on_gpu = torch.cuda.is_available()
    dtype = torch.float32 if train or not on_gpu else torch.bfloat16
    if single_device and on_gpu:
        import ray.train.torch

        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(
            ray.train.torch.get_device())
    elif on_gpu:
        # the GPUs' free memory and no "cpu" key: what does not fit goes to "disk", which
        # from_pretrained refuses without an offload folder (a clear error, not a slow run)
        gpus = {i: torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())}
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, device_map="auto" if spread else "sequential", max_memory=gpus)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model, load_tokenizer(path)


def gpu_indices(model) -> list[int]:
    """The local CUDA indices the model's parameters sit on (none on CPU)."""
    return sorted({p.device.index for p in model.parameters()
                   if p.device.type == "cuda" and p.device.index is not None})


def devices_of(model, held: tuple[str, ...]) -> tuple[str, ...]:
    """Of the GPUs a Ray task holds (`worker_devices()`, in the order of its local CUDA
    indices), those the model's parameters sit on: what its own windows should meter."""
    used = [held[i] for i in gpu_indices(model) if i < len(held)]
    return tuple(used) if used else held


def load_tokenizer(path: str):
    """The model's tokenizer, with a pad token (its EOS where it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


class _WindowedActor:
    stage = ""

    def _open(self, namespace: str, trial_id: str) -> None:
        from raydistill.cluster.devices import worker_devices
        from raydistill.cluster.windows import StageWindow

        # phase "load" until loaded(): the model load is kept apart from the work
        self.window = StageWindow(namespace, trial_id, self.stage, devices=worker_devices(),
                                  phase="load")
        self.window.__enter__()

    def _done(self, tokens: int, generated: int = 0) -> None:
        """A batch is done: count its tokens (`generated` of them written by the model) and
        move the window's end to now."""
        self.window.add_tokens(tokens, generated=generated)
        self.window.checkpoint()


class TeacherGenerator(_WindowedActor):
    """Ray Data UDF: conversations → teacher completions (the synthetic data set), on HF
    `generate` in static batches (`teacher_vllm.VllmTeacherGenerator` is the vLLM engine).

    The model load is the window's `load` phase; the batches are its `work` phase, so J per
    generated token is the steady-state figure."""

    stage = "teacher_generation"

    def __init__(self, model_path: str, namespace: str, trial_id: str, max_new_tokens: int,
                 max_prompt_tokens: int, sampling: dict | None = None, threads: int = 1) -> None:
        from raydistill.data.format import stop_ids

        _threads(threads)
        self._open(namespace, trial_id)
        self.model, self.tokenizer = load_model_and_tokenizer(model_path)
        self.stop = stop_ids(self.tokenizer, model_path)
        self.max_new_tokens, self.max_prompt_tokens = max_new_tokens, max_prompt_tokens
        self.sampling = sampling or GREEDY
        self.window.loaded()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import json

        from raydistill.data.format import prompt_ids

        conversations = [json.loads(m) for m in batch["messages"]]
        prompts = [prompt_ids(self.tokenizer, m, self.max_prompt_tokens) for m in conversations]
        seed = int(self.sampling["seed"]) + int(batch["example_id"][0])
        out = generate_completions(self.model, self.tokenizer, prompts, self.max_new_tokens,
                                   self.stop, self.sampling, seed)
        rows = synthetic_rows(batch, prompts, out, self.tokenizer)
        generated = int(rows["generated_tokens"].sum())
        # tokens the teacher processed: the prompts it read (once, however many completions
        # each gets) plus the tokens it wrote
        self._done(sum(len(p) for p in prompts) + generated, generated)
        return rows


def synthetic_rows(batch: dict, prompts: list[list[int]], out: list[list[Any]],
                   tokenizer) -> dict[str, Any]:
    """The synthetic data's rows: one per completion (n per prompt), ids unique."""
    from raydistill.distill.sampling import output_example_id

    n = max(len(c) for c in out)
    cols: dict[str, list] = {k: [] for k in ("example_id", "prompt_example_id", "id", "messages",
                                             "completion", "completion_ids", "finished",
                                             "prompt_tokens", "generated_tokens")}
    for i, completions in enumerate(out):
        for j, c in enumerate(completions):
            cols["example_id"].append(output_example_id(batch["example_id"][i], j, n))
            cols["prompt_example_id"].append(int(batch["example_id"][i]))
            cols["id"].append(batch["id"][i])
            cols["messages"].append(batch["messages"][i])
            cols["completion"].append(tokenizer.decode(list(c.ids), skip_special_tokens=True))
            cols["completion_ids"].append(np.asarray(c.ids, dtype=np.int32))
            cols["finished"].append(c.finished)
            cols["prompt_tokens"].append(len(prompts[i]))
            cols["generated_tokens"].append(c.generated_tokens)
    arrays = {k: np.asarray(v) for k, v in cols.items() if k != "completion_ids"}
    return {**arrays, "completion_ids": cols["completion_ids"]}


def generate_ids(model, tokenizer, prompts: list[list[int]], max_new_tokens: int,
                 stop: list[int]) -> list[tuple[list[int], bool]]:
    """Greedy completions of token-id prompts: each as (ids before the first stop token,
    whether a stop token ended it)."""
    out = generate_completions(model, tokenizer, prompts, max_new_tokens, stop)
    return [(list(c[0].ids), c[0].finished) for c in out]


def generate_completions(model, tokenizer, prompts: list[list[int]], max_new_tokens: int,
                         stop: list[int], sampling: dict | None = None, seed: int = 0
                         ) -> list[list[Any]]:
    """n completions of each token-id prompt (left-padded, as decoder-only generation needs),
    greedy or sampled exactly as `sampling` says (`sampling.sampling_of`): nothing is taken
    from the checkpoint's generation_config.json (`stated_generation`), ended as every engine
    ends them (`sampling.end_completion`)."""
    import torch

    from raydistill.distill.sampling import end_completion

    s = sampling or GREEDY
    stops = list(s.get("stop", []))
    pad = tokenizer.pad_token_id
    ids, attn = left_padded(prompts, pad)
    width = ids.shape[1]
    config = stated_generation(s, max_new_tokens, pad, stop, padded_rows(model, tokenizer))
    if config.do_sample:
        torch.manual_seed(seed)  # per batch, from its first example: reproducible
    kw: dict[str, Any] = {}
    if stops:
        # not generate(stop_strings=...): that matches across the prompt's end too (a prompt
        # ending in "\n\n" stops "\n\n" after one token); vLLM matches the completion only
        kw["stopping_criteria"] = [_StopInCompletion(tokenizer, stops, width)]
    with torch.no_grad(), stop_ids_only(model):
        out = model.generate(input_ids=ids.to(model.device), attention_mask=attn.to(model.device),
                             generation_config=config, **kw)
    rows = out[:, width:].tolist()
    done = [end_completion(r, stop, stops, tokenizer.decode) for r in rows]
    per = config.num_return_sequences
    return [done[i * per:(i + 1) * per] for i in range(len(prompts))]


def left_padded(prompts: list[list[int]], pad: int):
    """(input_ids, attention_mask) of token-id prompts, left-padded to the longest: every
    prompt ends where generation starts, as decoder-only generation needs."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attn = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.as_tensor(p)
        attn[i, width - len(p):] = 1
    return ids, attn


def padded_rows(model, tokenizer) -> list[int]:
    """Output rows past the tokenizer (a hub checkpoint pads its output layer: Qwen2.5-7B has
    152,064 rows for 151,665 tokens): ids no text has, which generation must never write (a
    student's loss reads the tokenizer's rows only, so such a target could not be learned)."""
    rows = model.config.get_text_config().vocab_size
    return list(range(len(tokenizer), rows))


def stated_generation(sampling: dict, max_new_tokens: int, pad: int | None, stop: list[int],
                      suppress: list[int] | None = None):
    """A transformers GenerationConfig that says every field that changes the output, from
    `sampling` alone. Why: generate() fills each field its config leaves unset from the
    checkpoint's generation_config.json (Qwen2.5-Instruct's sets repetition_penalty 1.05,
    top_k 20, top_p 0.8, temperature 0.7) and then from transformers' defaults (top_k 50), so
    "greedy" was greedy with a repetition penalty and sampling had a top-k nobody set; vLLM
    (`teacher_vllm.sampling_params`) decodes from the same fields and nothing else."""
    from transformers import GenerationConfig

    sample = sampling.get("decoding") == "sample"
    kw: dict[str, Any] = {
        "do_sample": sample, "num_beams": 1, "max_new_tokens": max_new_tokens,
        "min_new_tokens": 0, "pad_token_id": pad, "eos_token_id": list(stop),
        "repetition_penalty": float(sampling.get("repetition_penalty", 1.0)),
        "num_return_sequences": int(sampling.get("n", 1)) if sample else 1}
    if suppress:  # the padded output rows: -inf at every step, on both engines
        kw["suppress_tokens"] = list(suppress)
    if sample:  # top_k 0 = off (transformers' own default is 50)
        kw.update(temperature=float(sampling["temperature"]), top_p=float(sampling["top_p"]),
                  top_k=int(sampling.get("top_k", 0)))
    return GenerationConfig(**kw)


@contextmanager
def stop_ids_only(model):
    """Within: `model.generation_config` keeps the checkpoint's token ids (bos, eos, pad: its
    stop ids) and nothing else, so a field a caller's config leaves unset (repetition_penalty,
    bad_words_ids, suppress_tokens, no_repeat_ngram_size, min_p, ...) falls back to
    transformers' neutral default, never to the checkpoint's generation_config.json. For our
    own generate calls and for lm-eval's, which passes only its own generation kwargs."""
    from transformers import GenerationConfig

    saved = model.generation_config
    model.generation_config = GenerationConfig(
        bos_token_id=saved.bos_token_id, eos_token_id=saved.eos_token_id,
        pad_token_id=saved.pad_token_id)
    try:
        yield
    finally:
        model.generation_config = saved


class _StopInCompletion:
    """Stops each row once its completion (the tokens after the prompt) contains a stop
    string; `sampling.end_completion` then cuts there, as on vLLM."""

    def __init__(self, tokenizer, stops: list[str], prompt_width: int) -> None:
        self.tokenizer, self.stops, self.width = tokenizer, stops, prompt_width
        # a stop string of L characters ends within the last L + 1 tokens (each token is at
        # least one character; +1 for a token it only partly fills): decode only those
        self.tail = max(len(s) for s in stops) + 1

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        start = max(self.width, input_ids.shape[1] - self.tail)
        texts = self.tokenizer.batch_decode(input_ids[:, start:])
        return torch.tensor([any(s in t for s in self.stops) for t in texts],
                            device=input_ids.device)


class TeacherLogitCacher(_WindowedActor):
    """Ray Data UDF: synthetic rows → top-k of the teacher's true log-softmax over each
    response (the positions a student learns from), as Parquet rows."""

    stage = "teacher_logit_caching"

    def __init__(self, model_path: str, namespace: str, trial_id: str, top_k: int,
                 temperature: float, dtype: str, max_prompt_tokens: int, max_seq_len: int,
                 threads: int = 1, chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> None:
        _threads(threads)
        self._open(namespace, trial_id)
        self.model, self.tokenizer = load_model_and_tokenizer(model_path)
        self.top_k, self.temperature, self.dtype = top_k, temperature, dtype
        self.max_prompt_tokens, self.max_seq_len = max_prompt_tokens, max_seq_len
        self.chunk_tokens = chunk_tokens
        self.window.loaded()

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        table, tokens = cache_batch(self.model, self.tokenizer, batch, self.top_k,
                                    self.temperature, self.dtype, self.max_prompt_tokens,
                                    self.max_seq_len, self.chunk_tokens)
        self._done(tokens)
        return table


def teacher_examples(tokenizer, batch: dict, max_prompt_tokens: int, max_seq_len: int) -> list:
    """The teacher's own sequences for synthetic rows: its template's prompt, then the response
    it wrote (+ EOS when it stopped on one)."""
    import json

    from raydistill.data.format import encode

    out = []
    for m, ids, done in zip(batch["messages"], batch["completion_ids"], batch["finished"],
                            strict=True):
        response = [int(i) for i in ids] + ([tokenizer.eos_token_id] if done else [])
        out.append(encode(tokenizer, json.loads(m), response,
                          max_prompt_tokens=max_prompt_tokens, max_seq_len=max_seq_len))
    return out


def cache_batch(model, tokenizer, batch: dict, top_k: int, temperature: float, dtype: str,
                max_prompt_tokens: int, max_seq_len: int,
                chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> tuple[pa.Table, int]:
    """Synthetic rows → (cache rows over each response, tokens the teacher read). Log-softmax,
    top-k and the tail mass are computed where the model runs over the tokenizer's rows only,
    in memory bounded by `chunk_tokens`: the body runs max(1, chunk_tokens // max_seq_len) rows
    at a time and the output layer `chunk_tokens` response positions at a time
    (`cache_topk.response_topk`); only the top-k leaves the device. The number of forwards
    depends only on len(batch) and the arguments (ZeRO-3 ranks must run as many)."""
    import torch

    from raydistill.distill.batches import pad_batch
    from raydistill.distill.cache_topk import check_chunk_tokens, response_topk
    from raydistill.distill.logit_cache import encode_rows

    check_chunk_tokens(chunk_tokens)
    examples = teacher_examples(tokenizer, batch, max_prompt_tokens, max_seq_len)
    rows_per_forward = max(1, chunk_tokens // max_seq_len)
    parts = []
    for i in range(0, len(examples), rows_per_forward):
        group = examples[i:i + rows_per_forward]
        padded = pad_batch([{"input_ids": e.input_ids, "prompt_len": e.prompt_len}
                            for e in group], tokenizer.pad_token_id)
        # each response's positions: prompt_len - 1 ... len - 2 predict its tokens
        parts.append(response_topk(
            model, padded["input_ids"].to(model.device),
            padded["attention_mask"].to(model.device),
            torch.tensor([e.prompt_len - 1 for e in group]),
            torch.tensor([e.response_len for e in group]), vocab_rows=len(tokenizer),
            top_k=top_k, temperature=temperature, chunk_tokens=chunk_tokens))
    flat = [torch.cat(p).cpu() for p in zip(*parts, strict=True)]
    del parts
    lengths = torch.tensor([e.response_len for e in examples])
    width = max(1, int(lengths.max()))
    keep = torch.arange(width)[None, :] < lengths[:, None]  # [B, W]: row-major = flat's order
    values = torch.zeros((len(examples), width, top_k))
    indices = torch.zeros((len(examples), width, top_k), dtype=torch.long)
    tail = torch.zeros((len(examples), width))
    values[keep], indices[keep], tail[keep] = flat
    response = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        response[i, : e.response_len] = torch.as_tensor(e.input_ids[e.prompt_len:])
    table = encode_rows(batch["example_id"], response, lengths, values, indices, tail, dtype)
    return table, int(sum(len(e.input_ids) for e in examples))


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
    from raydistill.distill.logit_cache import ROW_BLOCK

    # row groups of ROW_BLOCK rows: a training rank reads only the groups holding its rows
    ds.write_parquet(str(out_dir), row_group_size=ROW_BLOCK)
