"""`raydistill measure`: any command inside one window, on a local or joined Ray cluster; with
`--stage NAME --run DIR`, as one stage of a run that several commands add to."""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from raydistill.config import SamplingConfig, to_dict
from raydistill.errors import ConfigError
from raydistill.io import atomic_write, atomic_write_text, prepare_run_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MeasureResult:
    run_dir: Path
    returncode: int
    duration_s: float
    energy_j: float
    above_idle_j: float
    method: str
    sources: str
    gap_s: float
    devices: int

    @property
    def mean_power_w(self) -> float:
        return self.energy_j / self.duration_s if self.duration_s > 0 else 0.0

    def summary(self) -> str:
        return "\n".join([
            f"energy:      {self.energy_j:,.1f} J ({self.energy_j / 3600:.4f} Wh), "
            f"{self.above_idle_j:,.1f} J above idle",
            f"duration:    {self.duration_s:.2f} s",
            f"mean power:  {self.mean_power_w:.1f} W over {self.devices} device(s)",
            f"method:      {self.method} (sources: {self.sources})"
            + (f"; {self.gap_s:.1f} s of gaps flagged" if self.gap_s else ""),
            f"run dir:     {self.run_dir}",
            f"exit code:   {self.returncode}",
        ])


def measure_command(
    cmd: list[str], cfg: SamplingConfig, out: Path, address: str | None = None
) -> MeasureResult:
    import ray

    from raydistill.cluster.runtime import Session, init_ray, namespace_for
    from raydistill.cluster.windows import StageWindow
    from raydistill.results import energy_frame

    run_dir = prepare_run_dir(out)
    namespace = namespace_for(run_dir)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(
        {"command": cmd, "sampling": to_dict(cfg), "address": address}, sort_keys=False))
    started_ray = init_ray(address, namespace)
    session = Session(run_dir, namespace, cfg).start()
    try:
        with StageWindow(namespace, "measure", "command") as window:
            log.info("running %s", " ".join(cmd))
            try:
                returncode = subprocess.run(cmd, check=False).returncode
            except FileNotFoundError:
                returncode = 127
                log.error("command not found: %s", cmd[0])
        rows = [r for r in session.energy_rows() if r["window_id"] == window.window.window_id]
    finally:
        session.close()
        if started_ray:  # a Ray this call joined stays up for its owner
            ray.shutdown()
    df = energy_frame(rows)
    atomic_write(run_dir / "energy.csv", lambda p: df.to_csv(p, index=False))
    return MeasureResult(
        run_dir=run_dir, returncode=returncode, duration_s=window.duration_s,
        energy_j=float(df["energy_j"].sum()), above_idle_j=float(df["above_idle_j"].sum()),
        method="+".join(sorted(set(df["method"]))), sources="+".join(sorted(set(df["sources"]))),
        gap_s=float(df["gap_s"].max()) if len(df) else 0.0, devices=len(df),
    )


# ---- `measure --stage NAME --run DIR`: one stage of a run made of shell commands -------------

TOKENS_ENV = "RAYDISTILL_TOKENS_FILE"


@dataclass(frozen=True)
class StageResult:
    run_dir: Path
    trial_id: str
    stage: str
    returncode: int
    duration_s: float
    energy_j: float
    tokens: int
    stages: int  # stages the run directory holds now

    def summary(self) -> str:
        per = f", {self.energy_j / self.tokens:.4g} J/token" if self.tokens else ""
        return "\n".join([
            f"stage:       {self.trial_id}/{self.stage}: {self.energy_j:,.1f} J in "
            f"{self.duration_s:.2f} s, {self.tokens:,} tokens{per}",
            f"run dir:     {self.run_dir} ({self.stages} stage(s); `raydistill report "
            f"{self.run_dir}` draws them)",
            f"exit code:   {self.returncode}",
        ])


def read_tokens_file(path: Path) -> tuple[int, int]:
    """(tokens, generated) a command wrote as 'TOKENS [GENERATED]'; (0, 0) when it wrote none."""
    if not path.is_file() or not path.read_text().strip():
        return 0, 0
    parts = path.read_text().split()
    try:
        tokens, generated = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise ConfigError(f"${TOKENS_ENV} must hold 'TOKENS [GENERATED]' as integers, got "
                          f"{path.read_text().strip()[:40]!r}") from None
    return tokens, generated


def measure_stage(cmd: list[str], cfg: SamplingConfig, run_dir: Path, stage: str,
                  trial: str | None = None, tokens: int | None = None,
                  generated_tokens: int = 0, address: str | None = None) -> StageResult:
    """Run `cmd` as stage `stage` of the run in `run_dir` (made when new, appended to when not):
    the directory's results then cover every stage measured into it so far."""
    import tempfile

    from raydistill.cluster.windows import PARENT_ENV
    from raydistill.tracking import track
    from raydistill.tracking.stage import check_names

    check_names(stage, trial)  # before anything starts or is written

    with tempfile.TemporaryDirectory() as tmp:
        tokens_file = Path(tmp) / "tokens"
        with track(out=run_dir, address=address, trial=trial, sampling=cfg) as run, \
                run.stage(stage) as s:
            log.info("running %s as %s/%s", " ".join(cmd), run.trial, stage)
            # the command's own windows (a torchrun rank's Trainer callback) nest in this one:
            # they take their devices' seconds, and the stage's tokens count once (the stated
            # `tokens` win over the ones they count, see energy/rows.py)
            env = {**os.environ, TOKENS_ENV: str(tokens_file),
                   PARENT_ENV: s.window.window.window_id}
            try:
                returncode = subprocess.run(cmd, check=False, env=env).returncode
            except FileNotFoundError:
                returncode = 127
                log.error("command not found: %s", cmd[0])
            written, written_generated = read_tokens_file(tokens_file)
            n = tokens if tokens is not None else written
            s.add_tokens(n, generated=generated_tokens if tokens is not None
                         else written_generated)
    import pandas as pd

    table = pd.read_parquet(run.run_dir / "results.parquet")
    mine = table[(table["trial_id"] == run.trial) & (table["stage"] == stage)]
    return StageResult(run.run_dir, run.trial, stage, returncode, s.window.duration_s,
                       float(mine["energy_j"].sum()), int(mine["tokens"].sum()), len(table))
