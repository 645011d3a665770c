"""Stage windows: open on entry, close on exit, against the run's ledger.

A window's times are read on the node where the work runs, from the clocks that node's sampler
uses (wall and monotonic: the ledger integrates on the monotonic one, which NTP cannot step), so
clock skew between nodes cannot misattribute energy. CPU time (this process's, plus
its finished children's) is recorded so that shared node devices can be split by CPU share.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Sequence

import ray

from raydistill.cluster.ledger_actor import LEDGER_NAME
from raydistill.energy.samples import ALL_DEVICES, Window


def cpu_time_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class StageWindow(contextlib.ContextDecorator):
    """`with StageWindow(ns, trial, stage) as w: ...; w.add_tokens(n)` or as a decorator."""

    def __init__(
        self,
        namespace: str,
        trial_id: str,
        stage: str,
        devices: Sequence[str] = ALL_DEVICES,
        node_id: str | None = None,
        ledger_name: str = LEDGER_NAME,
    ) -> None:
        self.namespace = namespace
        self.trial_id = trial_id
        self.stage = stage
        self.devices = tuple(devices)
        self.node_id = node_id
        self.ledger_name = ledger_name
        self.tokens = 0
        self.window: Window | None = None
        self.t_end_s: float | None = None

    def add_tokens(self, n: int) -> None:
        self.tokens += int(n)

    @property
    def duration_s(self) -> float:
        if self.window is None:
            return 0.0
        end = self.t_end_s if self.t_end_s is not None else time.time()
        return end - self.window.t_start_s

    def __enter__(self) -> StageWindow:
        self._ledger = ray.get_actor(self.ledger_name, namespace=self.namespace)
        node = self.node_id or ray.get_runtime_context().get_node_id()
        self.tokens = 0
        self._cpu0 = cpu_time_s()
        self.window = Window(
            window_id=f"{self.trial_id}/{self.stage}/{node[:8]}/{uuid.uuid4().hex[:8]}",
            trial_id=self.trial_id, stage=self.stage, node_id=node, devices=self.devices,
            t_start_s=time.time(), t_start_mono_s=time.monotonic(),
        )
        ray.get(self._ledger.open_window.remote(self.window))
        return self

    def checkpoint(self) -> None:
        """Move the window's end to now (and record tokens so far) without leaving it.

        For work whose last moment is not known ahead, such as an actor in a Ray Data pool:
        after each batch the window is closed again at the batch's end, so whenever the actor
        stops, its window ends where its work did.
        """
        self._close()

    def _close(self) -> None:
        if self.window is None:
            raise RuntimeError("StageWindow used outside a with block")
        self.t_end_s = time.time()
        ray.get(self._ledger.close_window.remote(
            self.window.window_id, self.t_end_s, self.tokens, cpu_time_s() - self._cpu0,
            time.monotonic()))

    def __exit__(self, *exc) -> None:
        self._close()


def worker_devices() -> tuple[str, ...]:
    """The GPUs this Ray worker holds, as NVML UUIDs where NVML answers, else `gpu:<id>`.

    Ray's GPU ids follow CUDA order while NVML indexes by PCI bus, so they are mapped through
    the UUID rather than by position. A CPU-only worker holds no device of its own: it is
    charged only its share of the node's CPU, DRAM or estimate.
    """
    ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
    if not ids:
        return ()
    try:  # exact: CUDA's own view of the devices Ray made visible to this worker
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() == len(ids):
            return tuple(f"GPU-{torch.cuda.get_device_properties(i).uuid}"
                         for i in range(len(ids)))
    except Exception:  # no torch or no CUDA: fall through to NVML
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        out = []
        for i in ids:
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(i))
            uuid_ = pynvml.nvmlDeviceGetUUID(handle)
            out.append(uuid_.decode() if isinstance(uuid_, bytes) else uuid_)
        return tuple(out)
    except Exception:
        return tuple(f"gpu:{i}" for i in ids)
