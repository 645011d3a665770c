"""Real-GPU paths, run wherever an NVIDIA GPU and driver exist (skipped elsewhere by conftest):
NVML sampling from the driver, and a ZeRO-3 student over every visible GPU in Ray Train."""

import json
import time

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def test_nvml_reads_every_gpu_with_a_real_energy_or_power_figure():
    from raydistill.energy.nvml import NvmlSource

    source = NvmlSource()
    first = source.read()
    time.sleep(0.5)
    second = source.read()
    assert first and len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert a.device_id.startswith("GPU-") and a.device_kind == "gpu"
        if a.energy_counter_j is not None:
            assert b.energy_counter_j >= a.energy_counter_j
        else:
            assert b.power_w is not None and b.power_w > 0


def test_zero3_student_over_all_gpus(tmp_path):
    import torch

    from raydistill.cli import main

    n = torch.cuda.device_count()
    sets = ["data.splits.train=400", "teacher.steps=60", "student.steps=40", "baseline=false",
            "distill.zero_stage=3", f"distill.num_workers={n}", "sampling.source=nvml",
            "evaluation.limit=50"]
    argv = ["run", "configs/tiny.yaml", "--out", str(tmp_path / "run")]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    train = json.loads((tmp_path / "run" / "metrics.json").read_text())["train"]
    assert all(m["zero_stage"] == 3 for m in train.values())
