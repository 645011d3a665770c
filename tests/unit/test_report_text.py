"""What the report says in words and how it prints numbers: the headline, units and precision,
'not estimated' for figures without inputs, the quality score a run is judged by."""

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from raydistill.energy.footprint import FootprintInputs
from raydistill.report.data import (
    ReportData,
    load_report_data,
    om_perf,
    quality_key,
    water_estimated,
)
from raydistill.report.figures import energy_by_stage
from raydistill.report.headline import NO_BASELINE, headline
from raydistill.report.html import _metrics_display, _metrics_table, write_report
from raydistill.report.payback import run_trials
from raydistill.results import load_ledger, results_table
from raydistill.units import (
    NA,
    NOT_ESTIMATED,
    display_frame,
    fmt_co2e_g,
    fmt_count,
    fmt_duration_s,
    fmt_energy_j,
    fmt_j_per_token,
    fmt_pct,
    fmt_sig,
    fmt_water_l,
)
from tests.report_fixture import make_sweep_dir


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    return make_sweep_dir(tmp_path_factory.mktemp("text"))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---- units ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("joules", "text"), [
    (201.951376, "202 J"), (1234.5, "1.23 kJ"), (4.56e6, "4.56 MJ"), (999.6, "1.00 kJ"),
    (1000.0, "1.00 kJ"), (0.5, "0.500 J"), (0.0, "0 J"), (-1500.0, "-1.50 kJ"),
    (7.2e9, "7.20 GJ"), (math.nan, NA), (None, NA)])
def test_energy_takes_its_unit_by_size_after_rounding(joules, text):
    assert fmt_energy_j(joules) == text


def test_the_other_quantities_follow_the_same_rule():
    assert fmt_sig(201.951376) == "202" and fmt_sig(0.9) == "0.900"
    assert fmt_sig(0.000721) == "0.000721" and fmt_sig(1234.5) == "1,230"
    assert fmt_sig(math.inf) == NA and fmt_sig("x") == NA
    assert fmt_co2e_g(0.0288) == "0.0288 g" and fmt_co2e_g(1200.0) == "1.20 kg"
    assert fmt_co2e_g(3.4e6) == "3.40 t"
    assert fmt_water_l(0.012) == "0.0120 L" and fmt_water_l(2500.0) == "2.50 m³"
    assert fmt_duration_s(12.0) == "12.0 s" and fmt_duration_s(150.0) == "2.50 min"
    assert fmt_duration_s(4320.0) == "1.20 h"
    assert fmt_j_per_token(0.000721) == "721 µJ/token"
    assert fmt_j_per_token(3.3333) == "3.33 J/token"
    assert fmt_pct(0.0625) == "6.25%" and fmt_count(1070338.0) == "1,070,338"


def test_a_display_frame_drops_unit_suffixes_and_keeps_missing_missing():
    frame = pd.DataFrame({"trial_id": ["a", "b"], "energy_j": [201.951376, 4.56e6],
                          "co2e_g": [0.1, math.nan], "j_per_token": [0.5, 2.0],
                          "tokens": [1000, 20], "teacher_share": [0.25, None]})
    shown = display_frame(frame)
    assert list(shown.columns) == ["trial_id", "energy", "co2e", "j_per_token", "tokens",
                                   "teacher_share"]
    assert list(shown["energy"]) == ["202 J", "4.56 MJ"]
    assert list(shown["co2e"]) == ["0.100 g", NA]
    assert list(shown["j_per_token"]) == ["500 mJ/token", "2.00 J/token"]
    assert list(shown["tokens"]) == ["1,000", "20"]
    assert list(shown["teacher_share"]) == ["25.0%", NA]


# ---- the headline on the fixture sweep --------------------------------------------------------


def test_the_sweep_headline_gives_cost_teacher_share_front_and_payback(sweep_dir):
    text = headline(load_report_data(sweep_dir))
    # 3,400 J in all; the teacher side is t1's teacher_generation: 200 J
    assert text.startswith("The sweep cost 3.40 kJ and ")
    assert "The teacher side (generation + logit caching) took 200 J, 5.88% of it." in text
    # a sweep from before dev decided: its quality is the test score, and the headline says so
    assert "Pareto set (energy, student_quick_acc on test (an older sweep)): t2 450 J, 0.600; " \
           "t1 1.40 kJ, 0.900; knee t1." in text


def test_the_sweep_headline_names_dev_and_gives_test_beside(tmp_path):
    sweep_dir = make_sweep_dir(tmp_path)  # its own copy: the module's is shared
    trials = pd.read_parquet(sweep_dir / "trials.parquet")
    trials["quality_test"] = trials["quality"] - 0.1
    trials.to_parquet(sweep_dir / "trials.parquet", index=False)
    summary = json.loads((sweep_dir / "sweep.json").read_text())  # as a sweep writes it now
    (sweep_dir / "sweep.json").write_text(json.dumps({**summary, "pareto_selected_on": "dev"}))
    text = headline(load_report_data(sweep_dir))
    assert "Pareto set (energy, student_quick_acc on dev; test beside, which selected nothing):" \
           " t2 450 J, 0.600 (test 0.500); t1 1.40 kJ, 0.900 (test 0.800); knee t1." in text
    assert f"Payback: {NO_BASELINE}." in text
    assert "water not estimated" in text  # no WUE, and WORLD has no grid water intensity
    assert "embodied CO2e 0.121 g" in text  # GPU-hours: estimated


def test_report_and_tables_open_with_the_headline(sweep_dir, tmp_path):
    page = write_report(sweep_dir, tmp_path / "out").read_text()
    answer = headline(load_report_data(sweep_dir))
    h1 = "<h1>raydistill report: sweep</h1>"
    assert f"{h1}\n<p class=headline>{answer}</p>" in page
    md = (tmp_path / "out" / "tables.md").read_text()
    assert md.startswith(f"# raydistill report: sweep\n\n{answer}\n\n")
    assert "201.95" not in md and "1400.0" not in md  # no raw floats in the tables
    assert "| 1.40 kJ " in md and "not estimated" in md
    assert "not estimated" in page
    figures = json.loads((tmp_path / "out" / "figures.json").read_text())
    assert sum(figures["energy_by_stage"]["student_training"]) == pytest.approx(1900.0)


# ---- not estimated, never 0 -------------------------------------------------------------------


def test_water_without_factors_is_not_estimated_and_with_a_wue_is_a_number(sweep_dir, tmp_path):
    data = load_report_data(sweep_dir)
    assert not water_estimated(data)
    table = _metrics_table(data)
    assert table["water_l"].isna().all()  # NaN, not 0
    assert set(_metrics_display(data, table)["water"]) == {NOT_ESTIMATED}

    wet = _copy(sweep_dir, tmp_path / "wet")
    state, _ = load_ledger(wet)
    results_table(state.energy_rows(), FootprintInputs(region="WORLD", wue_l_per_kwh=1.8)
                  ).to_parquet(wet / "results.parquet", index=False)
    (wet / "config.yaml").write_text("footprint: {region: WORLD, pue: 1.0, wue_l_per_kwh: 1.8}\n")
    data = load_report_data(wet)
    assert water_estimated(data)
    shown = _metrics_display(data, _metrics_table(data)).set_index("trial_id")
    assert shown.loc["t1", "water"] == fmt_water_l(1400.0 / 3.6e6 * 1.8) == "0.000700 L"
    assert "water 0.00170 L" in headline(data)  # 3,400 J at 1.8 L/kWh


def test_a_region_with_grid_water_counts_as_estimated_even_at_zero(sweep_dir):
    data = load_report_data(sweep_dir)
    data.config = {"footprint": {"region": "US"}}
    assert water_estimated(data)


def test_embodied_carbon_without_gpu_hours_is_not_estimated(sweep_dir, tmp_path):
    cpu = _copy(sweep_dir, tmp_path / "cpu")
    table = pd.read_parquet(cpu / "results.parquet")
    table.assign(embodied_co2e_g=0.0).to_parquet(cpu / "results.parquet", index=False)
    data = load_report_data(cpu)
    metrics = _metrics_table(data)
    assert metrics["embodied_co2e_g"].isna().all() and metrics["embodied_share"].isna().all()
    shown = _metrics_display(data, metrics)
    assert set(shown["embodied CO2e"]) == set(shown["embodied share"]) == {NOT_ESTIMATED}
    assert "embodied CO2e not estimated" in headline(data)


# ---- runs: quality, OM_perf and payback -------------------------------------------------------


def _row(trial, stage, energy_j, side):
    return {"trial_id": trial, "stage": stage, "side": side, "energy_j": energy_j,
            "work_j": energy_j, "tokens": 100, "generated_tokens": 0,
            "energy_method": "counter", "unmeasured_max_j": 0.0, "co2e_g": energy_j / 1e4,
            "water_l": 0.0, "embodied_co2e_g": 0.0, "t_start_s": 0.0, "t_end_s": 1.0}


def _run(training_j, baseline_j=None, scores=None, baseline_scores=None,
         teacher_j=1250.0) -> ReportData:
    """A run: trial d (teacher_generation, student_training) and, optionally, its baseline."""
    rows = [_row("d", "teacher_generation", teacher_j, "teacher"),
            _row("d", "student_training", training_j, "student")]
    metrics = [{"trial_id": "d", "E_run_j": teacher_j + training_j, "scores": scores or {}}]
    if baseline_j is not None:
        rows.append(_row("d-baseline", "student_training", baseline_j, "student"))
        metrics.append({"trial_id": "d-baseline", "E_run_j": baseline_j,
                        "scores": baseline_scores or {}})
    trials = pd.DataFrame(columns=["trial_id", "status", "quality", "energy_j"])
    return ReportData(Path("run"), "run", pd.DataFrame(rows), trials, [], 0.0, (0.0, 1.0), None,
                      metrics, {"footprint": {"region": "WORLD"}}, {},
                      quality_key(metrics))


def test_a_run_that_pays_back_says_after_how_many_reuses():
    # T = 1250 ± 62.5 J; saved 500 − 400 = 100 ± 45 J (counter ±5%): N* = 12.5 (8.19–23.9)
    data = _run(400.0, 500.0, {"student_quick_acc": 0.9, "teacher_quick_acc": 1.0},
                {"student_quick_acc": 0.5})
    text = headline(data)
    assert text.startswith("Distillation cost 2.15 kJ and 0.215 g CO2e in total (2 trials, the "
                           "no-teacher baseline among them;")
    assert "took 1.25 kJ, 58.1% of it." in text
    assert "The student of d kept 90.0% of the teacher's quick_acc" in text
    assert "d-baseline scored student_quick_acc 0.500 (no teacher score" in text
    assert "Payback: d pays back after N* = 12.5 (8.19–23.9) reuses of its artifacts." in text
    assert "embodied CO2e not estimated; water not estimated" in text


def test_a_run_dearer_than_its_baseline_never_pays_back():
    assert "d never pays back on energy" in headline(_run(600.0, 400.0))


def test_a_saving_within_error_is_not_distinguishable():
    assert "d's N* is not distinguishable, so no payback by reuse is claimed" in headline(
        _run(480.0, 500.0))


def test_a_run_without_baseline_or_scores_says_so():
    text = headline(_run(400.0))
    assert f"Payback: {NO_BASELINE}." in text
    assert "No scores were recorded" in text


def test_a_directory_with_no_energy_has_a_headline_too():
    data = _run(400.0)
    data.results = data.results.iloc[0:0]
    assert headline(data) == "No energy was measured in this run directory."


def test_a_tracked_runs_own_score_names_are_its_quality():
    scores = {"teacher_token_accuracy": 0.8, "student_token_accuracy": 0.6,
              "student_loss": 1.2}
    data = _run(400.0, scores=scores)
    assert data.quality_name == "student_token_accuracy"  # the first student_* score
    assert run_trials(data)["quality"].tolist() == [0.6]
    assert om_perf(data.metrics[0], data.quality_name) == pytest.approx(0.75)  # from scores
    assert "kept 75.0% of the teacher's token_accuracy" in headline(data)
    assert quality_key([{"scores": {"student_x": 1.0}},
                        {"scores": {"student_quick_acc": 0.5}}]) == "student_quick_acc"
    assert quality_key([{"scores": {}}]) == "student_quick_acc"  # none: the default, NaN


def test_a_run_directory_reads_its_quality_and_om_perf_by_that_name(sweep_dir, tmp_path):
    run = _copy(sweep_dir, tmp_path / "run")
    (run / "trials.parquet").unlink()
    (run / "sweep.json").unlink()
    e = pd.read_parquet(run / "results.parquet").groupby("trial_id")["energy_j"].sum()
    metrics = [{"trial_id": t, "E_run_j": float(e[t]), "EPT_inference_student": None,
                "Eff_overall": None, "teacher_share": None, "N_star_verdict": None,
                "OM_perf": {"token_accuracy": q}, "scores": {"student_token_accuracy": q}}
               for t, q in (("t1", 0.9), ("t2", 0.6), ("t3", 0.5))]
    (run / "metrics.json").write_text(json.dumps({"trials": metrics}))
    data = load_report_data(run)
    assert data.kind == "run" and data.quality_name == "student_token_accuracy"
    assert data.trials.set_index("trial_id")["quality"].to_dict() == {"t1": 0.9, "t2": 0.6,
                                                                     "t3": 0.5}
    shown = _metrics_display(data, _metrics_table(data)).set_index("trial_id")
    assert shown.loc["t1", "OM_perf (token_accuracy)"] == "0.900"
    assert "The student of t1 kept 90.0% of the teacher's token_accuracy" in headline(data)


# ---- the stage figure -------------------------------------------------------------------------


def test_every_stage_has_its_own_colour_and_the_axis_its_unit(sweep_dir):
    import matplotlib.pyplot as plt

    data = load_report_data(sweep_dir)
    fig, table = energy_by_stage(data)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "energy (kJ)"  # the tallest bar is 1,400 J
    assert table.loc["t1"].sum() == pytest.approx(1400.0)  # the table stays in J
    assert max(p.get_height() for p in ax.patches) == pytest.approx(1.0)  # drawn in kJ
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "teacher_generation (teacher side)" in labels
    colours = {c.get_label(): c.patches[0].get_facecolor() for c in ax.containers}
    assert len(set(colours.values())) == len(colours) == table.shape[1]
    hatched = {c.get_label() for c in ax.containers if c.patches[0].get_hatch()}
    assert hatched == {"teacher_generation (teacher side)"}
    plt.close(fig)


def test_a_rate_is_not_read_as_a_time():
    frame = pd.DataFrame({"tokens_per_s": [46702.8], "duration_s": [29.6]})
    shown = display_frame(frame)
    assert list(shown.columns) == ["tokens_per_s", "duration"]
    assert shown.iloc[0].tolist() == ["46,700", "29.6 s"]
