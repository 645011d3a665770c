"""Stated error per device (issue 27, accuracy): each row its own class, summed over a stage's
devices; each class names its source; AMD's modelled RAPL is not a counter; a GPU nobody
sampled is bounded by its kind's peak power, not 0 J."""

import pandas as pd
import pytest

from raydistill.energy.accuracy import (
    BOARD_POWER,
    CLASSES,
    UNKNOWN_GPU_PEAK_W,
    board_power,
    error_class,
    error_source,
    row_error_j,
)
from raydistill.energy.ledger import LedgerState
from raydistill.energy.rapl import RaplSource
from raydistill.energy.samples import Reading
from raydistill.energy.simrun import SimRun
from raydistill.results import energy_frame, error_notes, results_table, seed_metrics
from raydistill.search.derived import rows_error_j
from tests.fakes import make_rapl_tree
from tests.ledger_helpers import feed, rows_of, window

H100 = "NVIDIA H100 80GB HBM3"
GPUS = tuple(f"GPU-{i}" for i in range(8))
WINDOW_S = 1000.0


def _stage(state: LedgerState, trial: str, stage: str, t0: float, gpu_j: float, cpu_j: float,
           window_s: float = WINDOW_S) -> None:
    """8 H100s read by their energy counter (gpu_j each) and a CPU estimate (cpu_j: a cloud
    VM without RAPL) over one window of `window_s`, at 1 Hz."""
    times = [t0 + k for k in range(int(window_s) + 1)]
    gpu_w, cpu_w = gpu_j / window_s, cpu_j / window_s
    for g in GPUS:
        feed(state, f"{trial}-{stage}-{g}", [
            Reading(g, "gpu", t, gpu_w, 1e6 + gpu_w * (t - t0), "nvml-counter", "counter",
                    model=H100) for t in times])
    feed(state, f"{trial}-{stage}-cpu", [
        Reading("cpu:estimate", "cpu", t, cpu_w, None, "cpu-estimate", "estimated")
        for t in times])
    window(state, f"{trial}-{stage}", t0, t0 + window_s, devices=GPUS, trial=trial, stage=stage)


def _expected_error_j(gpu_j: float, cpu_j: float) -> float:
    part_time = CLASSES["counter-part-time"]
    return 8 * gpu_j * part_time.relative_for(WINDOW_S) + CLASSES["estimated"].relative * cpu_j


def test_a_stage_of_counted_gpus_and_an_estimated_cpu_states_each_devices_error():
    # The case: 8 H100s by counter (192 kJ) and an estimated CPU (16 kJ). The old rule
    # took the estimate's ±50% for all 208 kJ (104 kJ); per device it is ~18 kJ.
    state = LedgerState(max_gap_s=5.0)
    _stage(state, "base", "student_training", 0.0, gpu_j=24_000.0, cpu_j=16_000.0)
    table = results_table(state.energy_rows())
    row = table.set_index(["trial_id", "stage"]).loc[("base", "student_training")]
    assert row["energy_j"] == pytest.approx(208_000.0, rel=1e-6)
    assert "estimated" in row["energy_method"] and "counter" in row["energy_method"]
    expected = _expected_error_j(24_000.0, 16_000.0)
    assert 17_000.0 < expected < 18_500.0
    assert row["stated_error_j"] == pytest.approx(expected, rel=1e-3)
    assert rows_error_j(table[table["trial_id"] == "base"]) == pytest.approx(expected, rel=1e-3)
    notes = error_notes(energy_frame(state.energy_rows()))  # what `raydistill ledger` prints
    assert len(notes) == 2 and any("Yang, Adamek & Armour" in n for n in notes)
    assert any(n.startswith("stated error estimated ±50%: judgement") for n in notes)


def test_a_52_kj_training_saving_is_distinguishable_with_per_device_errors():
    state = LedgerState(max_gap_s=5.0)
    _stage(state, "base", "student_training", 0.0, gpu_j=24_000.0, cpu_j=16_000.0)  # 208 kJ
    _stage(state, "kd", "student_training", 2000.0, gpu_j=18_000.0, cpu_j=12_000.0)  # 156 kJ
    _stage(state, "kd", "teacher_generation", 4000.0, gpu_j=50_000.0, cpu_j=10_000.0)
    table = results_table(state.energy_rows())
    m = seed_metrics(table, "kd", {}, baseline_trial="base")
    assert m["N_star_verdict"] == "distinguishable"
    assert m["N_star"] == pytest.approx(410_000.0 / 52_000.0, rel=1e-3)
    assert m["N_star_low"] < m["N_star"] < m["N_star_high"]
    # An old results table (no stated_error_j) keeps the method rule: the worst class for all.
    old = seed_metrics(table.drop(columns=["stated_error_j", "meter", "bias_j", "bias_parts",
                                           "independent_j"]), "kd", {}, baseline_trial="base")
    assert old["N_star_verdict"] == "not distinguishable"


def test_the_counter_class_depends_on_the_board_and_the_window_length():
    h100 = error_class("counter", "gpu", H100)
    assert h100.name == "counter-part-time" and h100.coverage == 0.25
    assert error_class("counter", "gpu", "NVIDIA A100-SXM4-80GB") is h100
    assert error_class("counter", "gpu", "").name == "counter-part-time"  # unknown: cautious
    assert error_class("counter", "gpu", "NVIDIA L4").name == "counter"
    assert error_class("counter", "cpu").name == "counter-rapl"
    # short windows against the sensor's 100 ms refresh (25 ms of it seen) carry more error
    assert row_error_j(100.0, "counter", "gpu", 1.0, device_model=H100) == pytest.approx(85.0)
    assert row_error_j(100.0, "counter", "gpu", 3600.0, device_model=H100) == \
        pytest.approx(5.0, abs=0.05)
    assert row_error_j(100.0, "counter", "gpu", 1.0, device_model="NVIDIA L4") == \
        pytest.approx(25.0)
    assert row_error_j(100.0, "estimated", "cpu", 1.0) == pytest.approx(50.0)
    assert row_error_j(0.0, "unmeasured", "gpu", 10.0, unmeasured_max_j=7000.0) == 7000.0
    assert row_error_j(100.0, "", "gpu", 10.0) == pytest.approx(50.0)  # unknown: the worst


def test_every_class_names_its_source_or_says_it_is_a_judgement():
    for c in CLASSES.values():
        assert c.source.strip()
        if c.judgement:
            assert "judgement" in c.source
    assert "Fermi and Kepler" in error_source("counter", "gpu", "NVIDIA L4")
    assert "Yang, Adamek & Armour" in error_source("counter", "gpu", H100)
    assert "25%" in error_source("counter", "gpu", H100)
    assert "Schöne" in error_source("modelled")
    src = error_source("counter+estimated", "gpu", H100)
    assert "counter-part-time" in src and "estimated ±50%: judgement" in src
    assert all(b.source.startswith("NVIDIA") for b in BOARD_POWER)


def test_amd_rapl_is_labelled_modelled_not_a_counter(tmp_path):
    root = make_rapl_tree(tmp_path / "sys")
    amd, intel = tmp_path / "amd", tmp_path / "intel"
    amd.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n")
    intel.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\n")
    assert {r.method for r in RaplSource(root, cpuinfo=amd).read()} == {"modelled"}
    assert {r.method for r in RaplSource(root, cpuinfo=intel).read()} == {"counter"}
    assert "modelled" in RaplSource(root, cpuinfo=amd).describe()
    state = LedgerState()
    readings = [Reading("cpu:package-0", "cpu", float(t), None, 10.0 * t, "rapl", "modelled")
                for t in range(11)]
    feed(state, "s", readings)
    window(state, "w", 0.0, 10.0)
    row = rows_of(state, "w")["cpu:package-0"]
    assert row.method == "modelled" and row.energy_j == pytest.approx(100.0)
    assert row.stated_error_j == pytest.approx(100.0 * CLASSES["modelled"].relative_for(10.0))
    assert CLASSES["modelled"].relative > CLASSES["counter-rapl"].relative


def test_a_gpu_nobody_sampled_is_bounded_by_its_kinds_peak_power():
    state = LedgerState()
    feed(state, "s", [Reading("GPU-a", "gpu", float(t), 100.0, 100.0 * t, "nvml-counter",
                              "counter", model=H100) for t in range(11)])
    window(state, "w", 0.0, 10.0, devices=("GPU-a", "GPU-b"))
    row = rows_of(state, "w")["GPU-b"]
    assert row.method == "unmeasured" and row.energy_j == 0.0 and row.unmeasured_s == 10.0
    assert row.unmeasured_max_j == pytest.approx(10.0 * 700.0)  # its node's H100s: 700 W
    assert row.stated_error_j == pytest.approx(7000.0)
    # a node whose GPU model nobody read: the stated default for an unknown GPU
    bare = LedgerState()
    feed(bare, "s", [Reading("cpu:estimate", "cpu", float(t), 50.0, None, "cpu-estimate",
                             "estimated") for t in range(11)])
    window(bare, "w", 0.0, 10.0, devices=("GPU-x",))
    row = rows_of(bare, "w")["GPU-x"]
    assert row.unmeasured_max_j == pytest.approx(10.0 * UNKNOWN_GPU_PEAK_W)
    table = results_table(bare.energy_rows())
    assert table["unmeasured_max_j"].sum() == pytest.approx(10.0 * UNKNOWN_GPU_PEAK_W)


def test_a_sampled_gpus_gap_is_bounded_by_its_board_power_not_the_idle_peak_seen(tmp_path):
    from raydistill.energy.simulate import gpu_node

    node = gpu_node(1, power_w=60.0)  # an idle H100: every sample it gave was 60 W
    node.rapl = []
    gpu = node.gpus[0]
    gpu.lost_at_s = 5.0
    run = SimRun(node, tmp_path)
    run.sampler("a")
    run.until(40.0, hz=1)
    run.window("late", 20.0, 30.0)
    late = run.rows("late")[gpu.uuid]
    assert late.device_model == H100 and late.unmeasured_s == pytest.approx(10.0)
    assert late.unmeasured_max_j == pytest.approx(10.0 * board_power(H100).peak_w)


@pytest.mark.parametrize("name, watts", [
    ("NVIDIA H100 80GB HBM3", 700.0), ("NVIDIA H100 PCIe", 350.0), ("NVIDIA H100 NVL", 400.0),
    ("NVIDIA H200", 700.0), ("NVIDIA A100-SXM4-80GB", 400.0), ("NVIDIA A100 80GB PCIe", 300.0),
    ("NVIDIA GH200 480GB", 1000.0), ("NVIDIA L4", 72.0), ("NVIDIA A10", 150.0),
    ("NVIDIA L40S", 350.0), ("Tesla T4", 70.0)])
def test_board_power_by_nvml_name(name, watts):
    assert board_power(name).peak_w == watts


def test_unknown_boards_get_no_table_entry():
    assert board_power("NVIDIA A10G") is None and board_power("") is None


def test_old_rows_without_their_own_error_take_the_method_rule():
    rows = [{"window_id": "w", "trial_id": "t", "stage": "s", "node_id": "n", "device_id": "d",
             "device_kind": "gpu", "t_start_s": 0.0, "t_end_s": 10.0, "duration_s": 10.0,
             "tokens": 0, "energy_j": 100.0, "idle_j": 0.0, "above_idle_j": 100.0,
             "method": "sampled", "sources": "x", "shared": False, "share": 1.0,
             "n_samples": 10, "gap_s": 0.0, "n_gaps": 0, "counter_resets": 0, "open": False,
             "unmeasured_max_j": 3.0}]
    table = results_table(rows)
    assert table["stated_error_j"].iloc[0] == pytest.approx(13.0)  # 10% + the bound
    assert isinstance(table, pd.DataFrame)


def test_a_fraction_of_a_second_held_at_the_edge_does_not_make_the_whole_row_interpolated():
    """A stage opened 0.2 s before the sampler's first reading of an hour on an H100 counter:
    the held 0.2 s carry the interpolated class, the measured hour the counter's."""
    import numpy as np

    from raydistill.energy import LedgerState, SampleBatch, Window
    from raydistill.energy.samples import DeviceInfo

    info = (DeviceInfo("GPU-0", "gpu", "nvml-counter", "counter", None, "NVIDIA H100 80GB HBM3"),)
    st = LedgerState()
    w = Window("w", "t", "student_training", "n0", ("GPU-0",), 1e9 + 0.8, t_start_mono_s=0.8)
    st.apply_event({"type": "window_open", **w.__dict__})
    t = np.arange(1.0, 3601.0, 0.1)
    st.ingest(SampleBatch("s", 0, "n0", info, np.zeros(len(t), np.int32), t + 1e9,
                          np.full(len(t), 500.0), 500.0 * t, t_mono_s=t))
    st.apply_event({"type": "window_close", "window_id": "w", "t_end_s": 1e9 + 3600.0,
                    "tokens": 1, "cpu_time_s": None, "t_end_mono_s": 3600.0})
    (row,) = st.energy_rows()
    assert "interpolated" in row.method and row.held_s == pytest.approx(0.2)
    assert row.stated_error_j < 0.06 * row.energy_j  # was 20% of the whole hour
    assert row.stated_error_j > 0.05 * row.energy_j  # the counter's class still applies
