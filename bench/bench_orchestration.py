"""Orchestration overhead: the default pipeline through raydistill vs the same stages as a plain
single-process script, in one run (wall-time ratio; target ≤ 1.15).

raydistill: `run_experiment(configs/tiny.yaml)`: local Ray, a sampler and the ledger, Ray Data
actor pools for the teacher stages, Ray Train + DeepSpeed ZeRO-2 for the students, evaluation
as a Ray task, every stage in ledger windows. Plain: the same functions on the same data with
the same steps in this process (teacher training, greedy generation, top-k caching, the student
loop with plain AdamW, quick eval + lm-eval, inference probes), no Ray, no measurement.

    python bench/bench_orchestration.py [--quick] [--set k=v ...]
        --quick: a CI-sized config (~3 min); --set: overrides, e.g. longer training to see the
        fixed start-up cost amortise: --set teacher.steps=2700 student.steps=3000
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from raydistill.config import load_experiment, to_dict
from raydistill.distill.evaluate import lm_eval_scores, read_jsonl, write_lm_eval_task
from raydistill.distill.examples import read_pairs
from raydistill.distill.stages import prompt_rows, train_lm, write_task_data
from raydistill.distill.teacher import cache_batch, generate_batch, load_model_and_tokenizer
from raydistill.distill.tiny import build_tiny, greedy_accuracy
from raydistill.distill.train import kd_term, masked_ce, pad_batch

QUICK = ["task.n_labelled=200", "task.n_prompts=600", "task.n_eval=100", "teacher.steps=150",
         "student.steps=150", "evaluation.limit=100"]


def plain_student(cfg, method: str, teacher_dir: Path, data_dir: Path, cache_dir: Path | None,
                  out: Path) -> None:
    from raydistill.distill.examples import load_examples

    loop = {"tokenizer_path": str(teacher_dir), "data_path": str(data_dir), "method": method,
            "top_k": cfg.distill.top_k, "cache_path": str(cache_dir or ""),
            "loss": cfg.distill.loss, "temperature": cfg.distill.temperature,
            "beta": cfg.distill.beta}
    examples = load_examples(loop)
    _, tok = load_model_and_tokenizer(str(teacher_dir))
    model = build_tiny(to_dict(cfg.student)["tiny"], len(tok), cfg.seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.student.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.student.steps):
        pick = torch.randint(len(examples), (cfg.student.batch_size,), generator=gen).tolist()
        chosen = [examples[i] for i in pick]
        batch = pad_batch(chosen, tok.pad_token_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = masked_ce(logits, batch["input_ids"], batch["mask"])
        if method == "logit":
            kd = kd_term(loop, batch, logits, None, chosen, None)
            loss = cfg.distill.alpha * loss + (1 - cfg.distill.alpha) * kd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.save_pretrained(out)
    tok.save_pretrained(out)


def plain_eval(cfg, models: dict[str, Path], eval_jsonl: Path, work: Path) -> dict:
    rows = read_jsonl(eval_jsonl)
    scores = {}
    task_dir = write_lm_eval_task(eval_jsonl, work / "lm_eval")
    for name, path in models.items():
        model, tok = load_model_and_tokenizer(str(path))
        scores[f"{name}_quick_acc"], _ = greedy_accuracy(model, tok, rows,
                                                          cfg.generation.max_new_tokens)
        if cfg.evaluation.lm_eval:
            scores.update({f"{name}_{k}": v for k, v in lm_eval_scores(
                model, tok, task_dir, ["raydistill_addition"], cfg.evaluation.limit).items()})
        greedy_accuracy(model, tok, rows[: cfg.evaluation.inference_prompts],
                        cfg.generation.max_new_tokens)  # the inference probe
    return scores


class Clock:
    """Seconds per stage of the plain script, named as the pipeline names its stages."""

    def __init__(self) -> None:
        self.t, self.s = time.perf_counter(), {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.s[stage] = self.s.get(stage, 0.0) + now - self.t
        self.t = now


def plain_pipeline(cfg, work: Path, clock: Clock) -> dict:
    torch.set_num_threads(2)
    data = write_task_data(cfg.task, work / "data")
    teacher = work / "teacher"
    clock.lap("(data)")
    train_lm(to_dict(cfg.teacher), str(data["labelled_teacher"]), str(teacher), cfg.seed)
    clock.lap("teacher_training")
    model, tok = load_model_and_tokenizer(str(teacher), for_generation=True)
    prompts = prompt_rows(data["prompts"])
    syn = work / "synthetic"
    syn.mkdir()
    rows = {"example_id": [], "prompt": [], "completion": []}
    for i in range(0, len(prompts), cfg.generation.batch_size):
        chunk = prompts[i:i + cfg.generation.batch_size]
        comps, _, _ = generate_batch(model, tok, [r["prompt"] for r in chunk],
                                     cfg.generation.max_new_tokens)
        rows["example_id"] += [r["example_id"] for r in chunk]
        rows["prompt"] += [r["prompt"] for r in chunk]
        rows["completion"] += comps
    pq.write_table(pa.table(rows), syn / "part-0.parquet")
    clock.lap("teacher_generation")
    cache = work / "cache"
    cache.mkdir()
    model, tok = load_model_and_tokenizer(str(teacher))
    pairs = read_pairs(syn)
    for i in range(0, len(pairs), cfg.generation.batch_size):
        chunk = pairs[i:i + cfg.generation.batch_size]
        batch = {k: [r[k] for r in chunk] for k in ("example_id", "prompt", "completion")}
        table, _ = cache_batch(model, tok, batch, cfg.distill.top_k, cfg.distill.temperature,
                               cfg.distill.cache_dtype)
        pq.write_table(table, cache / f"part-{i}.parquet")
    clock.lap("teacher_logit_caching")
    plain_student(cfg, cfg.distill.method, teacher, syn, cache, work / "student")
    clock.lap("student_training")
    scores = plain_eval(cfg, {"teacher": teacher, "student": work / "student"}, data["eval"], work)
    clock.lap("evaluation")
    if cfg.baseline:
        plain_student(cfg, "none", teacher, data["labelled_student"], None, work / "baseline")
        clock.lap("student_training")
        scores.update({f"baseline_{k}": v for k, v in plain_eval(
            cfg, {"student": work / "baseline"}, data["eval"], work).items()})
        clock.lap("evaluation")
    return scores


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = load_experiment("configs/tiny.yaml", (QUICK if args.quick else []) + args.set)
    from raydistill.run import run_experiment

    root = Path(tempfile.mkdtemp(prefix="orchestration-bench-"))
    t0 = time.perf_counter()
    clock = Clock()
    plain_scores = plain_pipeline(cfg, root / "plain", clock)
    plain_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = run_experiment(cfg, root / "ray", artifacts=root / "artifacts")
    ray_s = time.perf_counter() - t0
    stage_s = result.table.groupby("stage")["duration_s"].sum()
    print(f"config: configs/tiny.yaml{' (quick)' if args.quick else ''} {' '.join(args.set)}; "
          f"teacher {cfg.teacher.steps} steps, student {cfg.student.steps} steps, "
          f"baseline {cfg.baseline}")
    print(f"plain single-process script: {plain_s:7.1f} s   quick acc "
          f"{plain_scores.get('student_quick_acc', float('nan')):.3f}")
    print(f"raydistill run (Ray + ledger): {ray_s:7.1f} s   quick acc "
          f"{result.metrics[0]['scores'].get('student_quick_acc', float('nan')):.3f}")
    print(f"wall-time ratio raydistill / plain: {ray_s / plain_s:.2f} (target <= 1.15)")
    print(f"time inside measured stage windows: {stage_s.sum():.1f} s; outside them (Ray start, "
          f"actor and worker start-up, teardown): {ray_s - stage_s.sum():.1f} s")
    print(f"  {'stage':<24} {'raydistill window s':>20} {'plain s':>9}")
    for stage, secs in stage_s.items():
        plain = clock.s.get(stage)
        print(f"  {stage:<24} {secs:20.1f} {'' if plain is None else f'{plain:9.1f}'}")
    print("  (raydistill's evaluation windows include the inference probes' model loads; the "
          "plain evaluation includes its probes)")


if __name__ == "__main__":
    main()
