"""Power readings exported as Ray metrics (ray.util.metrics replaced by fakes)."""

from types import SimpleNamespace

import pytest

from raydistill.cluster.ray_metrics import PowerMetrics
from raydistill.energy import Reading, SampleBatch


class FakeMetric:
    def __init__(self, name, description="", tag_keys=()):
        self.name, self.tag_keys, self.values = name, tag_keys, {}

    def set(self, value, tags):
        assert set(tags) == set(self.tag_keys)
        self.values[tags["device"]] = value

    def inc(self, value, tags):
        self.values[tags["device"]] = self.values.get(tags["device"], 0.0) + value


def test_gauge_holds_last_power_and_counter_integrates_across_batches():
    fake = SimpleNamespace(Gauge=FakeMetric, Counter=FakeMetric)
    pm = PowerMetrics(fake)
    for seq, (t0, watts) in enumerate([(0.0, 100.0), (1.0, 200.0)]):
        readings = [Reading("GPU-a", "gpu", t0 + k / 10, watts, None, "nvml-power", "sampled")
                    for k in range(10)]
        pm.observe(SampleBatch.from_readings("s", seq, "node-1", readings, None))
    assert pm.power.name == "raydistill_power_w"
    assert pm.power.values["GPU-a"] == 200.0
    # 0.9 s at 100 W, 0.1 s ramp 100→200 W (15 J), 0.9 s at 200 W
    assert pm.energy.values["GPU-a"] == pytest.approx(90 + 15 + 180)
