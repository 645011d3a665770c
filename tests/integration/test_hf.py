"""The Hugging Face integration with real trainers on a tiny Qwen2 loaded from its directory as
a hub model is: a `transformers.Trainer` whose callback figures equal the ledger's and the true
integral of a simulated node, an evaluation during training that pauses the training window,
and TRL's GKDTrainer in the README's example script, measured stage by stage."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import raydistill
from raydistill.energy.simulate import load_node
from tests.report_outline import outline
from tests.sim_world import TOL_J, sim_world, square_gpu_node

pytestmark = [pytest.mark.slow, pytest.mark.shares_ray]
transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
GPU = "GPU-sim-hf-0000"
SIM = square_gpu_node(GPU)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with sim_world(tmp_path_factory.mktemp("hf"), SIM) as w:
        yield w


def chat_dataset(tok, n: int):
    from datasets import Dataset

    from raydistill.data.chat_tasks import example_path

    rows = [json.loads(line) for line in example_path().read_text().splitlines()[:n]]
    texts = [tok.apply_chat_template([*r["messages"], {"role": "assistant",
                                                       "content": r["response"]}],
                                     tokenize=False) for r in rows]
    enc = tok(texts, truncation=True, max_length=64)
    return Dataset.from_dict({"input_ids": enc["input_ids"],
                              "attention_mask": enc["attention_mask"]})


def test_trainer_callback_figures_equal_the_ledger_and_the_truth(world, monkeypatch):
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    from raydistill.integrations.hf import PREFIX, EnergyCallback

    root, cfg, sim, models = world
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU)  # the trainer's process holds the GPU
    tok = AutoTokenizer.from_pretrained(models["qwen2-student"])
    data = chat_dataset(tok, 48)
    out = root / "trainer-run"
    with raydistill.track(out=out, sampling=cfg, trial="kd") as run:
        trainer = Trainer(
            model=AutoModelForCausalLM.from_pretrained(models["qwen2-student"]),
            args=TrainingArguments(output_dir=str(root / "ckpt"), max_steps=8,
                                   per_device_train_batch_size=4, logging_steps=2,
                                   eval_strategy="steps", eval_steps=4, report_to=[],
                                   use_cpu=True, save_strategy="no",
                                   # the Trainer's own count, to check the callback's against
                                   include_num_input_tokens_seen="non_padding"),
            train_dataset=data, eval_dataset=data.select(range(8)),
            data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
        cb = EnergyCallback.attach(trainer, run)
        assert trainer.callback_handler.callbacks[0] is cb  # before any reporting integration
        trainer.train()
    table = pd.read_parquet(out / "results.parquet").set_index(["trial_id", "stage"])
    training = table.loc[("kd", "student_training")]
    # the callback's figure is the ledger's, to the joule's last bit
    assert cb.train_energy_j == pytest.approx(training["energy_j"], rel=1e-9)
    final = trainer.state.log_history[-1]
    assert final[PREFIX + "train_energy_j"] == pytest.approx(training["energy_j"], rel=1e-9)
    assert training["tokens"] == trainer.state.num_input_tokens_seen > 0
    assert final[PREFIX + "train_j_per_token"] == pytest.approx(
        training["energy_j"] / training["tokens"], rel=1e-9)
    # every logging_steps the energy so far, growing
    so_far = [h[PREFIX + "energy_j"] for h in trainer.state.log_history if PREFIX + "energy_j" in h]
    assert len(so_far) >= 3 and so_far == sorted(so_far) and so_far[-1] <= cb.train_energy_j
    # evaluations paused training: their windows never overlap training's
    from raydistill.results import energy_frame, load_ledger

    state, _ = load_ledger(out)
    rows = energy_frame(state.energy_rows())
    spans = rows.drop_duplicates("window_id")[["stage", "t_start_s", "t_end_s"]]
    train = spans[spans["stage"] == "student_training"].sort_values("t_start_s")
    evals = spans[spans["stage"] == "evaluation"]
    assert len(evals) == 2 and len(train) == 3  # train | eval | train | eval | train
    for e in evals.itertuples():
        assert all(t.t_end_s <= e.t_start_s + 1e-6 or t.t_start_s >= e.t_end_s - 1e-6
                   for t in train.itertuples())
    # and the figures are the true energy of the node over those windows
    node = load_node(sim)
    for (trial, stage), r in table.iterrows():
        mine = rows[(rows["trial_id"] == trial) & (rows["stage"] == stage)]
        truth = sum(node.truth_j(x.device_id, x.t_start_s, x.t_start_s + x.duration_s)
                    for x in mine.itertuples())
        assert r["energy_j"] == pytest.approx(truth, abs=TOL_J * len(mine)), stage


def test_trl_gkd_script_runs_measured_and_reports(world, tmp_path, native_run):
    """The README's example: TRL's GKDTrainer plus three raydistill lines, as a user runs it
    (its own process, its own local Ray), then `raydistill report` on what it wrote."""
    pytest.importorskip("trl")
    models = world[3]
    out = tmp_path / "gkd"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "trl_gkd.py"), "--teacher",
         str(models["qwen2-teacher"]), "--student", str(models["qwen2-student"]), "--out",
         str(out), "--rows", "12", "--steps", "4", "--baseline"],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_parquet(out / "results.parquet")
    assert set(zip(table["trial_id"], table["stage"], strict=True)) == {
        ("gkd", "teacher_generation"), ("gkd", "student_training"), ("gkd", "evaluation"),
        ("sft", "student_training"), ("sft", "evaluation")}
    gen = table[table["stage"] == "teacher_generation"].iloc[0]
    assert 0 < gen["generated_tokens"] < gen["tokens"]
    metrics = {m["trial_id"]: m for m in json.loads((out / "metrics.json").read_text())["trials"]}
    assert set(metrics["gkd"]["scores"]) == {"student_token_acc", "teacher_token_acc"}
    assert metrics["gkd"]["N_star_verdict"] is not None  # the baseline was measured
    report = subprocess.run([sys.executable, "-m", "raydistill.cli", "report", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    page = Path(report.stdout.strip().splitlines()[-1]).read_text()
    assert "teacher_generation" in page and 'id="fig-energy_by_stage"' in page
    # the same report as a native `raydistill run`: its sections, figures, table columns
    # (up to the name of the quality score) and a headline that answers the same questions
    assert native_run.returncode == 0, native_run.stderr[-2000:]
    ours = outline(page)
    native = outline((native_run.run_dir / "report" / "report.html").read_text())
    assert ours.headings == native.headings and ours.figures == native.figures
    assert [_unqualified(t) for t in ours.tables] == [_unqualified(t) for t in native.tables]
    for said in ("in total", "The teacher side (generation + logit caching) took", "Payback:"):
        assert said in ours.headline and said in native.headline, said
    teacher_acc = metrics["gkd"]["scores"]["teacher_token_acc"]
    assert ("of the teacher's token_acc" if teacher_acc > 0 else "the teacher scored 0") \
        in ours.headline
    assert "the no-teacher baseline sft" in ours.headline  # scores(..., baseline="sft")
    assert "Payback: no no-teacher baseline" not in ours.headline


def _unqualified(columns: list[str]) -> list[str]:
    """'OM_perf (quick_acc)' → 'OM_perf': the columns, not which score they are of."""
    return [re.sub(r" \(.*\)$", "", c) for c in columns]
