"""The Python API on one local Ray, sampling a simulated node as it samples hardware: a script's
stages measured exactly, from the script, from a Ray task and from a process started by it;
`measure --stage` appending commands to one run; the run directory reported like a native one."""

import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest
import ray

import raydistill
from raydistill.config import SamplingConfig
from raydistill.energy.simulate import load_node
from raydistill.errors import ConfigError
from raydistill.measure import measure_stage

pytestmark = [pytest.mark.slow, pytest.mark.shares_ray]

NOW = time.time()
GPU, GPU2 = "GPU-sim-track-0000", "GPU-sim-track-0001"
# an H100-like GPU (absolute counter refreshed every 20 ms, 1 s-averaged power) on a 1 Hz
# on/off load, and a RAPL package with DRAM, in real time: figures hold to the true integral
SIM = {"gpus": [{"uuid": GPU, "refresh_s": 0.02, "power_w": {"square": {
           "period_s": 1.0, "on_w": 400.0, "off_w": 100.0, "start_s": NOW - 10,
           "until_s": NOW + 3 * 3600}}},
                {"uuid": GPU2, "refresh_s": 0.02, "power_w": 250.0}],
       "rapl": [{"package": 0, "power_w": 150.0, "dram_w": 20.0}]}
TOL_J = 400.0 * (2 * 0.02 + 0.05)  # counter refresh at each edge, a few ms of stamps


@pytest.fixture(scope="module")
def sampling(tmp_path_factory):
    path = tmp_path_factory.mktemp("sim") / "node.json"
    path.write_text(json.dumps(SIM))
    return SamplingConfig(source=f"simulate:{path}", hz=20, push_interval_s=0.3, idle_s=0.2,
                          max_gap_s=0.8, push_timeout_s=2.0), path


@pytest.fixture(scope="module")
def local_ray(shared_ray):
    # one Ray for the module: track() joins it (and so leaves it up) instead of starting its own
    yield  # the session's Ray (tests/shared_ray.py), left up for the next module


@pytest.fixture
def gpu_env(monkeypatch):
    # this process "holds" the simulated GPU, as CUDA_VISIBLE_DEVICES=<uuid> says on a GPU node
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU)


def truth_j(sim_path, rows: pd.DataFrame) -> float:
    node = load_node(sim_path)
    return sum(node.truth_j(r.device_id, r.t_start_s, r.t_start_s + r.duration_s)
               for r in rows.itertuples())


def ledger_rows(run_dir):
    from raydistill.results import energy_frame, load_ledger

    state, _ = load_ledger(run_dir)
    return energy_frame(state.energy_rows())


@ray.remote(num_cpus=0)
def remote_stage(run, seconds):
    with run.stage("teacher_logit_caching", trial="gkd-a", tokens=300):
        time.sleep(seconds)
    # settled from the worker: its copy of the run flushes the samplers by name
    return run.stage_energy_j("gkd-a", "teacher_logit_caching")


CHILD = """
import time, raydistill
with raydistill.stage("evaluation", trial="gkd-a") as s:
    time.sleep(0.6)
    s.add_tokens(77)
"""


def test_a_scripts_stages_are_measured_exactly_and_report_like_a_native_run(
        local_ray, sampling, gpu_env, tmp_path):
    cfg, sim_path = sampling
    out = tmp_path / "gkd"
    with raydistill.track(out=out, sampling=cfg, trial="gkd-a") as run:
        with run.stage("teacher_generation") as s:
            time.sleep(1.1)
            s.add_tokens(1000, generated=800)
        run.artifact("synthetic_data", tmp_path / "gen.jsonl", stage="teacher_generation",
                     inputs={"teacher": "sim"})
        from_worker_j = ray.get(remote_stage.remote(run, 0.6))  # a Ray task of the job
        # a process started here, holding no GPU of its own
        subprocess.run([sys.executable, "-c", CHILD], check=True,
                       env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        with run.stage("student_training") as s:
            time.sleep(0.8)
            s.add_tokens(500)
        with run.stage("student_training", trial="sft-a") as s:
            time.sleep(1.6)
            s.add_tokens(500)
        run.scores("gkd-a", {"student_acc": 0.40, "teacher_acc": 0.50}, baseline="sft-a")
        run.scores("sft-a", {"student_acc": 0.30})
    table = pd.read_parquet(out / "results.parquet")
    rows = ledger_rows(out)
    got = table.set_index(["trial_id", "stage"])
    assert set(got.index) == {("gkd-a", "teacher_generation"), ("gkd-a", "teacher_logit_caching"),
                              ("gkd-a", "evaluation"), ("gkd-a", "student_training"),
                              ("sft-a", "student_training")}
    for (trial, stage), r in got.iterrows():
        mine = rows[(rows["trial_id"] == trial) & (rows["stage"] == stage)]
        # the script's own process holds the GPU; the Ray task and the child hold none: only
        # the node's CPU package and DRAM
        on_gpu = GPU in set(mine["device_id"])
        assert on_gpu == (stage not in ("teacher_logit_caching", "evaluation")), stage
        assert r["energy_j"] == pytest.approx(truth_j(sim_path, mine), abs=TOL_J), stage
        assert r["energy_method"] == "counter"
    assert got.loc[("gkd-a", "teacher_generation"), "generated_tokens"] == 800
    assert got.loc[("gkd-a", "teacher_logit_caching"), "tokens"] == 300
    assert from_worker_j == pytest.approx(got.loc[("gkd-a", "teacher_logit_caching"),
                                                  "energy_j"], rel=1e-9)
    assert got.loc[("gkd-a", "evaluation"), "tokens"] == 77
    metrics = {m["trial_id"]: m for m in json.loads((out / "metrics.json").read_text())["trials"]}
    gkd = metrics["gkd-a"]
    teacher = got.loc[("gkd-a", "teacher_generation"), "energy_j"] + got.loc[
        ("gkd-a", "teacher_logit_caching"), "energy_j"]
    assert gkd["teacher_side_j"] == pytest.approx(teacher)
    assert gkd["OM_perf"] == {"acc": pytest.approx(0.8)}
    assert gkd["N_star_verdict"] in ("distinguishable", "not distinguishable", "never")
    # the artifact's cost is the stage that made it, charged to the one trial that used it
    costs = json.loads((out / "metrics.json").read_text())["artifact_costs"]
    assert costs[0]["energy_j"] == pytest.approx(got.loc[("gkd-a", "teacher_generation"),
                                                         "energy_j"])
    from raydistill.report.html import write_report

    page = write_report(out).read_text()
    for stage in ("teacher_generation", "student_training", "evaluation"):
        assert stage in page
    # and the environment this process lent to its children is put back

    assert "RAYDISTILL_RUN_DIR" not in os.environ


def test_measure_stage_appends_commands_into_one_run(local_ray, sampling, tmp_path):
    cfg, sim_path = sampling
    run_dir = tmp_path / "shell"
    writes = ("import os, time; time.sleep(0.7); "
              "open(os.environ['RAYDISTILL_TOKENS_FILE'], 'w').write('900 600')")
    first = measure_stage([sys.executable, "-c", writes], cfg, run_dir, "teacher_generation",
                          trial="pipe")
    second = measure_stage([sys.executable, "-c", "import time; time.sleep(0.5)"], cfg,
                           run_dir, "student_training", trial="pipe", tokens=400)
    assert first.returncode == 0 and second.returncode == 0
    table = pd.read_parquet(run_dir / "results.parquet").set_index("stage")
    assert list(table.index) == ["teacher_generation", "student_training"]
    assert table.loc["teacher_generation", "tokens"] == 900
    assert table.loc["teacher_generation", "generated_tokens"] == 600
    assert table.loc["student_training", "tokens"] == 400
    # the first stage's figure is unchanged by the second command (the ledger replayed it)
    assert table.loc["teacher_generation", "energy_j"] == pytest.approx(first.energy_j)
    assert second.stages == 2
    rows = ledger_rows(run_dir)
    assert table.loc["student_training", "energy_j"] == pytest.approx(
        truth_j(sim_path, rows[rows["stage"] == "student_training"]), abs=TOL_J)


def test_a_failing_script_still_writes_its_run_and_says_so(local_ray, sampling, tmp_path):
    cfg, _ = sampling
    out = tmp_path / "fails"
    with (pytest.raises(ZeroDivisionError), raydistill.track(out=out, sampling=cfg) as run,
          run.stage("teacher_generation")):
        time.sleep(0.3)
        1 / 0  # noqa: B018
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["error"].startswith("ZeroDivisionError")
    assert len(pd.read_parquet(out / "results.parquet")) == 1


def test_bad_input_is_refused_before_any_work(local_ray, sampling, tmp_path):
    cfg, _ = sampling
    with pytest.raises(ConfigError, match="valid keys"):
        raydistill.track(out=tmp_path / "x", sampling=cfg, footprint={"regoin": "DE"}).start()
    with raydistill.track(out=tmp_path / "y", sampling=cfg) as run:
        with pytest.raises(ConfigError, match="without '/'"):
            run.stage("a/b").__enter__()
        with pytest.raises(ConfigError, match="numbers"):
            run.scores("y", {"student_acc": "high"})
        with pytest.raises(ConfigError, match="which stage"):
            run.artifact("logit_cache", tmp_path)
    # a second tracker appending to a directory at once (a second measure --stage) is refused
    with raydistill.track(out=tmp_path / "z", sampling=cfg), \
            pytest.raises(ConfigError, match="being tracked by another process"):
        raydistill.track(out=tmp_path / "z", sampling=cfg).start()
    with pytest.raises(ConfigError, match="no run is being tracked"), \
            raydistill.stage("evaluation"):
        pass


RANK = """
import os, time, torch.distributed as dist, raydistill
dist.init_process_group("gloo")
with raydistill.stage("student_training", trial="ddp") as s:
    time.sleep(0.8 + 0.4 * dist.get_rank())
    s.add_tokens(100 * (dist.get_rank() + 1))
dist.barrier()
"""


def test_every_torchrun_rank_opens_its_own_window_and_the_stage_is_their_union(
        local_ray, sampling, tmp_path, monkeypatch):
    cfg, sim_path = sampling
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    # two ranks on this node, each on the GPU of its LOCAL_RANK
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{GPU},{GPU2}")
    out = tmp_path / "ddp"
    with raydistill.track(out=out, sampling=cfg, trial="ddp"):
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                        "--master-port", "29533", str(script)], check=True, timeout=300)
    rows = ledger_rows(out)
    windows = rows.drop_duplicates("window_id")
    assert len(windows) == 2
    held = {frozenset(d for d in rows[rows["window_id"] == w]["device_id"]
                      if d.startswith("GPU-")) for w in windows["window_id"]}
    assert held == {frozenset({GPU}), frozenset({GPU2})}
    table = pd.read_parquet(out / "results.parquet").set_index("stage")
    stage = table.loc["student_training"]
    assert stage["tokens"] == 300 and stage["nodes"] == 1
    # the stage is the union of both ranks' windows: each GPU over its rank's window, and the
    # node's CPU and DRAM split between the two by CPU time where they overlap
    node = load_node(sim_path)
    gpus = rows[rows["device_id"].str.startswith("GPU-")]
    shared = rows[~rows["device_id"].str.startswith("GPU-")]
    spans: list[list[float]] = []  # the union of the two windows' spans
    for a, d in sorted(zip(shared["t_start_s"], shared["duration_s"], strict=True)):
        if spans and a <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], a + d)
        else:
            spans.append([a, a + d])
    truth = truth_j(sim_path, gpus) + sum(node.truth_j(dev, a, b) for a, b in spans
                                          for dev in set(shared["device_id"]))
    assert stage["energy_j"] == pytest.approx(truth, abs=2 * TOL_J)
    gpu2 = rows[rows["device_id"] == GPU2]
    assert gpu2["energy_j"].sum() == pytest.approx(250.0 * gpu2["duration_s"].sum(), rel=0.02)
