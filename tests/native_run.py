"""The CI-sized native run (`raydistill run` of the tiny config, as a user types it, in its own
process): made once per test session, read by the pipeline tests and compared against by the
tracked-run tests (a tracked script's report must be the same report as a native run's)."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WATTS = 40.0
CI_SIZE = [
    "data.splits.labelled=200", "data.splits.train=300", "data.splits.test=60",
    "data.splits.dev=20",
    "teacher.steps=40", "student.steps=12", "student.batch_size=32",
    "generation.batch_size=150", "evaluation.limit=40", "evaluation.inference_prompts=20",
    "evaluation.inference_min_s=0.5",
    f"sampling.source=constant:{WATTS}", "sampling.hz=20", "sampling.push_interval_s=0.5",
    "sampling.idle_s=0",
]
SECRET = "hf_raydistillSentinel0123456789"  # a token in the environment must go nowhere


def run_argv(root: Path, name: str, *extra: str) -> list[str]:
    sets = [a for s in [*CI_SIZE, *extra] for a in ("--set", s)]
    return ["run", "configs/tiny.yaml", "--artifacts", str(root / "artifacts"),
            "--out", str(root / name), *sets]


@dataclass
class NativeRun:
    root: Path  # holds artifacts/ and the run directory first/
    returncode: int
    stdout: str
    stderr: str

    @property
    def run_dir(self) -> Path:
        return self.root / "first"


def make_native_run(root: Path) -> NativeRun:
    env = {**os.environ, "HF_TOKEN": SECRET, "AWS_SECRET_ACCESS_KEY": SECRET,
           "CUDA_VISIBLE_DEVICES": ""}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "raydistill.cli", *run_argv(root, "first"),
                           "--report"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1200)
    return NativeRun(root, proc.returncode, proc.stdout, proc.stderr)
