"""The sweep's teacher-side figures per trial and the report's engine rule, on plain tables."""

import math

import pandas as pd
import pytest

from raydistill.report.rules import engine_rules
from raydistill.search.derived import derived_figures, n_star_column
from raydistill.search.tables import teacher_figures


def _ledger() -> pd.DataFrame:
    return pd.DataFrame([
        {"trial_id": "a~1", "stage": "teacher_generation", "energy_j": 60.0, "work_j": 40.0,
         "generated_tokens": 200},
        {"trial_id": "a~1", "stage": "teacher_logit_caching", "energy_j": 30.0, "work_j": 20.0,
         "generated_tokens": 0},
        {"trial_id": "a~1", "stage": "student_training", "energy_j": 10.0, "work_j": 9.0,
         "generated_tokens": 0},
    ])


def test_teacher_figures_count_own_kept_and_reused_teacher_work():
    own = {"teacher_generation": 60.0, "teacher_logit_caching": 30.0, "student_training": 10.0}
    f = teacher_figures(_ledger(), "a~1", full_j=100.0 + 5.0 + 15.0, own=own,
                        kept={"synthetic_data:k": 5.0}, reused_j=15.0)
    assert f["teacher_side_j"] == 60.0 + 30.0 + 5.0 + 15.0
    assert f["teacher_share"] == 110.0 / 120.0
    assert f["student_training_j"] == 10.0
    assert f["teacher_generated_tokens"] == 200
    assert f["teacher_j_per_generated_token"] == 40.0 / 200  # work phase only
    none = teacher_figures(_ledger(), "b~1", full_j=0.0, own={}, kept={}, reused_j=0.0)
    assert none["teacher_j_per_generated_token"] is None and none["teacher_share"] is None


def _trials(**extra) -> pd.DataFrame:
    return pd.DataFrame({
        "trial_id": ["t0", "t1", "t2", "t3"], "status": ["finished"] * 4,
        "param.distill.method": ["none", "logit", "logit", "none"],
        "param.generation.engine": ["hf", "hf", "vllm", "vllm"],
        "teacher_side_j": [0.0, 300.0, 100.0, 0.0],
        "teacher_side_error_j": [0.0, 3.0, 1.0, 0.0],
        "teacher_share": [0.0, 0.6, 0.3, 0.0],
        "teacher_j_per_generated_token": [math.nan, 0.5, 0.1, math.nan],
        "teacher_error_j_per_generated_token": [math.nan, 0.025, 0.01, math.nan],
        "student_training_j": [209.0, 150.0, 250.0, 211.0],
        "student_training_error_j": [1.0, 1.0, 1.0, 1.0], **extra})


def test_n_star_against_the_mean_baseline_and_never_when_not_cheaper():
    n = n_star_column(_trials())
    assert n[1] == 300.0 / (210.0 - 150.0)  # baseline mean 210 J
    assert n[2] is None  # trained dearer than the baseline: never breaks even
    assert n[0] is None and n[3] is None  # baselines have no N*
    no_base = _trials()
    no_base["param.distill.method"] = "logit"
    assert n_star_column(no_base).isna().all()


def test_n_star_bounds_from_the_baseline_spread_and_the_stated_errors():
    d = derived_figures(_trials())
    # baseline 210 J: stated 1 J and the 95% t-interval of the mean of (209, 211): t(1 dof)
    # 12.706 × its standard error, 1 J, in quadrature
    base_err = math.hypot(1.0, 12.7062)
    saved_low, saved_high = 60.0 - (base_err + 1.0), 60.0 + (base_err + 1.0)
    assert d["n_star_verdict"][1] == "distinguishable"
    assert d["n_star_low"][1] == pytest.approx(297.0 / saved_high)
    assert d["n_star_high"][1] == pytest.approx(303.0 / saved_low)
    assert d["n_star_verdict"][2] == "never"  # 40 J dearer, clear of its 13.7 J error
    assert d["n_star_verdict"][0] is None  # a baseline has no N*
    assert list(d["repeats"]) == [1, 1, 1, 1]


def test_engine_rule_compares_taught_trials_per_engine():
    t = _trials()
    t["n_star"] = n_star_column(t)
    (rule, comparison) = engine_rules(t)
    assert "hf: teacher side 300.0 J ± 3.0 J (60% of the trial), 0.5 J ± 0.025 J per " \
        "generated token, N* 5 (4.03–6.55)" in rule
    assert "vllm: teacher side 100.0 J ± 1.0 J (30% of the trial), 0.1 J ± 0.01 J per " \
        "generated token, N* never (saving -40.0 J ± 13.7 J, 95%)" in rule
    # 0.1 ± 0.01 J is clear of 0.5 ± 0.025 J: the comparison is stated
    assert comparison.startswith("Teacher engine vllm uses less energy per generated token "
                                 "than hf")
    assert engine_rules(t[t["param.generation.engine"] == "hf"]) == []  # one engine: no rule


def test_engine_comparison_is_left_out_when_the_intervals_overlap():
    t = _trials(**{"teacher_error_j_per_generated_token": [math.nan, 0.3, 0.2, math.nan]})
    (rule,) = engine_rules(t)  # 0.5 ± 0.3 and 0.1 ± 0.2 overlap: no "uses less" rule
    assert "uses less" not in rule
