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

STATE_FILE = "track.json"
FOOTPRINT_KEYS = ("region", "pue", "gco2_per_kwh", "hourly_csv", "wue_l_per_kwh",
                  "water_l_per_kwh")


@dataclass
class ArtifactRecord:
    """An artifact a stage produced: what made it (`inputs`, hashed into `key`), where it lies,
    which trial and stage paid for it, and which trials used it (for amortization)."""

    kind: str
    path: str
    inputs: dict
    trial_id: str
    stage: str
    key: str = ""
    used_by: list[str] = field(default_factory=list)
    created_s: float = 0.0

    def __post_init__(self) -> None:
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
    run's metrics.json (its scores) when it is a `raydistill run` directory; else new."""
    path = run_dir / STATE_FILE
    if path.is_file():
        data = json.loads(path.read_text())
        state = TrackState(name=data["name"], footprint=data.get("footprint", {}),
                           scores=data.get("scores", {}), baselines=data.get("baselines", {}),
                           artifacts=[ArtifactRecord(**a) for a in data.get("artifacts", [])],
                           train=data.get("train", {}))
        if footprint is not None and footprint != state.footprint:
            raise ConfigError(f"{run_dir} was tracked with footprint {state.footprint}; "
                              "pass the same footprint (or none) to append to it")
        return state
    state = TrackState(name=name, footprint=dict(footprint or {}))
    metrics = run_dir / "metrics.json"
    if metrics.is_file():  # a native run: keep what its trials scored
        for m in json.loads(metrics.read_text()).get("trials", []):
            state.scores[m["trial_id"]] = dict(m.get("scores", {}))
    footprint_inputs(state.footprint)  # a bad key or region fails before any work
    return state


def save_state(run_dir: Path, state: TrackState) -> None:
    atomic_write_text(run_dir / STATE_FILE, json.dumps(asdict(state), indent=1, default=str))


def artifact_costs(table: pd.DataFrame, state: TrackState) -> list[dict]:
    """Each artifact with the energy of the stage that produced it (J, from the ledger)."""
    out = []
    for a in state.artifacts:
        mine = table[(table["trial_id"] == a.trial_id) & (table["stage"] == a.stage)]
        out.append({**asdict(a), "energy_j": float(mine["energy_j"].sum())})
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


def write_results(run_dir: Path, rows: list, state: TrackState, started_s: float,
                  error: str | None = None) -> pd.DataFrame:
    """results.parquet and metrics.json, as `raydistill run` writes them, for every trial the
    ledger holds; config.yaml too when the directory has none (a native run keeps its own)."""
    table = results_table(rows, state.footprint_inputs())
    costs = artifact_costs(table, state) if len(table) else []
    metrics = []
    for trial in dict.fromkeys(table["trial_id"]) if len(table) else []:
        if trial == "setup":
            continue
        baseline = state.baselines.get(trial)
        if baseline is not None and baseline not in set(table["trial_id"]):
            baseline = None  # named but never measured: no N*
        m = seed_metrics(table, trial, state.scores.get(trial, {}), baseline_trial=baseline)
        m["energy_amortized_j"] = amortized_j(table, trial, costs)
        metrics.append(m)
    used = {c["key"]: c for c in costs}
    artifacts = {t: {c["kind"]: {"key": c["key"], "reused": c["trial_id"] != t,
                                 "path": c["path"], "energy_j": c["energy_j"]}
                     for c in used.values() if t in c["used_by"]}
                 for t in (m["trial_id"] for m in metrics)}
    reused = [f"{t}:{k}" for t, kinds in artifacts.items() for k, a in kinds.items()
              if a["reused"]]
    atomic_write(run_dir / "results.parquet", lambda p: table.to_parquet(p, index=False))
    atomic_write_text(run_dir / "metrics.json", json.dumps(
        {"trials": metrics, "reused_artifacts": reused, "wall_s": time.time() - started_s,
         "train": state.train, "artifacts": artifacts, "artifact_costs": costs,
         "source": "raydistill.track", "windows_closed_by": closings_note(rows),
         **({"error": error} if error else {})},
        indent=1, default=str))
    if not (run_dir / "config.yaml").exists():
        import yaml

        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(
            {"name": state.name, "tracked": True, "footprint": {
                **asdict(FootprintInputs()), **state.footprint}}, sort_keys=False))
    return table


__all__ = ["STATE_FILE", "TEACHER_STAGES", "ArtifactRecord", "TrackState", "amortized_j",
           "load_state", "save_state", "write_results"]
