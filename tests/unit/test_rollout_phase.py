"""On-policy rollouts as a phase of student_training, and teacher_scoring as a recurring bill.

A rollout window (phase "rollout") nested in the training window takes its device-seconds: the
results row of student_training says rollout_j (the true energy of the rollouts), work_j (the
update, the rest), their sum as energy_j, the training tokens apart from the rollout's generated
tokens, and J per rollout token. A trial with teacher_scoring has it on its teacher side and gets
no N* (nothing to amortise)."""

import pytest

from raydistill.energy.ledger import LedgerState
from raydistill.energy.log import KIND_EVENT
from raydistill.energy.samples import ALL_DEVICES, ROLLOUT, Window
from raydistill.energy.simrun import SimRun
from raydistill.energy.simulate import PowerTrace, gpu_node
from raydistill.results import results_table, seed_metrics

UPDATE_W, ROLLOUT_W = 300.0, 700.0
T0, R0, R1, T1 = 0.5, 10.5, 20.5, 30.5  # training window; the rollout inside it
TRAIN_TOKENS, PROMPT, GENERATED = 5000, 400, 800


def tol_j(power_w: float) -> float:
    return 4 * 0.1 * power_w + 1.0  # the counter's 100 ms refresh at each of the edges


@pytest.fixture
def rolled(tmp_path):
    node = gpu_node(1)
    node.gpus[0].trace = PowerTrace([0.0, R0, R0, R1, R1],
                                    [UPDATE_W, UPDATE_W, ROLLOUT_W, ROLLOUT_W, UPDATE_W])
    run = SimRun(node, tmp_path)
    run.sampler("a")
    run.until(T1 + 1.0)
    (w0, m0), (r0, q0), (r1, q1), (w1, m1) = (run.at(t) for t in (T0, R0, R1, T1))
    train = Window("t1-train", "t1", "student_training", run.node_id, ALL_DEVICES, w0,
                   t_start_mono_s=m0)
    roll = Window("t1-roll", "t1", "student_training", run.node_id, ALL_DEVICES, r0,
                  t_start_mono_s=q0, phase=ROLLOUT, parent_id="t1-train")
    run.apply(KIND_EVENT, LedgerState.open_event(train))
    run.apply(KIND_EVENT, LedgerState.open_event(roll))
    run.apply(KIND_EVENT, LedgerState.close_event("t1-roll", r1, PROMPT + GENERATED, None, q1,
                                                  generated_tokens=GENERATED))
    run.apply(KIND_EVENT, LedgerState.close_event("t1-train", w1, TRAIN_TOKENS, None, m1))
    run.push_all()
    return node, run


def truth_j(node, run, a: float, b: float) -> float:
    return sum(node.truth_j(d, a, b) for n in run.state.nodes() for d, _ in run.state.devices(n))


def test_rollout_is_its_own_phase_of_student_training(rolled):
    node, run = rolled
    (row,) = results_table(run.state.energy_rows()).itertuples()
    assert row.stage == "student_training"
    gpu = node.gpus[0].uuid
    assert row.rollout_j == pytest.approx(truth_j(node, run, R0, R1), abs=tol_j(ROLLOUT_W))
    assert row.work_j == pytest.approx(truth_j(node, run, T0, R0) + truth_j(node, run, R1, T1),
                                       abs=tol_j(ROLLOUT_W))
    assert row.energy_j == row.load_j + row.work_j + row.rollout_j
    assert row.energy_j == pytest.approx(truth_j(node, run, T0, T1), abs=tol_j(ROLLOUT_W))
    rows = run.state.energy_rows()
    gpu_roll = next(r for r in rows if r.window_id == "t1-roll" and r.device_id == gpu)
    assert gpu_roll.energy_j == pytest.approx(ROLLOUT_W * (R1 - R0), abs=tol_j(ROLLOUT_W))
    assert row.rollout_s == pytest.approx(R1 - R0, abs=0.01)


def test_rollout_tokens_are_apart_from_the_training_tokens(rolled):
    _, run = rolled
    (row,) = results_table(run.state.energy_rows()).itertuples()
    # the training window carries tokens, yet the rollout's are other work: both are kept
    assert (row.tokens, row.rollout_tokens, row.generated_tokens) == (TRAIN_TOKENS, GENERATED, 0)
    assert row.j_per_token == row.work_j / TRAIN_TOKENS  # the update alone
    assert row.rollout_j_per_token == row.rollout_j / GENERATED


def test_stage_without_rollouts_has_zero_rollout_columns(tmp_path):
    node = gpu_node(1)
    run = SimRun(node, tmp_path)
    run.sampler("a")
    run.until(5.0)
    w0, m0 = run.at(0.5)
    w1, m1 = run.at(4.5)
    plain = Window("t1-x", "t1", "student_training", run.node_id, ALL_DEVICES, w0,
                   t_start_mono_s=m0)
    run.apply(KIND_EVENT, LedgerState.open_event(plain))
    run.apply(KIND_EVENT, LedgerState.close_event("t1-x", w1, 100, None, m1))
    run.push_all()
    (row,) = results_table(run.state.energy_rows()).itertuples()
    assert (row.rollout_j, row.rollout_tokens, row.tokens) == (0.0, 0, 100)
    assert row.energy_j == row.load_j + row.work_j  # + 0.0: the figure is unchanged


def _table(scoring_j: float):
    import pandas as pd

    rows = [("onp", "teacher_scoring", scoring_j), ("onp", "student_training", 50.0),
            ("base", "student_training", 90.0)]
    return pd.DataFrame([{"trial_id": t, "stage": s, "energy_j": e, "work_j": e, "tokens": 10,
                          "stated_error_j": 0.01 * e} for t, s, e in rows])


def test_teacher_scoring_is_teacher_side_and_gets_no_n_star():
    m = seed_metrics(_table(30.0), "onp", {}, baseline_trial="base")
    assert m["teacher_side_j"] == 30.0 and m["teacher_recurring_j"] == 30.0
    assert m["teacher_share"] == pytest.approx(30.0 / 80.0)
    assert m["N_star"] is None and m["N_star_verdict"] is None  # recurring: nothing amortised
    # the same table without scoring energy (a reusable teacher, 0 J here) still gets one
    assert seed_metrics(_table(0.0), "onp", {}, baseline_trial="base")["N_star_verdict"]


def test_sweep_configuration_with_a_recurring_teacher_gets_no_n_star():
    import pandas as pd

    from raydistill.results import NO_AMORTISATION
    from raydistill.search.derived import derived_figures

    def trials(method: str) -> pd.DataFrame:
        return pd.DataFrame({"trial_id": ["t0", "t1"], "status": ["finished"] * 2,
                             "quality": [0.5] * 2, "energy_j": [1.0] * 2,
                             "param.distill.method": ["none", method], "param.lr": [0.1] * 2,
                             "student_training_j": [200.0, 150.0],
                             "student_training_error_j": [10.0, 5.0],
                             "teacher_side_j": [0.0, 300.0], "teacher_side_error_j": [0.0, 15.0]})

    assert derived_figures(trials("logit"))["n_star"][1] == 6.0  # a reusable teacher: N*
    d = derived_figures(trials("onpolicy"))  # the same figures, scored every step
    # no N*, and the verdict says why (the comparison there is energy to quality)
    assert d["n_star"][1] is None
    assert d["n_star_verdict"][1] == NO_AMORTISATION


def test_report_stage_table_shows_rollouts_only_where_there_are_some(rolled, tmp_path):
    from raydistill.report.html import _stage_table

    _, run = rolled
    shown = _stage_table(results_table(run.state.energy_rows()))
    assert {"rollout_j", "rollout_tokens", "rollout_j_per_token"} <= set(shown.columns)
    without = results_table(run.state.energy_rows()).assign(rollout_j=0.0)
    assert "rollout_j" not in _stage_table(without).columns  # off-policy runs: unchanged


def test_the_scoring_pool_idle_phase_is_shown_where_a_run_has_one():
    # the bug: the report's stage table and the console summary showed load and work but not
    # idle, so teacher_scoring's energy != load + work with nothing to say why
    import pandas as pd

    from raydistill.report.html import _stage_table
    from raydistill.run import RunResult, summary

    rows = [{"trial_id": "op", "stage": stage, "energy_j": e, "load_j": load, "work_j": work,
             "rollout_j": roll, "idle_j": idle, "idle_s": idle_s, "duration_s": 10.0,
             "tokens": 100, "rollout_tokens": 20 if roll else 0, "energy_method": "estimated"}
            for stage, e, load, work, roll, idle, idle_s in (
                ("teacher_scoring", 50.0, 5.0, 20.0, 0.0, 25.0, 6.0),
                ("student_training", 100.0, 10.0, 60.0, 30.0, 0.0, 0.0))]
    table = pd.DataFrame(rows)
    shown = _stage_table(table)
    assert {"idle_j", "idle_s"} <= set(shown.columns)
    scoring = shown.set_index("stage").loc["teacher_scoring"]
    assert scoring["energy_j"] == scoring["load_j"] + scoring["work_j"] + scoring["idle_j"]
    header = summary(RunResult(None, table, [], [])).splitlines()[0].split()
    assert {"work", "rollout", "idle", "idle_s"} <= set(header)
    # a run without idle devices or rollouts: unchanged
    plain = table.assign(idle_j=0.0, idle_s=0.0, rollout_j=0.0)
    assert "idle_j" not in _stage_table(plain).columns
    assert "idle" not in summary(RunResult(None, plain, [], [])).splitlines()[0].split()


def test_the_profile_forecast_projects_the_scoring_pool_with_the_training():
    # the bug: only student_training's power was projected; an on-policy trial's
    # teacher_scoring, which grows with every step, was counted as the part done so far
    from raydistill.search.trial import running_profile

    rows = [{"stage": "teacher_generation", "energy_j": 30.0, "t_start_s": 0.0, "t_end_s": 5.0},
            {"stage": "student_training", "energy_j": 100.0, "t_start_s": 10.0,
             "t_end_s": 20.0},
            {"stage": "teacher_scoring", "energy_j": 50.0, "t_start_s": 10.0, "t_end_s": 20.0}]
    done, running_j = running_profile(rows, t_ready=10.0, t_now=20.0, progress=0.25)
    assert done == {"teacher_generation": 30.0}
    assert running_j == pytest.approx(15.0 * 10.0 / 0.25)  # both stages' 15 W, 40 s in all
    off_policy, student_j = running_profile(rows[:2], 10.0, 20.0, 0.25)
    assert student_j == pytest.approx(10.0 * 40.0) and off_policy == {"teacher_generation": 30.0}
    assert running_profile(rows[:1], 10.0, 20.0, 0.25) is None
