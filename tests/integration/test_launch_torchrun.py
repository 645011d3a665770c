"""Real launches: the README's Trainer example run unmodified by every rank of `torchrun
--nproc_per_node 2` (gloo, CPU) gives one run with every rank's windows, and
`raydistill.stage(...)` in a Ray task of a tracked job finds the run without being passed it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import raydistill
from raydistill.config import SamplingConfig

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
GPU, GPU2 = "GPU-sim-launch-0000", "GPU-sim-launch-0001"
SIM = {"gpus": [{"uuid": GPU, "refresh_s": 0.02, "power_w": 300.0},
                {"uuid": GPU2, "refresh_s": 0.02, "power_w": 200.0}],
       "rapl": [{"package": 0, "power_w": 120.0, "dram_w": 15.0}]}
SAMPLING = dict(hz=20, push_interval_s=0.3, idle_s=0.2, max_gap_s=0.8, push_timeout_s=2.0)

# the README's example (track, a teacher stage, its artifact, a Trainer with the callback, an
# evaluation stage, scores), as every rank of a launch runs it: nothing rank-aware in it
SCRIPT = """
import sys, time
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

import raydistill
from raydistill.config import SamplingConfig
from raydistill.integrations.hf import EnergyCallback

out, model_dir, sim = sys.argv[1:4]
cfg = SamplingConfig(source=f"simulate:{sim}", **SAMPLING)
tok = AutoTokenizer.from_pretrained(model_dir)
with raydistill.track(out=out, trial="gkd", sampling=cfg) as run:
    with run.stage("teacher_generation") as s:
        time.sleep(0.3)
        s.add_tokens(100, generated=60)
    run.artifact("synthetic_data", f"{out}/synthetic.jsonl", stage="teacher_generation",
                 inputs={"teacher": "tiny"})
    ids = tok(["the sum of two and three is five"] * 8)["input_ids"]
    trainer = Trainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        args=TrainingArguments(output_dir=f"{out}/ckpt", per_device_train_batch_size=2,
                               max_steps=3, logging_steps=1, use_cpu=True, ddp_backend="gloo",
                               report_to=[], save_strategy="no"),
        train_dataset=Dataset.from_list([{"input_ids": i, "labels": i} for i in ids]))
    EnergyCallback.attach(trainer, run)
    trainer.train()
    with run.stage("evaluation") as s:
        s.add_tokens(10)
    run.scores("gkd", {"student_acc": 0.4, "teacher_acc": 0.5})
""".replace("**SAMPLING", ", ".join(f"{k}={v}" for k, v in SAMPLING.items()))


def test_every_rank_of_a_torchrun_launch_tracks_into_one_run(qwen_models, tmp_path):
    script, sim, out = tmp_path / "gkd.py", tmp_path / "node.json", tmp_path / "gkd"
    script.write_text(SCRIPT)
    sim.write_text(json.dumps(SIM))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled",
           "CUDA_VISIBLE_DEVICES": f"{GPU},{GPU2}",  # each rank holds the GPU of its LOCAL_RANK
           "RAYDISTILL_JOIN_TIMEOUT_S": "120"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-port", "29547", str(script), str(out),
         str(qwen_models["qwen2.5-instruct-student"]), str(sim)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from raydistill.results import energy_frame, load_ledger

    state, _ = load_ledger(out)
    rows = energy_frame(state.energy_rows())
    training = rows[rows["stage"] == "student_training"]
    # one window per rank, each on its own GPU: the stage is their union
    held = {frozenset(d for d in training[training["window_id"] == w]["device_id"]
                      if d.startswith("GPU-")) for w in set(training["window_id"])}
    assert held == {frozenset({GPU}), frozenset({GPU2})}
    table = pd.read_parquet(out / "results.parquet").set_index("stage")
    assert set(table.index) == {"teacher_generation", "student_training", "evaluation"}
    assert table.loc["student_training", "energy_j"] == pytest.approx(
        training["energy_j"].sum())
    assert table.loc["teacher_generation", "tokens"] == 200  # both ranks' tokens
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["trial_id"] for m in metrics["trials"]] == ["gkd"]
    assert metrics["trials"][0]["OM_perf"] == {"acc": pytest.approx(0.8)}
    assert len(metrics["artifact_costs"]) == 1  # recorded once, by the owner
    assert not (out / "owner.json").exists()  # the owner takes its record away


def test_raydistill_stage_in_a_ray_task_finds_the_run_without_being_passed_it(tmp_path):
    import ray

    sim = tmp_path / "node.json"
    sim.write_text(json.dumps(SIM))
    cfg = SamplingConfig(source=f"simulate:{sim}", **SAMPLING)
    out = tmp_path / "task"

    @ray.remote(num_cpus=0)
    def task(seconds: float) -> None:  # defined here: pickled by value to the worker
        import time

        with raydistill.stage("teacher_logit_caching", tokens=30):
            time.sleep(seconds)

    # track starts Ray here, so its workers were started before the RAYDISTILL_* variables
    with raydistill.track(out=out, sampling=cfg, trial="t"):
        ray.get(task.remote(0.3))
    table = pd.read_parquet(out / "results.parquet").set_index(["trial_id", "stage"])
    assert table.loc[("t", "teacher_logit_caching"), "tokens"] == 30
    assert table.loc[("t", "teacher_logit_caching"), "energy_j"] > 0


LATE = """
import sys, time
import torch.distributed as dist
import raydistill
from raydistill.config import SamplingConfig

out, sim = sys.argv[1:3]
cfg = SamplingConfig(source=f"simulate:{sim}", **SAMPLING)
dist.init_process_group("gloo")
with raydistill.track(out=out, trial="late", sampling=cfg) as run:
    dist.barrier()  # both ranks are in; rank 0 leaves at once, rank 1 still works
    if dist.get_rank() == 1:
        with run.stage("evaluation") as s:
            time.sleep(1.5)
            s.add_tokens(7)
""".replace("**SAMPLING", ", ".join(f"{k}={v}" for k, v in SAMPLING.items()))


def test_the_owner_waits_for_a_rank_still_working_before_it_writes(tmp_path):
    script, sim, out = tmp_path / "late.py", tmp_path / "node.json", tmp_path / "late"
    script.write_text(LATE)
    sim.write_text(json.dumps(SIM))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled",
           "CUDA_VISIBLE_DEVICES": ""}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-port", "29548", str(script), str(out), str(sim)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = pd.read_parquet(out / "results.parquet").set_index("stage")
    # rank 1's window, closed after rank 0 had left its block, is in the one table, whole
    assert table.loc["evaluation", "tokens"] == 7
    assert table.loc["evaluation", "duration_s"] >= 1.5
