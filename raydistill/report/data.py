"""A run or sweep directory as report data (pure).

A run directory (`raydistill run`) is read as a sweep of its trials: quality from each trial's
scores, energy its E_run. A sweep directory (`raydistill sweep`) brings its own trials table,
Pareto set and summary. Power over time comes from the ledger's samples, binned. The rules
stated about it are in `rules.py`.

A run's quality is one score for all its trials (`quality_key`): `student_quick_acc` where a
trial has it (`raydistill run`), else the first `student_*` score in the order the trials and
their scores were recorded (a tracked run's own names, e.g. `student_token_accuracy`).
"""


from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from raydistill.energy.footprint import grid_table
from raydistill.errors import ConfigError
from raydistill.pareto import hypervolume_2d, knee_point, pareto_front
from raydistill.results import load_ledger


@dataclass
class ReportData:
    run_dir: Path
    kind: str  # run | sweep
    results: pd.DataFrame  # trial × stage
    trials: pd.DataFrame  # trial_id, status, quality, energy_j, param.* ...
    pareto_ids: list[str]
    hypervolume: float
    reference: tuple[float, float]
    knee: str | None
    metrics: list[dict] = field(default_factory=list)  # seed metrics (run dirs)
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    quality_name: str = "student_quick_acc"
    kind_energy: dict = field(default_factory=dict)  # (trial, stage) -> {device kind: J}


def selected_on(data: ReportData) -> str:
    """The split whose scores selected a sweep's Pareto set: `pareto_selected_on` in
    sweep.json ("dev", or "dev and test" for a sweep resumed across versions); a sweep written
    before it was recorded selected on test."""
    return str(data.summary.get("pareto_selected_on") or "test")


def load_report_data(run_dir: str | Path) -> ReportData:
    d = Path(run_dir)
    if not (d / "results.parquet").is_file():
        raise ConfigError(f"{d} is not a finished run or sweep directory (no results.parquet)")
    results = pd.read_parquet(d / "results.parquet")
    config = yaml.safe_load((d / "config.yaml").read_text()) if (d / "config.yaml").exists() \
        else {}
    if (d / "trials.parquet").is_file():
        trials = pd.read_parquet(d / "trials.parquet")
        summary = json.loads((d / "sweep.json").read_text()) if (d / "sweep.json").exists() \
            else {}
        kind, metrics = "sweep", []
        quality_name = summary.get("objective", {}).get("quality", "quality")
    else:
        metrics = json.loads((d / "metrics.json").read_text())["trials"]
        quality_name = quality_key(metrics)
        trials = pd.DataFrame([{
            "trial_id": m["trial_id"], "status": "finished",
            "quality": (m.get("scores") or {}).get(quality_name, math.nan),
            "energy_j": m["E_run_j"]} for m in metrics],
            columns=["trial_id", "status", "quality", "energy_j"])
        kind, summary = "run", {}
    done = trials[trials["status"] == "finished"].reset_index(drop=True)
    pts = done[["quality", "energy_j"]].to_numpy(dtype=float) if len(done) else np.empty((0, 2))
    front = pareto_front(pts, ("max", "min")) if len(done) else []
    e_max = float(done["energy_j"].max()) if len(done) else 1.0
    reference = (0.0, 1.1 * e_max)
    hv = hypervolume_2d(pts[front], reference, ("max", "min")) if front else 0.0
    k = knee_point(pts, ("max", "min")) if len(done) else None
    return ReportData(d, kind, results, trials, [str(done["trial_id"][i]) for i in front], hv,
                      reference, None if k is None else str(done["trial_id"][k]), metrics,
                      config, summary, quality_name, _kind_energy(d))


DEFAULT_QUALITY = "student_quick_acc"


def quality_key(metrics: list[dict]) -> str:
    """The score a run's quality is: `student_quick_acc` where any trial has it, else the
    first `student_*` score in recorded order (trials, then their scores); the default name
    where no trial has a student score (its quality is then NaN)."""
    names = [k for m in metrics for k in (m.get("scores") or {}) if k.startswith("student_")]
    return DEFAULT_QUALITY if DEFAULT_QUALITY in names or not names else names[0]


def om_key(quality_name: str) -> str | None:
    """The OM_perf key matching a quality score ('student_quick_acc' → 'quick_acc'); None for
    a quality that is not a student score."""
    prefix = "student_"
    return quality_name[len(prefix):] if quality_name.startswith(prefix) else None


def baseline_ids(metrics: list[dict]) -> set[str]:
    """A run directory's no-teacher baselines: the trials another trial's N* was taken
    against (`baseline_trial`: a tracked run names them), and `raydistill run`'s
    `<name>-baseline`."""
    named = {str(m["baseline_trial"]) for m in metrics if m.get("baseline_trial")}
    return named | {str(m["trial_id"]) for m in metrics
                    if str(m["trial_id"]).endswith("-baseline")}


def om_perf(metric: dict, quality_name: str) -> float | None:
    """A run trial's OM_perf for its quality score: the metrics' OM_perf under the matching
    key, else student ÷ teacher score where both are there; None where neither is."""
    key = om_key(quality_name)
    if key is None:
        return None
    om = (metric.get("OM_perf") or {}).get(key)
    if om is not None:
        return float(om)
    scores = metric.get("scores") or {}
    student, teacher = scores.get(quality_name), scores.get(f"teacher_{key}")
    return float(student) / float(teacher) if student is not None and teacher else None


def water_estimated(data: ReportData) -> bool:
    """Whether the results' water figures were estimated. Water is 0 L, not unknown, only
    where some factor was given: a water figure above 0, or in the footprint config an on-site
    WUE above 0, an explicit grid water intensity, or a region whose shipped row has one. No
    footprint config and only zeros: not estimated."""
    water = pd.to_numeric(data.results.get("water_l", pd.Series(dtype=float)), errors="coerce")
    if (water > 0).any():
        return True
    fp = data.config.get("footprint") or {}
    if not fp:
        return False
    if float(fp.get("wue_l_per_kwh") or 0.0) > 0 or fp.get("water_l_per_kwh") is not None:
        return True
    row = grid_table().get(str(fp.get("region", "WORLD")))
    return row is not None and row.water_l_per_kwh is not None


def embodied_or_nan(values: pd.Series) -> pd.Series:
    """Embodied CO2e with NaN where it was not estimated: it is 0 only where there were no
    GPU-hours or no per-GPU factor, and then it is unknown, not zero."""
    v = pd.to_numeric(values, errors="coerce")
    return v.where(v > 0)


def _kind_energy(run_dir: Path) -> dict:
    """Energy per trial × stage × device kind, from the ledger itself."""
    state, _ = load_ledger(run_dir)
    out: dict = {}
    for r in state.energy_rows():
        kinds = out.setdefault((r.trial_id, r.stage), {})
        kinds[r.device_kind] = kinds.get(r.device_kind, 0.0) + r.energy_j
    return out


def power_series(run_dir: str | Path, bin_s: float = 1.0) -> pd.DataFrame:
    """Mean power per node × device in `bin_s` bins: columns node_id, device_id, t_s, power_w
    (t_s relative to the first sample of the run, on the wall clock). Bins no sample measured
    are left out, not drawn as zero."""
    state, _ = load_ledger(run_dir)
    spans = {}
    for node in state.nodes():
        for device, _kind in state.devices(node):
            tl = state.timeline(node, device)
            if len(tl.s) and math.isfinite(tl.end_s):
                spans[(node, device)] = (tl, float(tl.s.a.min()), tl.end_s)
    if not spans:
        return pd.DataFrame(columns=["node_id", "device_id", "t_s", "power_w"])
    t0 = min(state.to_wall(node, lo) for (node, _), (_, lo, _) in spans.items())
    rows = []
    for (node, device), (tl, lo, hi) in spans.items():
        edges = np.arange(lo, hi + bin_s, bin_s)
        for a, b in itertools.pairwise(edges):
            seen_s = tl.between("measured", a, b) + tl.between("held", a, b)
            if seen_s <= 0:
                continue
            rows.append({"node_id": node[:12], "device_id": device,
                         "t_s": state.to_wall(node, (a + b) / 2) - t0,
                         "power_w": tl.between("energy", a, b) / seen_s})
    return pd.DataFrame(rows, columns=["node_id", "device_id", "t_s", "power_w"])


def stage_spans(results: pd.DataFrame) -> pd.DataFrame:
    """Stage windows relative to the run's start, for shading the power plot."""
    if results.empty:
        return results
    t0 = results["t_start_s"].min()
    out = results[["trial_id", "stage", "t_start_s", "t_end_s"]].copy()
    out["start_s"], out["end_s"] = out["t_start_s"] - t0, out["t_end_s"] - t0
    return out
