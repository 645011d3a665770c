"""TRL's on-policy `DistillationTrainer` measured with `EnergyCallback`: a tiny Qwen2 on the real
Qwen tokenizer (bf16), generation local (no vLLM). The student's generation inside training is
a "rollout" phase of student_training, nested in its training windows: the results say its
energy, its generated tokens and J per rollout token apart from the update, whose training
tokens the backbone's hook counted (TRL runs the backbone, not the model)."""

import os
import warnings

import pandas as pd
import pytest

import raydistill
from tests.sim_world import sim_world, square_gpu_node

pytestmark = [pytest.mark.slow, pytest.mark.shares_ray]
pytest.importorskip("trl")

GPU = "GPU-sim-onpolicy-0000"
STEPS, BATCH, COMPLETION = 3, 2, 6


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with sim_world(tmp_path_factory.mktemp("onpolicy"), square_gpu_node(GPU)) as w:
        yield w


def trainer_of(models: dict, out_dir: str):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TRL warns about the vLLM version it finds
        from trl import DistillationConfig, DistillationTrainer

    path = models["qwen2.5-instruct-student"]
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"  # DistillationTrainer generates from left-padded prompts
    tok.pad_token = tok.pad_token or tok.eos_token
    student = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    teacher = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    with torch.no_grad():  # a teacher that differs from the student (same vocabulary)
        for p in teacher.parameters():
            p.add_(torch.randn_like(p, generator=torch.Generator().manual_seed(1)) * 0.05)
    prompts = [[{"role": "user", "content": f"What is {i} plus {i + 1}?"}] for i in range(16)]
    args = DistillationConfig(output_dir=out_dir, max_steps=STEPS,
                              per_device_train_batch_size=BATCH,
                              max_completion_length=COMPLETION, use_cpu=True, bf16=True,
                              report_to=[], save_strategy="no", logging_steps=1, beta=1.0)
    return DistillationTrainer(model=student, teacher_model=teacher, args=args,
                               train_dataset=Dataset.from_dict({"prompt": prompts}),
                               processing_class=tok)


def test_distillation_trainer_generation_is_the_rollout_phase(world, qwen_models, monkeypatch):
    from raydistill.integrations.hf import EnergyCallback
    from raydistill.results import energy_frame, load_ledger

    root, cfg, _, _ = world
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU)  # the trainer's process holds the GPU
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    out = root / "onpolicy-run"
    with raydistill.track(out=out, sampling=cfg, trial="onpolicy") as run:
        trainer = trainer_of(qwen_models, str(root / "ckpt"))
        generated = []
        inner = trainer._generate  # what TRL returns, to check the counts against
        trainer._generate = lambda prompts: generated.append(inner(prompts)) or generated[-1]
        cb = EnergyCallback.attach(trainer, run)
        trainer.train()
    assert len(generated) == STEPS  # one generation per step (no accumulation)
    n_generated = sum(len(c) for g in generated for c in g[1])
    n_prompt = sum(len(p) for g in generated for p in g[0])
    assert n_generated > 0

    table = pd.read_parquet(out / "results.parquet").set_index(["trial_id", "stage"])
    row = table.loc[("onpolicy", "student_training")]
    assert row["rollout_j"] > 0 and row["work_j"] > 0
    assert row["energy_j"] == pytest.approx(row["load_j"] + row["work_j"] + row["rollout_j"])
    assert row["rollout_tokens"] == n_generated
    assert row["rollout_j_per_token"] == pytest.approx(row["rollout_j"] / n_generated)
    assert row["tokens"] > n_prompt  # the update's tokens: prompts and completions, trained on
    assert cb.train_energy_j == pytest.approx(row["energy_j"], rel=1e-9)

    state, _ = load_ledger(out)
    rows = energy_frame(state.energy_rows()).drop_duplicates("window_id")
    rollouts = rows[rows["phase"] == "rollout"]
    training = rows[(rows["stage"] == "student_training") & (rows["phase"] == "work")]
    assert len(rollouts) == STEPS and set(rollouts["stage"]) == {"student_training"}
    # each rollout runs inside a training window, so the update is charged the rest only
    assert set(rollouts["parent_id"]) <= set(training["window_id"])


def test_onpolicy_example_puts_a_served_teacher_in_the_ledger(world, tmp_path):
    """examples/trl_onpolicy.py as a user runs it (its own process and Ray): the teacher served
    by its own actor is a teacher_scoring stage with positive energy, loading apart, the
    student's generation the rollout phase of student_training; no N* (recurring teacher)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "onpolicy"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("RAY_ADDRESS", None)
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, str(root / "examples" / "trl_onpolicy.py"), "--out",
                           str(out), "--rows", "8", "--steps", "2"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_parquet(out / "results.parquet").set_index("stage")
    scoring, training = table.loc["teacher_scoring"], table.loc["student_training"]
    assert scoring["energy_j"] > 0 and scoring["load_j"] > 0 and scoring["tokens"] > 0
    # held between requests: idle, apart from the requests' busy work (not all of it as work)
    assert scoring["idle_j"] > 0 and scoring["work_j"] > 0
    assert scoring["energy_j"] == pytest.approx(scoring["load_j"] + scoring["work_j"]
                                                + scoring["idle_j"])
    assert training["rollout_j"] > 0 and training["rollout_tokens"] == 2 * 4 * 16
    (metrics,) = json.loads((out / "metrics.json").read_text())["trials"]
    assert metrics["teacher_recurring_j"] == pytest.approx(scoring["energy_j"])
    assert metrics["N_star"] is None
