"""Per-stage throughput and energy of one `raydistill run`: tokens, steady-state tokens/s, the
model load's joules apart from the work's, J/token with and without the load, and the student's
own training figures (rank 0's tokens/s, MFU, load time, precision) from metrics.json.

Runs `raydistill.run.run_experiment` on a config (default configs/local-chat.yaml: real Qwen2
architectures, a ChatML template, ZeRO-3 on 2 workers), CI-sized unless --full. tokens/s is the
results table's `tokens_per_s` = tokens / work_s (the steady state, load excluded); J/token is
work_j / tokens, J/token incl. load is energy_j / tokens. The `energy_method` column says how
each figure was obtained: on a box without RAPL or NVML it is the CPU estimate
(`cpu-estimate`: idle + (TDP - idle) x utilisation, method "estimated"), not a measurement.

    python bench/bench_stages.py [--config PATH] [--full] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from raydistill.config import load_experiment
from raydistill.results import format_table

# CI size for a 2-core box (a few minutes): fewer rows and steps, the same shapes and recipe,
# no baseline trial (its stages repeat the main trial's student_training and evaluation)
CI = ["data.splits.test=40", "data.splits.dev=20", "data.splits.labelled=150",
      "data.splits.train=400", "teacher.steps=20", "student.steps=60", "evaluation.limit=40",
      "evaluation.inference_prompts=30", "training.checkpoint_every=30", "baseline=false"]

STAGE_COLUMNS = ["trial_id", "stage", "tokens", "tokens_per_s", "load_s", "work_s", "load_j",
                 "work_j", "j_per_token", "j_per_token_incl_load", "generated_tokens",
                 "j_per_generated_token", "energy_method"]
TRAIN_KEYS = ["tokens_per_s_rank0", "train_s", "load_s", "precision", "world", "engine",
              "zero_stage", "mfu", "mfu_basis", "first_loss", "final_loss"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/local-chat.yaml")
    ap.add_argument("--full", action="store_true", help="the config as shipped (no CI sizing)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sets = ([] if args.full else CI) + args.set
    cfg = load_experiment(args.config, sets)
    from raydistill.run import run_experiment

    root = Path(tempfile.mkdtemp(prefix="stages-bench-"))
    t0 = time.perf_counter()
    result = run_experiment(cfg, root / "run", artifacts=root / "artifacts",
                            progress=lambda s: print(s, file=sys.stderr, flush=True))
    wall_s = time.perf_counter() - t0
    table = result.table
    print(f"config: {args.config}{'' if args.full else ' (CI-sized)'} {' '.join(args.set)}; "
          f"teacher {cfg.teacher.steps} steps, student {cfg.student.steps} steps on "
          f"{cfg.distill.num_workers} worker(s) ({cfg.distill.engine}, ZeRO-"
          f"{cfg.distill.zero_stage}); splits {cfg.data.splits}; wall {wall_s:.1f} s")
    print(format_table(table[STAGE_COLUMNS], floats="{:,.3g}"))
    methods = sorted(set("+".join(table["energy_method"]).split("+")))
    estimated = "estimated" in methods and not {"counter", "sampled"} & set(methods)
    print(f"energy_method: {', '.join(methods)}"
          + (" -- CPU estimate (idle + (TDP - idle) x utilisation; no RAPL or NVML on this "
             "box): the joules are a model, not a measurement" if estimated else ""))
    print("tokens_per_s = tokens / work_s (steady state); j_per_token = work_j / tokens; "
          "j_per_token_incl_load = (load_j + work_j) / tokens; j_per_generated_token = work_j / "
          "generated_tokens (the tokens the model wrote; empty where a stage generates none)")
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    print("student training (metrics.json['train'], rank 0):")
    for trial, train in metrics["train"].items():
        shown = {k: train.get(k) for k in TRAIN_KEYS}
        print(f"  [{trial}] " + ", ".join(
            f"{k} {v:,.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))
    for m in result.metrics:
        scores = ", ".join(f"{k} {v:.3f}" for k, v in m["scores"].items())
        print(f"  [{m['trial_id']}] E_run {m['E_run_j']:,.1f} J; {scores}")
    print(f"run dir: {result.run_dir}")


if __name__ == "__main__":
    main()
