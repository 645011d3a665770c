"""What a tracked run (`raydistill.track`, `measure --stage`) knows besides the ledger, and the
run directory's result files made from it (pure: no Ray, no torch).

The ledger holds the windows and samples; `track.json` holds the rest: the run's name, each
trial's scores and baseline, and the artifacts stages produced and which trials used them. Both
are durable, so a run directory can be appended to by later commands and still be summarized as
one run: `results.parquet` and `metrics.json` are rewritten whole (write, then rename) from the
ledger and `track.json` every time a tracked run closes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from raydistill.distill.artifacts import artifact_key
from raydistill.energy.footprint import FootprintInputs
from raydistill.energy.lifetime import closings_note
from raydistill.errors import ConfigError
from raydistill.io import atomic_write, atomic_write_text
from raydistill.results import TEACHER_STAGES, results_table, seed_metrics
from raydistill.tracking.native import merge_top, merge_trial, read_native

STATE_FILE = "track.json"
FOOTPRINT_KEYS = ("region", "pue", "gco2_per_kwh", "hourly_csv", "wue_l_per_kwh",
                  "water_l_per_kwh")


@dataclass
class ArtifactRecord:
    """An artifact a stage produced: what made it (`inputs`, hashed into `key`), where it lies,
    which trial and stage paid for it, and which trials used it (for amortization).

    `share` weighs it against the other artifacts the same stage of the same trial produced:
    the stage's energy is split among them in proportion to their shares (equal by default), so
    a stage that made synthetic data and its one-pass logit cache is counted once, not twice."""

    kind: str
    path: str
    inputs: dict
    trial_id: str
    stage: str
    key: str = ""
    used_by: list[str] = field(default_factory=list)
    created_s: float = 0.0
    share: float = 1.0

    def __post_init__(self) -> None:
        if not (isinstance(self.share, int | float) and math.isfinite(self.share)
                and self.share > 0):
            raise ConfigError(f"artifact {self.kind!r}: share must be a number > 0 (its weight "
                              f"among the artifacts of stage {self.stage!r}), got {self.share!r}")
        self.share = float(self.share)
        self.key = self.key or artifact_key(self.kind, {"path": self.path, **self.inputs})
        if self.trial_id not in self.used_by:
            self.used_by.insert(0, self.trial_id)  # the trial that built it used it


@dataclass
class TrackState:
    name: str
    footprint: dict = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    baselines: dict[str, str] = field(default_factory=dict)  # distilled trial → baseline trial
    artifacts: list[ArtifactRecord] = field(default_factory=list)
    train: dict[str, dict] = field(default_factory=dict)  # trial → training figures
    # a `raydistill run` directory appended to: its metrics.json, footprint and per-stage
    # energy as the native run left them (see tracking/native.py); {} for a tracked directory
    native: dict = field(default_factory=dict)

    def footprint_inputs(self) -> FootprintInputs:
        return footprint_inputs(self.footprint)

    def add_scores(self, trial_id: str, scores: dict[str, float],
                   baseline: str | None = None) -> None:
        bad = [k for k, v in scores.items() if not isinstance(v, int | float)]
        if bad:
            raise ConfigError(f"scores must be numbers; {bad[0]!r} is "
                              f"{type(scores[bad[0]]).__name__}")
        self.scores.setdefault(trial_id, {}).update({k: float(v) for k, v in scores.items()})
        if baseline is not None:
            if baseline == trial_id:
                raise ConfigError(f"trial {trial_id!r} cannot be its own baseline")
            self.baselines[trial_id] = baseline

    def add_artifact(self, record: ArtifactRecord) -> ArtifactRecord:
        for old in self.artifacts:
            if old.key == record.key:  # the same artifact made again: keep the first cost
                return old
        self.artifacts.append(record)
        return record

    def use_artifact(self, key: str, trial_id: str) -> None:
        for a in self.artifacts:
            if a.key == key:
                if trial_id not in a.used_by:
                    a.used_by.append(trial_id)
                return
        known = ", ".join(f"{a.kind}:{a.key}" for a in self.artifacts) or "none yet"
        raise ConfigError(f"no artifact with key {key!r} in this run (known: {known})")


def footprint_inputs(footprint: dict) -> FootprintInputs:
    unknown = sorted(set(footprint) - set(FOOTPRINT_KEYS))
    if unknown:
        raise ConfigError(f"unknown footprint key {unknown[0]!r}; valid keys: "
                          f"{', '.join(FOOTPRINT_KEYS)}")
    return FootprintInputs(**footprint)


def load_state(run_dir: Path, name: str, footprint: dict | None) -> TrackState:
    """The run's state: from track.json when the directory was tracked before; from a native
    run's metrics.json and config.yaml (scores, baselines, training figures, footprint, its
    metrics kept whole for `write_results`) when it is a `raydistill run` directory; else new."""
    path = run_dir / STATE_FILE
    if path.is_file():
        data = json.loads(path.read_text())
        state = TrackState(name=data["name"], footprint=data.get("footprint", {}),
                           scores=data.get("scores", {}), baselines=data.get("baselines", {}),
                           artifacts=[ArtifactRecord(**a) for a in data.get("artifacts", [])],
                           train=data.get("train", {}), native=data.get("native", {}))
        _same_footprint(run_dir, footprint, state.footprint)
        return state
    state = TrackState(name=name, footprint=dict(footprint or {}))
    native = read_native(run_dir, FOOTPRINT_KEYS)
    if native is not None:  # a native run: keep its footprint, scores, baselines and figures
        _same_footprint(run_dir, footprint, native.footprint)
        state.footprint = dict(native.footprint)
        state.native = {"metrics": native.metrics, "energy_j": native.energy_j}
        state.train = dict(native.metrics.get("train", {}))
        for m in native.metrics.get("trials", []):
            state.scores[m["trial_id"]] = dict(m.get("scores", {}))
            if m.get("baseline_trial"):
                state.baselines[m["trial_id"]] = m["baseline_trial"]
    footprint_inputs(state.footprint)  # a bad key or region fails before any work
    return state


def _same_footprint(run_dir: Path, given: dict | None, kept: dict) -> None:
    """Appending with another footprint would price the directory's stages two ways."""
    if given is not None and footprint_inputs(given) != footprint_inputs(kept):
        raise ConfigError(f"{run_dir} was measured with footprint {kept}; pass the same "
                          "footprint (or none) to append to it")


def save_state(run_dir: Path, state: TrackState) -> None:
    atomic_write_text(run_dir / STATE_FILE, json.dumps(asdict(state), indent=1, default=str))


def artifact_costs(table: pd.DataFrame, state: TrackState) -> list[dict]:
    """Each artifact with its part of the energy of the stage that produced it (J, from the
    ledger): the stage's energy split among the artifacts that stage of that trial produced, in
    proportion to their shares, so the artifacts' costs sum to the stage's energy once.
    `stage_energy_j` is the whole stage's figure."""
    weights: dict[tuple[str, str], float] = {}
    for a in state.artifacts:
        weights[(a.trial_id, a.stage)] = weights.get((a.trial_id, a.stage), 0.0) + a.share
    out = []
    for a in state.artifacts:
        mine = table[(table["trial_id"] == a.trial_id) & (table["stage"] == a.stage)]
        stage_j = float(mine["energy_j"].sum())
        out.append({**asdict(a), "energy_j": stage_j * a.share / weights[(a.trial_id, a.stage)],
                    "stage_energy_j": stage_j})
    return out


def amortized_j(table: pd.DataFrame, trial_id: str, costs: list[dict]) -> float:
    """The trial's energy with each artifact it used charged as cost ÷ trials that used it:
    its own stages that produced no artifact, plus its shares."""
    produced = {(c["trial_id"], c["stage"]) for c in costs}
    mine = table[(table["trial_id"] == trial_id) & ~table["stage"].str.startswith("inference_")]
    own = float(sum(r.energy_j for r in mine.itertuples()
                    if (trial_id, r.stage) not in produced))
    shares = sum(c["energy_j"] / len(c["used_by"]) for c in costs if trial_id in c["used_by"])
    return own + shares


def _teacher_of(state: TrackState, trial: str) -> dict:
    """A baseline's teacher: the distilled trial it is the baseline of (its EPT_teacher and
    teacher scores), as `raydistill run` computes the baseline's metrics."""
    for distilled, baseline in state.baselines.items():
        if baseline == trial:
            return {"teacher_trial": distilled, "teacher_scores": state.scores.get(distilled)}
    return {}


def write_results(run_dir: Path, rows: list, state: TrackState, started_s: float,
                  error: str | None = None) -> pd.DataFrame:
    """results.parquet and metrics.json, as `raydistill run` writes them, for every trial the
    ledger holds; config.yaml too when the directory has none (a native run keeps its own, and
    its metrics.json figures: see tracking/native.py)."""
    table = results_table(rows, state.footprint_inputs())
    costs = artifact_costs(table, state) if len(table) else []
    metrics = []
    for trial in dict.fromkeys(table["trial_id"]) if len(table) else []:
        if trial == "setup":
            continue
        baseline = state.baselines.get(trial)
        if baseline is not None and baseline not in set(table["trial_id"]):
            baseline = None  # named but never measured: no N*
        m = seed_metrics(table, trial, state.scores.get(trial, {}), baseline_trial=baseline,
                         **_teacher_of(state, trial))
        m["energy_amortized_j"] = amortized_j(table, trial, costs)
        metrics.append(merge_trial(state.native, table, m) if state.native else m)
    used = {c["key"]: c for c in costs}
    artifacts = {t: {c["kind"]: {"key": c["key"], "reused": c["trial_id"] != t,
                                 "path": c["path"], "energy_j": c["energy_j"]}
                     for c in used.values() if t in c["used_by"]}
                 for t in (m["trial_id"] for m in metrics)}
    reused = [f"{t}:{k}" for t, kinds in artifacts.items() for k, a in kinds.items()
              if a["reused"]]
    top = {"trials": metrics, "reused_artifacts": reused, "wall_s": time.time() - started_s,
           "train": state.train, "artifacts": artifacts, "artifact_costs": costs,
           "source": "raydistill.track", "windows_closed_by": closings_note(rows),
           **({"error": error} if error else {})}
    if state.native:
        top = merge_top(state.native, top, metrics)
    atomic_write(run_dir / "results.parquet", lambda p: table.to_parquet(p, index=False))
    atomic_write_text(run_dir / "metrics.json", json.dumps(top, indent=1, default=str))
    if not (run_dir / "config.yaml").exists():
        import yaml

        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(
            {"name": state.name, "tracked": True, "footprint": {
                **asdict(FootprintInputs()), **state.footprint}}, sort_keys=False))
    return table


__all__ = ["STATE_FILE", "TEACHER_STAGES", "ArtifactRecord", "TrackState", "amortized_j",
           "load_state", "save_state", "write_results"]
