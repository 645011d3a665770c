"""`raydistill run configs/local-chat.yaml` with `distill.method: onpolicy`, CI-sized, end to
end: the teacher scores on its own actor (`teacher_scoring`: load, idle between requests, busy),
the student's generation is a rollout phase of `student_training`, and λ = 0.5 mixes rollout
steps with off-policy ones (the synthetic data). DDP on 2 workers keeps it short; ZeRO-3's
gathered generation is the same `full_parameters` path the dev check runs."""

import json

import pandas as pd
import pytest

from raydistill.cli import main
from raydistill.results import NO_AMORTISATION, load_ledger

pytestmark = pytest.mark.slow

CI_SIZE = [
    "data.splits={test: 8, dev: 8, labelled: 16, train: 32}",
    "teacher.steps=4", "teacher.batch_size=16", "student.steps=4", "student.batch_size=8",
    "training.checkpoint_every=0", "generation.batch_size=32", "generation.max_new_tokens=8",
    "generation.engine=hf", "evaluation.lm_eval=false", "evaluation.limit=8",
    "evaluation.inference_prompts=4", "evaluation.inference_min_s=0.2",
    "sampling.source=constant:40", "sampling.hz=20", "sampling.push_interval_s=0.5",
    "sampling.idle_s=0", "baseline=false", "distill.engine=ddp", "distill.num_workers=2",
    "distill.method=onpolicy", "distill.lmbda=0.5", "distill.beta=1.0",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("onpolicy")
    argv = ["run", "configs/local-chat.yaml", "--artifacts", str(root / "artifacts"),
            "--out", str(root / "run"), *[a for s in CI_SIZE for a in ("--set", s)]]
    return root / "run", main(argv)


def test_teacher_scoring_and_rollouts_are_measured(run):
    run_dir, code = run
    assert code == 0
    table = pd.read_parquet(run_dir / "results.parquet").set_index("stage")
    scoring = table.loc["teacher_scoring"]
    assert scoring["energy_j"] > 0 and scoring["work_j"] > 0 and scoring["idle_j"] > 0
    assert scoring["side"] == "teacher" and scoring["tokens"] > 0
    student = table.loc["student_training"]
    assert student["rollout_j"] > 0 and student["rollout_tokens"] > 0
    assert student["rollout_j_per_token"] == pytest.approx(
        student["rollout_j"] / student["rollout_tokens"])
    # the update's tokens are not the rollout's: both sides scored the same sequences
    assert student["tokens"] == scoring["tokens"]


def test_the_teacher_scores_on_its_own_actor(run):
    run_dir, _ = run
    state, _ = load_ledger(run_dir)
    pids = {stage: {w.pid for w in state.windows.values() if w.stage == stage and
                    w.trial_id == "local-chat"}
            for stage in ("teacher_scoring", "student_training")}
    assert len(pids["teacher_scoring"]) == 1 and len(pids["student_training"]) == 2
    assert not pids["teacher_scoring"] & pids["student_training"]
    phases = {w.phase for w in state.windows.values() if w.stage == "teacher_scoring"}
    assert phases == {"load", "idle", "work"}


def test_metrics_carry_the_teacher_bill_and_no_n_star(run):
    run_dir, _ = run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    m = metrics["trials"][0]
    assert m["N_star"] is None and m["N_star_verdict"] == NO_AMORTISATION
    assert 0 < m["teacher_step_share"] < 1 and m["teacher_scoring_j_per_step"] > 0
    assert m["rollout_j_per_token"] > 0
    train = metrics["train"]["local-chat"]
    # λ = 0.5 on seed 0: steps 3 and 4 roll out, 1 and 2 train on the synthetic data
    assert train["rollout_steps"] == 2 and train["rollout_tokens"] > 0
    assert train["scoring_batches"] == 4 and train["scoring_requests"] == 8
    assert train["scoring_idle_s"] > train["scoring_busy_s"] > 0
