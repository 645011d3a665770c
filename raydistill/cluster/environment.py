"""Where a run runs: the batch scheduler's job (Slurm), whether every node sees the run
directory (a run on several nodes needs it on shared storage), and which node the run's own
actors stay on (`on_driver_node`)."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping
from pathlib import Path

from raydistill.errors import ConfigError

log = logging.getLogger(__name__)

SLURM_KEYS = {"SLURM_JOB_ID": "job_id", "SLURM_JOB_NAME": "job_name",
              "SLURM_JOB_NODELIST": "nodelist", "SLURM_JOB_NUM_NODES": "num_nodes",
              "SLURM_GPUS_ON_NODE": "gpus_per_node", "SLURM_CPUS_PER_TASK": "cpus_per_task",
              "SLURM_CLUSTER_NAME": "cluster"}


def scheduler_metadata(env: Mapping[str, str] | None = None) -> dict:
    """{"scheduler": "slurm", "job_id": ..., ...} under Slurm; {} elsewhere."""
    env = os.environ if env is None else env
    if "SLURM_JOB_ID" not in env:
        return {}
    return {"scheduler": "slurm", **{name: env[key] for key, name in SLURM_KEYS.items()
                                     if key in env}}


def check_shared_storage(run_dir: Path, visible: Mapping[str, bool | None]) -> None:
    """Raise when a node cannot see the run directory the driver writes, or did not answer
    whether it does (None: its probe timed out)."""
    blind = sorted(node[:12] for node, ok in visible.items() if ok is False)
    silent = sorted(node[:12] for node, ok in visible.items() if ok is None)
    if blind or silent:
        parts = []
        if blind:
            parts.append(f"is not visible from node(s) {', '.join(blind)}")
        if silent:
            parts.append(f"was not confirmed by node(s) {', '.join(silent)} (no answer within "
                         f"{PROBE_TIMEOUT_S:.0f} s)")
        raise ConfigError(
            f"run directory {run_dir} {' and '.join(parts)}: with more than one node it must be "
            "on storage every node mounts (e.g. --out /mnt/shared/runs/X)")


PROBE_TIMEOUT_S = 60.0


def probe_nodes(run_dir: Path) -> dict[str, bool | None]:
    """Ask one zero-CPU task on every alive node whether it sees a marker file written here:
    True / False, or None where the node gave no answer in PROBE_TIMEOUT_S (a node that cannot
    run the probe cannot be trusted with the run directory either)."""
    import time

    import ray
    from ray.exceptions import GetTimeoutError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    marker = Path(run_dir) / f".probe-{uuid.uuid4().hex[:8]}"
    marker.write_text("raydistill")

    @ray.remote(num_cpus=0)
    def sees(path: str) -> bool:
        return Path(path).is_file()

    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    try:
        refs = {n: sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n, soft=False)).remote(str(marker)) for n in nodes}
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        got: dict[str, bool | None] = {}
        for n, r in refs.items():
            try:
                got[n] = bool(ray.get(r, timeout=max(0.0, deadline - time.monotonic())))
            except GetTimeoutError:
                got[n] = None
                ray.cancel(r, force=True)
        return got
    finally:
        marker.unlink(missing_ok=True)


def check_cluster_storage(run_dir: Path) -> dict:
    """On a multi-node cluster, refuse a run directory that not every node sees; return the
    scheduler metadata to record in the run directory."""
    import ray

    if len([n for n in ray.nodes() if n["Alive"]]) > 1:
        check_shared_storage(run_dir, probe_nodes(run_dir))
    return scheduler_metadata()


def on_driver_node(soft: bool = False):
    """A scheduling strategy that keeps an actor on the driver's node. The sweep's bookkeeping
    actors live there: a worker node can be lost mid-sweep, and the sweep outlives it, but the
    driver's node cannot be lost without ending the sweep anyway (then `--resume`)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(),
                                          soft=soft)
