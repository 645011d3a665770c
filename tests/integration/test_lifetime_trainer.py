"""No window outlives its process (issue 27), through real `transformers.Trainer`s on a tiny
Qwen2 and a simulated GPU whose true energy is known: `predict()` after `train()` leaves the next
stage on the GPU whole, a `train()` that raises leaves no window open, a killed process's window
is closed by its node's sampler, and the run's finish closes what is left; the callback counts
tokens without the Trainer's per-micro-batch gather."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import ray

import raydistill
from raydistill.energy.simulate import load_node
from raydistill.results import energy_frame, load_ledger
from tests.sim_world import TOL_J, sim_world, square_gpu_node

pytestmark = [pytest.mark.slow, pytest.mark.shares_ray]
transformers = pytest.importorskip("transformers")

GPU = "GPU-sim-life-0000"
SIM = square_gpu_node(GPU)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with sim_world(tmp_path_factory.mktemp("life"), SIM) as w:
        yield w


def trainer_for(root, models, name, steps=4, collator=None, **args):
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    from raydistill.data.chat_tasks import example_path

    tok = AutoTokenizer.from_pretrained(models["qwen2-student"])
    rows = [json.loads(line) for line in example_path().read_text().splitlines()[:24]]
    texts = [tok.apply_chat_template([*r["messages"], {"role": "assistant",
                                                       "content": r["response"]}],
                                     tokenize=False) for r in rows]
    enc = tok(texts, truncation=True, max_length=64)
    data = Dataset.from_dict({"input_ids": enc["input_ids"],
                              "attention_mask": enc["attention_mask"]})
    return Trainer(
        model=AutoModelForCausalLM.from_pretrained(models["qwen2-student"]),
        args=TrainingArguments(output_dir=str(root / f"ckpt-{name}"), max_steps=steps,
                               per_device_train_batch_size=4, logging_steps=2, report_to=[],
                               use_cpu=True, save_strategy="no", **args),
        train_dataset=data, eval_dataset=data.select(range(8)),
        data_collator=collator or DataCollatorForLanguageModeling(tok, mlm=False))


def windows_of(out):
    state, _ = load_ledger(out)
    return state, energy_frame(state.energy_rows())


def truth(sim, rows) -> float:
    node = load_node(sim)
    return sum(node.truth_j(r.device_id, r.t_start_s, r.t_start_s + r.duration_s)
               for r in rows.itertuples())


def test_predict_after_train_leaves_the_next_stage_whole(world, monkeypatch):
    """The issue's repro (examples/trl_gkd.py --baseline): one predict() left an evaluation
    window open, which took half of the SFT baseline's training energy on the same GPU."""
    from raydistill.integrations.hf import EnergyCallback

    root, cfg, sim, models = world
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU)
    out = root / "predict-run"
    with raydistill.track(out=out, sampling=cfg, trial="kd") as run:
        kd = trainer_for(root, models, "kd", include_num_input_tokens_seen="non_padding")
        cb = EnergyCallback.attach(kd, run)
        kd.train()
        kd.predict(kd.eval_dataset)
        sft = trainer_for(root, models, "sft")
        EnergyCallback.attach(sft, run, trial="sft")
        sft.train()
        kd.evaluate()  # outside training: an evaluation, and no training window reopened
        assert cb._train is None and cb._eval is None
    # the callback left the Trainer's token setting as the user set it, and counted the
    # non-padding tokens it trained on, which the Trainer counted too when asked
    assert kd.args.include_num_input_tokens_seen == "non_padding"
    assert sft.args.include_num_input_tokens_seen in ("no", False)
    state, rows = windows_of(out)
    assert not rows["open"].any() and not state.open_windows()
    table = pd.read_parquet(out / "results.parquet").set_index(["trial_id", "stage"])
    assert table.loc[("kd", "student_training"), "tokens"] == kd.state.num_input_tokens_seen > 0
    assert table.loc[("sft", "student_training"), "tokens"] > 0
    # the SFT training, after predict() on the same GPU, is charged its whole true energy
    sft_rows = rows[(rows["trial_id"] == "sft") & (rows["stage"] == "student_training")]
    sft_gpu = sft_rows[sft_rows["device_id"] == GPU]
    assert not sft_gpu["shared"].any()
    assert sft_gpu["energy_j"].sum() == pytest.approx(truth(sim, sft_gpu),
                                                      abs=TOL_J * len(sft_gpu))
    # the evaluation windows (predict, evaluate) are closed where their work ended, normally
    evals = rows[(rows["stage"] == "evaluation")].drop_duplicates("window_id")
    assert len(evals) == 2 and set(evals["closed_by"]) == {"stage"}


class FailingCollator:
    def __init__(self, inner, fail_at: int) -> None:
        self.inner, self.fail_at, self.calls = inner, fail_at, 0

    def __call__(self, features):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("a bad batch")
        return self.inner(features)


def test_train_that_raises_leaves_no_window_open(world, monkeypatch):
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling

    from raydistill.cluster.ledger_actor import get_ledger
    from raydistill.integrations.hf import EnergyCallback

    root, cfg, _sim, models = world
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU)
    tok = AutoTokenizer.from_pretrained(models["qwen2-student"])
    out = root / "raise-run"
    with raydistill.track(out=out, sampling=cfg, trial="kd") as run:
        bad = trainer_for(root, models, "bad", steps=6, collator=FailingCollator(
            DataCollatorForLanguageModeling(tok, mlm=False), fail_at=3))
        EnergyCallback.attach(bad, run)
        with pytest.raises(RuntimeError, match="a bad batch"):
            bad.train()
        assert ray.get(get_ledger(run.namespace).open_windows.remote()) == []
        # a callback passed as callbacks=[...] (no wrapper): the next train() closes the
        # window the failed one left open before it opens its own
        plain = trainer_for(root, models, "plain", steps=6, collator=FailingCollator(
            DataCollatorForLanguageModeling(tok, mlm=False), fail_at=3))
        plain_cb = EnergyCallback(run, trial="plain")
        plain.add_callback(plain_cb)
        with pytest.raises(RuntimeError):
            plain.train()
        plain.data_collator.fail_at = -1
        plain.train()
        # a stage left open in this process is closed by the finish
        run.stage("evaluation", trial="left").__enter__()
    state, rows = windows_of(out)
    assert not state.open_windows()
    closings = rows.drop_duplicates("window_id").groupby("trial_id")["closed_by"].apply(set)
    assert "train_error" in closings["kd"]
    assert "callback_error" in closings["plain"] and "stage" in closings["plain"]
    assert closings["left"] == {"finish"}
    note = json.loads((out / "metrics.json").read_text())["windows_closed_by"]
    assert set(note) == {"train_error", "callback_error", "finish"}


CHILD = """
import sys, time
import raydistill
with raydistill.stage("teacher_generation", trial="killed") as s:
    print("open", flush=True)
    time.sleep(600)
"""


def test_killed_process_window_is_closed_by_the_sampler_and_finish_closes_the_rest(world):
    from raydistill.cluster.ledger_actor import get_ledger
    from raydistill.cluster.sampler import WATCH_INTERVAL_S

    root, cfg, sim, _models = world
    out = root / "kill-run"
    with raydistill.track(out=out, sampling=cfg, trial="kd") as run:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": GPU}
        child = subprocess.Popen([sys.executable, "-c", CHILD], env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            line = child.stdout.readline()
            assert line.strip() == "open", child.stderr.read()[-3000:]
            time.sleep(1.0)
            killed_s = time.time()
            child.send_signal(signal.SIGKILL)  # no atexit, no finally: only the sampler knows
            child.wait()
        finally:
            if child.poll() is None:
                child.kill()
        ledger = get_ledger(run.namespace)
        deadline = time.time() + 30
        while ray.get(ledger.open_windows.remote()) and time.time() < deadline:
            time.sleep(0.5)
        (w,) = [w for w in ray.get(ledger.windows.remote()) if w["trial_id"] == "killed"]
        assert w["closed_by"] == "process_gone" and w["pid"] == child.pid
        # ended where the sampler last saw it alive (within one check, 2 s, before the kill),
        # or where it noticed the death when no check saw it alive (within one check after)
        assert killed_s - 3.0 <= w["t_end_s"] <= killed_s + WATCH_INTERVAL_S + 0.5
        with run.stage("student_training") as s:  # a later stage on the GPU: whole
            time.sleep(1.5)
            s.add_tokens(10)
    _, rows = windows_of(out)
    later = rows[(rows["stage"] == "student_training") & (rows["device_id"] == GPU)]
    assert not later["shared"].any()
    assert later["energy_j"].sum() == pytest.approx(truth(sim, later), abs=TOL_J)
    note = json.loads((out / "metrics.json").read_text())["windows_closed_by"]
    assert note["process_gone"] == [w["window_id"]]


def test_a_terminated_rank_closes_its_own_window_where_it_stopped(world):
    """SIGTERM (what torchrun, Slurm and Kubernetes send first) to a tracked process: Ray's
    handler exits through SystemExit, the `with` block unwinds and its window is closed by
    its own process, marked "exit", at the signal."""
    from raydistill.cluster.ledger_actor import get_ledger

    root, cfg, _sim, _models = world
    with raydistill.track(out=root / "term-run", sampling=cfg, trial="kd") as run:
        child = subprocess.Popen([sys.executable, "-c", CHILD.replace("killed", "termed")],
                                 env={**os.environ, "CUDA_VISIBLE_DEVICES": GPU}, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert child.stdout.readline().strip() == "open", child.stderr.read()[-3000:]
            termed_s = time.time()
            child.send_signal(signal.SIGTERM)
            assert child.wait(timeout=60) != 0
        finally:
            if child.poll() is None:
                child.kill()
        (w,) = [w for w in ray.get(get_ledger(run.namespace).windows.remote())
                if w["trial_id"] == "termed"]
        assert w["closed_by"] == "exit"
        assert termed_s - 0.5 <= w["t_end_s"] <= termed_s + 5.0


def test_a_window_a_crashed_session_left_open_does_not_span_the_next_one(world, monkeypatch):
    """The owner crashed with a window open (nothing closed it: no finish, no exit hook, the
    session's sampler gone with it); the run is tracked again on the same cluster, so the
    node's id and its readings go on. The old window is closed at that node's last reading of
    the old session, not across the new one (where it would halve the new stages)."""
    import raydistill.tracking.run as run_mod
    from raydistill.cluster import lifetime
    from raydistill.cluster.windows import StageWindow, _swap_open

    root, cfg, sim, _models = world
    out = root / "crash-run"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU)
    run = raydistill.track(out=out, sampling=cfg, trial="old").start()
    w = StageWindow(run.namespace, "old", "teacher_generation", devices=(GPU,)).__enter__()
    time.sleep(1.5)
    lifetime.unregister(w)  # the crash: no exit hook closes it
    _swap_open(w.window.window_id, None)  # (and its process's open-window stack goes with it)
    run._session.close()  # the ledger and the samplers go with the crashed driver
    run._lock.close()
    run._restore_env()
    run_mod._current = None
    crashed_s = time.time()
    time.sleep(1.5)
    with raydistill.track(out=out, sampling=cfg, trial="new") as again, \
            again.stage("student_training"):
        time.sleep(2.0)
    _, rows = windows_of(out)
    old = rows[rows["trial_id"] == "old"].drop_duplicates("window_id")
    assert list(old["closed_by"]) == ["stale_session"]
    assert old["t_end_s"].max() <= crashed_s + 0.5
    new = rows[(rows["trial_id"] == "new") & (rows["device_id"] == GPU)]
    assert not new["shared"].any()
    assert new["energy_j"].sum() == pytest.approx(truth(sim, new), abs=TOL_J)
