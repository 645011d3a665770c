"""`raydistill sweep SPACE`: a Ray Tune search whose trials are measured pipeline runs.

    sweep dir/
      space.yaml, config.yaml      the search space and its resolved base experiment
      ledger/                      every window of every trial (one ledger for the sweep)
      artifacts/                   teacher artifacts shared by the trials
      tune/                        Tune's experiment state (what --resume restores)
      results.parquet              trial-attempt × stage energy (footprint columns included)
      trials.parquet, pareto.csv   one row per trial; the energy–quality Pareto set
      sweep.json                   objective, budget, hypervolume, forecasts, waste

The Pareto set and its hypervolume are computed by `raydistill.pareto` from the trials table,
not taken from Tune.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from raydistill.config import to_dict
from raydistill.errors import ConfigError
from raydistill.io import atomic_write, atomic_write_text, check_run_format, prepare_run_dir

log = logging.getLogger(__name__)


def _search_alg(space, seed: int):
    """Tune's searcher for the space (None for a grid: Tune's own variants), running each
    configuration `search.repeats` times (not Tune's Repeater: it reads one scalar metric and
    would average stopped repeats in)."""
    from raydistill.search.searcher import make_searcher, repeat

    alg = make_searcher(space, seed)
    return None if alg is None else repeat(alg, space.search.repeats)


def _scheduler(space):
    s = space.scheduler
    if s.kind == "pareto":
        from raydistill.search.scheduler import EnergyParetoScheduler

        # the rungs compare the full view (energy_rung_j): the objective's view would let run
        # order (who built the shared teacher artifacts) decide who is stopped
        return EnergyParetoScheduler(metric="quality", energy_metric="energy_rung_j",
                                     progress_metric="progress", rungs=s.rungs,
                                     margin=s.margin, min_trials=s.min_trials,
                                     min_spread=s.min_spread, confidence=s.confidence)
    if s.kind == "asha":
        from ray.tune.schedulers import ASHAScheduler

        # a scalarised objective for the ASHA baseline: quality per kJ
        return ASHAScheduler(metric="quality_per_kj", mode="max", time_attr="progress",
                             max_t=1.0, grace_period=min(s.rungs or [0.25]), reduction_factor=2)
    return None


def run_sweep(space_path: str | Path, out: Path, *, budget_kwh: float | None = None,
              trial_budget_kwh: float | None = None, address: str | None = None,
              resume: bool = False, progress: Callable[[str], None] | None = None,
              on_run_dir: Callable[[Path], None] | None = None) -> dict:
    import ray
    from ray import tune

    from raydistill.cluster.runtime import Session, init_ray, namespace_for
    from raydistill.search.control import (
        BudgetStopper,
        ProgressCallback,
        ReleaseCallback,
        say_to,
        start_control,
    )
    from raydistill.search.space import load_space
    from raydistill.search.trial import TrialContext, run_trial
    from raydistill.search.tune_space import to_tune

    progress = progress or log.info
    say_to(progress)  # a resumed sweep's callbacks come from tuner.pkl, without a terminal
    space = load_space(space_path)
    budget = space.budget
    total_kwh = budget_kwh if budget_kwh is not None else budget.total_kwh
    trial_kwh = trial_budget_kwh if trial_budget_kwh is not None else budget.trial_kwh
    for name, value in (("--budget-kwh", total_kwh), ("--trial-budget-kwh", trial_kwh)):
        if value is not None and not value > 0:
            raise ConfigError(f"{name} must be > 0, got {value}")
    base = space.config_for({})
    from raydistill.run import check_engine_installed

    # a trial whose engine is not installed fails now, not after the first trials ran
    engines = {base.generation.engine}
    engines.update(v for p in space.params if p.name == "generation.engine" for v in p.values)
    for engine in sorted(map(str, engines)):
        check_engine_installed(engine)
    tune_dir = Path(out).resolve() / "tune"
    if resume:
        if not (tune_dir / "sweep").is_dir():
            raise ConfigError(f"--resume: no sweep to resume in {out} (no tune/sweep directory)")
        run_dir = Path(out).resolve()
        check_run_format(run_dir)
    else:
        run_dir = prepare_run_dir(out)
        shutil.copyfile(space_path, run_dir / "space.yaml")
        import yaml

        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(base), sort_keys=False))
    if on_run_dir is not None:  # the CLI moves the libraries' log into it
        on_run_dir(run_dir)
    namespace = namespace_for(run_dir)
    started_ray = init_ray(address, namespace)
    from raydistill.cluster.environment import check_cluster_storage

    atomic_write_text(run_dir / "environment.json",
                      json.dumps(check_cluster_storage(run_dir), indent=1))
    session = Session(run_dir, namespace, base.sampling).start()
    started = time.time()
    control = start_control(namespace, _j(total_kwh), _j(trial_kwh),
                            str(run_dir / "history.jsonl"), _j(budget.prior_trial_kwh),
                            _trial_count(space))
    ctx = TrialContext(str(Path(space_path).resolve()), str(run_dir), namespace,
                       str(run_dir / "artifacts"), space.objective.quality,
                       space.objective.energy)
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), {"cpu": 0.01})
    stopper = BudgetStopper(namespace, _j(trial_kwh), _j(total_kwh))
    try:
        if resume:
            progress(f"resuming the sweep in {run_dir}")
            tuner = tune.Tuner.restore(str(tune_dir / "sweep"), trainable,
                                       resume_unfinished=True, resume_errored=True)
        else:
            alg = _search_alg(space, space.search.seed)
            tuner = tune.Tuner(
                trainable,
                param_space=to_tune(space, for_optuna=alg is not None),
                tune_config=tune.TuneConfig(
                    search_alg=alg, scheduler=_scheduler(space),
                    num_samples=_num_samples(space),
                    max_concurrent_trials=space.search.max_concurrent),
                run_config=tune.RunConfig(name="sweep", storage_path=str(tune_dir), stop=stopper,
                                          callbacks=[ReleaseCallback(namespace),
                                                     ProgressCallback(progress)],
                                          failure_config=tune.FailureConfig(max_failures=1),
                                          verbose=1))
        grid = tuner.fit()
        rows = session.energy_rows()
        control_report = ray.get(control.report.remote())
    finally:
        session.close()
        if started_ray:  # a Ray this call joined stays up for its owner
            ray.shutdown()
    return _write_outputs(run_dir, space, base, grid, rows, control_report,
                          {"total_kwh": total_kwh, "trial_kwh": trial_kwh},
                          time.time() - started)


def _num_samples(space) -> int:
    """Tune's num_samples: a grid runs once per repeat (Tune repeats the whole grid); a
    searcher's trials are `num_samples` configurations, each run `repeats` times."""
    s = space.search
    return s.repeats if s.algorithm == "grid" else s.num_samples * s.repeats


def _trial_count(space) -> int:
    """How many trials the sweep plans (what an even split of its budget divides by)."""
    if space.search.algorithm == "grid":
        from raydistill.search.space import grid_points

        return len(grid_points(space)) * space.search.repeats
    return _num_samples(space)


def _j(kwh: float | None) -> float | None:
    return None if kwh is None else kwh * 3.6e6


def _write_outputs(run_dir: Path, space, base, grid, rows: list[dict], control: dict,
                   budget: dict, wall_s: float) -> dict:
    from raydistill.results import results_table
    from raydistill.run import footprint_inputs
    from raydistill.search.forecast import score_forecasts
    from raydistill.search.tables import pareto_table, sweep_summary, trials_table

    table = results_table(rows, footprint_inputs(base))
    results = []
    for r in grid:
        results.append({"trial_id": r.metrics.get("trial_id") if r.metrics else None,
                        "path": r.path, "metrics": dict(r.metrics or {}),
                        "config": dict(r.config or {}),
                        "error": repr(r.error) if r.error else None})
    control = {**control, "energy_view": space.objective.energy}
    trials = trials_table(results, table, control, _artifact_costs(run_dir / "artifacts"),
                          _dev_curves(run_dir, results))
    pareto = pareto_table(trials, [p.name for p in space.params])
    summary = sweep_summary(space, trials, pareto, table, control, budget, wall_s)
    summary["forecast_score"] = score_forecasts(control.get("forecasts", {}))
    summary["forecasts"] = control.get("forecasts", {})
    atomic_write(run_dir / "results.parquet", lambda p: table.to_parquet(p, index=False))
    atomic_write(run_dir / "trials.parquet", lambda p: trials.to_parquet(p, index=False))
    atomic_write(run_dir / "pareto.csv", lambda p: pareto.to_csv(p, index=False))
    atomic_write_text(run_dir / "sweep.json", json.dumps(summary, indent=1, default=str))
    summary["trials_table"] = trials
    summary["pareto_table"] = pareto
    summary["run_dir"] = str(run_dir)
    return summary


def _dev_curves(run_dir: Path, results: list[dict]) -> dict[str, str]:
    """Each trial's dev checks with the training energy up to each (N* at equal quality),
    from the ledger on disk; {} where it cannot be read (a damaged log: no curves, no figure)."""
    from raydistill.equal_quality import dev_curves
    from raydistill.results import load_ledger

    attempts = [r["metrics"].get("ledger_trial") for r in results]
    try:
        state, _ = load_ledger(run_dir)
    except (OSError, ValueError) as exc:
        log.warning("no dev curves for N* at equal quality: the ledger could not be read (%s)",
                    exc)
        return {}
    return dev_curves(run_dir, [a for a in attempts if a], state)


def _artifact_costs(root: Path) -> dict[str, dict]:
    """{"kind:key": {"trial_id", "energy_j"}} from the shared store's manifests."""
    from raydistill.distill.artifacts import MANIFEST

    out = {}
    for manifest in root.glob(f"*/*/{MANIFEST}"):
        built = json.loads(manifest.read_text()).get("built_by", {})
        out[f"{manifest.parent.parent.name}:{manifest.parent.name}"] = built
    return out


def dry_run(space_path: str | Path, history_dir: str | Path | None = None) -> list[dict]:
    """The trials a sweep would run, with their work units and forecast energy (no Ray, nothing
    spent). The forecast learns from the finished trials of an earlier sweep in `history_dir`
    (the same space, e.g. a smaller budget run); without one, only the work units are known."""
    import pandas as pd

    from raydistill.search.forecast import Forecaster
    from raydistill.search.space import grid_points, load_space, sample_points
    from raydistill.search.trial import stage_units

    space = load_space(space_path)
    if space.search.algorithm == "grid":
        points = grid_points(space)
    else:  # the searcher's own proposals differ; random draws show the spread of the space
        points = sample_points(space, space.search.num_samples)
    forecaster, learned = Forecaster(), 0
    hist = Path(history_dir) if history_dir else None
    if hist and (hist / "trials.parquet").exists():
        trials = pd.read_parquet(hist / "trials.parquet")
        energy = pd.read_parquet(hist / "results.parquet")
        for t in trials[trials["status"] == "finished"].itertuples():
            params = _params_of(trials, t.Index)
            stages = energy[energy["trial_id"] == t.ledger_trial].set_index("stage")["energy_j"]
            used = {k: float(v) for k, v in stages.items() if not k.startswith("inference_")}
            forecaster.add_finished(params, used, stage_units(space.config_for(params)))
            learned += 1
    out, reused = [], set()
    for params in points:
        cfg = space.config_for(params)
        units = stage_units(cfg)
        try:
            stages = forecaster.predict(params, units, reused) if learned else None
        except (ValueError, KeyError, LookupError):
            stages = None
        out.append({"params": params, "method": cfg.distill.method, "units": units,
                    "grid": space.search.algorithm == "grid",
                    "forecast_j": None if stages is None else float(sum(stages.values())),
                    "learned_from": learned})
    return out


def _params_of(trials, index) -> dict:
    row = trials.loc[index]
    return {c[len("param."):]: row[c].item() if hasattr(row[c], "item") else row[c]
            for c in trials.columns if c.startswith("param.")}


def _fmt_params(params: dict) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in params.items()) or "(the base experiment)"


def forecast_table(plan: list[dict]) -> str:
    lines = [f"{'#':>3} {'method':<10} {'student samples':>15} {'forecast J':>12}  params"
             + ("" if not plan or plan[0].get("grid", True) else
                "  (drawn at random: the searcher's proposals will differ)")]
    total, known = 0.0, True
    for i, p in enumerate(plan):
        f = p["forecast_j"]
        known &= f is not None
        total += f or 0.0
        lines.append(f"{i:>3} {p['method']:<10} {p['units']['student_training']:>15,.0f} "
                     f"{'?' if f is None else f'{f:,.1f}':>12}  {_fmt_params(p['params'])}")
    if known and plan:
        lines.append(f"whole sweep: {total:,.1f} J ({total / 3.6e6:.6f} kWh), forecast from "
                     f"{plan[0]['learned_from']} finished trials")
    else:
        lines.append("no finished trials to learn from: pass --out DIR of an earlier sweep of "
                     "this space, or run a small budget sweep first")
    return "\n".join(lines)


__all__ = ["dry_run", "forecast_table", "run_sweep"]
