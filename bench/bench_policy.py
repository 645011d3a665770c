"""Off-policy against on-policy distillation on the local-chat task, teacher side included:
sft (the teacher's synthetic data), logit (its cached top-k) and onpolicy (the student's own
completions scored by a teacher pool every step), one trial each in one measured session.

For each method it prints dev quality against cumulative energy (the teacher artifacts the
method uses at full cost, plus the student's training and, on-policy, the teacher's scoring up
to each dev check, from the ledger), the teacher's share of the method's energy, the energy to
reach a stated dev quality (`equal_quality.energy_at_quality`, with its 95% interval) and the
rollout J per generated token beside the update's J per trained token. Teacher training (setup)
is the same for the three and left out.

    python bench/bench_policy.py [--out DIR] [--quality Q] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

METHODS = ("sft", "logit", "onpolicy")
# CPU-sized: a few minutes a method on 2 cores (teacher trained once, artifacts shared)
SIZE = [
    "data.splits={test: 32, dev: 64, labelled: 64, train: 256}",
    "teacher.steps=150", "student.steps=40", "student.batch_size=16",
    "distill.engine=ddp", "distill.num_workers=1", "distill.beta=1.0", "distill.lmbda=1.0",
    "training.checkpoint_every=0", "generation.engine=hf", "generation.max_new_tokens=16",
    "evaluation.lm_eval=false", "evaluation.limit=32", "evaluation.inference_prompts=8",
    "baseline=false",
]
# the teacher artifacts each method trains from (their stages' energy at full cost)
FIXED = {"sft": ("teacher_generation",),
         "logit": ("teacher_generation", "teacher_logit_caching"),
         "onpolicy": ("teacher_generation",)}  # its prompts and off-policy batches
RECURRING = {"onpolicy": ("teacher_scoring",)}


def run_methods(out: Path, sets: list[str]) -> tuple[Path, pd.DataFrame, dict]:
    """One session, one trial per method: (run dir, results table, outcomes' figures)."""
    import ray

    from raydistill.cluster.runtime import Session, init_ray, namespace_for
    from raydistill.config import load_experiment
    from raydistill.distill.pipeline import Pipeline
    from raydistill.io import prepare_run_dir
    from raydistill.local_models import resolve_models
    from raydistill.results import results_table

    artifacts = (out / "artifacts").resolve()
    cfg = resolve_models(load_experiment("configs/local-chat.yaml", [*SIZE, *sets]), artifacts)
    run_dir = prepare_run_dir(out / "run")
    namespace = namespace_for(run_dir)
    init_ray(None, namespace)
    session = Session(run_dir, namespace, cfg.sampling).start()
    figures = {}
    try:
        pipe = Pipeline(cfg, run_dir, session, artifacts, lambda m: print(m, flush=True))
        for method in METHODS:
            o = pipe.run_trial(method, method)
            figures[method] = {"dev_scores": o.dev_scores, "scores": o.scores,
                               "train": o.train_metrics}
        rows = session.energy_rows()
    finally:
        session.close()
        ray.shutdown()
    table = results_table(rows)
    table.to_parquet(run_dir / "results.parquet", index=False)
    (run_dir / "bench_policy.json").write_text(json.dumps(figures, indent=1, default=str))
    return run_dir, table, figures


def curves(run_dir: Path, table: pd.DataFrame) -> dict[str, dict]:
    """Per method: its dev curve with cumulative energy, its fixed and recurring teacher J,
    and the stated error of its whole bill."""
    from raydistill.equal_quality import ledger_energy_to, progress_lines, training_curve
    from raydistill.results import error_column, load_ledger

    state, _ = load_ledger(run_dir)
    out = {}
    for method in METHODS:
        fixed = table[table["stage"].isin(FIXED[method])]  # built by whichever trial came first
        mine = table[(table["trial_id"] == method) &
                     table["stage"].isin(("student_training", *RECURRING.get(method, ())))]
        rows = [r for r in state.trial_rows(method)
                if r.stage in ("student_training", *RECURRING.get(method, ()))]
        energy_to = ledger_energy_to(state, rows)
        fixed_j = float(fixed["energy_j"].sum())
        lines = progress_lines(run_dir / "students" / method / "progress.jsonl")
        curve = [{**p, "spent_j": fixed_j + p["spent_j"]}
                 for p in training_curve(lines, energy_to)]
        recurring = table[(table["trial_id"] == method) &
                          table["stage"].isin(RECURRING.get(method, ()))]
        total = fixed_j + float(mine["energy_j"].sum())
        out[method] = {"curve": curve, "fixed_j": fixed_j,
                       "recurring_j": float(recurring["energy_j"].sum()), "total_j": total,
                       "error_j": float(error_column(fixed).sum() + error_column(mine).sum())}
    return out


def target_quality(found: dict[str, dict]) -> float | None:
    """The highest dev quality all three reached (else the highest any reached)."""
    best = [max((p["quality"] for p in f["curve"]), default=0.0) for f in found.values()]
    common = min(best)
    return common if common > 0 else (max(best) if max(best) > 0 else None)


def report(table: pd.DataFrame, found: dict[str, dict], quality: float | None) -> str:
    from raydistill.equal_quality import energy_at_quality
    from raydistill.intervals import Figure, Interval, fmt_interval
    from raydistill.results import onpolicy_metrics

    lines = []
    for method, f in found.items():
        lines.append(f"{method}: dev quality against cumulative energy (teacher artifacts "
                     f"{f['fixed_j']:,.1f} J at full cost, then training"
                     f"{' + teacher scoring' if method in RECURRING else ''})")
        lines += [f"  step {p['step']:>4}/{p['steps']}  dev {p['quality']:.3f} (n={p['n']})  "
                  f"{p['spent_j']:>10,.1f} J" for p in f["curve"]]
    lines.append("")
    q = quality if quality is not None else target_quality(found)
    header = (f"{'method':<9} {'total J (95%)':>22} {'teacher share':>13} "
              f"{'J to dev ≥ ' + (f'{q:.3f}' if q is not None else 'n/a'):>26} "
              f"{'rollout mJ/tok':>14} {'update mJ/tok':>13} {'teacher/step':>12}")
    lines.append(header)
    for method, f in found.items():
        share = (f["fixed_j"] + f["recurring_j"]) / f["total_j"] if f["total_j"] else float("nan")
        reach = "no dev check reached" if q is None else "not reached"
        if q is not None and f["curve"]:
            whole = Figure.of(f["total_j"], independent_j=f["error_j"])
            n = f["curve"][-1].get("n")
            m = energy_at_quality(f["curve"], q, whole, n)
            if m["reached"]:
                reach = f"{fmt_interval(Interval(m['energy_j'], m['error_j']))} @{m['step']}"
        student = table[(table["trial_id"] == method) & (table["stage"] == "student_training")]
        update = float(student["j_per_token"].iloc[0]) * 1e3 if len(student) else float("nan")
        rollout, per_step = "–", "–"
        if method == "onpolicy":
            steps = int(f["curve"][-1]["steps"]) if f["curve"] else 0
            om = onpolicy_metrics(table, method, steps)
            if om["rollout_j_per_token"] is not None:
                rollout = f"{om['rollout_j_per_token'] * 1e3:,.2f}"
            if om["teacher_scoring_j_per_step"] is not None:
                per_step = f"{om['teacher_scoring_j_per_step']:,.2f} J"
        lines.append(f"{method:<9} {fmt_interval(Interval(f['total_j'], f['error_j'])):>22} "
                     f"{share:>13.1%} {reach:>26} {rollout:>14} {update:>13.2f} "
                     f"{per_step:>12}")
    lines.append("teacher share: the method's teacher J (artifacts + scoring) ÷ its total "
                 "(teacher artifacts + student training + scoring); evaluation and teacher "
                 "training (the same for all) left out")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench-policy")
    p.add_argument("--quality", type=float, default=None,
                   help="the dev quality to reach (default: the highest all three reached)")
    p.add_argument("--set", dest="sets", action="append", default=[])
    args = p.parse_args()
    started = time.time()
    run_dir, table, _ = run_methods(Path(args.out), args.sets)
    print(report(table, curves(run_dir, table), args.quality))
    print(f"({time.time() - started:,.0f} s; run dir {run_dir})")


if __name__ == "__main__":
    main()
