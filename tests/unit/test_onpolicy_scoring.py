"""The on-policy pieces that need no Ray: the scorer's batching across workers and what it
returns, the teacher's answers placed at the student's positions, the student's rollouts, and
a run's metrics (no N* for on-policy)."""

import json
import math
import threading
import types

import numpy as np
import pandas as pd
import pytest
import torch

from raydistill.distill import teacher_scoring as ts
from raydistill.distill.batches import pad_batch
from raydistill.distill.losses import TopK
from raydistill.distill.onpolicy import _until_eos, rollout_examples, teacher_target
from raydistill.distill.onpolicy_loss import onpolicy_jsd
from raydistill.results import NO_AMORTISATION


def test_each_actor_expects_the_workers_that_send_to_it():
    assert ts.expected_per_actor(4, 1) == [4]
    assert ts.expected_per_actor(5, 2) == [3, 2]
    assert [ts.scorer_for(r, 2) for r in range(4)] == [0, 1, 0, 1]


def test_response_targets_cover_the_response_positions_only():
    logits = torch.randn(2, 6, 11)
    seqs, starts = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4]], [3, 2]
    dense = ts.response_targets(logits, seqs, starts, top_k=0, temperature=1.0)
    assert dense[0]["logits"].shape == (3, 11) and dense[1]["logits"].shape == (2, 11)
    np.testing.assert_array_equal(dense[0]["logits"], logits[0, 2:5].numpy())
    top = ts.response_targets(logits, seqs, starts, top_k=4, temperature=1.0)
    mass = np.exp(top[0]["logprobs"]).sum(-1) + np.exp(top[0]["tail"])
    np.testing.assert_allclose(mass, 1.0, rtol=1e-5)  # the top-k and its tail: all of it


class _NoWindow:
    def __init__(self, *a, **k):
        self.window = types.SimpleNamespace(window_id="w")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_tokens(self, n, generated=0):
        pass


def scorer(expected: int, wait_s: float, calls: list) -> ts.TeacherScorer:
    """A scorer without its model or ledger: the forward records each batch it is given."""
    s = object.__new__(ts.TeacherScorer)
    s.namespace, s.trial_id, s.devices = "ns", "t", ()
    s.expected, s.wait_s = expected, wait_s
    s.idle = types.SimpleNamespace(window=types.SimpleNamespace(window_id="idle"), _cpu0=0.0)
    s._cond, s._pending, s._forward = threading.Condition(), [], threading.Lock()
    s.stats = {"requests": 0, "batches": 0, "sequences": 0, "tokens": 0, "busy_s": 0.0}

    def forward(seqs, starts):
        calls.append(list(seqs))
        return [{"n": len(q)} for q in seqs]

    s._forward_pass = forward
    return s


def test_requests_from_several_workers_run_as_one_batch(monkeypatch):
    from raydistill.cluster import windows

    monkeypatch.setattr(windows, "StageWindow", _NoWindow)
    calls: list = []
    s = scorer(expected=2, wait_s=30.0, calls=calls)
    got = {}

    def send(rank):
        got[rank] = s.score([[rank] * (rank + 2)], [1])

    threads = [threading.Thread(target=send, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(calls) == 1 and sorted(len(q) for q in calls[0]) == [2, 3]
    assert got == {0: [{"n": 2}], 1: [{"n": 3}]}  # each worker gets its own answers back
    assert s.stats["batches"] == 1 and s.stats["requests"] == 2


def test_a_lone_request_runs_after_the_wait(monkeypatch):
    from raydistill.cluster import windows

    monkeypatch.setattr(windows, "StageWindow", _NoWindow)
    calls: list = []
    s = scorer(expected=2, wait_s=0.05, calls=calls)
    assert s.score([[1, 2, 3]], [1]) == [{"n": 3}]
    assert len(calls) == 1


def test_teacher_target_sits_at_the_student_positions_and_the_loss_reads_them():
    examples = [{"input_ids": [5, 6, 7, 8, 9], "prompt_len": 3},
                {"input_ids": [5, 6, 7, 8], "prompt_len": 2}]
    batch = pad_batch(examples, 0)
    logits = torch.randn(2, 6, 10)
    seqs = [e["input_ids"] for e in examples]
    starts = [e["prompt_len"] for e in examples]
    dense = teacher_target(ts.response_targets(logits, seqs, starts, 0, 1.0), examples, 5, "cpu")
    torch.testing.assert_close(dense[batch["mask"]], logits[:, :5][batch["mask"]])
    top = teacher_target(ts.response_targets(logits, seqs, starts, 10, 1.0), examples, 5, "cpu")
    assert isinstance(top, TopK)
    student = torch.randn(2, 5, 10)
    # the full top-k (k = V) is the dense distribution: the same loss either way
    for beta in (0.0, 0.5, 1.0):
        a = onpolicy_jsd(student, dense, beta=beta, mask=batch["mask"][:, :5])
        b = onpolicy_jsd(student, top, beta=beta, mask=batch["mask"][:, :5])
        assert float(a) == pytest.approx(float(b), abs=1e-5)


def test_a_completion_ends_at_its_first_eos():
    assert _until_eos([4, 5, 1, 0, 0], 1) == [4, 5, 1]
    assert _until_eos([4, 5, 6], 1) == [4, 5, 6]


def test_rollouts_are_the_student_own_completions_within_the_limits():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=0, eos_token_id=1))
    class Tok(types.SimpleNamespace):  # 30 tokens for 32 output rows: a padded output layer
        def __len__(self) -> int:
            return 30

    tok = Tok(pad_token_id=0, eos_token_id=1)
    examples = [{"input_ids": [2, 3, 4, 9, 9], "prompt_len": 3},
                {"input_ids": [2, 5, 9], "prompt_len": 2}]
    cfg = {"max_new_tokens": 6, "max_seq_len": 8, "temperature": 2.0}
    model.train()
    seen = {}
    generate = model.generate

    def recording(**kw):
        seen.update(kw)
        return generate(**kw)

    model.generate = recording
    made, generated = rollout_examples(model, examples, tok, cfg, synced=False)
    assert model.training  # put back as it was
    assert [m["input_ids"][:m["prompt_len"]] for m in made] == [[2, 3, 4], [2, 5]]
    assert generated == sum(len(m["input_ids"]) - m["prompt_len"] for m in made) > 0
    for m in made:
        completion = m["input_ids"][m["prompt_len"]:]
        assert 1 <= len(completion) <= 6 and len(m["input_ids"]) <= 8
        assert 1 not in completion[:-1]  # nothing after an EOS
        assert max(completion) < 30  # never a padded output row
    # sampled at the loss's temperature (distill.temperature), not at T = 1, and every field
    # stated: nothing left to the checkpoint's generation_config.json
    config = seen["generation_config"]
    assert config.do_sample and config.temperature == 2.0
    assert (config.top_k, config.top_p, config.repetition_penalty) == (0, 1.0, 1.0)
    assert config.suppress_tokens == [30, 31]


def test_an_onpolicy_run_reports_its_teacher_bill_and_no_n_star(tmp_path):
    from raydistill.distill.pipeline import TrialOutcome
    from raydistill.run import RunResult, summary, write_run_results

    stages = [("teacher_generation", 10.0, 10.0, 0.0, 0.0, 0, 0),
              ("teacher_scoring", 50.0, 20.0, 25.0, 0.0, 300, 0),
              ("student_training", 100.0, 60.0, 0.0, 30.0, 1000, 200)]
    rows = []
    for trial in ("op", "base"):
        for stage, e, work, idle, roll, tokens, rollout_tokens in stages:
            if trial == "base" and stage != "student_training":
                continue
            rows.append({"trial_id": trial, "stage": stage, "energy_j": e, "load_j": e - work
                         - idle - roll, "work_j": work, "idle_j": idle, "rollout_j": roll,
                         "tokens": tokens, "rollout_tokens": rollout_tokens,
                         "energy_method": "estimated", "unmeasured_max_j": 0.0})
    table = pd.DataFrame(rows)
    main = TrialOutcome("op", "onpolicy", scores={"student_quick_acc": 0.5},
                        # resumed from a checkpoint at step 3: 5 steps in this attempt, 8 in
                        # the training (the ledger covers both attempts)
                        train_metrics={"steps": 8, "steps_run": 5, "resumed_from_step": 3,
                                       "rollout_steps": 8, "rollout_tokens": 40})
    base = TrialOutcome("base", "none", scores={"student_quick_acc": 0.4})
    metrics, _ = write_run_results(tmp_path, table, [main, base], 0.0, equal_quality=True)
    m = json.loads((tmp_path / "metrics.json").read_text())["trials"][0]
    assert m["N_star"] is None and m["N_star_verdict"] == NO_AMORTISATION
    assert "N_star_equal_quality_verdict" not in m
    assert m["teacher_scoring_j"] == 50.0 and m["teacher_scoring_idle_j"] == 25.0
    # 45 J past its 5 J load, over the 8 steps trained (not the 5 since the restore); against
    # the student's 60 J update + 30 J rollouts
    assert m["teacher_scoring_j_per_step"] == pytest.approx(45 / 8)
    assert m["student_j_per_step"] == pytest.approx(90 / 8)
    # metrics.json's rollout tokens are the results table's (every rank and attempt)
    train = json.loads((tmp_path / "metrics.json").read_text())["train"]["op"]
    assert train["rollout_tokens"] == m["rollout_tokens"] == 200
    assert m["teacher_step_share"] == pytest.approx(45 / (45 + 90))
    assert m["rollout_j_per_token"] == pytest.approx(30 / 200)
    assert m["teacher_side_j"] == 60.0  # generation + scoring: the teacher side
    text = summary(RunResult(tmp_path, table, metrics, []))
    assert f"N* (equal steps) {NO_AMORTISATION}" in text
    assert "teacher share per step 33.3%" in text and not math.isnan(m["teacher_share"])


def test_the_report_says_the_scoring_bill_recurs_with_its_idle_and_rollouts():
    from raydistill.report.rules import _onpolicy_rules

    main = pd.DataFrame([
        {"trial_id": "op", "stage": "teacher_scoring", "energy_j": 50.0, "work_j": 20.0,
         "idle_j": 25.0, "load_j": 5.0, "rollout_j": 0.0, "rollout_tokens": 0,
         "energy_method": "estimated", "unmeasured_max_j": 0.0},
        {"trial_id": "op", "stage": "student_training", "energy_j": 100.0, "work_j": 60.0,
         "idle_j": 0.0, "load_j": 10.0, "rollout_j": 30.0, "rollout_tokens": 200,
         "energy_method": "estimated", "unmeasured_max_j": 0.0}])
    (rule,) = _onpolicy_rules(main)
    assert "busy 20.0 J, idle 25.0 J, load 5.0 J" in rule
    assert "no N*" in rule and "200 generated tokens (150 mJ/token)" in rule
    assert _onpolicy_rules(main[main["stage"] == "student_training"]) == []


def test_a_sweep_gives_no_n_star_for_onpolicy_configurations():
    from raydistill.search.derived import derived_figures

    # the same figures as a logit configuration with a clear N* (test_uncertainty)
    t = pd.DataFrame({"trial_id": ["t0", "t1", "t2"], "status": ["finished"] * 3,
                      "quality": [0.5] * 3, "energy_j": [1.0] * 3,
                      "param.distill.method": ["none", "logit", "onpolicy"],
                      "param.lr": [0.1] * 3, "student_training_j": [200.0, 150.0, 150.0],
                      "teacher_side_j": [0.0, 300.0, 300.0],
                      "teacher_side_error_j": [0.0, 15.0, 15.0],
                      "student_training_error_j": [10.0, 5.0, 5.0]})
    d = derived_figures(t)
    assert d["n_star"][1] == 6.0
    assert d["n_star"][2] is None and d["n_star_verdict"][2] == NO_AMORTISATION


def test_vllm_prompt_logprobs_give_what_the_hf_forward_gives():
    """vLLM's prompt_logprobs[i] is the distribution of token i given those before it (its top
    k, plus the token itself where it ranks lower): the same targets as the HF path's logits at
    i - 1, on the same sequences."""
    torch.manual_seed(1)
    logits = torch.randn(2, 7, 12)
    seqs, starts, k = [[3, 1, 4, 1, 5, 9, 2], [6, 5, 3, 5]], [3, 2], 4
    logp = torch.log_softmax(logits, -1)
    prompt_logprobs = []
    for b, seq in enumerate(seqs):
        steps = [None]
        for i in range(1, len(seq)):
            top = logp[b, i - 1].topk(k)
            step = {int(t): types.SimpleNamespace(logprob=float(v), rank=r + 1)
                    for r, (v, t) in enumerate(zip(top.values, top.indices, strict=True))}
            step.setdefault(seq[i], types.SimpleNamespace(
                logprob=float(logp[b, i - 1, seq[i]]), rank=k + 5))
            steps.append(step)
        prompt_logprobs.append(steps)
    hf = ts.response_targets(logits, seqs, starts, k, 1.0)
    vl = ts.vllm_targets(prompt_logprobs, seqs, starts, k, rows=12)
    for a, b in zip(hf, vl, strict=True):
        np.testing.assert_array_equal(a["indices"], b["indices"])
        np.testing.assert_allclose(a["logprobs"], b["logprobs"], atol=1e-6)
        np.testing.assert_allclose(a["tail"], b["tail"], atol=1e-5)
    assert ts.scoring_engine("vllm", 16, 1.0) == "vllm"
    assert ts.scoring_engine("vllm", 0, 1.0) == ts.scoring_engine("vllm", 16, 2.0) == "hf"


def test_a_resumed_run_counts_the_rollout_steps_before_its_checkpoint():
    import random

    from raydistill.distill.onpolicy import replay_draws

    whole = replay_draws(0.5, random.Random(7), 20)
    resumed = random.Random(7)
    before = replay_draws(0.5, resumed, 8)  # what OnPolicy starts from at step 8
    assert before + replay_draws(0.5, resumed, 12) == whole and before > 0
    assert replay_draws(1.0, random.Random(7), 5) == 5
    assert replay_draws(0.0, random.Random(7), 5) == 0


def test_the_admission_forecast_counts_the_recurring_scoring_bill():
    from raydistill.config import load_experiment
    from raydistill.search.forecast import Forecaster
    from raydistill.search.trial import stage_units

    cfg = load_experiment("configs/local-chat.yaml", ["distill.method=onpolicy"])
    units = stage_units(cfg)
    assert units["teacher_scoring"] == cfg.student.steps * cfg.student.batch_size
    f = Forecaster()
    f.add_finished({}, {"student_training": 100.0, "evaluation": 10.0, "teacher_scoring": 50.0},
                   units)
    assert f.predict({}, units)["teacher_scoring"] == 50.0
    sft = load_experiment("configs/local-chat.yaml", ["distill.method=sft"])
    assert stage_units(sft)["teacher_scoring"] == 0.0
