"""Several Ray nodes on one machine: one sampler per alive node, kept so by reconcile."""

import json
import time

import pytest
import ray
from ray.cluster_utils import Cluster

from raydistill.cluster.fleet import SamplerFleet
from raydistill.cluster.ledger_actor import start_ledger
from raydistill.config import SamplingConfig

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, namespace="mn")
    yield c
    ray.shutdown()
    c.shutdown()


def test_one_sampler_per_node_as_nodes_join_and_leave(cluster, tmp_path):
    sim = tmp_path / "node.json"  # a simulated node: absolute GPU and RAPL counters
    sim.write_text(json.dumps({"gpus": [{"uuid": "GPU-mn-0", "power_w": 300.0}],
                               "rapl": [{"package": 0, "power_w": 50.0}]}))
    cfg = SamplingConfig(source=f"simulate:{sim}", hz=10, push_interval_s=0.5, idle_s=0.0,
                         spool_dir=str(tmp_path / "spool"))
    ledger = start_ledger(tmp_path / "run", "mn")
    fleet = SamplerFleet(cfg, "mn")
    assert len(fleet.reconcile().started) == 3 and len(fleet.samplers) == 3
    assert fleet.reconcile().started == []  # idempotent

    extra = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    report = fleet.reconcile()
    assert len(report.started) == 1 and len(fleet.samplers) == 4

    for node_id, handle in fleet.samplers.items():  # each sampler runs on its own node
        assert ray.get(handle.stats.remote())["running_on"] == node_id

    time.sleep(1.5)  # a few push intervals, so the new node's samples reach the ledger
    cluster.remove_node(extra)
    deadline = time.time() + 30
    while time.time() < deadline:
        report = fleet.reconcile()
        if report.retired:
            break
        time.sleep(1)
    assert len(report.retired) == 1 and len(fleet.samplers) == 3
    fleet.flush()
    stats = ray.get(ledger.stats.remote())
    assert len(stats["latest_t_s"]) == 4  # samples arrived from all four nodes
    retired = [s for s in stats["samplers"].values() if s["retired_s"] is not None]
    assert len(retired) == 1
    fleet.stop()
    ray.kill(ledger, no_restart=True)


def test_teacher_generation_spreads_over_every_node(cluster, tmp_path):
    """Three 1-CPU nodes, three generation actors: each node runs one, and the ledger shows
    teacher_generation energy on every node."""
    from raydistill.cluster.runtime import Session
    from raydistill.config import load_experiment
    from raydistill.distill.pipeline import Pipeline

    cfg = load_experiment("configs/tiny.yaml", [
        "data.splits.labelled=100", "data.splits.train=300", "data.splits.test=50",
        "data.splits.dev=20", "teacher.steps=10",
        "teacher.batch_size=32", "generation.batch_size=25", "generation.num_actors=3",
        "sampling.source=constant:30", "sampling.hz=10", "sampling.push_interval_s=0.5",
        "sampling.idle_s=0"])
    session = Session(tmp_path / "run", "mn", cfg.sampling).start(reconcile_interval_s=0)
    try:
        pipe = Pipeline(cfg, tmp_path / "run", session, tmp_path / "artifacts")
        data = pipe.data()
        teacher = pipe.teacher_model(data)
        pipe.synthetic_data(teacher, data, "t-spread")
        rows = [r for r in session.energy_rows() if r["stage"] == "teacher_generation"]
    finally:
        session.close()
    nodes = {r["node_id"] for r in rows}
    assert len(nodes) == 3, f"generation ran on {len(nodes)} node(s)"
    per_node = {n: sum(r["energy_j"] for r in rows if r["node_id"] == n) for n in nodes}
    assert all(e > 0 for e in per_node.values())
