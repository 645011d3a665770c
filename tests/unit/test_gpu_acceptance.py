"""bench/gpu_acceptance.py without a GPU: its pure parts on made-up figures, and a clean exit 2."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from raydistill.energy.samples import Reading

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_acceptance.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


ga = _load()


def test_trapezoid_is_exact_on_a_ramp_cut_inside_the_samples():
    # 100 W → 200 W over 0..10 s; [2, 6] runs 120 W → 160 W: 4 s × 140 W
    t = [0.0, 2.5, 5.0, 7.5, 10.0]
    p = [100.0, 125.0, 150.0, 175.0, 200.0]
    assert ga.trapezoid_j(t, p, 2.0, 6.0) == pytest.approx(560.0)


def test_trapezoid_holds_power_past_the_samples_and_sorts_them():
    assert ga.trapezoid_j([2.0, 1.0], [150.0, 50.0], 0.0, 4.0) == pytest.approx(450.0)
    assert ga.trapezoid_j([5.0], [80.0], 0.0, 3.0) == pytest.approx(240.0)
    with pytest.raises(ValueError):
        ga.trapezoid_j([1.0], [1.0], 3.0, 2.0)


def test_judge_against_counter_and_zeus():
    assert ga.judge(1005.0, {"counter": 1000.0, "zeus": 1001.0}) == "PASS"
    assert ga.judge(1015.0, {"counter": 1000.0, "zeus": 1014.0}) == "FAIL"  # counter off
    assert ga.judge(1005.0, {"counter": 1000.0, "zeus": 990.0}) == "FAIL"  # Zeus off
    assert ga.judge(1005.0, {"counter": 1000.0, "zeus": None}) == "PASS"  # no Zeus: counter
    assert ga.judge(None, {"counter": 1000.0}) == "FAIL"
    assert ga.judge(1005.0, {"counter": None, "zeus": None}) == "n/a"
    assert ga.judge(1015.0, {"counter": 1000.0}, tolerance_pct=2.0) == "PASS"


def _rows():
    return [
        ga.make_row("idle", 0, 20.0, 1400.0, 1401.4, "counter", 1398.0, None, "not installed"),
        ga.make_row("steady", 0, 20.0, 12000.0, 12200.0, "counter", 11800.0, 12001.0),
        ga.make_row("onoff_1hz", 0, 20.0, None, 6000.0, "sampled", 5900.0, None, "failed"),
    ]


def test_rows_carry_diffs_mean_power_and_verdicts():
    idle, steady, onoff = _rows()
    assert idle["raydistill_diff_pct"] == pytest.approx(0.1)
    assert idle["mean_power_w"] == pytest.approx(70.0)
    assert idle["verdict"] == "PASS"
    assert steady["power_int_diff_pct"] == pytest.approx(-100 / 60)
    assert steady["verdict"] == "FAIL"
    assert onoff["raydistill_diff_pct"] is None and onoff["mean_power_w"] == pytest.approx(300)
    assert onoff["verdict"] == "n/a"


def test_report_is_one_table_with_gpu_header_and_step_footer():
    steps = [{"name": "gpu tests", "status": "passed", "wall_s": 95.0,
              "detail": "2 passed, 0 failed, 0 error, 0 skipped (exit 0)"},
             ga.not_run("pipeline", "--no-pipeline")]
    rows = _rows()
    report = {"gpus": [{"index": 0, "name": "NVIDIA H100", "uuid": "GPU-1234", "driver": "550",
                        "counter_supported": True}],
              "tolerance_pct": 1.0, "load_s": 20.0, "rows": rows, "steps": steps,
              "verdict": ga.overall_verdict(rows, steps)}
    text = ga.format_report(report)
    lines = text.splitlines()
    assert lines[0] == "GPU 0: NVIDIA H100 (GPU-1234), driver 550, energy counter supported"
    header = next(i for i, ln in enumerate(lines) if ln.startswith("load "))
    table = lines[header:header + 4]
    assert table[0].split() == [h for h, _, _ in ga.COLUMNS]
    assert [ln.split()[0] for ln in table[1:]] == ["idle", "steady", "onoff_1hz"]
    assert "not installed" in table[1] and "+1.67" in table[2] and "12,200.0" in table[2]
    assert "gpu tests: passed in 95 s: 2 passed" in text
    assert "pipeline: skipped: --no-pipeline" in text
    assert lines[-1] == "overall: FAIL"


def test_overall_verdict_needs_every_row_and_step_to_pass():
    good = ga.make_row("idle", 0, 1.0, 100.0, 100.5, "counter", 100.0, None)
    assert ga.overall_verdict([good], [ga.not_run("pipeline", "--no-pipeline")]) == "PASS"
    assert ga.overall_verdict([good], [{"name": "gpu tests", "status": "timed out"}]) == "FAIL"
    assert ga.overall_verdict([good], [ga.not_run("pipeline", "under 30 s left")]) == "FAIL"
    assert ga.overall_verdict([], []) == "FAIL"


def test_pytest_summary_counts():
    out = "....F\nFAILED tests/x.py::t\n1 failed, 2 passed, 3 deselected, 1 error in 95.1s\n"
    assert ga.parse_pytest_counts(out) == {"failed": 1, "passed": 2, "deselected": 3, "error": 1}
    assert ga.parse_pytest_counts("no tests ran\n") == {}


def test_deadline_leaves_the_reserve_and_never_goes_negative():
    now = [0.0]
    d = ga.Deadline(100.0, clock=lambda: now[0])
    assert d.timeout_s(150.0, reserve_s=30.0) == 70.0
    now[0] = 90.0
    assert d.timeout_s(150.0, reserve_s=30.0) == 0.0


def test_raydistill_figure_goes_through_the_ledger_windows():
    # a counter rising 300 J/s, read at 10 Hz over 0..10 s; the window 2..7 s holds 1500 J
    gpu = ga.Gpu(0, 0, "GPU-abc", "fake", "0", True, handle=None)
    readings = [Reading("GPU-abc", "gpu", k / 10, 300.0, 1000.0 + 30.0 * k, "nvml-counter",
                        "counter") for k in range(101)]
    span = ga.Span("steady", 2.0, 7.0, {0: 0.0}, {0: 1500.0}, None)
    energy = ga.raydistill_energy(readings, [span], [gpu])
    energy_j, method = energy["steady@gpu0"]
    assert energy_j == pytest.approx(1500.0) and method == "counter"


def test_pipeline_energy_reads_results_and_metrics(tmp_path):
    import json

    import pandas as pd

    pd.DataFrame({"stage": ["teacher_generation", "student_training"],
                  "energy_j": [120.0, 380.5], "energy_method": ["counter", "counter+sampled"]}
                 ).to_parquet(tmp_path / "results.parquet", index=False)
    (tmp_path / "metrics.json").write_text(json.dumps({"trials": [{"E_run_j": 500.5}]}))
    assert ga.pipeline_energy(tmp_path) == {"gpu_energy_j": 500.5, "e_run_j": 500.5,
                                            "methods": ["counter", "sampled"], "stages": 2}


def test_without_nvml_it_exits_2_with_one_line():
    try:
        ga.open_nvml()
    except ga.NoGpu:
        pass
    else:
        pytest.skip("an NVIDIA GPU and driver are present here: the script would run for real")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_acceptance: ")
