"""Derived figures with their uncertainty: stated errors per method, interval arithmetic, N*
and the break-even tokens with their bounds, repeats, and rules left out when unsupported."""

import math
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raydistill.energy.accuracy import (
    STATED_RELATIVE_ERROR,
    UNKNOWN_RELATIVE_ERROR,
    relative_error,
    stated_error_j,
)
from raydistill.report.data import ReportData
from raydistill.report.payback import figure_text, payback_frame
from raydistill.report.rules import design_rules
from raydistill.search.derived import derived_figures, repeats_interval
from raydistill.search.tables import trials_table
from raydistill.search.uncertainty import (
    DISTINGUISHABLE,
    NEVER,
    NOT_DISTINGUISHABLE,
    Interval,
    difference,
    fmt_ratio,
    mean_of_repeats,
    ratio_bounds,
    total,
)

# ---- stated errors ---------------------------------------------------------------------------


def test_stated_error_per_method_takes_the_worst_of_a_mix():
    assert relative_error("counter") == STATED_RELATIVE_ERROR["counter"] == 0.05
    assert relative_error("counter+sampled") == 0.10
    assert relative_error("counter+interpolated") == 0.20
    assert relative_error("estimated+sampled") == 0.50
    assert relative_error(None) == relative_error("") == UNKNOWN_RELATIVE_ERROR == 0.50
    assert relative_error("from-the-future") == UNKNOWN_RELATIVE_ERROR
    assert stated_error_j(100.0, "sampled") == 10.0
    assert stated_error_j(100.0, "counter", unmeasured_max_j=3.0) == 8.0  # the bound adds
    assert stated_error_j(0.0, "unmeasured", unmeasured_max_j=4.0) == 4.0


# ---- interval arithmetic (properties) --------------------------------------------------------

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
errors = st.floats(0.0, 1e5, allow_nan=False, allow_infinity=False)
unit = st.floats(0.0, 1.0)


@settings(max_examples=200, deadline=None)
@given(finite, errors, finite, errors, unit, unit)
def test_a_difference_holds_every_difference_of_values_inside_its_inputs(a, ea, b, eb, u, v):
    ia, ib = Interval(a, ea), Interval(b, eb)
    x, y = ia.low + u * (ia.high - ia.low), ib.low + v * (ib.high - ib.low)
    d = difference(ia, ib)
    assert d.low - 1e-6 <= x - y <= d.high + 1e-6


@settings(max_examples=200, deadline=None)
@given(st.floats(0.0, 1e6), errors, finite, errors, unit, unit)
def test_ratio_bounds_are_ordered_and_hold_every_ratio_inside(n, en, d, ed, u, v):
    num, den = Interval(n, en), Interval(d, ed)
    r = ratio_bounds(num, den)
    if den.spans_zero():
        assert r.verdict == NOT_DISTINGUISHABLE and r.value is None
        return
    if den.high < 0:
        assert r.verdict == NEVER and r.value is None
        return
    assert r.verdict == DISTINGUISHABLE
    assert r.low <= r.value * (1 + 1e-12) and r.value <= r.high * (1 + 1e-12)
    x = max(num.low, 0.0) + u * (num.high - max(num.low, 0.0))
    y = den.low + v * (den.high - den.low)
    assert r.low * (1 - 1e-9) <= x / y <= r.high * (1 + 1e-9)


@given(errors, errors)
def test_a_denominator_spanning_zero_is_never_a_number(e1, e2):
    r = ratio_bounds(Interval(10.0, e1), Interval(0.0, e2))
    assert r.verdict == NOT_DISTINGUISHABLE
    assert fmt_ratio(r).startswith("not distinguishable (saving 0 J ± ")


def test_interval_rejects_a_negative_or_missing_error():
    with pytest.raises(ValueError):
        Interval(1.0, -0.1)
    with pytest.raises(ValueError):
        Interval(math.nan, 0.1)
    assert total([Interval(1.0, 0.1), Interval(2.0, 0.2)]) == Interval(3.0, 0.1 + 0.2)


# ---- N* on hand-built trials -----------------------------------------------------------------


def _trials(training: list[float], method: list[str], **extra) -> pd.DataFrame:
    n = len(training)
    lr = extra.pop("lr", [0.1] * n)
    return pd.DataFrame({"trial_id": [f"t{i}" for i in range(n)], "status": ["finished"] * n,
                         "quality": [0.5] * n, "energy_j": [1.0] * n,
                         "param.distill.method": method, "param.lr": lr,
                         "student_training_j": training, **extra})


def test_a_difference_within_the_stated_error_is_not_distinguishable():
    # the default run that printed N* = 767: 0.06 J saved, against a 1 J stated error
    t = _trials([100.06, 100.0], ["none", "logit"], teacher_side_j=[0.0, 46.0],
                teacher_side_error_j=[0.0, 2.3], student_training_error_j=[0.5, 0.5])
    d = derived_figures(t)
    assert d["n_star_verdict"][1] == NOT_DISTINGUISHABLE
    assert d["n_star"][1] is None and d["n_star_low"][1] is None


def test_a_clear_difference_gives_n_star_with_its_bounds():
    t = _trials([200.0, 150.0], ["none", "logit"], teacher_side_j=[0.0, 300.0],
                teacher_side_error_j=[0.0, 15.0], student_training_error_j=[10.0, 5.0])
    d = derived_figures(t)  # saved 50 ± 15 J: [35, 65]; teacher side [285, 315]
    assert d["n_star_verdict"][1] == DISTINGUISHABLE
    assert d["n_star"][1] == 6.0
    assert d["n_star_low"][1] == 285.0 / 65.0
    assert d["n_star_high"][1] == 315.0 / 35.0
    clearly_dearer = _trials([200.0, 300.0], ["none", "logit"], teacher_side_j=[0.0, 300.0],
                             teacher_side_error_j=[0.0, 15.0],
                             student_training_error_j=[10.0, 5.0])
    assert derived_figures(clearly_dearer)["n_star_verdict"][1] == NEVER


def test_repeats_shrink_with_their_number_and_grow_with_their_spread():
    one = _trials([150.0], ["logit"], student_training_error_j=[5.0])
    same = _trials([150.0, 150.0], ["logit"] * 2, student_training_error_j=[5.0, 5.0])
    spread2 = _trials([140.0, 160.0], ["logit"] * 2, student_training_error_j=[5.0, 5.0])
    spread4 = _trials([140.0, 160.0] * 2, ["logit"] * 4, student_training_error_j=[5.0] * 4)
    get = lambda t: repeats_interval(t, "student_training_j", "student_training_error_j")  # noqa: E731
    assert get(one) == Interval(150.0, 5.0)
    assert get(same) == Interval(150.0, 5.0)  # agreeing repeats: the stated error, no less
    # 95% t-intervals of the mean: SEM of (140, 160) is 10 J, × t(1 dof) = 12.706
    assert get(spread2).error == pytest.approx(math.hypot(5.0, 12.7062 * 10.0))
    assert get(spread4).error == pytest.approx(math.hypot(5.0, 3.1824 * math.sqrt(400.0 / 3) / 2))
    assert get(same).error < get(spread4).error < get(spread2).error
    assert mean_of_repeats([1.0, 3.0], [0.0, 0.0]) == Interval(2.0, 12.7062)


def test_repeats_of_a_configuration_share_its_figures_and_their_spread_counts():
    # baseline 200 ± 10; the logit configuration ran twice: 150 J both times, or 110 and 190
    agree = _trials([200.0, 150.0, 150.0], ["none", "logit", "logit"],
                    teacher_side_j=[0.0, 300.0, 300.0], teacher_side_error_j=[0.0, 15.0, 15.0],
                    student_training_error_j=[10.0, 5.0, 5.0])
    d = derived_figures(agree)
    assert list(d["repeats"]) == [1, 2, 2]
    assert d["n_star"][1] == d["n_star"][2] == 6.0
    assert d["n_star_high"][1] == 315.0 / 35.0
    disagree = agree.assign(student_training_j=[200.0, 110.0, 190.0])
    # the same mean, but a 40 J standard error: saved 50 ± 50.3 J spans 0
    assert derived_figures(disagree)["n_star_verdict"][1] == NOT_DISTINGUISHABLE


# ---- the deployer's break-even, end to end from a results table -----------------------------


def _results(saved_j: float) -> pd.DataFrame:
    """A distilled trial d~1 and a baseline b~1 as results.parquet has them."""
    rows = [("d~1", "teacher_generation", 200.0, 200.0, 0, "counter"),
            ("d~1", "teacher_logit_caching", 100.0, 100.0, 0, "counter"),
            ("d~1", "student_training", 600.0, 600.0, 0, "sampled"),
            ("d~1", "evaluation", 100.0, 100.0, 0, "estimated"),
            ("d~1", "inference_teacher", 60.0, 50.0, 100, "counter"),
            ("d~1", "inference_student", 12.0, 10.0, 100, "sampled"),
            ("b~1", "student_training", 600.0 + saved_j, 600.0 + saved_j, 0, "counter"),
            ("b~1", "evaluation", 50.0, 50.0, 0, "counter"),
            ("b~1", "inference_student", 12.0, 10.0, 100, "counter")]
    return pd.DataFrame([{"trial_id": t, "stage": s, "energy_j": e, "work_j": w, "tokens": n,
                          "generated_tokens": n if s.startswith("inference_") else 0,
                          "energy_method": m, "unmeasured_max_j": 0.0}
                         for t, s, e, w, n, m in rows])


def _tune(trial: str, method: str, energy_j: float) -> dict:
    return {"metrics": {"trial_id": trial, "ledger_trial": f"{trial}~1", "status": "finished",
                        "quality": 0.5, "progress": 1.0, "energy_marginal_j": energy_j,
                        "energy_full_j": energy_j},
            "config": {"distill.method": method}, "error": None}


def _sweep(saved_j: float) -> pd.DataFrame:
    return trials_table([_tune("d", "logit", 1000.0), _tune("b", "none", 650.0 + saved_j)],
                        _results(saved_j), {"energy_view": "full"})


def test_break_even_tokens_exact_on_a_constructed_example():
    d = _sweep(100.0).set_index("trial_id")
    # stated: generation 10 + caching 5 (counter 5%), training 60 (sampled 10%), evaluation 50
    # (estimated 50%): B = 1000 ± 125 J
    assert d.at["d", "teacher_side_error_j"] == 15.0
    assert d.at["d", "bill_j"] == 1000.0 and d.at["d", "bill_error_j"] == 125.0
    # steady state: work J / tokens: 0.5 ± 0.025 and 0.1 ± 0.01 J/token
    assert d.at["d", "ept_teacher_j_per_token"] == 0.5
    assert d.at["d", "ept_teacher_error_j_per_token"] == 0.025
    assert d.at["d", "ept_student_j_per_token"] == 0.1
    assert d.at["d", "ept_student_error_j_per_token"] == 0.01
    assert d.at["d", "break_even_tokens_verdict"] == DISTINGUISHABLE
    assert d.at["d", "break_even_tokens"] == pytest.approx(1000.0 / 0.4)
    assert d.at["d", "break_even_tokens_low"] == pytest.approx(875.0 / 0.435)
    assert d.at["d", "break_even_tokens_high"] == pytest.approx(1125.0 / 0.365)
    assert d.at["b", "break_even_tokens_verdict"] is None  # no teacher ran in the baseline
    # N* beside it: saved 100 ± (35 + 60) J, teacher side 300 ± 15 J
    assert d.at["d", "n_star"] == pytest.approx(3.0)
    assert d.at["d", "n_star_low"] == pytest.approx(285.0 / 195.0)
    assert d.at["d", "n_star_high"] == pytest.approx(315.0 / 5.0)


def test_break_even_is_never_when_the_student_is_clearly_costlier():
    results = _results(100.0)
    results.loc[(results["trial_id"] == "d~1") & (results["stage"] == "inference_student"),
                "work_j"] = 80.0  # 0.8 ± 0.08 J/token against the teacher's 0.5 ± 0.025
    d = trials_table([_tune("d", "logit", 1000.0)], results, {"energy_view": "full"})
    assert d["break_even_tokens_verdict"][0] == NEVER and d["break_even_tokens"][0] is None
    results.loc[(results["trial_id"] == "d~1") & (results["stage"] == "inference_student"),
                "work_j"] = 48.0  # 0.48 ± 0.048: within error of 0.5 ± 0.025
    d = trials_table([_tune("d", "logit", 1000.0)], results, {"energy_view": "full"})
    assert d["break_even_tokens_verdict"][0] == NOT_DISTINGUISHABLE


# ---- rules the intervals do not support are not made -----------------------------------------


def _report(results: pd.DataFrame, trials: pd.DataFrame) -> ReportData:
    results = results.assign(side=results["stage"].map(
        lambda s: "teacher" if s.startswith("teacher_") else "student"))
    return ReportData(Path("."), "sweep", results, trials, [], 0.0, (0.0, 1.0), None)


def test_design_rules_leave_out_a_payback_the_interval_does_not_support():
    blurred = _report(_results(0.06), _sweep(0.06))
    rules = design_rules(blurred)
    assert not any("pays back after N*" in r for r in rules)
    (note,) = [r for r in rules if "N* is not distinguishable" in r]
    assert note.startswith("[d: distill.method=logit]")
    clear = design_rules(_report(_results(100.0), _sweep(100.0)))
    (rule,) = [r for r in clear if "pays back after N*" in r]
    assert "N* = 3 (1.46–63)" in rule
    (tokens,) = [r for r in clear if "tokens* =" in r]
    assert "tokens* = 2,500 (2,011–3,082)" in tokens


def test_the_largest_stage_is_named_only_when_it_is_clear_of_the_next():
    results = pd.DataFrame({"trial_id": ["a", "a"], "stage": ["student_training", "evaluation"],
                            "energy_j": [100.0, 95.0], "energy_method": ["counter"] * 2,
                            "unmeasured_max_j": [0.0, 0.0]})
    trials = pd.DataFrame({"trial_id": ["a"], "status": ["finished"], "quality": [0.5],
                           "energy_j": [195.0]})
    rules = design_rules(_report(results, trials))
    assert not any("The largest stage is" in r for r in rules)
    assert any("not distinguishable within their stated errors" in r for r in rules)
    results["energy_j"] = [100.0, 50.0]
    assert any("The largest stage is student_training: 100.0 J ± 5.0 J" in r
               for r in design_rules(_report(results, trials)))


def test_a_run_directory_reports_its_n_star_with_the_interval():
    """`raydistill run` with its baseline: the run's N* of 767 from a 0.06 J difference."""
    results = pd.DataFrame([
        {"trial_id": "x", "stage": "teacher_generation", "energy_j": 46.0},
        {"trial_id": "x", "stage": "student_training", "energy_j": 10.0},
        {"trial_id": "x-baseline", "stage": "student_training", "energy_j": 10.06}]).assign(
        energy_method="counter", unmeasured_max_j=0.0, work_j=lambda f: f["energy_j"],
        tokens=0, generated_tokens=0)
    trials = pd.DataFrame({"trial_id": ["x", "x-baseline"], "status": ["finished"] * 2,
                           "quality": [0.5, 0.4], "energy_j": [56.0, 10.06]})
    data = _report(results, trials)
    data.kind, data.config = "run", {"distill": {"method": "logit"}}
    data.metrics = [{"trial_id": "x", "scores": {}}, {"trial_id": "x-baseline", "scores": {}}]
    frame = payback_frame(data).set_index("trial_id")
    # 0.06 J saved, 0.5 + 0.503 J stated (counter 5%): the interval spans 0
    assert frame.at["x", "n_star_verdict"] == NOT_DISTINGUISHABLE
    assert figure_text(frame.loc["x"], "n_star") == "not distinguishable"
    assert figure_text(frame.loc["x-baseline"], "n_star") == "–"
    rules = design_rules(data)
    assert not any("pays back after" in r or "never breaks even" in r for r in rules)
    assert any(r.startswith("[x] N* is not distinguishable") for r in rules)


def test_run_summary_n_star_is_a_number_only_where_the_saving_is_clear():
    """seed_metrics (what `raydistill run` prints): the 0.06 J case is not a number."""
    from raydistill.results import seed_metrics

    def table(saved_j: float) -> pd.DataFrame:
        rows = [("kd", "teacher_generation", 50.0), ("kd", "student_training", 100.0),
                ("base", "student_training", 100.0 + saved_j)]
        return pd.DataFrame([{"trial_id": t, "stage": s, "energy_j": e, "work_j": e,
                              "tokens": 0, "energy_method": "counter",
                              "unmeasured_max_j": 0.0} for t, s, e in rows])

    noisy = seed_metrics(table(0.06), "kd", {}, baseline_trial="base")
    assert noisy["N_star"] is None and noisy["N_star_verdict"] == "not distinguishable"
    clear = seed_metrics(table(50.0), "kd", {}, baseline_trial="base")
    # saved = 150 ± 7.5 − 100 ± 5 = 50 ± 12.5 J; teacher 50 ± 2.5 J
    assert clear["N_star"] == pytest.approx(1.0)
    assert clear["N_star_low"] == pytest.approx(47.5 / 62.5)
    assert clear["N_star_high"] == pytest.approx(52.5 / 37.5)
    dearer = seed_metrics(table(-60.0), "kd", {}, baseline_trial="base")
    assert dearer["N_star_verdict"] == "never"
