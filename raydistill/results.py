"""Tables from ledger rows: the stage × device energy table and per-stage totals (pure)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from raydistill.energy.ledger import EnergyRow, LedgerState
from raydistill.energy.log import read_log

ENERGY_COLUMNS = [f for f in EnergyRow.__dataclass_fields__]


def energy_frame(rows: Iterable[EnergyRow | dict]) -> pd.DataFrame:
    records = [r if isinstance(r, dict) else r.__dict__ for r in rows]
    return pd.DataFrame.from_records(records, columns=ENERGY_COLUMNS)


def stage_device_table(df: pd.DataFrame) -> pd.DataFrame:
    """Energy per trial × stage × node × device, with the method that produced each figure."""
    if df.empty:
        return df
    keys = ["trial_id", "stage", "node_id", "device_id"]
    g = df.groupby(keys, sort=False)
    out = g.agg(
        energy_j=("energy_j", "sum"),
        above_idle_j=("above_idle_j", "sum"),
        duration_s=("duration_s", "sum"),
        tokens=("tokens", "sum"),
        method=("method", lambda s: "+".join(sorted(set("+".join(s).split("+"))))),
        shared=("shared", "any"),
        gap_s=("gap_s", "sum"),
        samples=("n_samples", "sum"),
    ).reset_index()
    out["node_id"] = out["node_id"].str[:12]
    return out


def stage_totals(df: pd.DataFrame) -> pd.DataFrame:
    """Energy per trial × stage over all nodes and devices; windows of a stage on several nodes
    overlap in time, so the stage's duration is the span from first start to last end."""
    if df.empty:
        return df
    g = df.groupby(["trial_id", "stage"], sort=False)
    out = g.agg(
        energy_j=("energy_j", "sum"),
        above_idle_j=("above_idle_j", "sum"),
        t_start_s=("t_start_s", "min"),
        t_end_s=("t_end_s", "max"),
        nodes=("node_id", "nunique"),
        devices=("device_id", "nunique"),
        method=("method", lambda s: "+".join(sorted(set("+".join(s).split("+"))))),
        gap_s=("gap_s", "sum"),
    ).reset_index()
    tokens = df.drop_duplicates("window_id").groupby(["trial_id", "stage"], sort=False)["tokens"]
    out = out.merge(tokens.sum().reset_index(), on=["trial_id", "stage"])
    out["duration_s"] = out["t_end_s"] - out["t_start_s"]
    out["mean_power_w"] = out["energy_j"] / out["duration_s"].where(out["duration_s"] > 0)
    out["j_per_token"] = out["energy_j"] / out["tokens"].where(out["tokens"] > 0)
    return out


def load_ledger(run_dir: str | Path, max_gap_s: float = 2.0) -> tuple[LedgerState, list[str]]:
    """Rebuild a run's ledger state from its log on disk (no Ray needed)."""
    state = LedgerState(max_gap_s=max_gap_s)
    result = read_log(Path(run_dir) / "ledger")
    for kind, payload in result.records:
        state.apply(kind, payload)
    return state, [str(d) for d in result.damage]


def format_table(df: pd.DataFrame, floats: str = "{:,.2f}") -> str:
    if df.empty:
        return "(no windows)"
    shown = df.copy()
    for col in shown.columns:
        if pd.api.types.is_float_dtype(shown[col]):
            shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else floats.format(v))
    return shown.to_string(index=False)
