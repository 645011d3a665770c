"""`raydistill measure`: any command inside one window, on a local or joined Ray cluster."""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from raydistill.config import SamplingConfig, to_dict
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
    init_ray(address, namespace)
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
        ray.shutdown()
    df = energy_frame(rows)
    atomic_write(run_dir / "energy.csv", lambda p: df.to_csv(p, index=False))
    return MeasureResult(
        run_dir=run_dir, returncode=returncode, duration_s=window.duration_s,
        energy_j=float(df["energy_j"].sum()), above_idle_j=float(df["above_idle_j"].sum()),
        method="+".join(sorted(set(df["method"]))), sources="+".join(sorted(set(df["sources"]))),
        gap_s=float(df["gap_s"].max()) if len(df) else 0.0, devices=len(df),
    )
