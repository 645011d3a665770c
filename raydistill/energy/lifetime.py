"""Which process a window belongs to, and whether that process still lives (pure: no Ray).

No window may outlive the process that opened it: an open window's end is the node's latest
sample, and windows that overlap split their devices, so one left open by a killed rank would
take a share of every later stage on its devices. Each window records its process (pid, the
process's start time, the host it runs on); the node's sampler, on the same host, asks the
ledger for the open windows of its node every few seconds and closes those whose process is
gone (`ProcessWatch`), at the time it last saw the process alive.

A pid is reused by the kernel once its process is reaped, so a pid alone cannot say the process
is the same one: the start time (`/proc/<pid>/stat`, field 22, in clock ticks since boot) can.
Pids are only comparable inside one PID namespace on one boot of one host, hence `host_identity`.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# How a window was closed (the close record's `closed_by`). Records written before it have none.
STAGE = "stage"  # its `with` block ended normally
STAGE_ERROR = "stage_error"  # its `with` block ended by an exception
EXIT = "exit"  # the process was exiting (SystemExit, SIGTERM, KeyboardInterrupt)
ATEXIT = "atexit"  # closed by the interpreter's exit hook: the block never ended
PROCESS_GONE = "process_gone"  # the process died (SIGKILL, OOM): its node's sampler closed it
FINISH = "finish"  # still open when the run finished: the run's owner closed it
CALLBACK_ERROR = "callback_error"  # the Trainer callback found it still open (a lost end)
TRAIN_ERROR = "train_error"  # Trainer.train() raised
CHECKPOINT = "checkpoint"  # the end moved to now; the window goes on
# open in the log when a later session started on it (the run that opened it crashed): closed at
# its node's last reading of that earlier session, before this one's samplers add any
STALE = "stale_session"
NORMAL = frozenset({STAGE, CHECKPOINT})


def host_identity() -> str:
    """This host's boot and PID namespace: pids compare only between processes that share it."""
    boot = ""
    with contextlib.suppress(OSError):
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()  # noqa: SIM115
    pidns = ""
    with contextlib.suppress(OSError):
        pidns = os.readlink("/proc/self/ns/pid")
    return f"{socket.gethostname()}|{boot}|{pidns}"


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None where /proc cannot say
    (no such process, or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode(errors="replace")
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after it
    fields = stat[stat.rfind(")") + 2:].split()
    return int(fields[19]) if len(fields) > 19 else None


def process_alive(pid: int, start: int | None) -> bool:
    """Whether process `pid` that started at `start` (ticks; None: unknown) still runs. A zombie
    (exited, not yet reaped) is gone; a pid now held by a later process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode(errors="replace")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here: only whether some process holds the pid
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    rest = stat[stat.rfind(")") + 2:].split()
    if not rest or rest[0] in ("Z", "X"):
        return False
    return start is None or len(rest) <= 19 or int(rest[19]) == start


def closings_note(rows: Iterable) -> dict[str, list[str]]:
    """{closed_by: window ids} of the windows (rows: EnergyRow or dicts) that their process
    did not end where its work did: a crash, a kill, a run finished around them. What a user
    reads in metrics.json to know which figures stop at a guess of the work's end."""
    out: dict[str, set[str]] = {}
    for r in rows:
        d = r if isinstance(r, dict) else r.__dict__
        how = d.get("closed_by") or ""
        if how and how not in NORMAL:
            out.setdefault(how, set()).add(d["window_id"])
    return {k: sorted(v) for k, v in sorted(out.items())}


@dataclass(frozen=True)
class Gone:
    """An open window whose process is gone: close it at (t_end_s, t_end_mono_s)."""

    window_id: str
    pid: int
    t_end_s: float
    t_end_mono_s: float | None


class ProcessWatch:
    """The sampler's view of the processes of its node's open windows.

    `check(open_windows, now_s, now_mono_s)` returns the windows whose process is gone, each
    ended at the last check that saw its process alive (so the error is at most one check
    interval), or, for a process never seen alive (it died before the first check that knew its
    window), at the time it was noticed, never before the window's start. Windows of another
    host (or PID namespace) are left alone: their pids mean nothing here.
    """

    def __init__(self, host: str | None = None,
                 alive: Callable[[int, int | None], bool] = process_alive) -> None:
        self.host = host if host is not None else host_identity()
        self._alive = alive
        self._seen: dict[str, tuple[float, float | None]] = {}  # window -> last seen alive

    def check(self, open_windows: Iterable[dict], now_s: float,
              now_mono_s: float | None) -> list[Gone]:
        gone: list[Gone] = []
        current = set()
        for w in open_windows:
            pid, wid = w.get("pid"), w["window_id"]
            if pid is None or w.get("host") != self.host:
                continue
            current.add(wid)
            if self._alive(int(pid), w.get("pid_start")):
                self._seen[wid] = (now_s, now_mono_s)
                continue
            t_s, t_mono = self._seen.pop(wid, (now_s, now_mono_s))
            t_s = max(t_s, w.get("t_start_s") or t_s)
            start_mono = w.get("t_start_mono_s")
            if t_mono is not None and start_mono is not None:
                t_mono = max(t_mono, start_mono)
            gone.append(Gone(wid, int(pid), t_s, t_mono))
        for wid in list(self._seen):  # closed meanwhile: forget them
            if wid not in current:
                del self._seen[wid]
        return gone
