"""Power readings as Ray metrics, so a Ray dashboard / Prometheus / Grafana shows them live.

Ray exports `ray.util.metrics` with the `ray_` prefix: `ray_raydistill_power_w` (gauge, last
power per node and device) and `ray_raydistill_energy_j` (counter, joules integrated from power by
trapezoids between a device's samples). `analysis/grafana_power.json` is a panel over them.
"""

from __future__ import annotations

import math

from raydistill.energy.samples import SampleBatch

TAGS = ("node", "device", "kind", "source")


class PowerMetrics:
    def __init__(self, metrics_module=None) -> None:
        if metrics_module is None:
            from ray.util import metrics as metrics_module
        self.power = metrics_module.Gauge("raydistill_power_w", description="device power (W)",
                                          tag_keys=TAGS)
        self.energy = metrics_module.Counter("raydistill_energy_j",
                                             description="device energy (J)", tag_keys=TAGS)
        self._last: dict[str, tuple[float, float]] = {}  # device -> (t, power)

    def observe(self, batch: SampleBatch) -> None:
        for i, info in enumerate(batch.devices):
            sel = batch.device_idx == i
            times, power = batch.t_wall_s[sel], batch.power_w[sel]
            tags = {"node": batch.node_id[:12], "device": info.device_id,
                    "kind": info.device_kind, "source": info.source}
            joules = 0.0
            prev = self._last.get(info.device_id)
            for t, p in zip(times, power, strict=True):
                if math.isnan(p):
                    continue
                if prev is not None and t > prev[0]:
                    joules += (t - prev[0]) * (p + prev[1]) / 2
                prev = (float(t), float(p))
            if prev is None:
                continue
            self._last[info.device_id] = prev
            self.power.set(prev[1], tags=tags)
            if joules > 0:
                self.energy.inc(joules, tags=tags)
