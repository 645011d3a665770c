"""The Ray layer on one local Ray: exact energies, a killed sampler, a killed ledger."""

import time

import pytest
import ray

from raydistill.cluster.fleet import SamplerFleet, sampler_name
from raydistill.cluster.ledger_actor import start_ledger
from raydistill.cluster.windows import StageWindow
from raydistill.config import SamplingConfig

pytestmark = pytest.mark.slow

CFG = SamplingConfig(source="constant:100", hz=20, push_interval_s=0.3, idle_s=0.2,
                     max_gap_s=0.8, push_timeout_s=2.0)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, namespace="unused")
    yield
    ray.shutdown()


@pytest.fixture
def session(local_ray, tmp_path, request):
    ns = f"test-{request.node.name[:30]}-{time.time_ns()}"
    cfg = SamplingConfig(**{**CFG.__dict__, "spool_dir": str(tmp_path / "spool")})
    ledger = start_ledger(tmp_path / "run", ns, max_gap_s=cfg.max_gap_s)
    fleet = SamplerFleet(cfg, ns)
    fleet.reconcile()
    yield ns, ledger, fleet
    fleet.stop()
    ray.kill(ledger, no_restart=True)


def rows_for(ledger, fleet, window_id):
    fleet.flush()
    return [r for r in ray.get(ledger.energy_rows.remote()) if r["window_id"] == window_id]


def test_constant_source_window_is_power_times_duration(session):
    ns, ledger, fleet = session
    with StageWindow(ns, "t0", "teacher_generation") as w:
        time.sleep(1.2)
        w.add_tokens(1234)
    (row,) = rows_for(ledger, fleet, w.window.window_id)
    assert row["energy_j"] == pytest.approx(100.0 * w.duration_s, rel=1e-6)
    assert row["tokens"] == 1234 and row["n_gaps"] == 0 and row["n_samples"] >= 15
    assert row["idle_j"] == pytest.approx(100.0 * w.duration_s, rel=1e-3)


def test_killed_sampler_gap_flagged_and_sampling_resumes(session):
    ns, ledger, fleet = session
    node = ray.get_runtime_context().get_node_id()
    with StageWindow(ns, "t1", "student_training") as w:
        time.sleep(0.5)
        ray.kill(ray.get_actor(sampler_name(node), namespace=ns), no_restart=True)
        time.sleep(1.5)  # longer than max_gap_s: nobody samples this node
        report = fleet.reconcile()
        assert report.started == [node] and report.retired == [node]
        time.sleep(0.8)
    (row,) = rows_for(ledger, fleet, w.window.window_id)
    assert row["n_gaps"] >= 1 and row["gap_s"] >= 1.0
    # the constant source's counter is continuous across samplers, so nothing is lost
    assert row["energy_j"] == pytest.approx(100.0 * w.duration_s, rel=1e-6)
    stats = ray.get(ledger.stats.remote())
    retired = [s for s in stats["samplers"].values() if s["retired_s"] is not None]
    assert len(retired) == 1


def test_killed_ledger_replays_log_and_nothing_is_counted_twice(session):
    ns, ledger, fleet = session
    with StageWindow(ns, "t2", "teacher_logit_caching") as w:
        time.sleep(0.6)
        before = ray.get(ledger.stats.remote())
        ray.kill(ledger, no_restart=False)  # Ray restarts it; it replays its log
        time.sleep(1.5)
    fleet.flush()
    after = ray.get(ledger.stats.remote())
    assert after["replayed_records"] > 0 and after["samples"] >= before["samples"]
    (row,) = rows_for(ledger, fleet, w.window.window_id)
    assert row["energy_j"] == pytest.approx(100.0 * w.duration_s, rel=1e-6)
    # every reading the samplers took reached the ledger exactly once
    sampler_stats = fleet.stop()  # stops polling and flushes: no reading after this
    final = ray.get(ledger.stats.remote())
    assert sum(s["pending"] for s in sampler_stats) == 0
    assert final["samples"] == sum(s["read"] for s in sampler_stats)


def test_sampler_killed_repeatedly_and_ledger_with_it(session):
    """Three rounds: kill the node's sampler, and in the last round the ledger at the same
    moment; reconcile brings a new sampler each time, the ledger replays its log. The window's
    energy stays exact and no batch is ingested twice."""
    ns, ledger, fleet = session
    node = ray.get_runtime_context().get_node_id()
    with StageWindow(ns, "t3", "student_training") as w:
        for round_ in range(3):
            time.sleep(0.7)
            ray.kill(ray.get_actor(sampler_name(node), namespace=ns), no_restart=True)
            if round_ == 2:
                ray.kill(ledger, no_restart=False)  # both at once
            time.sleep(0.3)
            assert fleet.reconcile().started == [node]
        time.sleep(1.0)
    (row,) = rows_for(ledger, fleet, w.window.window_id)
    assert row["energy_j"] == pytest.approx(100.0 * w.duration_s, rel=1e-6)
    stats = ray.get(ledger.stats.remote())
    assert stats["duplicates"] >= 0 and stats["replayed_records"] > 0
    retired = [s for s in stats["samplers"].values() if s["retired_s"] is not None]
    assert len(retired) >= 3


def test_two_runs_on_one_cluster_do_not_cross_talk(local_ray, tmp_path):
    """Two run directories → two namespaces, each with its own ledger and samplers: each ledger
    holds only its own run's windows, each exact."""
    from raydistill.cluster.runtime import namespace_for

    runs = []
    for name in ("sweep-a", "sweep-b"):
        ns = namespace_for(tmp_path / name)
        cfg = SamplingConfig(**{**CFG.__dict__, "spool_dir": str(tmp_path / name / "spool")})
        ledger = start_ledger(tmp_path / name, ns, max_gap_s=cfg.max_gap_s)
        fleet = SamplerFleet(cfg, ns)
        fleet.reconcile()
        runs.append((ns, ledger, fleet))
    assert runs[0][0] != runs[1][0]
    windows = []
    for i, (ns, _, _) in enumerate(runs):
        with StageWindow(ns, f"trial-{i}", "student_training") as w:
            time.sleep(0.6)
        windows.append(w)
    for (_, ledger, fleet), w, other in zip(runs, windows, reversed(windows), strict=True):
        fleet.flush()
        rows = ray.get(ledger.energy_rows.remote())
        assert {r["window_id"] for r in rows} == {w.window.window_id}
        assert other.window.window_id not in {r["window_id"] for r in rows}
        assert rows[0]["energy_j"] == pytest.approx(100.0 * w.duration_s, rel=1e-6)
        fleet.stop()
        ray.kill(ledger, no_restart=True)
