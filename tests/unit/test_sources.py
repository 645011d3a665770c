"""Sources against fakes: vendor units converted at the edge, fallbacks labelled, bad specs."""

import json
import logging
import time

import pytest

from raydistill.energy.ledger import LedgerState
from raydistill.energy.nvml import NvmlSource, visible_filter
from raydistill.energy.rapl import RaplSource
from raydistill.energy.samples import DEVICE_KINDS, METHODS
from raydistill.energy.sources import (
    ConstantSource,
    CpuEstimateSource,
    ReplaySource,
    cpu_sockets,
    describe_sources,
    estimate_tdp_w,
    parse_source_spec,
    validate_source_spec,
)
from raydistill.errors import ConfigError, SourceUnavailable
from tests.fakes import GPU_IS_LOST, FakeGpu, NVMLError, make_fake_pynvml, make_rapl_tree
from tests.ledger_helpers import feed, rows_of, window


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def _valid(readings):
    for r in readings:
        assert r.device_kind in DEVICE_KINDS and r.method in METHODS
        assert r.power_w is not None or r.energy_counter_j is not None
    return readings


# ---- NVML -----------------------------------------------------------------------------------


def test_nvml_counter_preferred_and_converted():
    gpus = [FakeGpu("GPU-aaa", counter_mj=123_456, power_mw=250_500)]
    src = NvmlSource(make_fake_pynvml(gpus), clock=Clock(7.0))
    (r,) = _valid(src.read())
    assert (r.device_id, r.device_kind, r.source, r.method, r.t_wall_s) == (
        "GPU-aaa", "gpu", "nvml-counter", "counter", 7.0)
    assert r.energy_counter_j == 123.456 and r.power_w == 250.5
    gpus[0].counter_mj += 1_500
    assert src.read()[0].energy_counter_j == pytest.approx(124.956)


def test_nvml_old_gpu_falls_back_to_instant_then_average_power():
    gpus = [FakeGpu("GPU-old", supports_counter=False, power_mw=70_000),
            FakeGpu("GPU-older", supports_counter=False, supports_instant=False, power_mw=50_500)]
    a, b = _valid(NvmlSource(make_fake_pynvml(gpus)).read())
    assert (a.source, a.method, a.power_w, a.energy_counter_j) == (
        "nvml-power-instant", "sampled", 70.0, None)
    assert (b.source, b.method, b.power_w, b.energy_counter_j) == (
        "nvml-power", "sampled", 50.5, None)


def test_nvml_counter_unsupported_mid_run_falls_back_once_and_says_so(caplog):
    gpu = FakeGpu("GPU-x", counter_mj=1000)
    src = NvmlSource(make_fake_pynvml([gpu]))
    assert src.read()[0].source == "nvml-counter"
    gpu.counter_error = 3  # NOT_SUPPORTED: this path will never work again
    with caplog.at_level(logging.WARNING):
        sources = [src.read()[0].source for _ in range(3)]
    assert sources == ["nvml-power-instant"] * 3
    assert len([m for m in caplog.messages if "falling back" in m]) == 1
    assert "nvml-power-instant" in src.describe()


def test_nvml_transient_error_skips_one_reading_and_keeps_the_counter():
    gpu = FakeGpu("GPU-x", counter_mj=1000)
    src = NvmlSource(make_fake_pynvml([gpu]))
    gpu.counter_error = 999  # NVML_ERROR_UNKNOWN: a glitch
    assert src.read() == []
    gpu.counter_error = None
    assert [r.source for r in src.read()] == ["nvml-counter"]
    assert src.transient_errors["GPU-x"] == 1


def test_nvml_lost_gpu_is_dropped_and_the_others_keep_reading(caplog):
    gpus = [FakeGpu("GPU-a", counter_mj=5), FakeGpu("GPU-b", counter_mj=7)]
    src = NvmlSource(make_fake_pynvml(gpus))
    gpus[0].lost = True
    with caplog.at_level(logging.ERROR):
        (only,) = src.read()
    assert only.device_id == "GPU-b" and only.source == "nvml-counter"
    assert any("GPU-a" in m and "dropping" in m for m in caplog.messages)
    assert [r.device_id for r in src.read()] == ["GPU-b"]  # never a stale GPU-a value
    gpus[1].lost = True
    with pytest.raises(SourceUnavailable, match="every GPU failed"):
        src.read()


def test_nvml_counter_reset_is_passed_through_and_counted_downstream():
    gpu = FakeGpu("GPU-r", counter_mj=10_000)
    clock = Clock(0.0)
    src = NvmlSource(make_fake_pynvml([gpu]), clock=clock, mono=clock)
    readings = [src.read()[0]]
    clock.t, gpu.counter_mj = 1.0, 12_000
    readings.append(src.read()[0])
    clock.t = 2.0
    gpu.reset_counter(500)  # a driver reload: the counter restarts near 0
    readings.append(src.read()[0])
    assert readings[-1].energy_counter_j == 0.5 and readings[-1].method == "counter"
    state = LedgerState()
    feed(state, "s1", readings)
    window(state, "w", 0.0, 2.0)
    row = rows_of(state, "w")["GPU-r"]
    assert row.counter_resets == 1 and row.energy_j == pytest.approx(2.0 + 0.5)


def test_nvml_respects_cuda_visible_devices_by_index_and_uuid():
    gpus = [FakeGpu("GPU-a1"), FakeGpu("GPU-b2"), FakeGpu("GPU-c3")]
    fake = make_fake_pynvml(gpus)
    by_index = NvmlSource(fake, visible_only=True, environ={"CUDA_VISIBLE_DEVICES": "2,0"})
    assert [r.device_id for r in by_index.read()] == ["GPU-c3", "GPU-a1"]
    by_uuid = NvmlSource(fake, visible_only=True, environ={"CUDA_VISIBLE_DEVICES": "GPU-b"})
    assert [r.device_id for r in by_uuid.read()] == ["GPU-b2"]
    everything = NvmlSource(fake, visible_only=False, environ={"CUDA_VISIBLE_DEVICES": "0"})
    assert len(everything.read()) == 3
    unset = NvmlSource(fake, visible_only=True, environ={})
    assert len(unset.read()) == 3
    for hidden in ("", "-1"):
        with pytest.raises(SourceUnavailable, match="hides them all"):
            NvmlSource(fake, visible_only=True, environ={"CUDA_VISIBLE_DEVICES": hidden})


def test_cuda_visible_devices_list_ends_at_the_first_bad_entry_like_cuda():
    uuids = ["GPU-a1", "GPU-a2", "GPU-b3"]
    assert visible_filter(uuids, {"CUDA_VISIBLE_DEVICES": "1,7,0"}) == [1]
    assert visible_filter(uuids, {"CUDA_VISIBLE_DEVICES": "GPU-a,2"}) == []  # ambiguous prefix
    assert visible_filter(uuids, {"CUDA_VISIBLE_DEVICES": " GPU-b3 , 0 ,0"}) == [2, 0]


def test_nvml_init_failure_says_how_to_fix():
    fake = make_fake_pynvml([], init_error=NVMLError(9))
    with pytest.raises(SourceUnavailable, match=r"nvidia-ml-py .* --source cpu-estimate"):
        NvmlSource(fake)
    with pytest.raises(SourceUnavailable, match="no GPU"):
        NvmlSource(make_fake_pynvml([]))


def test_nvml_close_shuts_down_and_tolerates_errors():
    fake = make_fake_pynvml([FakeGpu("GPU-z", lost=False)])
    src = NvmlSource(fake)
    src.close()
    assert fake.calls == ["init", "shutdown"]
    fake.nvmlShutdown = lambda: (_ for _ in ()).throw(NVMLError(GPU_IS_LOST))
    src.close()  # does not raise


# ---- RAPL -----------------------------------------------------------------------------------


def test_rapl_converts_microjoules_reports_raw_counter_and_ledger_unwraps(tmp_path):
    root = make_rapl_tree(tmp_path, max_uj=1_000_000)
    pkg = root / "intel-rapl:0"
    clock = Clock(0.0)
    src = RaplSource(root, clock=clock, mono=clock)
    readings = []
    for uj in (900_000, 100_000, 600_000, 50_000):  # wraps twice
        (pkg / "energy_uj").write_text(str(uj))
        got = {r.device_id: r for r in _valid(src.read())}
        readings.append(got["cpu:package-0"])
        clock.t += 1.0
    # absolute, as read (two samplers see one counter), with the range to unwrap it by
    assert [r.energy_counter_j for r in readings] == pytest.approx([0.9, 0.1, 0.6, 0.05])
    assert {r.counter_range_j for r in readings} == {1.0}
    assert got["dram:package-0"].device_kind == "dram"
    assert (got["cpu:package-0"].method, got["cpu:package-0"].source) == ("counter", "rapl")
    state = LedgerState()
    feed(state, "s1", readings)
    window(state, "w", 0.0, 3.0)
    assert rows_of(state, "w")["cpu:package-0"].energy_j == pytest.approx(2.05 - 0.9)


def test_rapl_two_packages_and_psys_skipped(tmp_path):
    root = make_rapl_tree(tmp_path, packages=2, dram=False, psys=True)
    ids = [r.device_id for r in RaplSource(root).read()]
    assert ids == ["cpu:package-0", "cpu:package-1"]


def test_rapl_permission_denied_says_how_to_fix(tmp_path):
    root = make_rapl_tree(tmp_path)

    def denied(path):  # root ignores chmod, so refuse at the reader
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied")
        return path.read_text().strip()

    with pytest.raises(SourceUnavailable, match=r"root only .* chmod a\+r"):
        RaplSource(root, reader=denied)


def test_rapl_permission_lost_mid_run_raises(tmp_path):
    root = make_rapl_tree(tmp_path)
    allowed = {"ok": True}

    def reader(path):
        if path.name == "energy_uj" and not allowed["ok"]:
            raise PermissionError(13, "Permission denied")
        return path.read_text().strip()

    src = RaplSource(root, reader=reader)
    allowed["ok"] = False
    with pytest.raises(SourceUnavailable, match="permission lost"):
        src.read()


def test_rapl_absent(tmp_path):
    with pytest.raises(SourceUnavailable, match="no RAPL"):
        RaplSource(tmp_path)


# ---- CPU estimate, constant -----------------------------------------------------------------


def test_cpu_estimate_is_exact_and_labelled():
    util = iter([0.5, 0.0, 1.0, 1.7])
    src = CpuEstimateSource(tdp_w=100.0, idle_fraction=0.2, util_fn=lambda: next(util),
                            clock=Clock(3.0))
    powers = [_valid(src.read())[0].power_w for _ in range(4)]
    assert powers == pytest.approx([60.0, 20.0, 100.0, 100.0])  # clamped at full use
    r = CpuEstimateSource(tdp_w=100.0, util_fn=lambda: 0.0, clock=Clock(3.0)).read()[0]
    assert (r.device_id, r.device_kind, r.source, r.method, r.t_wall_s) == (
        "cpu:estimate", "cpu", "cpu-estimate", "estimated", 3.0)
    assert r.energy_counter_j is None and r.power_w == pytest.approx(30.0)


def test_cpu_tdp_table_and_fallback():
    assert estimate_tdp_w("AMD EPYC 7763 64-Core Processor", 16)[0] == pytest.approx(35.0)
    assert estimate_tdp_w("AMD EPYC 7763 64-Core Processor", 512)[0] == 280.0  # capped
    tdp, how = estimate_tdp_w("AMD EPYC", 2)
    assert tdp == 8.0 and "per thread" in how
    src = CpuEstimateSource(cpu_model="Intel(R) Xeon(R) Platinum 8380 CPU @ 2.30GHz",
                            util_fn=lambda: 1.0)
    assert "Platinum 8380" in src.describe()
    with pytest.raises(ConfigError, match="TDP"):
        CpuEstimateSource(tdp_w=-3.0, util_fn=lambda: 0.0)
    with pytest.raises(ConfigError, match="idle_fraction"):
        CpuEstimateSource(tdp_w=10.0, idle_fraction=1.5, util_fn=lambda: 0.0)


def test_constant_counter_and_power_agree():
    clock = Clock(50.0)
    src = ConstantSource(100.0, clock=clock, mono=clock)
    a = _valid(src.read())[0]
    clock.t = 57.5
    b = src.read()[0]
    assert b.energy_counter_j - a.energy_counter_j == 750.0
    assert (a.power_w, a.device_id, a.device_kind, a.method) == (
        100.0, "constant", "node", "estimated")
    # a second source (a replacement sampler) continues the same counter
    again = ConstantSource(100.0, clock=clock, mono=clock).read()[0]
    assert again.energy_counter_j == b.energy_counter_j


# ---- replay ---------------------------------------------------------------------------------


def test_replay_power_trace_is_piecewise_linear_and_loops(tmp_path):
    trace = tmp_path / "gpu_run.csv"
    trace.write_text("t_s,power_w\n0,100\n10,200\n20,100\n")
    clock = Clock(1000.0)
    src = ReplaySource(trace, clock=clock)
    for dt, watts in ((0, 100), (5, 150), (10, 200), (12, 180), (25, 150), (40, 100)):
        clock.t = 1000.0 + dt
        (r,) = _valid(src.read())
        assert r.power_w == pytest.approx(watts), dt
    assert (r.device_id, r.device_kind, r.source, r.method) == (
        "replay:gpu_run", "node", "replay", "replayed")
    e = src.energy_at
    assert e(1000.0) == 0.0
    # one period is the closed form: 2 × (100+200)/2 × 10 = 3000 J
    assert e(1020.0) == pytest.approx(3000.0) and e(1045.0) - e(1005.0) == pytest.approx(6000.0)
    # a window cutting segments: ∫_5^12 = (150+200)/2·5 + (200+180)/2·2 = 875 + 380
    assert e(1012.0) - e(1005.0) == pytest.approx(1255.0)


def test_replay_without_loop_holds_the_last_power(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("t_s,power_w\n0,100\n10,200\n")
    clock = Clock(0.0)
    src = ReplaySource(trace, loop=False, clock=clock)
    clock.t = 15.0
    (r,) = src.read()
    assert r.power_w == 200.0 and r.energy_counter_j == pytest.approx(1500.0 + 5 * 200.0)


def test_replay_energy_trace_accumulates_across_loops(tmp_path):
    trace = tmp_path / "e.csv"
    trace.write_text("t_s,energy_j\n0,1000\n4,1400\n6,1400\n")
    clock = Clock(0.0)
    src = ReplaySource(trace, clock=clock)
    assert src.energy_at(12.0) == pytest.approx(800.0)  # two loops of 400 J
    assert src.energy_at(14.0) == pytest.approx(1000.0)
    clock.t = 13.0
    (r,) = src.read()
    assert r.power_w == pytest.approx(100.0) and r.energy_counter_j == pytest.approx(900.0)
    assert src.power_at(17.0) == 0.0  # the flat segment


@pytest.mark.parametrize("body,msg", [
    ("x,y\n1,2\n", "line 1: header"),
    ("", "line 1: header"),
    ("t_s,power_w\n0,1\n", "two rows"),
    ("t_s,power_w\n0,1\n0,2\n", "line 3: t_s must increase"),
    ("t_s,power_w\n0,1\n1,abc\n", "line 3: expected two numbers"),
    ("t_s,power_w\n0,1\n1,2,3\n", "line 3: expected two numbers"),
    ("t_s,power_w\n0,1\n1,-2\n", "line 3: .* >= 0"),
    ("t_s,energy_j\n0,10\n1,5\n", "line 3: energy_j must not decrease"),
])
def test_malformed_traces_rejected_with_line(tmp_path, body, msg):
    trace = tmp_path / "bad.csv"
    trace.write_text(body)
    with pytest.raises(ConfigError, match=msg) as info:
        ReplaySource(trace)
    assert "bad.csv" in str(info.value)
    with pytest.raises(ConfigError, match=msg):
        validate_source_spec(f"replay:{trace}")


def test_replay_missing_or_unreadable(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        ReplaySource(tmp_path / "nope.csv")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ConfigError, match=r"bin\.csv"):
        ReplaySource(tmp_path / "bin.csv")


# ---- specs ----------------------------------------------------------------------------------


def test_each_valid_spec_form(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("t_s,power_w\n0,1\n1,2\n")
    for spec in ("nvml", "rapl", "auto", "cpu-estimate", "cpu-estimate:65", "constant:42.5",
                 f"replay:{trace}", "nvml,rapl", "nvml, cpu-estimate:120",
                 f"constant:1,replay:{trace}"):
        validate_source_spec(spec)
    opened = parse_source_spec(f"constant:42, cpu-estimate:65 ,replay:{trace}")
    assert [s.name for s in opened] == ["constant", "cpu-estimate", "replay"]
    assert "65 W" in describe_sources(opened) and "42 W" in describe_sources(opened)


@pytest.mark.parametrize("bad,msg", [
    ("bogus", "valid: nvml, rapl"), ("watts", "valid: nvml"), ("", "empty"),
    ("constant:-5", "> 0"), ("constant:0", "> 0"), ("constant:abc", "not a number"),
    ("constant:nan", "> 0"), ("constant", "unknown"), ("nvml:3", "unknown"), ("replay", "unknown"),
    ("cpu-estimate:-1", "> 0"), ("nvml,", "unknown source spec ''"),
    ("nvml,nvml", "twice"), ("constant:1,constant:2", "twice"), ("auto,nvml", "alone"),
    ("rapl,cpu-estimate", "keep one"),
])
def test_bad_specs_rejected_saying_how(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        validate_source_spec(bad)
    with pytest.raises(ConfigError):
        parse_source_spec(bad)


def test_missing_hardware_is_source_unavailable_not_config_error():
    validate_source_spec("nvml")  # syntax only: no hardware touched
    if _rapl_here():
        pytest.skip("host has readable RAPL")
    with pytest.raises(SourceUnavailable, match="cpu-estimate"):
        parse_source_spec("rapl")


def _rapl_here():
    try:
        RaplSource()
        return True
    except SourceUnavailable:
        return False


def test_auto_without_nvml_or_rapl_is_the_estimate_and_says_so(monkeypatch, caplog):
    import raydistill.energy.nvml as nvml
    import raydistill.energy.rapl as rapl

    def unavailable(*a, **k):
        raise SourceUnavailable("not here")

    monkeypatch.setattr(nvml.NvmlSource, "__init__", unavailable)
    monkeypatch.setattr(rapl.RaplSource, "__init__", unavailable)
    with caplog.at_level(logging.INFO):
        (only,) = parse_source_spec("auto")
    assert only.name == "cpu-estimate" and "cpu-estimate" in describe_sources([only])
    assert any("auto chose: cpu-estimate" in m for m in caplog.messages)
    assert only.read()[0].method == "estimated"


def test_auto_on_this_machine_is_the_estimate_when_no_gpu_or_rapl():
    if _rapl_here():
        pytest.skip("host has readable RAPL")
    try:
        NvmlSource().close()
        pytest.skip("host has NVML GPUs")
    except SourceUnavailable:
        pass
    assert [s.name for s in parse_source_spec("auto")] == ["cpu-estimate"]


def test_auto_with_gpus_adds_nvml(monkeypatch):
    import raydistill.energy.nvml as nvml

    fake = make_fake_pynvml([FakeGpu("GPU-q", counter_mj=1)])
    monkeypatch.setattr(nvml, "_import_pynvml", lambda: fake)
    names = [s.name for s in parse_source_spec("auto")]
    assert names[0] == "nvml" and names[-1] in ("rapl", "cpu-estimate")


def test_instant_field_decoded_from_the_real_pynvml_struct():
    pynvml = pytest.importorskip("pynvml")
    from raydistill.energy.nvml import FI_DEV_POWER_INSTANT, _field_value

    assert pynvml.NVML_FI_DEV_POWER_INSTANT == FI_DEV_POWER_INSTANT
    field = pynvml.c_nvmlFieldValue_t()
    field.valueType, field.nvmlReturn = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, 0
    field.value.uiVal = 312_345  # mW
    assert _field_value(field) == 312_345.0
    field.valueType, field.value.dVal = pynvml.NVML_VALUE_TYPE_DOUBLE, 12.5
    assert _field_value(field) == 12.5


# ---- CPU estimate across sockets --------------------------------------------------------------

XEON_8480C = "Intel(R) Xeon(R) Platinum 8480C"


def _cpuinfo(sockets, threads_per_socket):
    """/proc/cpuinfo of a node whose processors are numbered socket after socket."""
    blocks = [f"processor\t: {s * threads_per_socket + t}\nmodel name\t: {XEON_8480C}\n"
              f"physical id\t: {s}\ncore id\t\t: {t % 56}\n"
              for s in range(sockets) for t in range(threads_per_socket)]
    return "\n".join(blocks)


def test_cpu_estimate_dgx_h100_counts_both_sockets():
    info = _cpuinfo(2, 112)  # DGX H100: 2 × Xeon Platinum 8480C, 224 threads
    assert cpu_sockets(range(224), info) == 2
    tdp, how = estimate_tdp_w(XEON_8480C, 224, sockets=2)
    assert tdp == pytest.approx(700.0) and "2 sockets" in how
    src = CpuEstimateSource(cpu_model=XEON_8480C, sockets=2, util_fn=lambda: 1.0)
    assert "sockets" in src.describe()


def test_cpu_estimate_one_socket_and_half_a_socket():
    info = _cpuinfo(2, 112)
    assert cpu_sockets(range(112, 224), info) == 1
    tdp, how = estimate_tdp_w(XEON_8480C, 112, sockets=cpu_sockets(range(112, 224), info))
    assert tdp == pytest.approx(350.0) and "1 socket" in how
    half = range(56)  # a job pinned to half of socket 0
    assert estimate_tdp_w(XEON_8480C, 56, cpu_sockets(half, info))[0] == pytest.approx(175.0)
    # more threads than one socket holds cannot be on one socket: capped at the sockets spanned
    tdp, how = estimate_tdp_w(XEON_8480C, 224, sockets=1)
    assert tdp == pytest.approx(350.0) and "capped" in how


def test_cpu_estimate_unknown_cpu_is_per_thread_on_any_sockets():
    for sockets in (1, 2):
        tdp, how = estimate_tdp_w("Some Future CPU", 96, sockets)
        assert tdp == pytest.approx(4.0 * 96) and "per thread" in how
        assert f"{sockets} socket" in how


def test_cpu_sockets_unknown_is_one():
    assert cpu_sockets([0, 1], "") == 1
    assert cpu_sockets([0, 1], "processor\t: 0\nBogoMIPS\t: 50.00\n") == 1  # ARM: no ids
    assert cpu_sockets([7], _cpuinfo(2, 2)) == 1  # a CPU the text does not list
    assert cpu_sockets([1, 2], _cpuinfo(2, 2)) == 2


# ---- simulate:PATH --------------------------------------------------------------------------


def _sim_file(tmp_path):
    path = tmp_path / "node.json"
    path.write_text(json.dumps({
        "gpus": [{"uuid": "GPU-11111111-aaaa-4000-8000-000000000001", "power_w": 300},
                 {"uuid": "GPU-22222222-bbbb-4000-8000-000000000002", "power_w": 200}],
        "rapl": [{"package": 0, "power_w": 150, "dram_w": 20}],
    }))
    return path


def test_simulate_spec_reads_a_simulated_node_like_hardware(tmp_path):
    spec = f"simulate:{_sim_file(tmp_path)}"
    validate_source_spec(spec)
    sources = parse_source_spec(spec)
    assert [s.name for s in sources] == ["nvml", "rapl"]
    start = time.monotonic()
    first = [r for s in sources for r in _valid(s.read())]
    time.sleep(0.2)
    second = {r.device_id: r for s in sources for r in _valid(s.read())}
    elapsed = time.monotonic() - start
    gpus = [r for r in first if r.device_kind == "gpu"]
    assert [r.device_id for r in gpus] == ["GPU-11111111-aaaa-4000-8000-000000000001",
                                           "GPU-22222222-bbbb-4000-8000-000000000002"]
    for r, watts in zip(gpus, (300, 200), strict=True):
        assert r.method == "counter" and r.energy_counter_j >= 1e9  # since driver load, not 0
        assert r.power_w == pytest.approx(watts)
        gained = second[r.device_id].energy_counter_j - r.energy_counter_j
        assert 0 < gained <= watts * (elapsed + 0.1)  # the counter refreshes every 0.1 s
    cpu = {r.device_id: r for r in first if r.device_kind in ("cpu", "dram")}
    assert set(cpu) == {"cpu:package-0", "dram:package-0"}
    for r in cpu.values():
        assert r.method == "counter" and r.counter_range_j == pytest.approx(262_143.32885)
        assert r.t_mono_s == pytest.approx(time.monotonic(), abs=5.0)
    for s in sources:
        s.close()


def test_simulate_spec_bad_file_is_a_config_error_naming_it(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match=r"nope\.json.*not found"):
        validate_source_spec(f"simulate:{missing}")
    with pytest.raises(ConfigError, match=r"nope\.json"):
        parse_source_spec(f"simulate:{missing}")
    bad = tmp_path / "bad.json"
    for body in ("{not json", '[1, 2]', '{"gpus": [{"power_w": 3}]}', '{}'):
        bad.write_text(body)
        with pytest.raises(ConfigError, match=r"bad\.json"):
            validate_source_spec(f"simulate:{bad}")


@pytest.mark.parametrize("other,msg", [("nvml", "drop nvml"), ("rapl", "drop rapl"),
                                       ("auto", "use it alone")])
def test_simulate_spec_not_with_hardware_sources(tmp_path, other, msg):
    with pytest.raises(ConfigError, match=msg):
        validate_source_spec(f"simulate:{_sim_file(tmp_path)},{other}")
    with pytest.raises(ConfigError, match="unknown"):
        validate_source_spec("simulate")
    validate_source_spec(f"simulate:{_sim_file(tmp_path)},constant:5")
