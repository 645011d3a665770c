"""A sweep's trials table, its Pareto set and its summary, from Tune's results and the ledger
(pure: pandas and raydistill.pareto only).

Energy per trial comes from the ledger, attempt by attempt (`<trial>~<attempt>`): the attempt
that produced the trial's last result is the trial's; every other attempt (lost node, killed
driver) and every trial that did not finish is waste, reported as `wasted_j` — except a teacher
artifact a lost attempt finished building, which the store keeps and later attempts use: that
energy stays the trial's. Three views:
marginal (its own windows), full (as if it had built every teacher artifact it used) and
amortized (each teacher artifact split over every trial of the sweep that used it).

A trial's `quality` is its dev score: dev selects the Pareto set (`quality_dev` in pareto.csv,
`pareto_selected_on` in sweep.json) and `quality_test` is reported beside it.

Each trial's figures carry their stated error (raydistill.energy.accuracy), and the figures
derived from them (N*, the break-even tokens*) are computed per configuration over its repeats
with the interval logic of raydistill.search.uncertainty.
"""

from __future__ import annotations

import math

import pandas as pd

from raydistill.pareto import hypervolume_2d, knee_point, pareto_front
from raydistill.results import TEACHER_STAGES
from raydistill.search.derived import STAGE_OF, derived_figures, error_figures

SELECTED_ON = "dev"  # the split whose scores select the Pareto set (test is reported beside)


def attempt_energy(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """{ledger trial id: {stage: J}} (inference probes left out: they measure, not train)."""
    out: dict[str, dict[str, float]] = {}
    for r in table.itertuples():
        if str(r.stage).startswith("inference_"):
            continue
        out.setdefault(r.trial_id, {})[r.stage] = float(r.energy_j)
    return out


def _status(result: dict, stopped: dict) -> str:
    m = result["metrics"]
    if result.get("error"):
        return "failed"
    if m.get("status") in ("finished", "stopped_by_budget"):
        return m["status"]
    tid = m.get("trial_id")
    if tid in stopped:
        return stopped[tid]
    return "stopped_by_scheduler"


def kept_artifact_j(attempts: dict[str, dict[str, float]], final_attempt: str | None,
                    artifacts: dict[str, dict]) -> dict[str, float]:
    """{artifact key: J} for the teacher artifacts an earlier, lost attempt of a trial finished
    building. That work is not waste: the artifact is in the store and later attempts (and other
    trials) use it, so its energy stays the trial's."""
    kept = {}
    for key, info in artifacts.items():
        builder = info.get("trial_id")
        if builder in attempts and builder != final_attempt:
            kept[key] = attempts[builder].get(STAGE_OF.get(key.split(":")[0], ""), 0.0)
    return kept


def amortized_j(ledger_trial: str, own: dict[str, float], artifacts: dict[str, dict],
                consumers: dict[str, list[str]], trial: str) -> float:
    """Own energy less the artifacts this attempt built, plus each artifact it used divided by
    the number of trials that used it (one an earlier attempt of the trial built included)."""
    total = sum(own.values())
    for key, info in artifacts.items():
        users = consumers.get(key, [])
        if info.get("trial_id") == ledger_trial:
            total -= own.get(STAGE_OF.get(key.split(":")[0], ""), 0.0)
        if trial in users:
            total += float(info.get("energy_j") or 0.0) / len(users)
    return total


def trials_table(results: list[dict], table: pd.DataFrame, control: dict,
                 artifacts: dict[str, dict] | None = None,
                 curves: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per trial. `curves`: {ledger trial: its dev curve} (raydistill.equal_quality
    `dev_curves`), which N* at equal quality reads."""
    artifacts = artifacts or {}
    curves = curves or {}
    energy = attempt_energy(table)
    forecasts = control.get("forecasts", {})
    consumers = control.get("consumers", {})
    rows = []
    for res in results:
        m = res["metrics"]
        trial = m.get("trial_id") or res.get("trial_id")
        if trial is None:
            continue
        final_attempt = m.get("ledger_trial")
        attempts = {k: v for k, v in energy.items() if k.split("~")[0] == trial}
        kept = kept_artifact_j(attempts, final_attempt, artifacts)
        own = attempts.get(final_attempt, {})
        status = _status(res, control.get("stopped", {}))
        marginal = sum(own.values()) + sum(kept.values())
        wasted = sum(sum(v.values()) for k, v in attempts.items()
                     if k != final_attempt) - sum(kept.values())
        if status != "finished":
            wasted += marginal
        # what the final attempt reported as reused (the manifests' build costs), less the
        # artifacts its own earlier attempts built: those are in `marginal` already
        reused = max(0.0, m.get("energy_full_j", marginal) - m.get("energy_marginal_j", marginal)
                     - sum(float(artifacts[k].get("energy_j") or 0.0) for k in kept))
        fc = forecasts.get(final_attempt, {})
        row = {"trial_id": trial, "ledger_trial": final_attempt, "status": status,
               "attempts": len(attempts) or 1,
               # dev decides (the searcher and the Pareto set read `quality`), test beside
               "quality": _finished(m, "quality", status),
               "quality_test": _finished(m, "quality_test", status),
               "quality_n": _finished(m, "quality_n", status),
               "quality_selected_on": _selected_on(m, status),
               "progress": float(m.get("progress", 0.0)),
               "energy_marginal_j": marginal, "energy_full_j": marginal + reused,
               "energy_amortized_j": amortized_j(final_attempt or "", own, artifacts,
                                                 consumers, trial),
               "forecast_j": fc.get("before"), "forecast_source": fc.get("source"),
               "forecast_profile_j": fc.get("profile"),
               "forecast_error": fc.get("before_error"),
               "forecast_profile_error": fc.get("profile_error"),
               "wasted_j": wasted, "error": res.get("error"),
               "dev_curve": curves.get(final_attempt or ""),
               **teacher_figures(table, final_attempt, marginal + reused, own, kept, reused),
               **error_figures(table, final_attempt, own, kept, reused,
                               artifacts, _reused_keys(trial, attempts, artifacts, consumers))}
        for name, value in res.get("config", {}).items():
            row[f"param.{name}"] = value
        for key, value in m.items():
            if key.startswith(("score.", "dev_score.")):
                row[key] = value
        rows.append(row)
    out = pd.DataFrame(rows)
    if not out.empty:
        view = control.get("energy_view", "full")
        out["energy_j"] = out[f"energy_{view}_j"]
        out = pd.concat([out, derived_figures(out)], axis=1)
    return out


def _selected_on(metrics: dict, status: str) -> str:
    """Which split a finished trial's `quality` is: dev, except for a trial that finished under
    the code before dev decided (a sweep resumed across versions): its final report has no dev
    scores, and its `quality` is its test score."""
    if status == "finished" and not any(k.startswith("dev_score.") for k in metrics):
        return "test"
    return SELECTED_ON


def _finished(metrics: dict, key: str, status: str) -> float:
    """A finished trial's final figure; NaN for any other (its last report is mid-training)."""
    value = metrics.get(key)
    if status != "finished" or value is None:
        return float("nan")
    return float(value)


def _reused_keys(trial: str, attempts: dict, artifacts: dict[str, dict],
                 consumers: dict[str, list[str]]) -> list[str]:
    """The artifacts a trial used that another trial built (it reused them at build cost)."""
    return [k for k, users in consumers.items()
            if trial in users and artifacts.get(k, {}).get("trial_id") not in attempts]


def teacher_figures(table: pd.DataFrame, attempt: str | None, full_j: float,
                    own: dict[str, float], kept: dict[str, float], reused_j: float) -> dict:
    """A trial's teacher side in the full view (its own teacher stages, artifacts its lost
    attempts built, artifacts it reused at their build cost), its share of the trial's full
    energy, and the steady-state J per generated token of the generation it ran itself."""
    side = sum(own.get(s, 0.0) for s in TEACHER_STAGES) + sum(kept.values()) + reused_j
    gen = table[(table["trial_id"] == attempt) & (table["stage"] == "teacher_generation")] \
        if len(table) and attempt else table.iloc[0:0]
    generated = float(gen["generated_tokens"].sum()) if "generated_tokens" in gen else 0.0
    work = float(gen["work_j"].sum()) if "work_j" in gen else 0.0
    return {"teacher_side_j": side, "teacher_share": side / full_j if full_j > 0 else None,
            # the recurring part of the side (on-policy scoring, every step): the report's
            # energy to quality counts it up to the crossing, the rest (artifacts) in full
            "teacher_scoring_j": own.get("teacher_scoring", 0.0),
            "student_training_j": own.get("student_training", 0.0),
            "teacher_generated_tokens": generated,
            "teacher_j_per_generated_token": work / generated if generated > 0 else None}


def pareto_table(trials: pd.DataFrame, param_names: list[str]) -> pd.DataFrame:
    """The finished trials on the energy–quality front, with their parameters. The front is
    selected on the dev score (`quality`, kept as `quality_dev`); the test score is carried
    beside (`quality_test`) and never selects: a front picked on test would be biased up."""
    cols = ["trial_id", "quality", "quality_dev", "quality_test", "energy_j",
            *[f"param.{p}" for p in param_names]]
    if trials.empty:
        return pd.DataFrame(columns=cols)
    done = trials[(trials["status"] == "finished") & trials["quality"].notna()]
    done = done.reset_index(drop=True)
    idx = pareto_front(done[["quality", "energy_j"]].to_numpy(), ("max", "min"))
    front = done.iloc[sorted(idx)].copy()
    front["quality_dev"] = front["quality"]
    if "quality_test" not in front.columns:
        front["quality_test"] = float("nan")
    return front[[c for c in cols if c in front.columns]].sort_values("energy_j")


def reference_point(trials: pd.DataFrame) -> tuple[float, float]:
    """Hypervolume reference: quality 0, 10% above the most energy any finished trial used."""
    done = trials[trials["status"] == "finished"] if not trials.empty else trials
    e_max = float(done["energy_j"].max()) if len(done) else 1.0
    return (0.0, 1.1 * e_max)


def _pareto_selected_on(trials: pd.DataFrame) -> str:
    """dev; 'dev and test' where some finished trials' quality is a test score (finished before
    dev decided, in a sweep resumed across versions: the set mixes both, and says so)."""
    done = trials[trials["status"] == "finished"] if len(trials) else trials
    on = set(done.get("quality_selected_on", pd.Series(dtype=str)))
    return "dev and test" if "test" in on else SELECTED_ON


def sweep_summary(space, trials: pd.DataFrame, pareto: pd.DataFrame, table: pd.DataFrame,
                  control: dict, budget: dict, wall_s: float) -> dict:
    ref = reference_point(trials)
    pts = pareto[["quality", "energy_j"]].to_numpy() if len(pareto) else []
    hv = hypervolume_2d(pts, ref, ("max", "min")) if len(pareto) else 0.0
    knee = knee_point(pts, ("max", "min")) if len(pareto) else None
    setup = float(table.loc[table["stage"] == "teacher_training", "energy_j"].sum()) \
        if len(table) else 0.0
    errs = [abs(e) for e in trials.get("forecast_profile_error", pd.Series(dtype=float))
            if e is not None and not (isinstance(e, float) and math.isnan(e))]
    return {
        "objective": {"quality": space.objective.quality, "energy": space.objective.energy},
        "search": {"algorithm": space.search.algorithm, "num_samples": space.search.num_samples},
        "budget": {**budget, **control.get("budget", {})},
        "trials": len(trials),
        "status_counts": trials["status"].value_counts().to_dict() if len(trials) else {},
        "energy_total_j": float(table["energy_j"].sum()) if len(table) else 0.0,
        "setup_energy_j": setup,
        "wasted_j": float(trials["wasted_j"].sum()) if len(trials) else 0.0,
        "hypervolume": hv, "reference": list(ref),
        "knee_trial": None if knee is None else str(pareto.iloc[knee]["trial_id"]),
        "pareto_trials": pareto["trial_id"].tolist(),
        "pareto_selected_on": _pareto_selected_on(trials),
        "forecast_profile_abs_error_max": max(errs) if errs else None,
        "refused_trials": control.get("refused", []),
        "wall_s": wall_s,
    }
