"""A node lost mid-trial, on a 3-node `ray.cluster_utils.Cluster`.

`raydistill sweep --address` drives a one-trial sweep on the cluster as a user would. While the
student trains, the test removes the node its rank-0 worker runs on. Then: the trial was retried
and finished, the lost attempt's training is kept as waste and the teacher data it had finished
stays the trial's (nothing recorded before the loss is gone: the removed node's windows are still
in the ledger), the ledger's total is setup + the trial + waste (nothing counted twice), and the
removed node's sampler was retired.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from ray.cluster_utils import Cluster

from raydistill.results import load_ledger

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

SPACE = f"""\
# raydistill sweep SPACE --out DIR --address ADDRESS   (written by test_node_loss)
base: {ROOT / "configs" / "tiny.yaml"}
set:
  data.splits.labelled: 100
  data.splits.train: 200
  data.splits.test: 40
  data.splits.dev: 20
  teacher.steps: 30
  student.steps: 300
  student.batch_size: 32
  generation.batch_size: 100
  evaluation.lm_eval: false
  evaluation.limit: 20
  evaluation.inference_prompts: 10
  evaluation.inference_min_s: 0.5
  sampling.source: simulate:{{sim}}
  sampling.hz: 10
  sampling.push_interval_s: 0.5
  baseline: false
params:
  distill.method: {{grid: [sft]}}
search: {{algorithm: grid, max_concurrent: 1}}
objective: {{quality: student_quick_acc, energy: marginal}}
scheduler: {{kind: fifo}}
"""


def _first_progress(out: Path) -> dict | None:
    """The first progress line past step 0 of the first student attempt, if written yet."""
    for path in sorted((out / "students").glob("*/progress.jsonl")):
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break
            if rec["step"] > 0 and rec.get("node_id"):
                return rec
    return None


@pytest.fixture(scope="module")
def lost_node_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nodeloss")
    space = tmp / "space.yaml"
    # every node reads a simulated CPU package: absolute RAPL counters that wrap, not a constant
    sim = space.parent / "node.json"
    sim.write_text(json.dumps({"rapl": [{"package": 0, "power_w": 25.0, "dram_w": 4.0}]}))
    space.write_text(SPACE.replace("{sim}", str(sim)))
    out = tmp / "sweep"
    # The head holds no CPU, so every task and worker lands on one of the two 2-CPU workers:
    # whichever node the student trains on can be removed, and the other can run the retry.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    proc = subprocess.Popen([sys.executable, "-m", "raydistill.cli", "sweep", str(space),
                             "--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    removed = None
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            rec = _first_progress(out)
            if rec is not None:
                removed = next((n for n in workers if n.node_id == rec["node_id"]), None)
                break
            time.sleep(0.2)
        if removed is not None:
            cluster.remove_node(removed)  # the node dies with the student's worker on it
        log_text, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        cluster.shutdown()
    return out, removed, proc.returncode, log_text


def test_the_trial_is_retried_and_finishes(lost_node_sweep):
    out, removed, code, log_text = lost_node_sweep
    assert removed is not None, "the student never trained on a removable worker node"
    assert code == 0, log_text[-3000:]
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 1
    trial = trials.iloc[0]
    assert trial["status"] == "finished"
    assert trial["attempts"] == 2
    assert trial["quality"] == trial["quality"]  # a real score, not NaN


def test_lost_work_is_waste_and_nothing_recorded_is_lost(lost_node_sweep):
    out, removed, _, _ = lost_node_sweep
    trials = pd.read_parquet(out / "trials.parquet")
    results = pd.read_parquet(out / "results.parquet")
    trial = trials.iloc[0]
    lost = results[(results["trial_id"].str.startswith(trial["trial_id"] + "~"))
                   & (results["trial_id"] != trial["ledger_trial"])]
    assert lost["energy_j"].sum() > 0
    # what the removed node measured before it died is still in the ledger, under the lost
    # attempt's student_training window on that node
    state, damage = load_ledger(out)
    assert damage == []
    on_removed = [r for r in state.energy_rows() if r.node_id == removed.node_id
                  and r.stage == "student_training" and r.trial_id in set(lost["trial_id"])]
    assert sum(r.energy_j for r in on_removed) > 0
    # the lost attempt built the synthetic data before the node died; the store kept it and
    # the retry reused it, so that energy stays the trial's; its lost training is waste
    by_stage = lost.groupby("stage")["energy_j"].sum()
    assert set(by_stage.index) == {"teacher_generation", "student_training"}
    assert trial["wasted_j"] == pytest.approx(by_stage["student_training"], rel=1e-9)
    final = results[results["trial_id"] == trial["ledger_trial"]]
    final_j = final.loc[~final["stage"].str.startswith("inference_"), "energy_j"].sum()
    assert trial["energy_marginal_j"] == pytest.approx(
        final_j + by_stage["teacher_generation"], rel=1e-9)
    measured = results.loc[~results["stage"].str.startswith("inference_"), "energy_j"].sum()
    setup = results.loc[results["trial_id"] == "setup", "energy_j"].sum()
    assert measured == pytest.approx(setup + trial["energy_marginal_j"] + trial["wasted_j"],
                                     rel=1e-9)
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["wasted_j"] == pytest.approx(trial["wasted_j"])


def test_the_removed_nodes_sampler_is_retired(lost_node_sweep):
    out, removed, _, _ = lost_node_sweep
    state, _ = load_ledger(out)
    by_node = {}
    for info in state.samplers.values():
        by_node.setdefault(info["node_id"], []).append(info)
    assert removed.node_id in by_node
    assert all(s["retired_s"] is not None for s in by_node[removed.node_id])
    # the samplers of the nodes that stayed were never retired (the fleet stops them at the end
    # of the sweep, which is not a retirement)
    survivors = [s for n, ss in by_node.items() if n != removed.node_id for s in ss]
    assert len(survivors) == 2 and all(s["retired_s"] is None for s in survivors)
