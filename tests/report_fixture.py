"""A small sweep directory made without Ray: a real ledger log (2 nodes, a GPU each, constant
power), the results table made from it, a trials table, pareto.csv and sweep.json."""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from raydistill.energy import Reading, SampleBatch, Window
from raydistill.energy.footprint import FootprintInputs
from raydistill.energy.ledger import LedgerState
from raydistill.energy.log import KIND_BATCH, KIND_EVENT, SegmentWriter
from raydistill.results import results_table

WATTS = {"n1": 100.0, "n2": 50.0}
# Of a window's 100 × n tokens, those its model generated (the rest were prompts), by stage.
GENERATED = {"teacher_generation": 25}
# trial -> (quality, [(stage, node, start, end)])
TRIALS = {
    "setup": (None, [("teacher_training", "n1", 0.0, 10.0)]),
    "t1": (0.9, [("teacher_generation", "n2", 10.0, 14.0), ("student_training", "n1", 14.0, 24.0),
                 ("evaluation", "n1", 24.0, 26.0)]),
    "t2": (0.6, [("student_training", "n1", 26.0, 30.0), ("evaluation", "n2", 30.0, 31.0)]),
    "t3": (0.5, [("student_training", "n2", 31.0, 41.0), ("evaluation", "n2", 41.0, 42.0)]),
}


def make_sweep_dir(root: Path) -> Path:
    d = root / "sweep"
    (d / "ledger").mkdir(parents=True)
    writer = SegmentWriter(d / "ledger", fsync=False)
    records = []
    for node, watts in WATTS.items():
        times = np.arange(0.0, 42.01, 0.1)
        readings = [Reading(f"GPU-{node}", "gpu", float(t), watts, None, "replay", "replayed")
                    for t in times]
        for i in range(0, len(readings), 50):
            batch = SampleBatch.from_readings(f"s-{node}", i // 50, node, readings[i:i + 50], None)
            records.append((KIND_BATCH, batch.to_bytes()))
    n = 0
    for trial, (_, stages) in TRIALS.items():
        for stage, node, start, end in stages:
            n += 1
            w = Window(f"w{n}", trial, stage, node, (f"GPU-{node}",), start, None, 100 * n, None)
            records.append((KIND_EVENT, LedgerState.open_event(w)))
            records.append((KIND_EVENT, LedgerState.close_event(
                f"w{n}", end, 100 * n, None, generated_tokens=GENERATED.get(stage, 0) * n)))
    writer.append(records)
    writer.close()
    state = LedgerState()
    for kind, payload in records:
        state.apply(kind, payload)
    table = results_table(state.energy_rows(), FootprintInputs(region="WORLD"))
    table.to_parquet(d / "results.parquet", index=False)
    rows = []
    for trial, (quality, _) in TRIALS.items():
        if quality is None:
            continue
        e = float(table.loc[table["trial_id"] == trial, "energy_j"].sum())
        rows.append({"trial_id": trial, "status": "finished", "quality": quality, "energy_j": e,
                     "energy_marginal_j": e, "wasted_j": 0.0, "t_end_s": 0.0,
                     "param.distill.method": {"t1": "logit", "t2": "sft", "t3": "sft"}[trial]})
    pd.DataFrame(rows).to_parquet(d / "trials.parquet", index=False)
    (d / "config.yaml").write_text("footprint: {region: WORLD, pue: 1.0}\n")
    (d / "sweep.json").write_text(json.dumps({"objective": {"quality": "student_quick_acc",
                                                            "energy": "full"}}))
    return d
