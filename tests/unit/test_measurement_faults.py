"""The measurement against a node that behaves like the real driver (raydistill.energy.simulate):
each test is one symptom of issue 13, compared with the true integral of the power trace."""

import logging

import pytest

from raydistill.energy.nvml import NvmlSource
from raydistill.energy.simrun import SimRun
from raydistill.energy.simulate import (
    NVML_ERROR_UNKNOWN,
    PowerTrace,
    SimClock,
    cpu_node,
    gpu_node,
)
from raydistill.errors import SourceUnavailable


# The NVML counter refreshes every 100 ms: at each window edge the reading lags by up to that.
def counter_tol_j(power_w: float, refresh_s: float = 0.1) -> float:
    return 2 * refresh_s * power_w + 1.0


def one_gpu(power_w=500.0, **kw):
    node = gpu_node(1, power_w=power_w, **kw)
    node.rapl = []
    return node, node.gpus[0].uuid


def test_clock_step_back_in_a_window_gives_the_true_energy(tmp_path):
    node, gpu = one_gpu(500.0)
    node.clock_steps = [(5.0, -0.3)]  # NTP steps the wall clock back 0.3 s at true t=5
    run = SimRun(node, tmp_path)
    run.sampler("a")
    run.until(10.5)
    run.window("w", 0.5, 9.8)  # 9.0 s on the wall clock, 9.3 s of real time
    row = run.rows("w")[gpu]
    assert row.energy_j == pytest.approx(500.0 * 9.3, abs=counter_tol_j(500.0))
    assert row.method == "counter" and row.unmeasured_s == 0.0 and row.duration_s == \
        pytest.approx(9.3)


def test_clock_step_without_monotonic_time_never_adds_the_counter_value(tmp_path):
    # Windows and samples recorded without monotonic time (older logs): the wall clock is all
    # the ledger has. It may lose the overlap, but never takes a step back as a reset.
    node, gpu = one_gpu(500.0)
    node.clock_steps = [(5.0, -0.3)]
    run = SimRun(node, tmp_path)
    s = run.sampler("a")
    for src in s.sources:
        src.mono = lambda: None
    run.until(10.5)
    run.window("w", 0.5, 9.8, mono=False)
    row = run.rows("w")[gpu]
    assert 500.0 * 8.9 <= row.energy_j <= 500.0 * 9.4


def test_two_samplers_reading_one_gpu_interleaved_count_once(tmp_path):
    node, gpu = one_gpu(250.0)
    run = SimRun(node, tmp_path)
    a = run.sampler("a")
    node.clock.advance(0.05)
    b = run.sampler("b")  # an old sampler not yet dead and its replacement, 50 ms apart
    for _ in range(20):
        run.until(node.true_s() + 0.05, hz=20, only=[a])
        run.until(node.true_s() + 0.05, hz=20, only=[b])
    run.window("w", 0.5, 1.0)  # 125 J
    row = run.rows("w")[gpu]
    assert row.energy_j == pytest.approx(125.0, abs=counter_tol_j(250.0))


def test_a_lost_gpu_is_unmeasured_from_then_on_not_charged_its_last_power(tmp_path):
    node, gpu = one_gpu(700.0)
    node.gpus[0].lost_at_s = 5.0
    run = SimRun(node, tmp_path)
    run.sampler("a")
    run.until(3700.0, hz=1)
    run.window("late", 3600.0, 3610.0)
    run.window("across", 3.0, 7.0)
    late = run.rows("late")[gpu]
    assert late.energy_j == 0.0 and late.unmeasured_s == pytest.approx(10.0)
    assert late.method == "unmeasured" and late.unmeasured_max_j == pytest.approx(7000.0)
    across = run.rows("across")[gpu]
    measured_s = 4.0 - across.unmeasured_s - across.held_s
    assert measured_s == pytest.approx(1.0, abs=0.01)  # polls at 3 and 4 s; the one at 5 fails
    assert across.energy_j == pytest.approx(700.0 * (measured_s + across.held_s), abs=80.0)
    assert "interpolated" in across.method and across.unmeasured_s > 1.0


def test_one_transient_nvml_error_changes_nothing_already_reported(tmp_path):
    node, gpu = one_gpu()
    node.gpus[0].trace = PowerTrace.square(1.0, 400.0, 50.0, until_s=100.0)  # 1 Hz on/off
    run = SimRun(node, tmp_path)
    run.sampler("a")
    run.until(3.0)
    run.window("first", 0.25, 2.75)
    before = run.rows("first")[gpu]
    assert before.energy_j == pytest.approx(node.truth_j(gpu, 0.25, 2.75), abs=counter_tol_j(400))
    node.fail_next(1, NVML_ERROR_UNKNOWN)
    run.until(6.0)
    after = run.rows("first")[gpu]
    assert after.energy_j == before.energy_j and after.method == "counter"
    run.window("second", 3.25, 5.75)
    assert run.rows("second")[gpu].method == "counter"


def test_a_restarted_sampler_under_load_keeps_the_idle_baseline(tmp_path):
    node, gpu = one_gpu()
    node.gpus[0].trace = PowerTrace([0.0, 2.0, 2.0], [60.0, 60.0, 500.0])  # idle, then load
    run = SimRun(node, tmp_path)
    first = run.sampler("a", idle_s=1.0)
    run.until(20.0)
    run.window("busy", 5.0, 15.0)
    above = run.rows("busy")[gpu].above_idle_j
    assert above == pytest.approx(440.0 * 10.0, abs=counter_tol_j(500.0))
    first.alive = False
    run.window("later", 20.0, 40.0)  # the replacement measures "idle" under this load
    run.sampler("b", idle_s=1.0)
    run.until(45.0)
    assert run.rows("busy")[gpu].above_idle_j == above
    later = run.rows("later")[gpu]
    assert later.idle_j == pytest.approx(first.idle_w[gpu] * 20.0)  # not the 500 W "idle"
    assert later.above_idle_j == pytest.approx(440.0 * 20.0, abs=counter_tol_j(500.0))


def test_rapl_replacement_sampler_bridges_the_stretch_and_overlap_counts_once(tmp_path):
    node = cpu_node()
    run = SimRun(node, tmp_path)
    a = run.sampler("a")
    run.until(30.0)
    a.alive = False
    run.until(33.0)  # nobody reads for 3 s
    b = run.sampler("b")
    run.until(40.0, only=[b])
    c = run.sampler("c")  # two samplers overlap from here on
    run.until(50.0, only=[b, c])
    run.window("w", 10.0, 48.0)
    rows = run.rows("w")
    for dev in ("cpu:package-0", "cpu:package-1", "dram:package-0"):
        truth = node.truth_j(dev, 10.0, 48.0)
        assert rows[dev].energy_j == pytest.approx(truth, rel=1e-4)
        assert rows[dev].unmeasured_s == 0.0 and rows[dev].method == "counter"


def test_rapl_wraps_at_its_range_and_two_threads_add_no_phantom_wrap(tmp_path):
    node = cpu_node()
    pkg = node.rapl[0]
    pkg.origin_uj = pkg.max_range_uj - 2_000_000_000  # wraps after ~11 s at 180 W
    run = SimRun(node, tmp_path)
    s = run.sampler("a")
    run.until(20.0)
    # a flush that read between two polls, its readings landing out of order in the batch
    s.readings[-2:] = s.readings[-2:][::-1]
    run.until(30.0)
    run.window("w", 1.0, 29.0)
    row = run.rows("w")["cpu:package-0"]
    assert row.energy_j == pytest.approx(node.truth_j("cpu:package-0", 1.0, 29.0), rel=1e-4)


def test_one_unopenable_gpu_leaves_the_others_measured(caplog):
    node = gpu_node(8)
    for g in node.gpus[2:]:
        g.no_permission = True  # a Slurm job that may open 2 of the node's 8 GPUs
    with caplog.at_level(logging.WARNING):
        src = NvmlSource(node.pynvml(), clock=node.wall, mono=node.mono)
    assert [r.device_id for r in src.read()] == [g.uuid for g in node.gpus[:2]]
    assert any("6 of 8 GPUs" in m for m in caplog.messages)
    for g in node.gpus[:2]:
        g.no_permission = True
    with pytest.raises(SourceUnavailable, match="cgroup"):
        NvmlSource(node.pynvml())


def test_window_holding_an_unsampled_device_says_so(tmp_path, caplog):
    node, gpu = one_gpu()
    run = SimRun(node, tmp_path)
    run.sampler("a")
    run.until(5.0)
    run.window("w", 1.0, 4.0, devices=(gpu, "gpu:3"))
    with caplog.at_level(logging.WARNING):
        rows = run.rows("w")
    assert rows["gpu:3"].method == "unmeasured" and rows["gpu:3"].unmeasured_s == \
        pytest.approx(3.0)
    assert rows[gpu].energy_j > 0
    assert any("gpu:3" in m and "unmeasured" in m for m in run.state.warnings)


def test_a_window_shorter_than_the_sample_period_is_flagged_interpolated(tmp_path):
    node, gpu = one_gpu()
    run = SimRun(node, tmp_path)
    run.sampler("a")
    run.until(5.0)
    run.window("short", 2.01, 2.03)  # 20 ms at 10 Hz: no sample inside
    run.window("long", 1.0, 4.0)
    assert run.rows("short")[gpu].interpolated
    assert not run.rows("long")[gpu].interpolated and run.rows("long")[gpu].final


def test_h100_averaged_power_differs_from_the_counter_on_an_on_off_load():
    # The reason the counter is preferred: 1 s averaging smears a 1 Hz load.
    node, _gpu = one_gpu()
    node.gpus[0].trace = PowerTrace.square(1.0, 600.0, 100.0, until_s=100.0)
    nv = node.pynvml()
    nv.nvmlInit()
    h = nv.nvmlDeviceGetHandleByIndex(0)
    node.clock.set(10.25)
    assert nv.nvmlDeviceGetPowerUsage(h) / 1000 == pytest.approx(350.0)  # the 1 s mean
    f = nv.nvmlDeviceGetFieldValues(h, [nv.NVML_FI_DEV_POWER_INSTANT])[0]
    assert f.value.uiVal / 1000 == pytest.approx(600.0)
    assert nv.nvmlDeviceGetTotalEnergyConsumption(h) / 1000 > 1e9  # since driver load


def test_simulated_clock_is_thread_safe_and_counters_agree_across_readers():
    node = gpu_node(2, clock=SimClock(realtime=True))
    a, b = node.pynvml(), node.pynvml()
    a.nvmlInit()
    b.nvmlInit()
    ha, hb = a.nvmlDeviceGetHandleByIndex(1), b.nvmlDeviceGetHandleByIndex(1)
    e1 = a.nvmlDeviceGetTotalEnergyConsumption(ha)
    e2 = b.nvmlDeviceGetTotalEnergyConsumption(hb)
    assert 0 <= e2 - e1 < 300 * 1000  # one counter, read by two processes


def test_mig_instances_are_charged_their_slice_share_of_the_parent_labelled_so(tmp_path):
    node, gpu = one_gpu(420.0)
    node.gpus[0].mig_slices = (3, 2, 2)
    run = SimRun(node, tmp_path)
    run.sampler("a")
    run.until(12.0)
    mig = [f"MIG-{gpu[4:]}-{i}" for i in range(3)]
    run.window("big", 1.0, 11.0, devices=(mig[0],))
    run.window("small", 1.0, 11.0, devices=(mig[1],))
    run.window("node", 1.0, 11.0)
    big, small = run.rows("big")[mig[0]], run.rows("small")[mig[1]]
    assert big.energy_j == pytest.approx(420.0 * 10 * 3 / 7, abs=counter_tol_j(420.0))
    assert small.energy_j == pytest.approx(420.0 * 10 * 2 / 7, abs=counter_tol_j(420.0))
    assert big.method == "estimated" and big.sources == "nvml-mig-slice-share"
    whole = run.rows("node")
    assert gpu in whole and not any(d.startswith("MIG-") for d in whole)  # no double charge


def test_a_node_without_gpus_has_no_nvml_source_but_is_measured_by_rapl(tmp_path):
    node = cpu_node()  # the CPU head of cluster.yaml
    with pytest.raises(SourceUnavailable, match="no GPU"):
        NvmlSource(node.pynvml())
    run = SimRun(node, tmp_path)
    run.sampler("a")
    run.until(5.0)
    run.window("w", 1.0, 4.0)
    rows = run.rows("w")
    assert set(rows) == {"cpu:package-0", "cpu:package-1", "dram:package-0", "dram:package-1"}
    assert rows["cpu:package-1"].energy_j == pytest.approx(180.0 * 3.0, rel=1e-4)
