"""A simulated node whose true energy is known, a local Ray and tiny models: the world the
Trainer-callback integration tests (test_hf, test_lifetime) track into."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

from tests.shared_ray import SESSION_RAY

TOL_J = 300.0 * (2 * 0.02 + 0.05)  # a 300 W swing held over two 20 ms refreshes, + 5%


def square_gpu_node(gpu: str, now: float | None = None) -> dict:
    """One GPU drawing a 1 s square wave (300 W / 80 W) for three hours, and a RAPL package."""
    now = time.time() if now is None else now
    return {"gpus": [{"uuid": gpu, "refresh_s": 0.02, "power_w": {"square": {
                "period_s": 1.0, "on_w": 300.0, "off_w": 80.0, "start_s": now - 10,
                "until_s": now + 3 * 3600}}}],
            "rapl": [{"package": 0, "power_w": 120.0, "dram_w": 15.0}]}


@contextlib.contextmanager
def sim_world(root: Path, spec: dict) -> Iterator[tuple]:
    """(root, SamplingConfig of the simulated node, its spec file, tiny local models), with a
    local Ray (2 CPUs, the session's: tests/shared_ray.py) up for the block."""
    from raydistill.config import SamplingConfig
    from raydistill.data.local_models import make_local_models

    sim = root / "node.json"
    sim.write_text(json.dumps(spec))
    cfg = SamplingConfig(source=f"simulate:{sim}", hz=20, push_interval_s=0.3, idle_s=0.2,
                         max_gap_s=0.8, push_timeout_s=2.0)
    models = make_local_models(root / "models")
    SESSION_RAY.up()
    yield root, cfg, sim, models
