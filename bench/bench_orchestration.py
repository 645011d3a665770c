"""Orchestration overhead: a config's pipeline through raydistill vs the same stages as a plain
single-process script, in one run (wall-time ratio; target <= 1.15 once the work dominates).

raydistill: `run_experiment(cfg)`: local Ray, a sampler and the ledger, Ray Data actor pools
for the teacher stages, Ray Train + DeepSpeed for the students (ZeRO-2 on 1 worker for
configs/tiny.yaml, ZeRO-3 on 2 for configs/local-chat.yaml), evaluation as a Ray task, every
stage in ledger windows. Plain: the same functions on the same data with the same steps in this
one process (data splits, teacher training with `train_lm`, greedy `generate_ids` through the
chat template, top-k caching with `cache_batch`, the student loop with plain AdamW over the same
`ExampleStream` / `pad_batch` / `cached_topk` / `chunked_kd_objective` and LR schedule, exact
match + lm-eval, the inference probes), no Ray, no measurement. `local:` models are built once
before either clock starts.

    python bench/bench_orchestration.py [--config PATH] [--quick] [--set k=v ...]
        --quick: CI-sized overrides for the config (a few minutes on 2 cores); --set: overrides,
        e.g. longer training to see the fixed start-up cost amortise: --set student.steps=3000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import torch

from raydistill.config import load_experiment, load_yaml, to_dict
from raydistill.data.format import prompt_ids, stop_ids
from raydistill.data.splits import make_splits, read_rows
from raydistill.distill.batches import cached_topk, pad_batch
from raydistill.distill.chunked import chunked_kd_objective
from raydistill.distill.engine import lr_factor
from raydistill.distill.evaluate import (
    TASK_NAME,
    exact_match,
    lm_eval_scores,
    stop_strings,
    write_lm_eval_task,
)
from raydistill.distill.examples import SYNTHETIC_COLUMNS, ExampleStream, read_synthetic
from raydistill.distill.logit_cache import write_shard
from raydistill.distill.stages import check_pair, prompt_rows, student_loop_config, train_lm
from raydistill.distill.teacher import cache_batch, generate_ids, load_model_and_tokenizer

QUICK = {  # by the config's name; data.splits.* and steps, the shapes and recipe kept
    "tiny": ["data.splits.test=100", "data.splits.dev=50", "data.splits.labelled=200",
             "data.splits.train=600", "teacher.steps=150", "student.steps=150",
             "evaluation.limit=100"],
    "local-chat": ["data.splits.test=40", "data.splits.dev=20", "data.splits.labelled=120",
                   "data.splits.train=240", "teacher.steps=20", "student.steps=40",
                   "evaluation.limit=40", "evaluation.inference_prompts=30",
                   "training.checkpoint_every=20"],
}


class Clock:
    """Seconds per stage of the plain script, named as the pipeline names its stages."""

    def __init__(self) -> None:
        self.t, self.s = time.perf_counter(), {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.s[stage] = self.s.get(stage, 0.0) + now - self.t
        self.t = now


def plain_generation(cfg, teacher: Path, prompts: Path, out: Path) -> None:
    """TeacherGenerator's work in a loop: the template's prompt ids, greedy ids to a stop."""
    model, tok = load_model_and_tokenizer(str(teacher))
    stop, rows, g = stop_ids(tok, teacher), prompt_rows(prompts), cfg.generation
    bs = g.batch_size
    cols = {k: [] for k in SYNTHETIC_COLUMNS}
    for i in range(0, len(rows), bs):
        chunk = rows[i:i + bs]
        ids = [prompt_ids(tok, json.loads(r["messages"]), cfg.data.max_prompt_tokens)
               for r in chunk]
        for r, (gen, done) in zip(chunk, generate_ids(model, tok, ids, g.max_new_tokens, stop),
                                  strict=True):
            for k in ("example_id", "id", "messages"):
                cols[k].append(r[k])
            cols["completion"].append(tok.decode(gen, skip_special_tokens=True))
            cols["completion_ids"].append(gen)
            cols["finished"].append(done)
    out.mkdir(parents=True)
    schema = {"completion_ids": pa.list_(pa.int32())}
    table = pa.table({k: pa.array(v, type=schema.get(k)) for k, v in cols.items()})
    write_shard(table, out / "part-0.parquet")


def plain_caching(cfg, teacher: Path, synthetic: Path, out: Path) -> None:
    model, tok = load_model_and_tokenizer(str(teacher))
    rows, bs, d = read_synthetic(synthetic), cfg.generation.batch_size, cfg.distill
    out.mkdir(parents=True)
    for i in range(0, len(rows), bs):
        batch = {k: [r[k] for r in rows[i:i + bs]]
                 for k in ("example_id", "messages", "completion_ids", "finished")}
        table, _ = cache_batch(model, tok, batch, d.top_k, d.temperature, d.cache_dtype,
                               cfg.data.max_prompt_tokens, cfg.training.max_seq_len)
        write_shard(table, out / f"part-{i:06d}.parquet")


def plain_student(cfg, method: str, teacher: Path, data_path: Path, cache: Path | None,
                  out: Path) -> None:
    """student_loop without Ray Train or DeepSpeed: one process, world 1, fp32 on the CPU."""
    from transformers import AutoTokenizer

    from raydistill.distill.models import build_student_model

    if method not in ("none", "sft") and not (method == "logit" and cfg.distill.top_k > 0):
        raise SystemExit(f"the plain script covers none, sft and cached logit KD, not {method}")
    one = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, num_workers=1))
    loop = student_loop_config(one, method, "plain", "", teacher, data_path, cache, out,
                               check_pair(cfg, method, teacher))
    student, tok = build_student_model(loop)
    t = cfg.training
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.student.lr, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(
        s, cfg.student.steps, t.warmup_ratio, t.schedule, t.min_lr_ratio))
    stream = ExampleStream(loop, tok, AutoTokenizer.from_pretrained(str(teacher)), 0, 1).batches(
        cfg.student.batch_size // t.grad_accum)
    alpha = cfg.distill.alpha if method == "logit" else 1.0
    kw = {"loss": cfg.distill.loss, "temperature": cfg.distill.temperature,
          "beta": cfg.distill.beta, "chunk_tokens": t.chunk_tokens, "alpha": alpha}
    student.train()
    for _ in range(cfg.student.steps):
        for _ in range(t.grad_accum):
            chosen = next(stream)
            b = pad_batch(chosen, tok.pad_token_id)
            logits = student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            target = cached_topk(chosen, logits.shape[1]) if alpha < 1 else None
            loss = chunked_kd_objective(logits, b["targets"], target, b["mask"], **kw)
            (loss / t.grad_accum).backward()
        if t.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(student.parameters(), t.clip_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    student.save_pretrained(out)
    tok.save_pretrained(out)


def plain_eval(cfg, models: dict[str, Path], test: Path, work: Path, clock: Clock) -> dict:
    """evaluate_remote's work: exact match + lm-eval per model, then each inference probe
    (one warm-up pass, then the probe until it has lasted inference_min_s)."""
    e, rows, scores, loaded = cfg.evaluation, read_rows(test), {}, {}
    gen = {"max_new_tokens": cfg.generation.max_new_tokens,
           "max_prompt_tokens": cfg.data.max_prompt_tokens}
    for name, path in models.items():
        model, tok = load_model_and_tokenizer(str(path))
        loaded[name] = (model, tok, stop_ids(tok, path))
        scores[f"{name}_quick_acc"] = exact_match(model, tok, rows, stop=loaded[name][2],
                                                  pattern=cfg.data.answer_pattern,
                                                  **gen).accuracy
        if e.lm_eval:
            task_dir = write_lm_eval_task(
                rows, tok, work / "lm_eval" / name, pattern=cfg.data.answer_pattern,
                max_gen_toks=gen["max_new_tokens"], until=stop_strings(tok, loaded[name][2]))
            for task, v in lm_eval_scores(model, tok, task_dir, [TASK_NAME, *e.lm_eval_tasks],
                                          e.limit, tuple(e.lm_eval_include),
                                          e.lm_eval_chat_template).items():
                scores[f"{name}_{task}_acc"] = v
    clock.lap("evaluation")
    probe = rows[: e.inference_prompts]
    for name, (model, tok, stop) in loaded.items():
        exact_match(model, tok, probe, stop=stop, **gen)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < e.inference_min_s:
            exact_match(model, tok, probe, stop=stop, **gen)
        clock.lap(f"inference_{name}")
    return scores


def plain_pipeline(cfg, work: Path, clock: Clock) -> dict:
    torch.set_num_threads(2)
    data = make_splits(cfg.data, work / "data")
    teacher = work / "teacher"
    clock.lap("(data)")
    train_lm(to_dict(cfg.teacher), str(data["teacher"]), str(teacher), cfg.seed,
             to_dict(cfg.data))
    clock.lap("teacher_training")
    method, cache = cfg.distill.method, None
    data_path = work / "synthetic"
    if method == "none":
        data_path = data["labelled"]
    else:
        plain_generation(cfg, teacher, data["train"], data_path)
        clock.lap("teacher_generation")
        if method == "logit" and cfg.distill.top_k > 0:
            cache = work / "cache"
            plain_caching(cfg, teacher, data_path, cache)
            clock.lap("teacher_logit_caching")
    plain_student(cfg, method, teacher, data_path, cache, work / "student")
    clock.lap("student_training")
    models = {"student": work / "student"} if method == "none" else {
        "teacher": teacher, "student": work / "student"}
    scores = plain_eval(cfg, models, data["test"], work, clock)
    if cfg.baseline and method != "none":
        plain_student(cfg, "none", teacher, data["labelled"], None, work / "baseline")
        clock.lap("student_training")
        scores.update({f"baseline_{k}": v for k, v in plain_eval(
            cfg, {"student": work / "baseline"}, data["test"], work / "b", clock).items()})
    return scores


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    name = load_yaml(args.config).get("name", "")
    if args.quick and name not in QUICK:
        raise SystemExit(f"--quick knows {', '.join(QUICK)}; give --set overrides for {name}")
    cfg = load_experiment(args.config, (QUICK[name] if args.quick else []) + args.set)
    from raydistill.local_models import resolve_models
    from raydistill.run import run_experiment

    root = Path(tempfile.mkdtemp(prefix="orchestration-bench-"))
    t0 = time.perf_counter()
    cfg = resolve_models(cfg, root / "artifacts")  # local: models, built once for both
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    clock = Clock()
    plain_scores = plain_pipeline(cfg, root / "plain", clock)
    plain_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = run_experiment(cfg, root / "ray", artifacts=root / "artifacts",
                            progress=lambda s: print(s, file=sys.stderr, flush=True))
    ray_s = time.perf_counter() - t0
    table = result.table.groupby("stage", sort=False)[["duration_s", "load_s"]].sum()
    d = cfg.distill
    print(f"config: {args.config}{' (quick)' if args.quick else ''} {' '.join(args.set)}; "
          f"teacher {cfg.teacher.steps} steps, student {cfg.student.steps} steps "
          f"(raydistill: {d.num_workers} worker(s), {d.engine} ZeRO-{d.zero_stage}; plain: one "
          f"process), baseline {cfg.baseline}; local models built in {setup_s:.1f} s (not "
          "counted)")
    acc = "student_quick_acc"
    print(f"plain single-process script:   {plain_s:7.1f} s   student quick acc "
          f"{plain_scores.get(acc, float('nan')):.3f}")
    print(f"raydistill run (Ray + ledger): {ray_s:7.1f} s   student quick acc "
          f"{result.metrics[0]['scores'].get(acc, float('nan')):.3f}")
    print(f"wall-time ratio raydistill / plain: {ray_s / plain_s:.2f} (target <= 1.15)")
    inside = table["duration_s"].sum()
    print(f"time inside measured stage windows: {inside:.1f} s; outside them (Ray start, "
          f"sampler, actor and worker start-up, teardown): {ray_s - inside:.1f} s")
    print(f"  {'stage':<24} {'raydistill window s':>20} {'of which load s':>16} {'plain s':>9}")
    for stage, row in table.iterrows():
        plain = clock.s.pop(stage, None)
        print(f"  {stage:<24} {row.duration_s:20.1f} {row.load_s:16.1f} "
              f"{'' if plain is None else f'{plain:9.1f}'}")
    for stage, secs in clock.s.items():
        print(f"  {stage:<24} {'(outside windows)':>20} {'':>16} {secs:9.1f}")
    print("  (raydistill's evaluation windows include the models' loads; the plain inference "
          "laps include their warm-up pass, which raydistill runs outside its windows)")


if __name__ == "__main__":
    main()
