"""On-policy's two new phases, against the true integral of a simulated node: the student's
rollouts ("rollout", nested in its training window) and a teacher scoring actor's waiting
("idle", with each request a nested "work" window); and what the run's metrics say of them."""

import pytest

from raydistill.energy.ledger import LedgerState
from raydistill.energy.log import KIND_EVENT
from raydistill.energy.samples import ALL_DEVICES, IDLE, ROLLOUT, Window
from raydistill.energy.simrun import SimRun
from raydistill.energy.simulate import PowerTrace, gpu_node
from raydistill.results import NO_AMORTISATION, onpolicy_metrics, results_table

T0, T1 = 0.5, 10.5
TRAIN_W, ROLL_W = 300.0, 600.0
A, B = 3.0, 5.0  # the rollout (or the busy request), true seconds


def stepped_node(low_w: float, high_w: float, spans: list[tuple[float, float]]):
    """One GPU at `low_w`, at `high_w` over each of `spans`."""
    node = gpu_node(1)
    t, p = [0.0], [low_w]
    for a, b in spans:
        t += [a, a, b, b]
        p += [low_w, high_w, high_w, low_w]
    node.gpus[0].trace = PowerTrace(t, p)
    return node


def open_close(run: SimRun, w: Window, end_true: float, tokens: int, generated: int = 0):
    w1, m1 = run.at(end_true)
    run.apply(KIND_EVENT, LedgerState.open_event(w))
    run.apply(KIND_EVENT, LedgerState.close_event(w.window_id, w1, tokens, None, m1,
                                                  generated_tokens=generated))


def window(run: SimRun, wid: str, stage: str, start_true: float, phase: str = "work",
           parent: str | None = None) -> Window:
    w0, m0 = run.at(start_true)
    return Window(wid, "t1", stage, run.node_id, ALL_DEVICES, w0, t_start_mono_s=m0,
                  phase=phase, parent_id=parent)


def truth_j(node, run, a, b):
    return sum(node.truth_j(d, a, b) for n in run.state.nodes() for d, _ in run.state.devices(n))


@pytest.fixture
def rollout_run(tmp_path):
    node = stepped_node(TRAIN_W, ROLL_W, [(A, B)])
    run = SimRun(node, tmp_path)
    run.sampler("a")
    run.until(T1 + 1.0)
    train = window(run, "train", "student_training", T0)
    run.apply(KIND_EVENT, LedgerState.open_event(train))
    roll = window(run, "roll", "student_training", A, ROLLOUT, parent="train")
    open_close(run, roll, B, 200, 200)
    w1, m1 = run.at(T1)
    run.apply(KIND_EVENT, LedgerState.close_event("train", w1, 1000, None, m1))
    run.push_all()
    return node, run


def test_rollouts_are_their_own_phase_with_their_own_tokens(rollout_run):
    node, run = rollout_run
    (row,) = results_table(run.state.energy_rows()).itertuples()
    tol = 2 * 0.1 * ROLL_W + 3.0  # the counter's refresh at two edges; RAPL to the microjoule
    assert row.rollout_j == pytest.approx(truth_j(node, run, A, B), abs=tol)
    assert row.work_j == pytest.approx(truth_j(node, run, T0, A) + truth_j(node, run, B, T1),
                                       abs=2 * tol)
    assert row.load_j + row.work_j + row.rollout_j + row.idle_j == row.energy_j  # exactly
    assert row.energy_j == pytest.approx(truth_j(node, run, T0, T1), abs=3.0)
    # the update's tokens and the rollout's apart: neither counts the other
    assert row.tokens == 1000 and row.rollout_tokens == 200
    assert row.rollout_j_per_token == row.rollout_j / 200
    assert row.j_per_token == row.work_j / 1000
    assert row.rollout_s == pytest.approx(B - A)


def test_a_stage_without_rollouts_has_none(rollout_run, tmp_path):
    _, run = rollout_run
    plain = window(run, "plain", "evaluation", T0)
    open_close(run, plain, T1, 50)
    table = results_table(run.state.energy_rows()).set_index("stage")
    assert table.at["evaluation", "rollout_j"] == 0.0
    assert table.at["evaluation", "rollout_tokens"] == 0
    assert table["rollout_j_per_token"].isna()["evaluation"]


def test_scoring_idle_between_requests_is_shown_as_idle(tmp_path):
    busy = [(2.0, 3.0), (6.0, 7.0)]
    node = stepped_node(100.0, 500.0, busy)
    run = SimRun(node, tmp_path)
    run.sampler("a")
    run.until(T1 + 1.0)
    idle = window(run, "idle", "teacher_scoring", T0, IDLE)
    run.apply(KIND_EVENT, LedgerState.open_event(idle))
    for i, (a, b) in enumerate(busy):
        open_close(run, window(run, f"req{i}", "teacher_scoring", a, parent="idle"), b, 100)
    w1, m1 = run.at(T1)
    run.apply(KIND_EVENT, LedgerState.close_event("idle", w1, 0, None, m1))
    run.push_all()
    (row,) = results_table(run.state.energy_rows()).itertuples()
    busy_true = sum(truth_j(node, run, a, b) for a, b in busy)
    tol = 4 * 0.1 * 500.0 + 3.0
    assert row.work_j == pytest.approx(busy_true, abs=tol)
    assert row.idle_j == pytest.approx(truth_j(node, run, T0, T1) - busy_true, abs=tol)
    assert row.tokens == 200
    assert row.j_per_token == row.work_j / 200  # the requests' steady state, idle apart


def test_onpolicy_metrics_give_the_teacher_share_per_step_and_no_n_star(rollout_run):
    _, run = rollout_run
    idle = window(run, "idle", "teacher_scoring", T0, IDLE)
    run.apply(KIND_EVENT, LedgerState.open_event(idle))
    open_close(run, window(run, "req", "teacher_scoring", 6.0, parent="idle"), 7.0, 300)
    w1, m1 = run.at(T1)
    run.apply(KIND_EVENT, LedgerState.close_event("idle", w1, 0, None, m1))
    table = results_table(run.state.energy_rows())
    m = onpolicy_metrics(table, "t1", steps=4)
    rows = table.set_index("stage")
    scoring = rows.loc["teacher_scoring"]
    student = rows.loc["student_training"]
    assert m["teacher_scoring_j"] == scoring["energy_j"] > 0
    assert m["teacher_scoring_busy_j"] == scoring["work_j"] > 0
    assert m["teacher_scoring_idle_j"] == scoring["idle_j"] > 0
    steady_student = student["work_j"] + student["rollout_j"]
    assert m["teacher_scoring_j_per_step"] == pytest.approx(scoring["energy_j"] / 4)
    assert m["teacher_step_share"] == pytest.approx(
        scoring["energy_j"] / (scoring["energy_j"] + steady_student))
    assert m["rollout_tokens"] == 200
    assert m["rollout_j_per_token"] == pytest.approx(student["rollout_j"] / 200)
    assert m["update_j_per_token"] == pytest.approx(student["work_j"] / 1000)
    assert m["N_star"] is None and m["N_star_verdict"] == NO_AMORTISATION


def test_window_phases_include_rollout_and_idle():
    for phase in (ROLLOUT, IDLE):
        assert Window("w", "t", "s", "n", ALL_DEVICES, 0.0, phase=phase).phase == phase
    with pytest.raises(ValueError, match="phase must be one of"):
        Window("w", "t", "s", "n", ALL_DEVICES, 0.0, phase="decode")
