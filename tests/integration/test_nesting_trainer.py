"""Nested stages on one local Ray, sampling a simulated node: a real `transformers.Trainer` with
the EnergyCallback inside a user's `run.stage("student_training")` (its evaluations are charged
their whole interval, not half), and `measure --stage --tokens` around a command whose own
window counts tokens (its device is its own, the stage's tokens count once)."""

import json
import sys
import time

import pandas as pd
import pytest

import raydistill
from raydistill.config import SamplingConfig
from raydistill.energy.simulate import load_node
from raydistill.measure import measure_stage

pytestmark = [pytest.mark.slow, pytest.mark.shares_ray]

NOW = time.time()
GPU = "GPU-sim-nest-0000"
SIM = {"gpus": [{"uuid": GPU, "refresh_s": 0.02, "power_w": {"square": {
           "period_s": 1.0, "on_w": 300.0, "off_w": 80.0, "start_s": NOW - 10,
           "until_s": NOW + 3 * 3600}}}],
       "rapl": [{"package": 0, "power_w": 120.0, "dram_w": 15.0}]}
TOL_J = 300.0 * (2 * 0.02 + 0.05)  # counter refresh at each edge, a few ms of stamps


@pytest.fixture(scope="module")
def world(tmp_path_factory, shared_ray):
    root = tmp_path_factory.mktemp("nest")
    sim = root / "node.json"
    sim.write_text(json.dumps(SIM))
    cfg = SamplingConfig(source=f"simulate:{sim}", hz=20, push_interval_s=0.3, idle_s=0.2,
                         max_gap_s=0.8, push_timeout_s=2.0)
    yield root, cfg, sim


def ledger_rows(run_dir) -> pd.DataFrame:
    from raydistill.results import energy_frame, load_ledger

    state, _ = load_ledger(run_dir)
    return energy_frame(state.energy_rows())


def truth_j(sim, rows: pd.DataFrame) -> float:
    node = load_node(sim)
    return sum(node.truth_j(r.device_id, r.t_start_s, r.t_start_s + r.duration_s)
               for r in rows.itertuples())


def test_trainer_evaluations_inside_a_user_stage_are_not_halved(world, monkeypatch,
                                                                  qwen_models):
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from raydistill.integrations.hf import EnergyCallback

    class SlowEvaluation(TrainerCallback):  # an evaluation long enough to weigh its energy
        def on_prediction_step(self, args, state, control, **kwargs):
            time.sleep(0.1)

    root, cfg, sim = world
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU)  # the trainer's process holds the GPU
    student = qwen_models["qwen2.5-instruct-student"]
    tok = AutoTokenizer.from_pretrained(student)
    enc = tok([f"{a} plus {b} is {a + b}" for a in range(8) for b in range(4)])
    data = Dataset.from_dict({"input_ids": enc["input_ids"],
                              "attention_mask": enc["attention_mask"]})
    out = root / "in-stage"
    with raydistill.track(out=out, sampling=cfg, trial="kd") as run:
        trainer = Trainer(
            model=AutoModelForCausalLM.from_pretrained(student),
            args=TrainingArguments(output_dir=str(root / "ckpt"), max_steps=4,
                                   per_device_train_batch_size=4, logging_steps=2,
                                   per_device_eval_batch_size=1, eval_strategy="steps",
                                   eval_steps=2, report_to=[], use_cpu=True,
                                   save_strategy="no"),
            train_dataset=data, eval_dataset=data.select(range(8)),
            data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
            callbacks=[SlowEvaluation()])
        EnergyCallback.attach(trainer, run)
        with run.stage("student_training") as outer:
            trainer.train()
    rows = ledger_rows(out)
    outer_id = outer.window.window.window_id
    evals = rows[rows["stage"] == "evaluation"]
    assert evals["window_id"].nunique() == 2
    # each evaluation is charged the node's whole energy over its interval, not half of it
    for _, one in evals.groupby("window_id"):
        assert one["duration_s"].max() > 0.5
        assert one["energy_j"].sum() == pytest.approx(truth_j(sim, one), abs=TOL_J * len(one))
        assert not one["shared"].any()
    assert set(evals["parent_id"]) == {outer_id}  # the evaluations ran inside the stage
    # and the stage with its evaluations is the outer window's truth: nothing lost or doubled
    mine = rows[rows["window_id"] == outer_id]
    assert rows["energy_j"].sum() == pytest.approx(truth_j(sim, mine), abs=TOL_J * len(mine))


CHILD = """
import time, raydistill
with raydistill.stage("student_training") as s:  # a rank whose callback counts its tokens
    time.sleep(1.0)
    s.add_tokens(77)
"""


def test_measure_tokens_around_a_counting_window_count_the_stage_once(world, monkeypatch):
    root, cfg, sim = world
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU)  # measure and its command see the GPU
    run_dir = root / "measured"
    result = measure_stage([sys.executable, "-c", CHILD], cfg, run_dir, "student_training",
                           trial="m", tokens=500)
    assert result.returncode == 0
    table = pd.read_parquet(run_dir / "results.parquet").set_index("stage")
    assert table.loc["student_training", "tokens"] == 500 == result.tokens  # not 577
    rows = ledger_rows(run_dir)
    child = rows[rows["parent_id"].notna()]
    assert child["window_id"].nunique() == 1
    outer_id = child["parent_id"].iloc[0]
    assert set(rows["window_id"]) == {outer_id, child["window_id"].iloc[0]}
    # the command's window takes its GPU's seconds whole; the outer keeps the rest
    gpu = child[child["device_id"] == GPU]
    assert gpu["energy_j"].sum() == pytest.approx(truth_j(sim, gpu), abs=TOL_J)
    outer = rows[rows["window_id"] == outer_id]
    assert rows["energy_j"].sum() == pytest.approx(truth_j(sim, outer), abs=TOL_J * len(outer))
