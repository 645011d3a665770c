"""Who owns a tracked run when a launcher starts the script many times, and how the others join.

Under torchrun, `accelerate launch`, the DeepSpeed launcher, mpirun or srun every rank runs the
script's `with raydistill.track(out=...)`. One process must own the run: the run directory's
lock, the Ray it starts, the ledger, the samplers and the result files. The owner is the global
rank 0 (RANK, else the MPI or Slurm rank); without a launcher, the process that takes the lock.

The owner publishes how to reach it in `RUN/owner.json` (written atomically once its ledger is
up): the Ray GCS address (ranks on other nodes join by address, not through a local Ray), the
namespace, a per-start token, its pid and host, and the launch it belongs to (the launcher's run
id, master address and port). Every other rank waits for that file (bounded), skips one left by
an earlier launch or a dead owner, connects to the cluster as a driver and checks the token in
Ray's internal key-value store, so a stale file that still names a live cluster is not taken.

A rank that leaves its `track` block records "done" in that store; the owner, leaving its own
block, waits (bounded, then a warning naming the missing ranks) until every other rank is done
before it stops the samplers and writes the results, so one table holds every rank's windows.

The store also maps each Ray job of the run to it, so `raydistill.stage(...)` in a Ray task or
actor of the job finds the run without being passed it (see `job_run`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from raydistill.errors import ConfigError, RayDistillError
from raydistill.io import atomic_write_text

log = logging.getLogger(__name__)

OWNER_FILE = "owner.json"
ENV_JOIN_TIMEOUT, ENV_RANKS_TIMEOUT = "RAYDISTILL_JOIN_TIMEOUT_S", "RAYDISTILL_RANKS_TIMEOUT_S"
JOIN_TIMEOUT_S, RANKS_TIMEOUT_S = 300.0, 120.0
KV_NAMESPACE = "raydistill"
# owners this process joined already: a script with two `track` blocks in one launch must not
# join the first block's owner again while that owner is still writing its results
_joined_tokens: set[str] = set()
# (rank, world size) variables of each launcher: torchrun / accelerate / DeepSpeed, Open MPI,
# MPICH / Intel MPI, Slurm
RANK_VARS = (("RANK", "WORLD_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
             ("PMI_RANK", "PMI_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"))
# what every process of one launch shares and the next launch does not (a new rendezvous id,
# port or restart count): an owner.json from another launch is never joined
LAUNCH_VARS = ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "MASTER_ADDR",
               "MASTER_PORT", "SLURM_JOB_ID", "SLURM_STEP_ID", "OMPI_COMM_WORLD_NODE_RANK0")


def launch_rank(env: Mapping[str, str]) -> tuple[int, int] | None:
    """(global rank, world size) when a launcher started this process as one of several."""
    for rank_var, size_var in RANK_VARS:
        rank, size = env.get(rank_var, ""), env.get(size_var, "")
        if rank.isdigit() and size.isdigit() and int(size) > 1:
            return int(rank), int(size)
    return None


def launch_id(env: Mapping[str, str]) -> str:
    return "|".join(f"{k}={env[k]}" for k in LAUNCH_VARS if k in env)


def timeout_s(var: str, default: float) -> float:
    raw = os.environ.get(var)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{var}={raw!r}: give a number of seconds, e.g. {default:g}") from None


@dataclass(frozen=True)
class OwnerRecord:
    token: str
    gcs_address: str
    namespace: str
    pid: int
    host: str
    launch: str
    world_size: int
    started_s: float
    auth_mode: str | None = None


def new_owner(gcs_address: str, namespace: str, env: Mapping[str, str]) -> OwnerRecord:
    launched = launch_rank(env)
    return OwnerRecord(token=uuid.uuid4().hex, gcs_address=gcs_address, namespace=namespace,
                       pid=os.getpid(), host=socket.gethostname(), launch=launch_id(env),
                       world_size=launched[1] if launched else 1, started_s=time.time(),
                       auth_mode=env.get("RAY_AUTH_MODE"))


def publish(run_dir: Path, record: OwnerRecord) -> None:
    atomic_write_text(run_dir / OWNER_FILE, json.dumps(asdict(record), indent=1))


def read_owner(run_dir: Path) -> OwnerRecord | None:
    try:
        return OwnerRecord(**json.loads((run_dir / OWNER_FILE).read_text()))
    except (OSError, ValueError, TypeError):  # not there yet, or from an older format
        return None


def plausible(record: OwnerRecord, launch: str, host: str) -> bool:
    """Whether `record` can be this launch's owner: the same launch, and on this host a live
    process (a crashed owner's file stays behind)."""
    if record.launch != launch:
        return False
    if record.host != host:
        return True
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def lock_run_dir(run_dir: Path):
    """One owner per run directory at a time: two ledgers appending to one log would interleave
    it. The lock goes with the process (a crash cannot leave it held)."""
    import fcntl

    fh = (run_dir / ".track.lock").open("a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise ConfigError(f"{run_dir} is being tracked by another process; wait for it to "
                          "finish, or track into another directory") from None
    return fh


# ---- Ray's internal key-value store ------------------------------------------------------------


def _kv():
    from ray.experimental import internal_kv

    return internal_kv


def _owner_key(namespace: str) -> str:
    return f"{namespace}:owner"


def _done_prefix(namespace: str) -> str:
    return f"{namespace}:done:"


def _joined_prefix(namespace: str) -> str:
    return f"{namespace}:joined:"


def _job_key() -> str:
    import ray

    return f"job:{ray.get_runtime_context().get_job_id()}"


def claim(record: OwnerRecord) -> None:
    """The owner's side, once its session is up: the token joiners check, a clean slate of
    "done" marks (a run directory tracked again on a cluster that outlived the last run)."""
    kv = _kv()
    for prefix in (_done_prefix(record.namespace), _joined_prefix(record.namespace)):
        for key in kv._internal_kv_list(prefix, namespace=KV_NAMESPACE):
            kv._internal_kv_del(key, namespace=KV_NAMESPACE)
    kv._internal_kv_put(_owner_key(record.namespace), record.token, namespace=KV_NAMESPACE)


def release(namespace: str) -> None:
    kv = _kv()
    with contextlib.suppress(Exception):  # the cluster going down takes the keys with it
        kv._internal_kv_del(_owner_key(namespace), namespace=KV_NAMESPACE)
        for prefix in (_done_prefix(namespace), _joined_prefix(namespace)):
            kv._internal_kv_del(prefix, del_by_prefix=True, namespace=KV_NAMESPACE)


def register_job(run_dir: Path, namespace: str, trial: str) -> None:
    """Ray tasks and actors of this process's job find the run by their job id."""
    _kv()._internal_kv_put(_job_key(), json.dumps(
        {"run_dir": str(run_dir), "namespace": namespace, "trial": trial}),
        namespace=KV_NAMESPACE)


def unregister_job() -> None:
    with contextlib.suppress(Exception):
        _kv()._internal_kv_del(_job_key(), namespace=KV_NAMESPACE)


def job_run() -> dict | None:
    """{run_dir, namespace, trial} of the run this Ray worker's job tracks, or None."""
    import ray

    if not ray.is_initialized():
        return None
    raw = _kv()._internal_kv_get(_job_key(), namespace=KV_NAMESPACE)
    return None if raw is None else json.loads(raw)


def join(run_dir: Path, timeout: float) -> tuple[OwnerRecord, bool]:
    """Wait for this launch's owner and connect to its cluster; (its record, whether this call
    connected Ray, so the joiner disconnects on finish). Raises after `timeout` seconds."""
    import ray

    launch, host = launch_id(os.environ), socket.gethostname()
    deadline = time.monotonic() + timeout
    seen: OwnerRecord | None = None
    while True:
        record = read_owner(run_dir)
        if (record is not None and record.token not in _joined_tokens
                and plausible(record, launch, host)):
            seen = record
            connected = _connect(record)
            if _kv()._internal_kv_get(_owner_key(record.namespace),
                                      namespace=KV_NAMESPACE) == record.token.encode():
                _joined_tokens.add(record.token)
                return record, connected
            if connected:  # a stale file naming a live cluster: not this launch's owner
                ray.shutdown()
        if time.monotonic() > deadline:
            why = (f"its owner.json names {seen.host} pid {seen.pid}, whose cluster does not "
                   "know it" if seen else "no owner.json of this launch appeared")
            raise RayDistillError(
                f"rank waited {timeout:g} s for rank 0 to start tracking {run_dir} ({why}); "
                f"check that rank 0 runs `raydistill.track(out=...)` into the same directory, "
                f"or raise {ENV_JOIN_TIMEOUT}")
        time.sleep(0.25)


def _connect(record: OwnerRecord) -> bool:
    import ray

    if ray.is_initialized():
        return False
    if record.auth_mode:  # the owner's cluster was started with this auth mode
        os.environ.setdefault("RAY_AUTH_MODE", record.auth_mode)
    try:
        ray.init(address=record.gcs_address, namespace=record.namespace,
                 logging_level=logging.WARNING, log_to_driver=False)
    except Exception as exc:  # a dead cluster, or a node that runs no raylet of it
        raise RayDistillError(
            f"could not join rank 0's Ray cluster at {record.gcs_address} ({type(exc).__name__}:"
            f" {str(exc).splitlines()[0] if str(exc) else ''}); every node of the launch must "
            "be a node of that cluster (`ray start --address=...` on it before the launch), "
            "which is also what gives the node a sampler") from None
    return True


def mark_joined(namespace: str, rank: int) -> None:
    """A rank joined: the owner waits for its "done" at the finish (and for no rank that
    never joined: a script that tracks on rank 0 alone does not wait)."""
    _kv()._internal_kv_put(f"{_joined_prefix(namespace)}{rank}", b"1",
                           namespace=KV_NAMESPACE)


def mark_done(namespace: str, rank: int, error: str | None) -> None:
    _kv()._internal_kv_put(f"{_done_prefix(namespace)}{rank}", json.dumps({"error": error}),
                           namespace=KV_NAMESPACE)


def _ranks(kv, prefix: str) -> set[int]:
    return {int(k.decode().rsplit(":", 1)[1])
            for k in kv._internal_kv_list(prefix, namespace=KV_NAMESPACE)}


def wait_for_ranks(namespace: str, world_size: int, timeout: float) -> list[int]:
    """Wait until every rank that joined is done; the ranks still missing after `timeout`.
    Ranks that never joined (a script that tracks on rank 0 alone) are not waited for."""
    kv = _kv()
    deadline = time.monotonic() + timeout
    while True:
        joined = _ranks(kv, _joined_prefix(namespace))
        done = _ranks(kv, _done_prefix(namespace))
        missing = [r for r in range(1, world_size) if r in joined and r not in done]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.2)
