"""Stage windows: open on entry, close on exit, against the run's ledger.

A window's times are read on the node where the work runs, from the clocks that node's sampler
uses (wall and monotonic: the ledger integrates on the monotonic one, which NTP cannot step), so
clock skew between nodes cannot misattribute energy. CPU time (this process's, plus
its finished children's) is recorded so that shared node devices can be split by CPU share.
Which GPUs a window holds (`worker_devices`, by UUID) is `cluster/devices.py`.

Nesting: a window records the window it runs inside (`Window.parent_id`): the innermost window
this process has open (a context variable, so threads and async tasks keep their own), else the
window named by RAYDISTILL_PARENT_WINDOW, which a stage sets for the processes it starts (torchrun
ranks under `raydistill measure --stage`, subprocesses of `run.stage`). The ledger takes the
parent only where it is a window of the same node (`LedgerState.parent`).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace

import ray

from raydistill.cluster import lifetime
from raydistill.cluster.ledger_actor import LEDGER_NAME
from raydistill.energy.lifetime import (
    CHECKPOINT,
    EXIT,
    STAGE,
    STAGE_ERROR,
    host_identity,
    process_start,
)
from raydistill.energy.samples import ALL_DEVICES, LOAD, PHASES, WORK, Window

log = logging.getLogger(__name__)

PARENT_ENV = "RAYDISTILL_PARENT_WINDOW"
# The windows this context has open, innermost last (a tuple: each context sees its own).
_OPEN: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "raydistill_open_windows", default=())


def innermost_window(environ: Mapping[str, str] | None = None) -> str | None:
    """The window new work here runs inside: this context's innermost open window, else the
    one the process that started this one was in (PARENT_ENV), else None."""
    stack = _OPEN.get()
    if stack:
        return stack[-1]
    return (os.environ if environ is None else environ).get(PARENT_ENV) or None


def _swap_open(old: str | None, new: str | None) -> None:
    """Replace `old` by `new` in this context's open windows (remove it when `new` is None,
    push `new` when `old` is None); in place, so a window closed out of order leaves the
    others as they are."""
    stack = list(_OPEN.get())
    if old is not None and old in stack:
        i = stack.index(old)
        stack[i:i + 1] = [] if new is None else [new]
    elif new is not None:
        stack.append(new)
    _OPEN.set(tuple(stack))


def cpu_time_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class StageWindow(contextlib.ContextDecorator):
    """`with StageWindow(ns, trial, stage) as w: ...; w.add_tokens(n)` or as a decorator.

    A stage that first loads a model separates the load from the steady-state work it is
    judged by: `with StageWindow(...) as w: load(); w.loaded(); work(); w.add_tokens(n)`
    closes a "load" window where loading ended and opens a "work" window from that instant.
    A window that is all load (an engine started on its own) is `StageWindow(..., phase="load")`.
    A stage that generates says how many of its tokens the model wrote:
    `w.add_tokens(prompt + generated, generated=generated)`.
    `parent_id`: the window this one runs inside; default ("auto") `innermost_window()`.
    """

    def __init__(
        self,
        namespace: str,
        trial_id: str,
        stage: str,
        devices: Sequence[str] = ALL_DEVICES,
        node_id: str | None = None,
        ledger_name: str = LEDGER_NAME,
        phase: str = WORK,
        parent_id: str | None = "auto",
    ) -> None:
        if phase not in PHASES:
            raise ValueError(f"StageWindow phase must be one of {PHASES}, got {phase!r}")
        self.namespace = namespace
        self.trial_id = trial_id
        self.stage = stage
        self.devices = tuple(devices)
        self.node_id = node_id
        self.ledger_name = ledger_name
        self.phase = phase
        self.parent_id = parent_id
        self.tokens = 0
        self.generated_tokens = 0  # of self.tokens, those the model generated
        self.window: Window | None = None  # the open one: after loaded(), the work window
        self.load_window: Window | None = None  # the load window loaded() closed, if any
        self.t_end_s: float | None = None

    def add_tokens(self, n: int, generated: int = 0) -> None:
        """Count `n` more tokens the stage processed, of which `generated` the model wrote
        (decode); the rest it read (prompts). J per generated token is work_j / generated."""
        n, generated = int(n), int(generated)
        if generated < 0 or generated > n:
            raise ValueError(f"add_tokens: generated must be between 0 and n ({n}), "
                             f"got {generated}")
        self.tokens += n
        self.generated_tokens += generated

    @property
    def duration_s(self) -> float:
        """Seconds of the current window: after `loaded()`, of the steady-state work alone."""
        if self.window is None:
            return 0.0
        end = self.t_end_s if self.t_end_s is not None else time.time()
        return end - self.window.t_start_s

    @property
    def window_ids(self) -> tuple[str, ...]:
        """Every window this stage opened: the load window (if any), then the current one."""
        return tuple(w.window_id for w in (self.load_window, self.window) if w is not None)

    def _new_id(self, node: str) -> str:
        return f"{self.trial_id}/{self.stage}/{node[:8]}/{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> StageWindow:
        self._ledger = ray.get_actor(self.ledger_name, namespace=self.namespace)
        node = self.node_id or ray.get_runtime_context().get_node_id()
        self.tokens = 0
        self.generated_tokens = 0
        self.load_window = None
        self.t_end_s = None
        self._cpu0 = cpu_time_s()
        self.window = Window(
            window_id=self._new_id(node), trial_id=self.trial_id, stage=self.stage,
            node_id=node, devices=self.devices, t_start_s=time.time(),
            t_start_mono_s=time.monotonic(), phase=self.phase,
            parent_id=innermost_window() if self.parent_id == "auto" else self.parent_id,
            pid=os.getpid(), pid_start=process_start(os.getpid()), host=host_identity(),
        )
        ray.get(self._ledger.open_window.remote(self.window))
        _swap_open(None, self.window.window_id)
        lifetime.register(self)  # closed at this process's exit if nothing closes it before
        return self

    def loaded(self) -> None:
        """The model is loaded: everything so far was loading. Closes the current window now as
        phase "load" and opens a "work" window of the same trial, stage, node and devices from
        the same instant (no gap, no overlap), in one ledger commit. Tokens counted before and
        after (generated ones too) belong to the work window; `checkpoint()` and the exit close
        the work window. Called again, it marks the work window so far as load too (loading
        in steps)."""
        if self.window is None:
            raise RuntimeError("StageWindow.loaded() used outside a with block")
        t_s, t_mono_s, cpu_s = time.time(), time.monotonic(), cpu_time_s()
        load = self.window
        work = ray.get(self._ledger.split_window.remote(
            load.window_id, self._new_id(load.node_id), t_s, cpu_s - self._cpu0, t_mono_s))
        self.load_window = replace(load, t_end_s=t_s, t_end_mono_s=t_mono_s, phase=LOAD,
                                   cpu_time_s=cpu_s - self._cpu0)
        self.window, self._cpu0, self.t_end_s = work, cpu_s, None
        _swap_open(load.window_id, work.window_id)  # work started from now nests in `work`

    def checkpoint(self) -> None:
        """Move the window's end to now (and record tokens, generated ones too, so far)
        without leaving it.

        For work whose last moment is not known ahead, such as an actor in a Ray Data pool:
        after each batch the window is closed again at the batch's end, so whenever the actor
        stops, its window ends where its work did.
        """
        self._close(CHECKPOINT)

    def close(self, closed_by: str = STAGE, timeout_s: float | None = None) -> None:
        """Close the window now, marked `closed_by` in the ledger (`energy/lifetime.py`)."""
        lifetime.unregister(self)
        try:
            self._close(closed_by, timeout_s)
        finally:  # closed: work started from here on no longer runs inside it
            if self.window is not None:
                _swap_open(self.window.window_id, None)

    def _close(self, closed_by: str, timeout_s: float | None = None) -> None:
        if self.window is None:
            raise RuntimeError("StageWindow used outside a with block")
        self.t_end_s = time.time()
        ref = self._ledger.close_window.remote(
            self.window.window_id, self.t_end_s, self.tokens, cpu_time_s() - self._cpu0,
            time.monotonic(), generated_tokens=self.generated_tokens, closed_by=closed_by)
        ray.get(ref) if timeout_s is None else ray.get(ref, timeout=timeout_s)

    def __exit__(self, exc_type=None, *exc) -> None:
        if exc_type is None:
            self.close(STAGE)
        else:  # the process exiting (SIGTERM, sys.exit, Ctrl-C) or the stage's own error
            exiting = issubclass(exc_type, (SystemExit, KeyboardInterrupt))
            self.close(EXIT if exiting else STAGE_ERROR)
