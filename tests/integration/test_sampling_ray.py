"""The Ray layer on one local Ray, sampling a simulated node as it samples hardware: exact
energies against the true integral, a killed sampler, a killed ledger, a slow ledger, a sampler
that cannot start, a node without the source the spec names."""

import asyncio
import json
import time

import pytest
import ray

from raydistill.cluster.fleet import SamplerFleet, sampler_name
from raydistill.cluster.ledger_actor import start_ledger
from raydistill.cluster.windows import StageWindow
from raydistill.config import SamplingConfig
from raydistill.energy.simulate import load_node
from raydistill.errors import SourceUnavailable

pytestmark = [pytest.mark.slow, pytest.mark.shares_ray]

# The node the samplers read is simulated (raydistill.energy.simulate, `simulate:PATH`): an
# H100-like GPU with an absolute counter refreshed every 20 ms and 1 s-averaged power, on a 1 Hz
# on/off load, and a RAPL package with DRAM, all in real time, so every figure is checked
# against the true integral of the traces over the window.
NOW = time.time()
SIM = {"gpus": [{"uuid": "GPU-sim-ray-0000", "refresh_s": 0.02, "power_w": {"square": {
           "period_s": 1.0, "on_w": 400.0, "off_w": 100.0, "start_s": NOW - 10,
           "until_s": NOW + 3 * 3600}}}],
       "rapl": [{"package": 0, "power_w": 150.0, "dram_w": 20.0}]}
P_MAX_W = 400.0
# counter refresh at each edge, and the few ms between a window's wall and monotonic stamps
TOL_S = 2 * 0.02 + 0.03


@pytest.fixture(scope="module")
def sim_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("sim") / "node.json"
    path.write_text(json.dumps(SIM))
    return path


@pytest.fixture(scope="module")
def CFG(sim_path):
    return SamplingConfig(source=f"simulate:{sim_path}", hz=20, push_interval_s=0.3,
                          idle_s=0.2, max_gap_s=0.8, push_timeout_s=2.0)


@pytest.fixture(scope="module")
def local_ray(shared_ray):
    yield  # the session's Ray (tests/shared_ray.py), left up for the next module


@pytest.fixture
def session(local_ray, tmp_path, request, CFG):
    ns = f"test-{request.node.name[:30]}-{time.time_ns()}"
    cfg = SamplingConfig(**{**CFG.__dict__, "spool_dir": str(tmp_path / "spool")})
    ledger = start_ledger(tmp_path / "run", ns, max_gap_s=cfg.max_gap_s)
    fleet = SamplerFleet(cfg, ns)
    fleet.reconcile()
    yield ns, ledger, fleet
    fleet.stop()
    ray.kill(ledger, no_restart=True)


def exact(rows, w, sim_path):
    """Every device's figure is the true energy over the window, all of it measured."""
    node = load_node(sim_path)
    assert {r["device_id"] for r in rows} == {
        "GPU-sim-ray-0000", "cpu:package-0", "dram:package-0"}
    for row in rows:
        truth = node.truth_j(row["device_id"], w.window.t_start_s, w.t_end_s)
        assert row["energy_j"] == pytest.approx(truth, abs=P_MAX_W * TOL_S), row["device_id"]
        assert row["unmeasured_s"] == 0.0 and row["method"] == "counter"
        assert row["duration_s"] == pytest.approx(w.duration_s, abs=0.05)


def rows_for(ledger, fleet, window_id):
    fleet.flush()
    return [r for r in ray.get(ledger.energy_rows.remote()) if r["window_id"] == window_id]


def test_window_energy_is_the_true_integral_of_every_device(session, sim_path):
    ns, ledger, fleet = session
    with StageWindow(ns, "t0", "teacher_generation") as w:
        time.sleep(1.2)
        w.add_tokens(1234)
    rows = rows_for(ledger, fleet, w.window.window_id)
    exact(rows, w, sim_path)
    pkg = next(r for r in rows if r["device_id"] == "cpu:package-0")
    assert pkg["tokens"] == 1234 and pkg["n_gaps"] == 0 and pkg["n_samples"] >= 15
    assert pkg["idle_j"] == pytest.approx(150.0 * pkg["duration_s"], rel=1e-3)


def test_killed_sampler_is_replaced_and_its_hole_bridged_by_the_counter(session, sim_path):
    """Nobody samples the node for longer than max_gap_s; the replacement's first counter
    reading and the dead sampler's last one are readings of one absolute counter, so they
    measure the hole between them: nothing is lost and nothing is left unmeasured."""
    ns, ledger, fleet = session
    node = ray.get_runtime_context().get_node_id()
    with StageWindow(ns, "t1", "student_training") as w:
        time.sleep(0.5)
        ray.kill(ray.get_actor(sampler_name(node), namespace=ns), no_restart=True)
        time.sleep(1.5)  # longer than max_gap_s: nobody samples this node
        report = fleet.reconcile()
        assert report.started == [node] and report.retired == [node]
        replaced_at = time.time()
        time.sleep(0.8)
    exact(rows_for(ledger, fleet, w.window.window_id), w, sim_path)
    stats = ray.get(ledger.stats.remote())
    assert stats["latest_t_s"][node] > replaced_at + 0.5  # the new sampler's samples arrived
    retired = [s for s in stats["samplers"].values() if s["retired_s"] is not None]
    assert len(retired) == 1


def test_killed_ledger_replays_log_and_nothing_is_counted_twice(session, sim_path):
    ns, ledger, fleet = session
    with StageWindow(ns, "t2", "teacher_logit_caching") as w:
        time.sleep(0.6)
        before = ray.get(ledger.stats.remote())
        ray.kill(ledger, no_restart=False)  # Ray restarts it; it replays its log
        time.sleep(1.5)
    fleet.flush()
    after = ray.get(ledger.stats.remote())
    assert after["replayed_records"] > 0 and after["samples"] >= before["samples"]
    exact(rows_for(ledger, fleet, w.window.window_id), w, sim_path)
    # every reading the samplers took reached the ledger exactly once
    sampler_stats = fleet.stop()  # stops polling and flushes: no reading after this
    final = ray.get(ledger.stats.remote())
    assert sum(s["pending"] for s in sampler_stats) == 0
    assert final["samples"] == sum(s["read"] for s in sampler_stats)


def test_sampler_killed_repeatedly_and_ledger_with_it(session, sim_path):
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
    exact(rows_for(ledger, fleet, w.window.window_id), w, sim_path)
    stats = ray.get(ledger.stats.remote())
    assert stats["duplicates"] >= 0 and stats["replayed_records"] > 0
    retired = [s for s in stats["samplers"].values() if s["retired_s"] is not None]
    assert len(retired) >= 3


def test_two_runs_on_one_cluster_do_not_cross_talk(local_ray, tmp_path, CFG, sim_path):
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
        exact(rows, w, sim_path)
        fleet.stop()
        ray.kill(ledger, no_restart=True)


@ray.remote(num_cpus=0)
class SlowLedger:
    """Records events at once; takes ingests forever (a ledger stuck on a slow disk)."""

    async def record_event(self, event: dict) -> None:
        return None

    async def ingest(self, batches: list) -> int:
        await asyncio.sleep(60)
        return 0


def test_ping_is_answered_while_a_flush_waits_on_a_slow_ledger(local_ray, tmp_path, CFG):
    ns = f"test-slow-{time.time_ns()}"
    slow = SlowLedger.options(name="slow-ledger", namespace=ns).remote()
    cfg = SamplingConfig(**{**CFG.__dict__, "spool_dir": str(tmp_path / "spool")})
    fleet = SamplerFleet(cfg, ns, ledger_name="slow-ledger")
    try:
        (node,) = fleet.reconcile().started
        handle = fleet.samplers[node]
        flushing = handle.flush.remote()
        time.sleep(0.3)
        t0 = time.monotonic()
        assert ray.get(handle.ping.remote(), timeout=1.0) == fleet.sampler_ids[node]
        assert time.monotonic() - t0 < 1.0
        assert ray.wait([flushing], timeout=0)[0] == []  # the flush still waits on the ledger
        assert fleet.reconcile().started == []  # so reconcile sees a live sampler
        assert ray.get(flushing, timeout=30) is False
    finally:
        fleet.stop()
        ray.kill(slow, no_restart=True)


def test_a_sampler_that_cannot_start_does_not_fail_reconcile(local_ray, tmp_path, CFG):
    ns = f"test-nostart-{time.time_ns()}"
    cfg = SamplingConfig(**{**CFG.__dict__, "spool_dir": str(tmp_path / "spool")})
    fleet = SamplerFleet(cfg, ns, ledger_name="no-such-ledger")  # its constructor raises
    report = fleet.reconcile()
    node = ray.get_runtime_context().get_node_id()
    assert report.failed == [node] and report.started == [] and fleet.samplers == {}
    assert fleet.failed[node]["attempts"] == 1 and "no-such-ledger" in fleet.failed[node]["why"]
    assert fleet.reconcile().failed == []  # backing off: no new actor every reconcile
    deadline = time.time() + 10
    while time.time() < deadline:  # the failed actor was killed, its name is free
        try:
            ray.get_actor(sampler_name(node), namespace=ns)
        except ValueError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the failed sampler actor is still there")
    fleet.stop()


def test_nvml_on_a_node_without_a_gpu_measures_the_cpu(local_ray, tmp_path, CFG):
    from raydistill.energy.nvml import NvmlSource

    try:
        NvmlSource().close()
        pytest.skip("this machine has NVML")
    except SourceUnavailable:
        pass
    ns = f"test-nvml-{time.time_ns()}"
    cfg = SamplingConfig(**{**CFG.__dict__, "source": "nvml", "idle_s": 0.0,
                            "spool_dir": str(tmp_path / "spool")})
    ledger = start_ledger(tmp_path / "run", ns, max_gap_s=cfg.max_gap_s)
    fleet = SamplerFleet(cfg, ns)
    try:
        (node,) = fleet.reconcile().started
        stats = ray.get(fleet.samplers[node].stats.remote())
        assert stats["requested"] == "nvml"
        assert stats["sources"].startswith(("cpu-estimate", "rapl"))
    finally:
        fleet.stop()
        ray.kill(ledger, no_restart=True)
