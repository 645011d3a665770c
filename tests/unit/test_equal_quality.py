"""Break-even at equal quality (issue 28): the baseline's energy up to its first dev check at
the distilled student's dev quality, from the ledger's curve, and N* from it beside the
equal-steps one in `raydistill run`'s metrics and summary."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from raydistill.energy.ledger import LedgerState
from raydistill.energy.samples import Reading
from raydistill.equal_quality import NEVER_REACHES, energy_at_quality, progress_lines
from raydistill.intervals import Figure
from raydistill.results import results_table
from raydistill.run import RunResult, summary, write_run_results
from tests.ledger_helpers import feed, window


def test_the_crossing_is_the_first_check_reaching_q_star_with_the_steps_between_as_error():
    curve = [{"step": s, "steps": 100, "quality": q, "spent_j": e}
             for s, q, e in [(10, 0.1, 10.0), (20, 0.4, 20.0), (30, 0.6, 30.0), (40, 0.5, 40.0)]]
    whole = Figure.of(100.0, {"m": 5.0})
    hit = energy_at_quality(curve, 0.5, whole)
    assert hit["reached"] and hit["step"] == 30
    assert hit["energy_j"] == pytest.approx(25.0)  # between the checks at 20 and 30
    # the meter's 5% of 25 J and half the 10 J between the checks, in quadrature
    assert hit["error_j"] == pytest.approx((1.25 ** 2 + 5.0 ** 2) ** 0.5)
    assert not energy_at_quality(curve, 0.7, whole)["reached"]


def test_progress_lines_read_n_or_the_older_dev_rows(tmp_path: Path):
    p = tmp_path / "progress.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in [
        {"step": 0, "steps": 10, "quality": None, "t": 0.0},
        {"step": 5, "steps": 10, "quality": 0.5, "dev_rows": 64, "t": 1.0},
        {"step": 10, "steps": 10, "quality": 0.75, "n": 32, "t": 2.0}]) + "\n")
    assert [(x["step"], x["n"]) for x in progress_lines(p)] == [(5, 64), (10, 32)]
    assert progress_lines(tmp_path / "none.jsonl") == []


# ---- a run: the baseline reaches the student's quality at 35% of its training ----------------


def _estimate(state: LedgerState, wid: str, trial: str, stage: str, t0: float, t1: float,
              power_w: float) -> None:
    times = [t0 + k for k in range(int(t1 - t0) + 1)]
    feed(state, wid, [Reading("cpu:estimate", "cpu", t, power_w, None, "cpu-estimate",
                              "estimated") for t in times])
    window(state, wid, t0, t1, devices=("cpu:estimate",), trial=trial, stage=stage)


def _lines(path: Path, t0: float, span_s: float, qualities: list[float], n: int = 64) -> None:
    path.mkdir(parents=True)
    rows = [{"step": 0, "steps": 10 * len(qualities), "quality": None, "t": t0}]
    rows[0]["steps"] = 10 * len(qualities)
    rows += [{"step": 10 * (i + 1), "steps": 10 * len(qualities), "quality": q, "n": n,
              "t": t0 + span_s * (i + 1) / len(qualities)} for i, q in enumerate(qualities)]
    (path / "progress.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


@dataclass
class _Outcome:
    trial_id: str
    scores: dict = field(default_factory=dict)
    train_metrics: dict = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict)


def _run(tmp_path: Path, baseline_q: list[float], n: int = 2000) -> RunResult:
    state = LedgerState(max_gap_s=5.0)
    _estimate(state, "g", "kd", "teacher_generation", 0.0, 200.0, 100.0)  # 20 kJ
    _estimate(state, "s", "kd", "student_training", 300.0, 900.0, 100.0)  # 60 kJ
    _estimate(state, "b", "kd-baseline", "student_training", 1000.0, 2000.0, 100.0)  # 100 kJ
    _lines(tmp_path / "students" / "kd", 300.0, 600.0, [0.2, 0.3, 0.5], n)
    _lines(tmp_path / "students" / "kd-baseline", 1000.0, 1000.0, baseline_q, n)
    table = results_table(state.energy_rows())
    metrics, _ = write_run_results(tmp_path, table, [_Outcome("kd"), _Outcome("kd-baseline")],
                                   0.0, equal_quality=True, ledger=state)
    assert json.loads((tmp_path / "metrics.json").read_text())["trials"][0] == \
        json.loads(json.dumps(metrics[0], default=str))
    return RunResult(tmp_path, table, metrics, [])


def test_equal_steps_pays_back_but_equal_quality_never_does(tmp_path: Path):
    # the baseline reaches 0.5 at its 4th of 10 checks: 30-40 kJ, against the student's 60 kJ
    # (dev checks on 2,000 rows: qualities ±0.03, so the crossing is pinned between two checks)
    result = _run(tmp_path, [0.1, 0.2, 0.4, 0.5, 0.6, 0.6, 0.7, 0.7, 0.7, 0.7])
    m = result.metrics[0]
    assert m["N_star_verdict"] == "distinguishable"  # equal steps: 40 kJ saved
    assert m["N_star"] == pytest.approx(20_000.0 / 40_000.0, rel=1e-3)
    assert m["q_star"] == 0.5 and m["q_star_n"] == 2000
    assert m["baseline_step_at_q_star"] == 40 and m["baseline_steps"] == 100
    assert m["baseline_energy_at_q_star_j"] == pytest.approx(35_000.0, rel=0.01)
    assert m["N_star_equal_quality_verdict"] == "never"
    assert m["N_star_equal_quality_saving_j"] == pytest.approx(-25_000.0, rel=0.02)
    text = summary(result)
    assert "N* (equal steps) 0.5 (" in text
    (line,) = [x for x in text.splitlines() if "N* (equal quality)" in x]
    assert "never (saving -2" in line and "95%" in line
    assert "q* 0.500 on 2000 dev rows" in line and "step 40/100" in line


def test_dev_checks_on_64_rows_cannot_pin_the_crossing(tmp_path: Path):
    """The same curves scored on 64 dev rows: qualities 0.33-0.67 cannot be told from q* = 0.5,
    and the baseline crosses them anywhere from 20 to 70 kJ, so the saving's interval spans
    zero (a 95% interval that ignored the dev checks' noise would say 'never')."""
    m = _run(tmp_path, [0.1, 0.2, 0.4, 0.5, 0.6, 0.6, 0.7, 0.7, 0.7, 0.7], n=64).metrics[0]
    assert m["baseline_energy_at_q_star_j"] == pytest.approx(35_000.0, rel=0.01)
    assert m["baseline_energy_at_q_star_error_j"] >= 35_000.0
    assert m["N_star_equal_quality_verdict"] == "not distinguishable"


def test_a_baseline_that_never_reaches_q_star_bounds_n_star_by_the_equal_steps_one(
        tmp_path: Path):
    result = _run(tmp_path, [0.1] * 5 + [0.3] * 5)
    m = result.metrics[0]
    assert m["N_star_equal_quality_verdict"] == NEVER_REACHES
    assert m["N_star_equal_quality"] is None
    assert m["N_star_equal_quality_high"] == pytest.approx(m["N_star_high"])
    assert "baseline never reaches the student's quality" in summary(result)


def test_a_results_table_from_before_meters_gets_no_equal_quality_figure(tmp_path: Path):
    table = pd.DataFrame([{"trial_id": "kd", "stage": "student_training", "energy_j": 1.0,
                           "work_j": 1.0, "tokens": 0, "energy_method": "counter",
                           "unmeasured_max_j": 0.0}])
    metrics, _ = write_run_results(tmp_path, table, [_Outcome("kd"), _Outcome("kd-baseline")],
                                   0.0, equal_quality=True)
    assert "N_star_equal_quality" not in metrics[0]


# ---- a sweep: the same figure per configuration, from the trials table's dev curves ---------


def _sweep_trial(tid: str, method: str, training_j: float, side_j: float,
                 curve: list[tuple[int, float, float]]) -> dict:
    from raydistill.equal_quality import curve_json

    meter = "n0:cpu:estimated"  # one estimate on one node: its bias cancels in a difference
    return {"trial_id": tid, "status": "finished", "param.distill.method": method,
            "quality": curve[-1][1], "teacher_side_j": side_j,
            "teacher_side_bias_parts": json.dumps({meter: 0.5 * side_j} if side_j else {}),
            "teacher_side_independent_j": 0.0, "teacher_side_error_j": 0.5 * side_j,
            "student_training_j": training_j,
            "student_training_bias_parts": json.dumps({meter: 0.5 * training_j}),
            "student_training_independent_j": 0.0, "student_training_error_j": 0.5 * training_j,
            "dev_curve": curve_json([{"step": s, "steps": 100, "quality": q, "n": 2000,
                                      "spent_j": e} for s, q, e in curve])}


def test_a_sweep_matches_the_baseline_at_the_configurations_dev_quality():
    from raydistill.search.derived import derived_figures

    kd = _sweep_trial("kd", "logit", 60_000.0, 10_000.0, [(50, 0.3, 30_000.0),
                                                            (100, 0.8, 60_000.0)])
    base = _sweep_trial("base", "none", 100_000.0, 0.0,
                        [(20, 0.5, 20_000.0), (40, 0.85, 40_000.0), (100, 0.9, 100_000.0)])
    out = derived_figures(pd.DataFrame([kd, base])).iloc[0]
    # equal steps: 40 kJ saved, N* 0.25; at equal quality the baseline is at 0.8 by step 40
    # (between 20 and 40 kJ: 30 kJ ± 10 kJ), so distillation costs more: never
    assert out["n_star_verdict"] == "distinguishable"
    assert out["n_star"] == pytest.approx(0.25)
    assert out["q_star"] == pytest.approx(0.8)
    assert out["baseline_energy_at_q_star_j"] == pytest.approx(30_000.0)
    assert out["n_star_equal_quality_verdict"] == "never"
    slow = _sweep_trial("base", "none", 100_000.0, 0.0, [(50, 0.5, 50_000.0),
                                                         (100, 0.7, 100_000.0)])
    never = derived_figures(pd.DataFrame([kd, slow])).iloc[0]
    assert never["n_star_equal_quality_verdict"] == NEVER_REACHES
    # below the equal-steps N* (the saving at equal quality is larger than at equal steps)
    assert never["n_star_equal_quality_high"] == pytest.approx(never["n_star_high"])


def test_the_report_states_n_star_at_equal_quality_for_a_sweep_configuration():
    from raydistill.report.payback import _equal_quality_rule
    from raydistill.search.derived import derived_figures

    kd = _sweep_trial("kd", "logit", 60_000.0, 10_000.0, [(100, 0.8, 60_000.0)])
    base = _sweep_trial("base", "none", 100_000.0, 0.0, [(40, 0.85, 40_000.0),
                                                         (100, 0.9, 100_000.0)])
    row = derived_figures(pd.DataFrame([kd, base])).iloc[0].to_dict()
    text = _equal_quality_rule("[kd]", row)[0]
    assert "At equal quality (dev quality 0.800)" in text and "never breaks even" in text
    assert _equal_quality_rule("[x]", {"n_star_equal_quality_verdict": None}) == []


def test_baselines_of_other_steps_are_not_averaged_into_the_equal_steps_comparison():
    """A sweep over student.steps with a no-teacher trial at each: N* at equal steps compares
    with the baseline of the same steps (averaging a 100-step and a 500-step baseline made every
    N* 'not distinguishable'), and at equal quality with the cheapest baseline configuration
    that reaches the student's dev quality (the 100-step one never does)."""
    from raydistill.search.derived import derived_figures

    def with_steps(row: dict, steps: int) -> dict:
        return {**row, "param.student.steps": steps}

    kd = with_steps(_sweep_trial("kd", "logit", 500.0, 100.0, [(500, 0.47, 500.0)]), 500)
    short = with_steps(_sweep_trial("b100", "none", 100.0, 0.0, [(100, 0.2, 100.0)]), 100)
    long = with_steps(_sweep_trial("b500", "none", 1000.0, 0.0,
                                   [(250, 0.3, 500.0), (400, 0.5, 800.0), (500, 0.6, 1000.0)]),
                      500)
    out = derived_figures(pd.DataFrame([kd, short, long])).iloc[0]
    assert out["n_star_verdict"] == "distinguishable"
    assert out["n_star"] == pytest.approx(100.0 / 500.0)  # against the 500-step baseline alone
    assert out["q_star"] == pytest.approx(0.47)
    assert out["baseline_energy_at_q_star_j"] == pytest.approx(650.0)  # b500, between checks
