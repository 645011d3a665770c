"""Sources against fakes: vendor units converted at the edge, fallbacks labelled, bad specs."""

import pytest

from raydistill.energy.nvml import NvmlSource
from raydistill.energy.rapl import RaplSource
from raydistill.energy.sources import (
    ConstantSource,
    CpuEstimateSource,
    ReplaySource,
    estimate_tdp_w,
    parse_source_spec,
    validate_source_spec,
)
from raydistill.errors import ConfigError, SourceUnavailable
from tests.fakes import FakeGpu, NVMLError, make_fake_pynvml, make_rapl_tree


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def test_nvml_counter_preferred_and_converted():
    gpus = [FakeGpu("GPU-aaa", counter_mj=123_456, power_mw=250_500)]
    (r,) = NvmlSource(make_fake_pynvml(gpus), clock=Clock()).read()
    assert (r.device_id, r.device_kind, r.source, r.method) == ("GPU-aaa", "gpu", "nvml-counter",
                                                                  "counter")
    assert r.energy_counter_j == 123.456 and r.power_w == 250.5


def test_nvml_old_gpu_falls_back_to_instant_then_average_power():
    gpus = [FakeGpu("GPU-old", supports_counter=False, power_mw=70_000),
            FakeGpu("GPU-older", supports_counter=False, supports_instant=False, power_mw=50_000)]
    a, b = NvmlSource(make_fake_pynvml(gpus)).read()
    assert (a.source, a.method, a.power_w, a.energy_counter_j) == (
        "nvml-power-instant", "sampled", 70.0, None)
    assert (b.source, b.power_w) == ("nvml-power", 50.0)


def test_nvml_counter_failing_mid_run_falls_back_and_says_so():
    gpu = FakeGpu("GPU-x", counter_mj=1000)
    src = NvmlSource(make_fake_pynvml([gpu]))
    assert src.read()[0].source == "nvml-counter"
    gpu.supports_counter = False
    assert src.read()[0].source == "nvml-power-instant"
    assert "nvml-power-instant" in src.describe()


def test_nvml_lost_gpu_raises_source_unavailable():
    gpu = FakeGpu("GPU-x")
    src = NvmlSource(make_fake_pynvml([gpu]))
    gpu.lost = True
    with pytest.raises(SourceUnavailable, match="GPU-x"):
        src.read()


def test_nvml_respects_cuda_visible_devices_by_index_and_uuid():
    gpus = [FakeGpu("GPU-a1"), FakeGpu("GPU-b2"), FakeGpu("GPU-c3")]
    fake = make_fake_pynvml(gpus)
    by_index = NvmlSource(fake, visible_only=True, environ={"CUDA_VISIBLE_DEVICES": "2,0"})
    assert [r.device_id for r in by_index.read()] == ["GPU-c3", "GPU-a1"]
    by_uuid = NvmlSource(fake, visible_only=True, environ={"CUDA_VISIBLE_DEVICES": "GPU-b"})
    assert [r.device_id for r in by_uuid.read()] == ["GPU-b2"]
    everything = NvmlSource(fake, visible_only=False, environ={"CUDA_VISIBLE_DEVICES": "0"})
    assert len(everything.read()) == 3
    with pytest.raises(SourceUnavailable, match="hides them all"):
        NvmlSource(fake, visible_only=True, environ={"CUDA_VISIBLE_DEVICES": ""})


def test_nvml_init_failure_says_how_to_fix():
    fake = make_fake_pynvml([], init_error=NVMLError(9))
    with pytest.raises(SourceUnavailable, match="nvidia-ml-py .* --source cpu-estimate"):
        NvmlSource(fake)


def test_rapl_converts_microjoules_and_unwraps(tmp_path):
    root = make_rapl_tree(tmp_path, max_uj=1_000_000)
    pkg = root / "intel-rapl:0"
    src = RaplSource(root, clock=Clock())
    for uj in (900_000, 100_000, 600_000):  # wraps once between the first two
        (pkg / "energy_uj").write_text(str(uj))
        readings = {r.device_id: r for r in src.read()}
    assert readings["cpu:package-0"].energy_counter_j == pytest.approx(0.9 + 0.2 + 0.5)
    assert readings["dram:package-0"].device_kind == "dram"
    assert readings["cpu:package-0"].method == "counter"


def test_rapl_permission_denied_says_how_to_fix(tmp_path):
    root = make_rapl_tree(tmp_path)

    def denied(path):  # root ignores chmod, so refuse at the reader
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied")
        return path.read_text().strip()

    with pytest.raises(SourceUnavailable, match="chmod a\\+r"):
        RaplSource(root, reader=denied)


def test_rapl_absent(tmp_path):
    with pytest.raises(SourceUnavailable, match="no RAPL"):
        RaplSource(tmp_path)


def test_cpu_estimate_is_exact_and_labelled():
    src = CpuEstimateSource(tdp_w=100.0, idle_fraction=0.2, util_fn=lambda: 0.5, clock=Clock())
    (r,) = src.read()
    assert r.power_w == pytest.approx(20 + 80 * 0.5) and r.method == "estimated"
    assert estimate_tdp_w("AMD EPYC 7763 64-Core", 16)[0] == pytest.approx(280 * 16 / 128)
    assert estimate_tdp_w("Mystery CPU", 2)[0] == 20.0


def test_constant_counter_and_power_agree():
    clock = Clock(50.0)
    src = ConstantSource(100.0, clock=clock)
    a = src.read()[0]
    clock.t = 57.5
    b = src.read()[0]
    assert b.energy_counter_j - a.energy_counter_j == pytest.approx(750.0)
    assert a.power_w == 100.0


def test_replay_power_trace_is_piecewise_linear_and_loops(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("t_s,power_w\n0,100\n10,200\n20,100\n")
    clock = Clock(0.0)
    src = ReplaySource(trace, clock=clock)
    clock.t = 5.0
    assert src.read()[0].power_w == 150.0
    # one full period is the closed form: 2 × (100+200)/2 × 10 = 3000 J
    assert src.energy_at(20.0) - src.energy_at(0.0) == pytest.approx(3000.0)
    assert src.energy_at(45.0) - src.energy_at(5.0) == pytest.approx(2 * 3000.0)
    # a window cutting segments: ∫_5^12 = (150+200)/2·5 + (200+180)/2·2 = 875 + 380
    assert src.energy_at(12.0) - src.energy_at(5.0) == pytest.approx(1255.0)


def test_replay_energy_trace_accumulates_across_loops(tmp_path):
    trace = tmp_path / "e.csv"
    trace.write_text("t_s,energy_j\n0,1000\n4,1400\n")
    src = ReplaySource(trace, clock=Clock(0.0))
    assert src.energy_at(10.0) - src.energy_at(0.0) == pytest.approx(1000.0)
    assert src.power_at(1.0) == pytest.approx(100.0)


@pytest.mark.parametrize("body,msg", [("x,y\n1,2\n", "header"), ("t_s,power_w\n0,1\n", "two rows"),
                                      ("t_s,power_w\n0,1\n0,2\n", "line 3: t_s must increase"),
                                      ("t_s,power_w\n0,1\n1,abc\n", "line 3: expected two")])
def test_malformed_traces_rejected_with_line(tmp_path, body, msg):
    trace = tmp_path / "bad.csv"
    trace.write_text(body)
    with pytest.raises(ConfigError, match=msg):
        ReplaySource(trace)


def test_specs():
    assert [s.name for s in parse_source_spec("constant:42,cpu-estimate:65")] == [
        "constant", "cpu-estimate"]
    for bad in ("bogus", "constant:-5", "constant:abc", "constant", "nvml:3", ""):
        with pytest.raises(ConfigError):
            validate_source_spec(bad)
    with pytest.raises(ConfigError, match="valid: nvml, rapl"):
        validate_source_spec("watts")


def test_auto_on_a_machine_without_nvml_or_rapl_is_the_estimate(monkeypatch):
    import raydistill.energy.nvml as nvml
    import raydistill.energy.rapl as rapl

    def unavailable(*a, **k):
        raise SourceUnavailable("not here")

    monkeypatch.setattr(nvml.NvmlSource, "__init__", unavailable)
    monkeypatch.setattr(rapl.RaplSource, "__init__", unavailable)
    (only,) = parse_source_spec("auto")
    assert only.name == "cpu-estimate" and "cpu-estimate" in only.describe()
