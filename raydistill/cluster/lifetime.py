"""The windows this process holds open, closed when it exits (no window outlives its process).

`StageWindow` registers itself here while open. At interpreter exit an `atexit` hook closes
whatever is still registered, marked "atexit". SIGTERM (what torchrun, Slurm and Kubernetes send
first) by default kills Python without running `atexit` or `finally`. A Ray driver already has
Ray's handler (`ray.init` installs `sys.exit(signum)`: exit status 15), which unwinds the same
way; where nobody handles it, it is turned into `SystemExit(143)` here. Either way `with` blocks
unwind (their windows are closed marked "exit") and the hook runs. A process killed outright
(SIGKILL, the OOM killer) runs nothing: its node's sampler closes its windows
(`energy/lifetime.py`, `ProcessWatch`).
"""

from __future__ import annotations

import atexit
import logging
import signal
import threading
from typing import Any

from raydistill.energy.lifetime import ATEXIT

log = logging.getLogger(__name__)

_open: dict[int, Any] = {}  # id(StageWindow) -> StageWindow, in opening order
_lock = threading.Lock()
_sigterm_installed = False


def register(window: Any) -> None:
    """Called by a StageWindow when it opens."""
    with _lock:
        first = not _open
        _open[id(window)] = window
    if first:
        # Ray's own exit hook (ray.shutdown) is registered by ray.init; hooks run last
        # registered first, so ours is registered again after it, to run while Ray still works.
        atexit.unregister(close_all)
        atexit.register(close_all, ATEXIT)
        _install_sigterm()


def unregister(window: Any) -> None:
    with _lock:
        _open.pop(id(window), None)


def open_windows() -> list[Any]:
    with _lock:
        return list(_open.values())


def close_all(closed_by: str, timeout_s: float = 10.0) -> list[str]:
    """Close every window this process still holds open, marked `closed_by`; their ids. Each
    close waits `timeout_s` at most: an exit must not hang on a ledger that is gone."""
    import ray

    closed: list[str] = []
    if not ray.is_initialized():  # Ray went first: the node's sampler closes them
        return closed
    for window in reversed(open_windows()):  # innermost first
        try:
            window.close(closed_by, timeout_s=timeout_s)
            closed.extend(window.window_ids[-1:])
        except Exception as exc:  # the ledger may be gone already: the sampler will close it
            log.warning("could not close window %s at exit: %s", window.window_ids, exc)
    return closed


def _install_sigterm() -> None:
    """SIGTERM -> SystemExit, only where SIGTERM still has its default action (a Ray worker or
    a framework that handles it keeps its own handler) and only from the main thread (the only
    one that may set handlers)."""
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return
        signal.signal(signal.SIGTERM, _on_sigterm)
        _sigterm_installed = True
    except (ValueError, OSError):  # not allowed here: the sampler covers this process
        return


def _on_sigterm(signum: int, frame: Any) -> None:
    # the default action ends the process with status 128 + 15; so does this, after unwinding
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise SystemExit(128 + signum)
