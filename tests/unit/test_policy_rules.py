"""report.policy_rules on constructed runs: the energy each method spent to reach a dev quality,
teacher side included (artifacts in full, teacher_scoring up to the crossing), which used the
least only where the intervals say so, methods that never got there, repeats, and the same
from a sweep's trials table. And search_spaces/policy.yaml puts the methods side by side."""

from pathlib import Path

import pandas as pd
import pytest

from raydistill.equal_quality import curve_json
from raydistill.intervals import Figure
from raydistill.report.policy_rules import (
    PolicyRun,
    common_quality,
    energy_to_quality,
    method_energies,
    policy_rules,
    runs_from_trials,
)

ROOT = Path(__file__).resolve().parents[2]


def curve(qualities, spent, n=None):
    steps = len(qualities)
    return [{"step": i + 1, "steps": steps, "quality": q, "n": n, "spent_j": j}
            for i, (q, j) in enumerate(zip(qualities, spent, strict=True))]


def fig(value, err=0.0):
    return Figure.of(value, independent_j=err)


NONE = PolicyRun("b", "none", curve([0.1, 0.2, 0.3, 0.4], [100, 200, 300, 400]), fig(400, 4))
LOGIT = PolicyRun("l", "logit", curve([0.3, 0.45, 0.5, 0.55], [10, 20, 30, 40]), fig(40, 1),
                  teacher_once=fig(20, 1))
ONPOLICY = PolicyRun("o", "onpolicy", curve([0.2, 0.4, 0.5, 0.6], [25, 50, 75, 100]),
                     fig(100, 1), teacher_recurring=fig(200, 2))
SFT = PolicyRun("s", "sft", curve([0.1, 0.2, 0.3, 0.35], [10, 20, 30, 40]), fig(40, 1),
                teacher_once=fig(20, 1))


def test_recurring_teacher_counts_up_to_the_crossing_artifacts_in_full():
    # onpolicy first reaches 0.4 at its 2nd check: training 37.5 J (between 25 and 50 J), the
    # 37.5% of its training, so 37.5% of its 200 J of teacher_scoring
    e = energy_to_quality(ONPOLICY, 0.4)
    assert e.value == pytest.approx(37.5 + 0.375 * 200)
    # the artifacts are paid before the first step: all of them, whatever the crossing
    assert energy_to_quality(LOGIT, 0.4).value == pytest.approx(20 + 15)
    assert energy_to_quality(SFT, 0.4) is None
    assert e.error > 12.5  # the crossing's granularity and the meters' errors


def test_cheapest_method_named_only_where_intervals_part():
    rules = policy_rules([NONE, LOGIT, ONPOLICY, SFT], q=0.4)
    assert rules[0] == "sft never reached dev quality 0.400 in its training."
    text = rules[-1]
    assert "logit reached it on the least energy" in text
    # listed cheapest first, each with its interval
    assert text.index("logit") < text.index("onpolicy") < text.index("none")
    assert "35.0 J ±" in text and "112.5 J ±" in text and "350.0 J ±" in text


def test_overlapping_intervals_say_not_distinguishable():
    close = PolicyRun("o2", "onpolicy", curve([0.2, 0.4, 0.5, 0.6], [20, 40, 60, 80]),
                      fig(80, 1), teacher_recurring=fig(10, 1))  # 30 + 3.75: near logit's 35
    text = policy_rules([LOGIT, close], q=0.4)[-1]
    assert "not distinguishably from" in text
    assert "reached it on the least energy" not in text


def test_repeats_average_and_a_repeat_short_of_q_disqualifies_its_configuration():
    a = PolicyRun("o-a", "onpolicy", ONPOLICY.curve, ONPOLICY.training,
                  teacher_recurring=ONPOLICY.teacher_recurring, configuration="beta=1.0")
    b = PolicyRun("o-b", "onpolicy", curve([0.2, 0.3, 0.35, 0.38], [25, 50, 75, 100]),
                  fig(100, 1), teacher_recurring=fig(200, 2), configuration="beta=1.0")
    c = PolicyRun("o-c", "onpolicy", LOGIT.curve, fig(40, 1), teacher_recurring=fig(40, 1),
                  configuration="beta=0.0")
    assert method_energies([a, b], 0.4) == {"onpolicy": None}
    config, e = method_energies([a, b, c], 0.4)["onpolicy"]
    assert config == "beta=0.0"  # the method's cheapest configuration that reached q
    assert e.value == energy_to_quality(c, 0.4).value
    two = PolicyRun("o-d", "onpolicy", a.curve, a.training, teacher_recurring=a.teacher_recurring,
                    configuration="beta=1.0")
    _, mean = method_energies([a, two], 0.4)["onpolicy"]
    assert mean.value == pytest.approx(energy_to_quality(a, 0.4).value) and mean.repeats == 2


def test_default_quality_is_the_best_every_method_reached_and_band_is_stated():
    assert common_quality([NONE, LOGIT, ONPOLICY]) == 0.4
    assert common_quality([]) is None and policy_rules([]) == []
    with_n = PolicyRun("l", "logit", curve([0.3, 0.45], [10, 20], n=64), fig(20, 1))
    text = policy_rules([with_n])[-1]
    assert "dev quality 0.450 (a dev score on 64 rows:" in text and "Only logit" in text


def test_runs_from_a_sweep_trials_table():
    rows = []
    for tid, method, run, scoring in (("t1", "logit", LOGIT, None), ("t2", "onpolicy", ONPOLICY,
                                                                       150.0),
                                      ("t3", "feature", LOGIT, None)):
        side = run.teacher_once.value + run.teacher_recurring.value
        rows.append({"trial_id": tid, "status": "finished", "param.distill.method": method,
                     "param.distill.beta": 1.0, "param.trial": tid,
                     "dev_curve": curve_json(run.curve),
                     "student_training_j": run.training.value, "student_training_error_j": 1.0,
                     "teacher_side_j": side, "teacher_side_error_j": 2.0,
                     "teacher_scoring_j": scoring})
    runs = runs_from_trials(pd.DataFrame(rows))
    assert [r.method for r in runs] == ["logit", "onpolicy"]  # feature is not compared here
    logit, onp = runs
    assert (logit.teacher_once.value, logit.teacher_recurring.value) == (20.0, 0.0)
    # the table's teacher_scoring_j is the recurring part; the rest was built once
    assert onp.teacher_recurring.value == pytest.approx(150.0)
    assert onp.teacher_once.value == pytest.approx(50.0)
    assert onp.configuration == "distill.beta=1.0"
    assert energy_to_quality(onp, 0.4).value == pytest.approx(50 + 0.375 * 150 + 37.5)
    no_column = pd.DataFrame(rows).drop(columns=["teacher_scoring_j"])
    onp_all = runs_from_trials(no_column)[1]
    assert onp_all.teacher_recurring.value == pytest.approx(200.0)  # all of it, scaled later
    # the report's design rules carry the sentence where a sweep has on-policy trials
    from raydistill.report.rules import _policy_rules

    (text,) = _policy_rules(pd.DataFrame(rows))
    assert text.startswith("Energy to reach dev quality 0.550") and "268.8 J" in text
    assert _policy_rules(pd.DataFrame(rows[:1])) == []  # no on-policy trial: N* rules apply


def test_policy_space_puts_the_methods_side_by_side():
    from raydistill.search.space import load_space

    space = load_space(ROOT / "search_spaces" / "policy.yaml")
    params = {p.name: p.values for p in space.params}
    assert {"none", "sft", "logit", "onpolicy"} <= set(params["distill.method"])
    assert {"distill.beta", "distill.lmbda"} <= set(params)
    assert space.config_for({"distill.method": "onpolicy", "distill.beta": 1.0,
                             "distill.lmbda": 0.5}).distill.lmbda == 0.5


def test_a_trials_table_built_by_tables_carries_teacher_scoring_apart_from_the_artifacts():
    # the bug: tables.py wrote only teacher_side_j, so policy_rules took an on-policy trial's
    # whole teacher side (synthetic data included) as recurring and scaled it to the crossing
    from raydistill.energy.accuracy import row_error_j
    from raydistill.energy.ledger import EnergyRow
    from raydistill.results import results_table
    from raydistill.search.tables import trials_table

    def row(stage: str, energy_j: float) -> dict:
        r = {f: None for f in EnergyRow.__dataclass_fields__}
        r.update(trial_id="o~1", stage=stage, node_id="n", device_id="cpu0", device_kind="cpu",
                 device_model="", energy_j=energy_j, above_idle_j=energy_j, duration_s=600.0,
                 t_start_s=0.0, t_end_s=600.0, tokens=0, generated_tokens=0, method="rapl",
                 shared=False, gap_s=0.0, unmeasured_s=0.0, unmeasured_max_j=0.0,
                 interpolated=False, n_samples=100, window_id=f"o~1/{stage}", phase="work",
                 stated_error_j=row_error_j(energy_j, "rapl", "cpu", 600.0))
        return r

    ledger = results_table([row("teacher_generation", 300.0), row("teacher_scoring", 200.0),
                            row("student_training", 100.0)])
    result = {"metrics": {"trial_id": "o", "ledger_trial": "o~1", "status": "finished",
                          "quality": 0.6, "progress": 1.0, "energy_marginal_j": 600.0,
                          "energy_full_j": 600.0},
              "config": {"distill.method": "onpolicy"}, "error": None}
    trials = trials_table([result], ledger, {"energy_view": "full"},
                          curves={"o~1": curve_json(ONPOLICY.curve)})
    assert trials.at[0, "teacher_scoring_j"] == pytest.approx(200.0)
    assert trials.at[0, "teacher_scoring_error_j"] > 0
    (onp,) = runs_from_trials(trials)
    assert onp.teacher_recurring.value == pytest.approx(200.0)
    assert onp.teacher_once.value == pytest.approx(300.0)  # the synthetic data: in full


def test_settings_a_method_ignores_make_repeats_not_configurations_and_a_least_is_stated():
    # the bug: policy.yaml varies beta and lambda for every method; keyed on every param.*, two
    # logit trials differing only in beta were two "configurations" and the cheaper single run
    # was taken as logit's figure
    def row(tid, method, beta, lmbda, run):
        side = run.teacher_once.value + run.teacher_recurring.value
        return {"trial_id": tid, "status": "finished", "param.distill.method": method,
                "param.distill.beta": beta, "param.distill.lmbda": lmbda, "param.lr": 0.1,
                "dev_curve": curve_json(run.curve), "student_training_j": run.training.value,
                "student_training_error_j": 1.0, "teacher_side_j": side,
                "teacher_side_error_j": 2.0,
                "teacher_scoring_j": run.teacher_recurring.value}

    cheap = PolicyRun("x", "logit", curve([0.3, 0.45], [5, 10]), fig(10, 1),
                      teacher_once=fig(20, 1))
    rows = [row("l1", "logit", 0.0, 0.5, LOGIT), row("l2", "logit", 1.0, 1.0, cheap),
            row("o1", "onpolicy", 0.0, 0.5, ONPOLICY), row("o2", "onpolicy", 1.0, 0.5, ONPOLICY)]
    runs = runs_from_trials(pd.DataFrame(rows))
    assert {r.configuration for r in runs if r.method == "logit"} == {"lr=0.1"}
    assert {r.configuration for r in runs if r.method == "onpolicy"} == {
        "distill.beta=0.0, distill.lmbda=0.5, lr=0.1",
        "distill.beta=1.0, distill.lmbda=0.5, lr=0.1"}
    _, logit = method_energies(runs, 0.4)["logit"]
    assert logit.repeats == 2  # pooled: the mean of both, not the cheaper one
    assert logit.value == pytest.approx((energy_to_quality(LOGIT, 0.4).value
                                         + energy_to_quality(cheap, 0.4).value) / 2)
    text = policy_rules(runs, q=0.4)[-1]
    assert "the least of 2 configurations that reached it, a single run" in text
    # with loss jsd, logit KD reads beta: then it is part of logit's configuration
    jsd = pd.DataFrame(rows).assign(**{"param.distill.loss": "jsd"})
    assert {r.configuration for r in runs_from_trials(jsd) if r.method == "logit"} == {
        "distill.beta=0.0, distill.loss=jsd, lr=0.1", "distill.beta=1.0, distill.loss=jsd, lr=0.1"}


def test_scoring_keeps_its_own_stated_error_apart_from_the_artifacts():
    # 200 J of teacher side, ± 80 J stated (the artifacts' estimate), of which 150 J is scoring
    # measured at ± 3 J: the recurring part carries ± 3 J, not 150/200 of ± 80 J
    row = {"trial_id": "t", "status": "finished", "param.distill.method": "onpolicy",
           "dev_curve": curve_json(ONPOLICY.curve), "student_training_j": 75.0,
           "student_training_error_j": 1.0, "teacher_side_j": 200.0,
           "teacher_side_error_j": 80.0, "teacher_scoring_j": 150.0,
           "teacher_scoring_error_j": 3.0}
    (run,) = runs_from_trials(pd.DataFrame([row]))
    assert run.teacher_recurring.value == pytest.approx(150.0)
    assert run.teacher_recurring.error == pytest.approx(3.0)
    assert run.teacher_once.value == pytest.approx(50.0)
