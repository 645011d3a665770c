"""Correlated errors (raydistill.intervals, energy.meters): one meter's bias cancels in a
difference and a ratio, different meters add in quadrature, repeats take the t-quantile, and
`raydistill run`'s N* uses all three (issue 28)."""

import json
import math

import pandas as pd
import pytest

from raydistill.energy.accuracy import row_error_j
from raydistill.energy.ledger import EnergyRow
from raydistill.intervals import (
    DISTINGUISHABLE,
    NEVER,
    NOT_DISTINGUISHABLE,
    Figure,
    fmt_ratio,
    mean_of_figures,
    mean_of_repeats,
    t_quantile_95,
)
from raydistill.results import results_table, seed_metrics


def test_t_quantiles_match_the_table_and_approach_the_normal():
    assert t_quantile_95(1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile_95(4) == pytest.approx(2.776, abs=1e-3)
    assert t_quantile_95(60) == pytest.approx(2.0003, abs=1e-3)
    assert t_quantile_95(10_000) == pytest.approx(1.960, abs=1e-3)
    assert all(t_quantile_95(k) > t_quantile_95(k + 1) for k in range(1, 80))


def test_two_repeats_of_900_and_1000_j_give_a_95_interval_of_about_635_j():
    iv = mean_of_repeats([900.0, 1000.0], [0.0, 0.0])
    assert iv.value == 950.0 and iv.error == pytest.approx(635.3, abs=0.1)  # not ± 50
    fig = mean_of_figures([Figure.of(900.0), Figure.of(1000.0)])
    assert fig.spread_j == pytest.approx(635.3, abs=0.1) and fig.repeats == 2
    assert mean_of_figures([Figure.of(900.0)]).repeats == 1  # one run: spread unknown


def test_one_meters_bias_cancels_in_a_difference_and_different_meters_add_in_quadrature():
    a = Figure.of(1000.0, {"n:gpu0:counter": 50.0})
    b = Figure.of(950.0, {"n:gpu0:counter": 47.5})
    assert (a - b).value == 50.0 and (a - b).error == pytest.approx(2.5)
    other = Figure.of(950.0, {"m:gpu0:counter": 47.5})
    assert (a - other).error == pytest.approx(math.hypot(50.0, 47.5))
    assert (a + b).error == pytest.approx(97.5)  # a sum of one meter's figures: linear
    c = Figure.of(10.0, independent_j=3.0) + Figure.of(5.0, independent_j=4.0)
    assert c.error == pytest.approx(5.0)


def test_a_common_bias_cancels_exactly_in_a_ratio():
    teacher = Figure.of(400.0, {"n:cpu:estimated": 200.0})
    saved = Figure.of(1000.0, {"n:cpu:estimated": 500.0}) - Figure.of(900.0,
                                                                       {"n:cpu:estimated": 450.0})
    r = figure_ratio_of(teacher, saved)
    assert r.verdict == DISTINGUISHABLE
    assert r.value == pytest.approx(4.0) and r.low == pytest.approx(4.0)
    assert r.high == pytest.approx(4.0)


def figure_ratio_of(n, d):
    from raydistill.intervals import figure_ratio

    return figure_ratio(n, d)


# ---- from ledger rows to `raydistill run`'s N* ----------------------------------------------


def _row(trial: str, stage: str, energy_j: float, method: str, device: str = "cpu0",
         kind: str = "cpu", model: str = "", node: str = "node-a") -> dict:
    row = {f: None for f in EnergyRow.__dataclass_fields__}
    row.update(trial_id=trial, stage=stage, node_id=node, device_id=device, device_kind=kind,
               device_model=model, energy_j=energy_j, above_idle_j=energy_j,
               duration_s=600.0, t_start_s=0.0, t_end_s=600.0, tokens=0, generated_tokens=0,
               method=method, shared=False, gap_s=0.0, unmeasured_s=0.0, unmeasured_max_j=0.0,
               interpolated=False, n_samples=100, window_id=f"{trial}/{stage}/{device}",
               phase="work")
    # as the ledger states it: the class at this window's length (edge term included)
    row["stated_error_j"] = row_error_j(energy_j, method, kind, 600.0, device_model=model)
    return row


def _run(kd_j: float, base_j: float, method: str, teacher_j: float = 500.0, **kw) -> dict:
    rows = [_row("kd", "teacher_generation", teacher_j, method, **kw),
            _row("kd", "student_training", kd_j, method, **kw),
            _row("kd-baseline", "student_training", base_j, method, **kw)]
    table = results_table(rows)
    return seed_metrics(table, "kd", {}, baseline_trial="kd-baseline")


def test_results_table_carries_each_figures_meter_and_bias():
    table = results_table([_row("kd", "student_training", 200.0, "estimated")])
    (r,) = table.to_dict("records")
    # an estimate's bias follows the load it models: its meter is keyed by the stage too
    assert r["meter"] == "node-a:cpu0:estimated:student_training"
    assert r["bias_j"] == pytest.approx(100.0)  # estimated: 50%
    assert json.loads(r["bias_parts"]) == {
        "node-a:cpu0:estimated:student_training": pytest.approx(100.0)}
    assert r["bias_j"] + r["independent_j"] == pytest.approx(r["stated_error_j"])


def test_the_issues_kd_student_dearer_by_the_same_estimate_is_never():
    """`make run` printed 'not distinguishable' for 291 J against the baseline's 218 J."""
    m = _run(291.0, 218.0, "estimated")
    assert m["N_star_verdict"] == NEVER
    assert m["N_star_saving_j"] == pytest.approx(-73.0)
    assert m["N_star_saving_error_j"] == pytest.approx(0.5 * 73.0, rel=0.05)
    from raydistill.intervals import Interval, Ratio

    text = fmt_ratio(Ratio(NEVER, denominator=Interval(m["N_star_saving_j"],
                                                       m["N_star_saving_error_j"])))
    assert text.startswith("never (saving -73.0 J ± 36.")


def test_a_five_percent_saving_by_one_gpus_counter_gets_a_number():
    m = _run(950.0, 1000.0, "counter", device="GPU-1", kind="gpu", model="NVIDIA H100 80GB HBM3")
    assert m["N_star_verdict"] == DISTINGUISHABLE
    assert m["N_star"] == pytest.approx(500.0 / 50.0)
    assert m["N_star_low"] < 10.0 < m["N_star_high"] < 11.0


def test_figures_of_different_meters_still_add_in_quadrature():
    rows = [_row("kd", "teacher_generation", 500.0, "counter", "GPU-1", "gpu", "H100"),
            _row("kd", "student_training", 950.0, "counter", "GPU-1", "gpu", "H100"),
            _row("kd-baseline", "student_training", 1000.0, "counter", "GPU-2", "gpu", "H100",
                 node="node-b")]
    m = seed_metrics(results_table(rows), "kd", {}, baseline_trial="kd-baseline")
    # 5% of 1000 and of 950 from two meters: ± 69 J, which spans the 50 J saving
    assert m["N_star_verdict"] == NOT_DISTINGUISHABLE
    assert m["N_star_saving_error_j"] == pytest.approx(math.hypot(50.0, 47.5), rel=0.01)


def test_a_table_without_meters_keeps_the_stated_errors_added_linearly():
    table = results_table([_row("kd", "teacher_generation", 500.0, "estimated"),
                           _row("kd", "student_training", 291.0, "estimated"),
                           _row("kd-baseline", "student_training", 218.0, "estimated")])
    old = table.drop(columns=["meter", "bias_j", "bias_parts", "independent_j"])
    m = seed_metrics(old, "kd", {}, baseline_trial="kd-baseline")
    assert m["N_star_verdict"] == NOT_DISTINGUISHABLE  # 73 J against 254.5 J stated, as before
    assert pd.isna(m["N_star"]) or m["N_star"] is None


def test_a_sweeps_n_star_cancels_one_meters_bias_and_repeats_take_the_t_quantile():
    from raydistill.search.tables import trials_table

    def tune(trial: str, method: str, lr: float) -> dict:
        return {"metrics": {"trial_id": trial, "ledger_trial": f"{trial}~1",
                            "status": "finished", "quality": 0.5, "progress": 1.0,
                            "energy_marginal_j": 1.0, "energy_full_j": 1.0},
                "config": {"distill.method": method, "lr": lr}, "error": None}

    rows = [_row("d~1", "teacher_generation", 500.0, "estimated"),
            _row("d~1", "student_training", 900.0, "estimated"),
            _row("b~1", "student_training", 1000.0, "estimated")]
    t = trials_table([tune("d", "logit", 0.1), tune("b", "none", 0.1)], results_table(rows),
                     {"energy_view": "full"}).set_index("trial_id")
    # 100 J saved by one estimate (±50%): ± 50 J, not ± 950 J as two independent figures
    assert t.at["d", "n_star_verdict"] == DISTINGUISHABLE
    assert t.at["d", "n_star"] == pytest.approx(5.0)
    # the training saving's bias cancels (one estimate, one load), but the teacher's generation
    # is another load of the same estimate: its 50% does not cancel against training's, so N*
    # keeps both relative errors (log space): 5 × exp(∓√(0.5² + 0.5²))
    assert t.at["d", "n_star_low"] == pytest.approx(5.0 * math.exp(-math.sqrt(0.5)), rel=1e-6)
    assert t.at["d", "n_star_high"] == pytest.approx(5.0 * math.exp(math.sqrt(0.5)), rel=1e-6)
    # a second baseline repeat at 1,100 J: mean 1,050 ± 635 J (t, 1 dof): no number
    rows.append(_row("b2~1", "student_training", 1100.0, "estimated"))
    t2 = trials_table([tune("d", "logit", 0.1), tune("b", "none", 0.1),
                       tune("b2", "none", 0.1)], results_table(rows), {"energy_view": "full"})
    assert t2.set_index("trial_id").at["d", "n_star_verdict"] == NOT_DISTINGUISHABLE
