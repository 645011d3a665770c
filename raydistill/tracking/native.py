"""A `raydistill run` directory that tracked stages are appended to keeps every figure of the
native run (pure: no Ray, no torch).

The native run's metrics.json holds what the tracked state cannot recompute (N* against its
baseline, the baseline's OM_perf against the teacher trial's scores, training figures, the
teacher artifacts each trial used), and its config.yaml the footprint (region, PUE, ...) its
table was made with. Both are read once, when a stage is first appended, and kept in
track.json: a native trial whose stages did not change keeps its metrics entry as it was; one
that gained a stage is recomputed, native fields the recomputation leaves empty kept.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

APPENDED_SOURCE = "raydistill run, appended by raydistill.track"


@dataclass(frozen=True)
class NativeRun:
    metrics: dict  # the native metrics.json, whole
    footprint: dict  # config.yaml's footprint section (keys of FOOTPRINT_KEYS)
    energy_j: dict[str, dict[str, float]]  # trial → stage → J, from the native results.parquet


def read_native(run_dir: Path, footprint_keys: tuple[str, ...]) -> NativeRun | None:
    """The native run in `run_dir`, or None where it holds no metrics.json."""
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        return None
    footprint: dict = {}
    config = run_dir / "config.yaml"
    if config.is_file():
        import yaml

        section = (yaml.safe_load(config.read_text()) or {}).get("footprint") or {}
        footprint = {k: v for k, v in section.items() if k in footprint_keys}
    energy: dict[str, dict[str, float]] = {}
    results = run_dir / "results.parquet"
    if results.is_file():
        for r in pd.read_parquet(results, columns=["trial_id", "stage", "energy_j"]).itertuples():
            energy.setdefault(str(r.trial_id), {})[str(r.stage)] = float(r.energy_j)
    return NativeRun(json.loads(metrics_path.read_text()), footprint, energy)


def _unchanged(table: pd.DataFrame, trial: str, energy_j: dict[str, float]) -> bool:
    mine = table[table["trial_id"] == trial]
    now = dict(zip(mine["stage"], mine["energy_j"], strict=True))
    return set(now) == set(energy_j) and all(
        math.isclose(float(now[s]), energy_j[s], rel_tol=1e-9, abs_tol=1e-9) for s in now)


def merge_trial(native: dict, table: pd.DataFrame, computed: dict) -> dict:
    """A trial's metrics entry: the native one where its stages are as the native run left
    them (plus the figures only tracking adds); else the recomputed one over the native one."""
    trial = computed["trial_id"]
    entry = next((m for m in native.get("metrics", {}).get("trials", [])
                  if m.get("trial_id") == trial), None)
    if entry is None:
        return computed
    if _unchanged(table, trial, native.get("energy_j", {}).get(trial, {})):
        return {**computed, **entry}
    return {**entry, **{k: v for k, v in computed.items()
                        if k not in entry or (v is not None and v != {})}}


def merge_top(native: dict, tracked: dict, trials: list[dict]) -> dict:
    """metrics.json of an appended directory: the native top level kept (its wall_s too: the
    tracked sessions' own is `tracked_wall_s`), the tracked artifacts and reuses added."""
    old = native.get("metrics", {})
    listed = {m["trial_id"] for m in trials}
    trials = trials + [m for m in old.get("trials", []) if m.get("trial_id") not in listed]
    reused = list(dict.fromkeys([*old.get("reused_artifacts", []),
                                 *tracked.get("reused_artifacts", [])]))
    artifacts = {t: {**old.get("artifacts", {}).get(t, {}),
                     **tracked.get("artifacts", {}).get(t, {})}
                 for t in dict.fromkeys([*old.get("artifacts", {}),
                                         *tracked.get("artifacts", {})])}
    top = {**old, **tracked, "trials": trials, "reused_artifacts": reused,
           "artifacts": artifacts, "source": APPENDED_SOURCE,
           "tracked_wall_s": tracked.get("wall_s")}
    if "wall_s" in old:
        top["wall_s"] = old["wall_s"]
    return top
