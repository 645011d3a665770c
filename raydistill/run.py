"""`raydistill run CONFIG`: one distillation experiment, every stage measured."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from raydistill.config import ExperimentConfig, to_dict
from raydistill.energy.footprint import FootprintInputs
from raydistill.errors import ConfigError
from raydistill.io import atomic_write, atomic_write_text, prepare_run_dir
from raydistill.results import NO_AMORTISATION, onpolicy_metrics, results_table, seed_metrics

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    table: pd.DataFrame
    metrics: list[dict]
    reused: list[str]
    train: dict = field(default_factory=dict)  # trial → the student's training figures


def footprint_inputs(cfg: ExperimentConfig) -> FootprintInputs:
    f = cfg.footprint
    return FootprintInputs(region=f.region, pue=f.pue, gco2_per_kwh=f.gco2_per_kwh,
                           hourly_csv=f.hourly_csv, wue_l_per_kwh=f.wue_l_per_kwh,
                           water_l_per_kwh=f.water_l_per_kwh)


def check_engine_installed(engine: str) -> None:
    """generation.engine vllm without vLLM: a one-line error that says how to install it."""
    if engine != "vllm":
        return
    from raydistill.engine_choice import INSTALL, vllm_version

    if vllm_version() is None:
        raise ConfigError(f"generation.engine vllm: vLLM is not installed; {INSTALL}")


def run_experiment(cfg: ExperimentConfig, out: Path, address: str | None = None,
                   artifacts: Path | None = None,
                   progress: Callable[[str], None] | None = None,
                   on_run_dir: Callable[[Path], None] | None = None) -> RunResult:
    import ray

    from raydistill.cluster.runtime import Session, init_ray, namespace_for
    from raydistill.distill.pipeline import Pipeline
    from raydistill.local_models import resolve_models
    from raydistill.plan import tokenizer_check

    progress = progress or log.info
    inputs = footprint_inputs(cfg)  # a bad region fails now, not after the run
    # absolute: Ray Train workers and Ray tasks do not run in this process's directory
    artifacts = Path(artifacts or Path(out).parent / "artifacts").resolve()
    cfg = resolve_models(cfg, artifacts)
    # a pair that cannot do the method fails now, not after the teacher stages
    log.info(tokenizer_check(cfg, local_only=False))
    check_engine_installed(cfg.generation.engine)  # so does an engine that is not installed
    run_dir = prepare_run_dir(out)
    if on_run_dir is not None:  # the CLI moves the libraries' log into it
        on_run_dir(run_dir)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    namespace = namespace_for(run_dir)
    started_ray = init_ray(address, namespace)
    from raydistill.cluster.environment import check_cluster_storage

    atomic_write_text(run_dir / "environment.json",
                      json.dumps(check_cluster_storage(run_dir), indent=1))
    session = Session(run_dir, namespace, cfg.sampling).start()
    started = time.time()
    try:
        pipe = Pipeline(cfg, run_dir, session, artifacts, progress)
        main = pipe.run_trial(cfg.name)
        outcomes = [main]
        if cfg.baseline and main.method != "none":
            outcomes.append(pipe.run_trial(f"{cfg.name}-baseline", method="none"))
        rows = session.energy_rows()
    finally:
        session.close()
        if started_ray:  # a Ray this call joined stays up for its owner
            ray.shutdown()
    table = results_table(rows, inputs)
    metrics, reused = write_run_results(run_dir, table, outcomes, started,
                                        equal_quality=len(outcomes) > 1)
    return RunResult(run_dir, table, metrics, reused,
                     {o.trial_id: o.train_metrics for o in outcomes})


def write_run_results(run_dir: Path, table: pd.DataFrame, outcomes: list,
                      started_s: float, equal_quality: bool = False,
                      ledger=None) -> tuple[list[dict], list[str]]:
    """results.parquet and metrics.json of a native run: the main trial (`outcomes[0]`) and
    its baseline (`outcomes[1]`, if any) with their seed metrics, training figures and the
    teacher artifacts each used; (metrics, reused artifacts). With `equal_quality`, the main
    trial's metrics gain N* at equal quality (`equal_quality_metrics`; `ledger`: the run's
    LedgerState, else rebuilt from its log)."""
    main = outcomes[0]
    baseline = outcomes[1].trial_id if len(outcomes) > 1 else None
    metrics = [seed_metrics(table, main.trial_id, main.scores, baseline_trial=baseline)]
    onpolicy = getattr(main, "method", "") == "onpolicy"
    train = {o.trial_id: dict(getattr(o, "train_metrics", None) or {}) for o in outcomes}
    if onpolicy:  # a bill every step, no artifact to reuse: no N* (see energy to quality)
        metrics[0].update(onpolicy_metrics(table, main.trial_id,
                                           steps_trained(train[main.trial_id])))
        if train[main.trial_id]:  # rank 0's count of its last attempt → the ledger's, all
            train[main.trial_id]["rollout_tokens"] = metrics[0]["rollout_tokens"]
    if equal_quality and baseline and not onpolicy:
        metrics[0].update(equal_quality_metrics(run_dir, table, main.trial_id, baseline,
                                                metrics[0], ledger))
    if baseline:
        metrics.append(seed_metrics(table, baseline, outcomes[1].scores,
                                    teacher_trial=main.trial_id, teacher_scores=main.scores))
    for m, o in zip(metrics, outcomes, strict=False):  # dev beside test: the search's view
        m["dev_scores"] = getattr(o, "dev_scores", {})
    reused = [f"{o.trial_id}:{k}" for o in outcomes for k, a in o.artifacts.items() if a.reused]
    atomic_write(run_dir / "results.parquet", lambda p: table.to_parquet(p, index=False))
    atomic_write_text(run_dir / "metrics.json", json.dumps(
        {"trials": metrics, "reused_artifacts": reused, "wall_s": time.time() - started_s,
         "train": train,
         # which teacher artifacts each trial used (content keys: their manifests say what
         # made them and what they cost)
         "artifacts": {o.trial_id: {k: {"key": a.key, "reused": a.reused, "path": str(a.path)}
                                    for k, a in o.artifacts.items()} for o in outcomes}},
        indent=1, default=str))
    return metrics, reused


def steps_trained(train: dict) -> int:
    """The global step count the training reached (a resumed attempt's `steps_run` counts only
    its own steps, while the ledger covers every attempt): resumed_from_step + steps_run, else
    the configured steps."""
    if "steps_run" in train:
        return int(train.get("resumed_from_step") or 0) + int(train["steps_run"])
    return int(train.get("steps", 0))


def equal_quality_metrics(run_dir: Path, table: pd.DataFrame, main: str, baseline: str,
                          main_metrics: dict, ledger=None) -> dict:
    """N* at equal quality (raydistill.equal_quality): q* = the distilled student's final dev
    check, E_baseline(q*) = the baseline's training energy up to its first dev check reaching
    q* (from the ledger's curves); {} for a results table without meters."""
    from raydistill.equal_quality import (
        energy_at_quality,
        equal_quality_fields,
        ledger_energy_to,
        progress_lines,
        training_curve,
    )
    from raydistill.intervals import Ratio
    from raydistill.results import TEACHER_STAGES, load_ledger, stage_figure

    teacher = stage_figure(table, main, TEACHER_STAGES)
    student = stage_figure(table, main, ("student_training",))
    whole = stage_figure(table, baseline, ("student_training",))
    if teacher is None or student is None or whole is None:
        return {}
    mine = progress_lines(run_dir / "students" / main / "progress.jsonl")
    base = progress_lines(run_dir / "students" / baseline / "progress.jsonl")
    q_star = float(mine[-1]["quality"]) if mine and base else None
    q_n = mine[-1].get("n") if mine and base else None
    matched: dict = {"reached": False}
    if q_star is not None:
        state = ledger if ledger is not None else load_ledger(run_dir)[0]
        rows = [r for r in state.trial_rows(baseline) if r.stage == "student_training"]
        matched = energy_at_quality(training_curve(base, ledger_energy_to(state, rows)),
                                    q_star, whole, q_n)
    steps = Ratio(main_metrics["N_star_verdict"], main_metrics["N_star"],
                  main_metrics["N_star_low"], main_metrics["N_star_high"]) \
        if main_metrics.get("N_star_verdict") else None
    return equal_quality_fields(teacher, student, matched, q_star, q_n, steps)


def _n_star_eq_text(m: dict) -> str:
    """N* at equal quality, its interval or why there is none, with q* and E_baseline(q*)."""
    from raydistill.equal_quality import NEVER_REACHES
    from raydistill.intervals import Interval, Ratio, fmt_interval, fmt_ratio

    verdict = m.get("N_star_equal_quality_verdict")
    if verdict is None:
        return "n/a"
    if verdict == NEVER_REACHES:
        high = m.get("N_star_equal_quality_high")
        bound = f": N* (equal quality) < {high:.3g}, the equal-steps upper bound" \
            if high is not None else ": no bound"
        return f"{verdict} (q* {m['q_star']:.3f} on {m.get('q_star_n')} dev rows){bound}"
    if m.get("q_star") is None:
        return verdict
    saving = m.get("N_star_equal_quality_saving_j")
    den = None if saving is None else Interval(saving, m["N_star_equal_quality_saving_error_j"])
    ratio = fmt_ratio(Ratio(verdict, m["N_star_equal_quality"], m["N_star_equal_quality_low"],
                            m["N_star_equal_quality_high"], den))
    matched = fmt_interval(Interval(m["baseline_energy_at_q_star_j"],
                                    m["baseline_energy_at_q_star_error_j"]))
    return (f"{ratio} (q* {m['q_star']:.3f} on {m.get('q_star_n')} dev rows; baseline reached "
            f"it at step {m['baseline_step_at_q_star']}/{m['baseline_steps']}, "
            f"E_baseline(q*) {matched})")


def _n_star_text(m: dict) -> str:
    """N* with its bounds where the stated errors make it a number, else the verdict."""
    from raydistill.intervals import Interval, Ratio, fmt_ratio

    if m.get("N_star_verdict") is None:
        return "n/a (no baseline)"
    if m["N_star_verdict"] == NO_AMORTISATION:
        return NO_AMORTISATION
    saving = m.get("N_star_saving_j")
    den = None if saving is None else Interval(saving, m["N_star_saving_error_j"])
    text = fmt_ratio(Ratio(m["N_star_verdict"], m["N_star"], m["N_star_low"],
                           m["N_star_high"], den))
    # one run of each student: the interval is the meters' stated error, not their spread
    return text + (" (95%, stated error only: one run each)" if m["N_star"] is not None
                   else "")


def _onpolicy_text(m: dict) -> str:
    """The recurring teacher bill of an on-policy trial and its rollouts, in one line."""
    def mj(v: float | None) -> str:
        return "n/a" if v is None else f"{v * 1e3:,.2f} mJ/token"

    return (f"    on-policy: teacher_scoring {m['teacher_scoring_j']:,.1f} J (busy "
            f"{m['teacher_scoring_busy_j']:,.1f} J, idle {m['teacher_scoring_idle_j']:,.1f} J, "
            f"load {m['teacher_scoring_load_j']:,.1f} J); teacher share per step "
            f"{m['teacher_step_share']:.1%}; rollouts {m['rollout_j']:,.1f} J for "
            f"{m['rollout_tokens']:,} tokens ({mj(m['rollout_j_per_token'])}, update "
            f"{mj(m['update_j_per_token'])})")


def _scores_text(scores: dict, split: str) -> str:
    """'test (300 rows): student_quick_acc 0.870, ...': the row count said once, not as a
    score."""
    rows = scores.get("quick_acc_rows")
    named = ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if k != "quick_acc_rows")
    return f"{split}{f' ({rows:.0f} rows)' if rows else ''}: {named}"


def summary(result: RunResult) -> str:
    cols = ["trial_id", "stage", "energy_j", "load_j", "work_j", "rollout_j", "idle_j",
            "duration_s", "idle_s", "tokens", "tokens_per_s", "j_per_token", "generated_tokens",
            "j_per_generated_token", "rollout_tokens", "energy_method", "co2e_g"]
    table = result.table
    # the phases beyond load only where a run has them (on-policy: the student's rollouts, the
    # scoring pool's idle devices), so that energy_j = load + work + rollout + idle is seen
    phases = {"work_j": ("rollout_j", "idle_j"), "rollout_j": ("rollout_j",),
              "rollout_tokens": ("rollout_j",), "idle_j": ("idle_j",), "idle_s": ("idle_j",)}
    cols = [c for c in cols if c in table.columns and not (
        c in phases and not any((table.get(p, pd.Series(dtype=float)) > 0).any()
                                for p in phases[c]))]
    from raydistill.units import display_frame

    # the report's units and three figures: "219 J", "0.204 mJ" per token, not "0.000"
    shown = display_frame(table[cols])
    lines = [shown.to_string(index=False) if len(shown) else "(no windows)", ""]
    for m in result.metrics:
        om = ", ".join(f"{k} {v:.2f}" for k, v in m["OM_perf"].items())
        sc = _scores_text(m.get("scores") or {}, "test")
        if m.get("dev_scores"):
            sc += f"; {_scores_text(m['dev_scores'], 'dev')}"
        n_star = _n_star_text(m)
        eff = "n/a" if m["Eff_overall"] is None else f"{m['Eff_overall']:.2f}"
        share = "n/a" if m["teacher_share"] is None else f"{m['teacher_share']:.1%}"
        lines += [f"[{m['trial_id']}] E_run {m['E_run_j']:,.1f} J (teacher side {share}); "
                  f"scores {sc}", f"    OM_perf: {om or 'n/a'}; Eff_overall {eff}; "
                  f"N* (equal steps) {n_star}"]
        if m.get("teacher_step_share") is not None:
            lines.append(_onpolicy_text(m))
        if m.get("N_star_equal_quality_verdict") is not None:
            lines.append(f"    N* (equal quality) {_n_star_eq_text(m)}")
    for trial, t in result.train.items():
        util = "n/a" if t.get("mfu") is None else f"{t['mfu']:.1%}"
        lines.append(f"[{trial}] student_training: {t.get('tokens_per_s_rank0', 0):,.0f} "
                     f"tokens/s on rank 0 of {t.get('world', 1)}, {t.get('precision')}, MFU "
                     f"{util} ({t.get('mfu_basis', '')}); load {t.get('load_s', 0):.1f} s")
    if result.reused:
        lines.append(f"reused teacher artifacts (not rebuilt): {', '.join(result.reused)}")
    lines += unmeasured_lines(result.table)
    lines.append("energy method per stage is in the table (counter / sampled / estimated / "
                 f"replayed / interpolated); run dir: {result.run_dir}")
    return "\n".join(lines)


def unmeasured_lines(table) -> list[str]:
    """Say where the figures are not whole: stretches no sample measured (not in energy_j),
    and stages whose windows were too short to be more than interpolation."""
    lines = []
    if "unmeasured_s" in table:
        for r in table[table["unmeasured_s"] > 0].itertuples():
            lines.append(f"warning: {r.trial_id}/{r.stage}: {r.unmeasured_s:,.1f} device-seconds "
                         f"unmeasured (not in energy_j; at most {r.unmeasured_max_j:,.0f} J at "
                         "the peak power seen)")
    if "interpolated" in table:
        for r in table[table["interpolated"]].itertuples():
            lines.append(f"note: {r.trial_id}/{r.stage}: a window shorter than two samples; its "
                         "figure is interpolated")
    return lines

