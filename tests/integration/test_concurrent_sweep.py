"""Four trials at once on a 2-node `cluster_utils` cluster, sharing the nodes' CPU packages
(simulated absolute RAPL counters that step, plus a GPU no CPU trial holds), under a sweep
budget whose stated prior lets only three of them hold reservations at the same time.

Checks: the admissions never promised more than the budget (spent + reserved + forecast ≤
total at each one), the fourth trial was refused while three ran and spent nothing, each trial
is charged only its share of the shared packages (per-trial queries add up to the ledger),
and the trials' figures plus setup plus waste are the ledger's total.
"""

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
import yaml
from ray.cluster_utils import Cluster

from raydistill.results import load_ledger
from raydistill.search.sweep import run_sweep
from tests.shared_ray import spent

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
PRIOR_KWH, TOTAL_KWH = 0.01, 0.035  # 36 kJ a trial (stated), 126 kJ the sweep: three fit


@pytest.fixture(scope="module")
def concurrent_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("concurrent")
    sim, now = tmp / "node.json", time.time()
    sim.write_text(json.dumps({
        "gpus": [{"uuid": "GPU-unheld", "power_w": 250.0}],
        "rapl": [{"package": 0, "power_w": {"square": {
            "period_s": 3.0, "on_w": 90.0, "off_w": 40.0, "start_s": now,
            "until_s": now + 1800.0}}}]}))  # real time: the trace's times are epoch seconds
    smoke = yaml.safe_load((ROOT / "search_spaces" / "smoke.yaml").read_text())
    smoke["base"] = str(ROOT / "configs" / "tiny.yaml")
    smoke["set"].update({"sampling.source": f"simulate:{sim}", "sampling.hz": 10,
                         "sampling.push_interval_s": 0.5, "sampling.idle_s": 0.0,
                         "teacher.steps": 5, "student.steps": 12,
                         "data.splits.train": 150, "data.splits.test": 40,
                         "evaluation.limit": 20, "evaluation.inference_prompts": 10})
    # the concurrency under test, not learning: four seconds-scale KD trials
    smoke["params"] = {"distill.method": {"grid": ["sft", "logit"]},
                       "distill.temperature": {"grid": [1.0, 2.0]}}
    smoke["search"] = {"algorithm": "grid", "max_concurrent": 4}
    smoke["scheduler"] = {"kind": "fifo"}
    smoke["budget"] = {"total_kwh": TOTAL_KWH, "prior_trial_kwh": PRIOR_KWH}
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump(smoke))
    # 2 nodes of 4 logical CPUs: three running trials cannot each have a node to themselves,
    # and a node has room for two trials' stages at once
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4})
    cluster.add_node(num_cpus=4)
    cluster.wait_for_nodes()
    try:
        with spent("concurrent sweep on a 2-node cluster"):
            summary = run_sweep(space, tmp / "out", address=cluster.address)
    finally:
        ray.shutdown()
        cluster.shutdown()
    return tmp / "out", summary


def test_admissions_never_promise_more_than_the_budget(concurrent_sweep):
    out, summary = concurrent_sweep
    total_j = TOTAL_KWH * 3.6e6
    admissions = [r for r in summary["forecasts"].values() if "admitted" in r]
    assert len(admissions) == 4
    for rec in admissions:
        assert rec["source"] == "prior" and rec["before"] == pytest.approx(PRIOR_KWH * 3.6e6)
        if rec["admitted"]:
            assert rec["spent_at_admission_j"] + rec["reserved_at_admission_j"] \
                + rec["before"] <= total_j
    # the refused one asked while three trials held reservations (concurrency was real)
    (refused,) = [r for r in admissions if not r["admitted"]]
    assert refused["reserved_at_admission_j"] > 2 * PRIOR_KWH * 3.6e6 * 0.5
    trials = pd.read_parquet(out / "trials.parquet")
    assert (trials["status"] == "stopped_by_budget").sum() == 1
    assert (trials["status"] == "finished").sum() == 3
    stopped = trials[trials["status"] == "stopped_by_budget"]
    assert (stopped["energy_marginal_j"] == 0).all()  # refused before it spent anything


def test_trials_share_nodes_and_add_up_to_the_ledger(concurrent_sweep):
    out, _ = concurrent_sweep
    state, damage = load_ledger(out)
    assert damage == []
    rows = [r for r in state.energy_rows() if not r.stage.startswith("inference_")]
    trial_ids = sorted({r.trial_id for r in rows} - {"setup"})
    assert len(trial_ids) == 3
    # the trials ran at the same time on shared CPU packages: split by CPU time, never
    # charged twice, and each trial's per-trial query is exactly its part of the whole
    assert any(r.shared for r in rows if r.trial_id != "setup" and r.device_kind == "cpu")
    for t in trial_ids:
        mine = sum(r.energy_j for r in state.trial_rows(t) if not r.stage.startswith("inf"))
        assert mine == pytest.approx(sum(r.energy_j for r in rows if r.trial_id == t))
    # nobody held the simulated GPU: its energy is in no trial's figure
    assert not any(r.device_id == "GPU-unheld" for r in rows if r.trial_id != "setup")
    results = pd.read_parquet(out / "results.parquet")
    trials = pd.read_parquet(out / "trials.parquet")
    work = results[~results["stage"].str.startswith("inference_")]
    setup = work.loc[work["trial_id"] == "setup", "energy_j"].sum()
    finished = trials.loc[trials["status"] == "finished", "energy_marginal_j"].sum()
    assert work["energy_j"].sum() == pytest.approx(
        setup + finished + trials["wasted_j"].sum(), rel=1e-9)
    assert work["energy_j"].sum() == pytest.approx(sum(r.energy_j for r in rows), rel=1e-9)
