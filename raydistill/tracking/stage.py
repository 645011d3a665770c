"""One stage of a tracked run: a ledger window on this node for the devices this process holds.

Which devices: in a Ray task or actor, the GPUs Ray gave it (`worker_devices`, as the pipeline
does); in a plain process (the script itself, a torchrun rank), the GPU of its LOCAL_RANK when
torchrun launched it, else every GPU it can see, named by UUID the way the samplers key them.
A process with no GPU holds none: its windows are charged the node's CPU, DRAM or estimate, split
by CPU time with any other window open on the node at once.

A stage opened inside another (the Trainer callback's evaluation inside a user's
`run.stage("student_training")`) is recorded as its child, and so is a window that a process
started inside the block opens (RAYDISTILL_PARENT_WINDOW, set for the block's duration): the
innermost window takes the device-seconds, so nothing is split or counted twice.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Protocol

from raydistill.errors import ConfigError

log = logging.getLogger(__name__)


class RunHandle(Protocol):
    """What a stage needs of its run (`raydistill.tracking.run.Run` is one): the cluster to join
    and the ledger to ask. Named here, not imported, so that the run, which opens stages, is the
    only one of the two that knows the other."""

    address: str | None
    namespace: str

    def stage_energy_j(self, trial: str, stage: str, settle: bool = True) -> float: ...


def ensure_ray(run: RunHandle) -> None:
    """Connect this process to the run's cluster when it is not connected yet (a torchrun rank,
    a subprocess): as a driver of its own, on this node's raylet."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or run.address
    if not address:
        raise ConfigError("raydistill.stage: this process is not on the run's Ray cluster and "
                          "RAY_ADDRESS is not set; start it from the tracked process, or set "
                          "RAY_ADDRESS to the cluster's address")
    ray.init(address=address, namespace=run.namespace, logging_level=logging.WARNING,
             log_to_driver=False)


def _in_ray_worker() -> bool:
    import ray

    # not initialised: no worker (and asking the runtime context would start a Ray)
    return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def process_devices(environ: os._Environ | dict | None = None) -> tuple[str, ...]:
    """The GPUs this process holds, as UUIDs where they can be told (see the module doc).

    Named through NVML and CUDA_VISIBLE_DEVICES, never by initialising CUDA: a process that
    forks workers after opening a stage (a DataLoader, vLLM) would give them a CUDA context
    they cannot use. torch's CUDA names them only where this process initialised CUDA itself."""
    import ray

    from raydistill.cluster.devices import _pynvml, cuda_visible_entries, map_worker_gpus

    env = os.environ if environ is None else environ
    cuda_uuid = _initialised_cuda_uuid()
    if _in_ray_worker():
        ids = [str(i) for i in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]
        local_rank = None  # Ray gave this worker exactly these
    else:
        visible = env.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            ids = cuda_visible_entries(visible)  # "-1" hides every GPU, as CUDA reads it
        else:
            ids = [str(i) for i in range(_gpu_count())]
        local_rank = env.get("LOCAL_RANK")
    if not ids:
        return ()
    if local_rank is not None and local_rank.isdigit() and int(local_rank) < len(ids):
        ids = [ids[int(local_rank)]]  # torchrun: rank i works on cuda:LOCAL_RANK
    devices, warnings = map_worker_gpus(ids, env, cuda_uuid, _pynvml())
    for warning in warnings:
        log.warning("stage devices: %s", warning)
    return devices


def _initialised_cuda_uuid():
    """torch's name for CUDA device i ("GPU-<uuid>"), only where torch was imported and CUDA
    initialised in this process already (asking torch otherwise would initialise it)."""
    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_initialized():
            return None
    except Exception:  # a broken or partial torch
        return None
    return lambda i: f"GPU-{torch.cuda.get_device_properties(i).uuid}"


def _gpu_count() -> int:
    """GPUs this process can see without CUDA_VISIBLE_DEVICES: NVML's count (torch's where
    CUDA is initialised already; asking it first would initialise it)."""
    import contextlib

    if _initialised_cuda_uuid() is not None:
        return int(sys.modules["torch"].cuda.device_count())
    from raydistill.cluster.devices import _pynvml

    nvml = _pynvml()
    if nvml is None:
        return 0
    try:
        nvml.nvmlInit()
    except Exception:  # no driver: a CPU machine
        return 0
    try:
        return int(nvml.nvmlDeviceGetCount())
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def check_names(stage: str, trial: str | None) -> None:
    """Stage and trial names become parts of window ids (`trial/stage/node/uuid`)."""
    if not stage or "/" in stage:
        raise ConfigError(f"stage name {stage!r}: give a non-empty name without '/', e.g. "
                          "teacher_generation, student_training, evaluation")
    if trial is not None and (not trial or "/" in trial):
        raise ConfigError(f"trial {trial!r}: give a non-empty id without '/'")


class Stage:
    """`with run.stage(...) as s:`; `s.add_tokens(n, generated=g)`; `s.loaded()` after a model
    load; `s.energy_j` is the ledger's figure so far (live while open, whole once closed)."""

    def __init__(self, run: RunHandle, name: str, trial: str, tokens: int = 0,
                 generated_tokens: int = 0, devices: str | Sequence[str] = "auto",
                 phase: str = "work") -> None:
        from raydistill.energy.samples import PHASES

        check_names(name, trial)
        if phase not in PHASES:
            raise ConfigError(f"stage phase {phase!r} unknown; valid: {', '.join(PHASES)}")
        self.run, self.name, self.trial, self.phase = run, name, trial, phase
        self._tokens, self._generated = int(tokens), int(generated_tokens)
        self._devices = devices
        self.window = None
        self._env_before: str | None = None

    def __enter__(self) -> Stage:
        from raydistill.cluster.windows import StageWindow

        ensure_ray(self.run)
        devices = process_devices() if self._devices == "auto" else tuple(self._devices)
        self.window = StageWindow(self.run.namespace, self.trial, self.name, devices=devices,
                                  phase=self.phase)
        self.window.__enter__()
        self._lend_parent()
        if self._tokens:
            self.window.add_tokens(self._tokens, generated=self._generated)
        log.info("stage %s [%s] open on %d device(s)", self.name, self.trial, len(devices))
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.window.__exit__(*exc)
        finally:
            self._restore_parent()

    def close(self, closed_by: str) -> None:
        """Close the stage outside its `with` block (a callback's window), marked `closed_by`
        in the ledger: as `__exit__` does, so later stages no longer nest in it."""
        try:
            self._window().close(closed_by)
        finally:
            self._restore_parent()

    def _lend_parent(self) -> None:
        """Processes started inside the block open their windows inside this one."""
        from raydistill.cluster.windows import PARENT_ENV

        self._env_before = os.environ.get(PARENT_ENV)
        os.environ[PARENT_ENV] = self.window.window.window_id

    def _restore_parent(self) -> None:
        from raydistill.cluster.windows import PARENT_ENV

        ours = set(self.window.window_ids)
        if os.environ.get(PARENT_ENV) not in ours:
            return  # a stage opened later and still open owns it now
        if self._env_before is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = self._env_before

    def add_tokens(self, n: int, generated: int = 0) -> None:
        self._window().add_tokens(n, generated=generated)

    def loaded(self) -> None:
        """Everything so far was loading (a model, an engine): see `StageWindow.loaded`."""
        from raydistill.cluster.windows import PARENT_ENV

        self._window().loaded()
        if self.window.load_window is not None and \
                os.environ.get(PARENT_ENV) == self.window.load_window.window_id:
            os.environ[PARENT_ENV] = self.window.window.window_id

    def checkpoint(self) -> None:
        """Record the tokens so far and move the window's end to now, staying open."""
        self._window().checkpoint()

    @property
    def tokens(self) -> int:
        return self._window().tokens

    @property
    def energy_j(self) -> float:
        """This stage's energy in the ledger so far, over all of its windows (every process's)."""
        return self.run.stage_energy_j(self.trial, self.name, settle=False)

    def _window(self):
        if self.window is None:
            raise RuntimeError("use the stage inside its `with` block")
        return self.window
