"""No window outlives its process (issue 27): each window records its process, every closing is
marked in the ledger, a window left open by a dead process or a finished run is closed, and the
node's sampler finds the windows of processes that are gone. Ledger-side logic, without Ray."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from raydistill.config import SamplingConfig
from raydistill.energy import ALL_DEVICES, LedgerState, Reading, SampleBatch, Window
from raydistill.energy.lifetime import (
    FINISH,
    PROCESS_GONE,
    ProcessWatch,
    closings_note,
    host_identity,
    process_alive,
    process_start,
)
from raydistill.energy.samples import window_close_event, window_open_event
from raydistill.results import energy_frame

GPU = "GPU-aaaaaaaa-0000-0000-0000-000000000000"


def gpu_batches(watts=300.0, t1=20.0, hz=10, per=20):
    times = np.arange(0.0, t1 + 1e-9, 1.0 / hz)
    readings = [Reading(GPU, "gpu", float(t), watts, None, "sim", "sampled", float(t))
                for t in times]
    return [SampleBatch.from_readings("s1", i // per, "n1", readings[i:i + per])
            for i in range(0, len(readings), per)]


def opened(wid, start, stage="student_training", trial="t1", **kw) -> Window:
    return Window(wid, trial, stage, "n1", (GPU,), start, t_start_mono_s=start, **kw)


def apply(st: LedgerState, payload: bytes) -> None:
    st.apply_event(json.loads(payload))


def ledger_with_samples() -> LedgerState:
    st = LedgerState()
    for b in gpu_batches():
        st.ingest(b)
    return st


def stage_j(st: LedgerState, stage: str) -> float:
    return sum(r.energy_j for r in st.energy_rows() if r.stage == stage)


# ---- the window records its process; closings are marked; old logs still read ---------------
def test_window_records_its_process_and_old_records_still_read():
    w = opened("w", 1.0, pid=4242, pid_start=99, host="h|boot|pid:[1]")
    back = Window.from_event(json.loads(window_open_event(w)))
    assert (back.pid, back.pid_start, back.host, back.closed_by) == (4242, 99, "h|boot|pid:[1]",
                                                                     None)
    old = {"type": "window_open", "window_id": "o", "trial_id": "t", "stage": "s",
           "node_id": "n1", "devices": ["*"], "t_start_s": 0.0, "a_future_field": 1}
    assert Window.from_event(old).pid is None
    closed = back.closed(json.loads(window_close_event("w", 2.0, 5, None, 2.0,
                                                       closed_by="atexit")))
    assert closed.closed_by == "atexit"
    # a close record from before closings were marked reads as unknown, not as an error
    assert back.closed({"window_id": "w", "t_end_s": 2.0, "tokens": 0}).closed_by is None
    # the work window a load window continues into is the same process's
    assert w.continued("w2", 2.0, 2.0).pid == 4242


def test_closings_reach_the_rows_and_the_metrics_note():
    st = ledger_with_samples()
    for wid, start, end, how in (("a", 1.0, 3.0, "stage"), ("b", 4.0, 6.0, "process_gone"),
                                 ("c", 7.0, 9.0, None)):
        apply(st, window_open_event(opened(wid, start)))
        apply(st, window_close_event(wid, end, 0, None, end, closed_by=how))
    frame = energy_frame(st.energy_rows()).set_index("window_id")
    assert frame.loc["a", "closed_by"] == "stage"
    assert frame.loc["b", "closed_by"] == "process_gone"
    assert frame.loc["c", "closed_by"] == ""  # an old log's close: unknown
    assert closings_note(st.energy_rows()) == {"process_gone": ["b"]}


# ---- the bug: an open window halves every later stage on its devices -------------------------
def test_a_window_left_open_no_longer_halves_a_later_stage_once_closed():
    st = ledger_with_samples()
    apply(st, window_open_event(opened("dead", 1.0, stage="evaluation", pid=1)))
    apply(st, window_open_event(opened("later", 10.0)))
    apply(st, window_close_event("later", 15.0, 0, None, 15.0))
    # the bug as it is: the dead window's end is the latest sample, so it takes half of later
    assert stage_j(st, "student_training") == pytest.approx(0.5 * 300.0 * 5.0)
    # its process died at t=5: the sampler closes it there, and the later stage is whole
    apply(st, st.leftover_close("dead", 5.0, 5.0, PROCESS_GONE))
    assert stage_j(st, "student_training") == pytest.approx(300.0 * 5.0)
    assert stage_j(st, "evaluation") == pytest.approx(300.0 * 4.0)
    assert st.open_windows() == [] and st.leftover_close("dead", 9.0, 9.0, FINISH) is None


def test_leftover_close_keeps_what_the_ledger_knows_and_never_ends_before_the_start():
    st = ledger_with_samples()
    apply(st, window_open_event(opened("w", 6.0, pid=7)))
    assert [w.window_id for w in st.open_windows("n1")] == ["w"]
    assert st.open_windows("other-node") == []
    ev = json.loads(st.leftover_close("w", 2.0, 2.0, FINISH))  # noticed "before" it opened
    assert (ev["t_end_s"], ev["t_end_mono_s"], ev["closed_by"]) == (6.0, 6.0, FINISH)
    assert st.latest_clocks("n1") == (pytest.approx(20.0), pytest.approx(20.0))
    assert st.latest_clocks("no-samples") is None


# ---- the process watch ------------------------------------------------------------------------
def test_watch_closes_a_window_at_the_last_check_that_saw_its_process_alive():
    alive = {11: True, 12: True}
    watch = ProcessWatch(host="h", alive=lambda pid, start: alive[pid])
    wins = [{"window_id": "a", "pid": 11, "host": "h", "t_start_s": 0.0, "t_start_mono_s": 0.0},
            {"window_id": "b", "pid": 12, "host": "h", "t_start_s": 0.0, "t_start_mono_s": 0.0},
            {"window_id": "elsewhere", "pid": 11, "host": "other", "t_start_s": 0.0},
            {"window_id": "old", "pid": None, "host": None, "t_start_s": 0.0}]
    assert watch.check(wins, 100.0, 10.0) == []
    alive[11] = False
    (gone,) = watch.check(wins, 102.0, 12.0)
    assert (gone.window_id, gone.t_end_s, gone.t_end_mono_s) == ("a", 100.0, 10.0)
    # a process never seen alive is closed where its death was noticed, not before its start
    fresh = [{"window_id": "c", "pid": 13, "host": "h", "t_start_s": 101.0,
              "t_start_mono_s": 11.0}]
    alive[13] = False
    (g,) = watch.check(fresh, 104.0, 14.0)
    assert (g.t_end_s, g.t_end_mono_s) == (104.0, 14.0)


def test_process_alive_tells_a_killed_process_and_a_reused_pid():
    me = os.getpid()
    start = process_start(me)
    assert start is not None and process_alive(me, start) and process_alive(me, None)
    assert not process_alive(me, start + 1)  # the same pid, another process: a reused pid
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child_start = process_start(child.pid)
    assert process_alive(child.pid, child_start)
    child.kill()
    import time

    deadline = time.time() + 10
    while process_alive(child.pid, child_start) and time.time() < deadline:
        time.sleep(0.05)  # a zombie (killed, not reaped yet) is gone already
    assert not process_alive(child.pid, child_start)
    child.wait()
    assert not process_alive(child.pid, child_start)
    assert host_identity() == host_identity() and "|" in host_identity()


class WatchingLedger:
    """The ledger calls a sampler makes, on a LedgerState."""

    def __init__(self, state: LedgerState) -> None:
        self.state = state

    def __call__(self, method: str, *args):
        if method == "open_windows":
            return [{**w.__dict__} for w in self.state.open_windows(args[0])]
        if method == "close_leftover":
            event = self.state.leftover_close(*args)
            if event is not None:
                apply(self.state, event)
            return event is not None
        return None


def test_sampler_closes_the_window_of_a_killed_process_marked_process_gone(tmp_path):
    from raydistill.cluster.sampler import _Sampler

    st = ledger_with_samples()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    here = host_identity()
    win = Window("k", "t1", "student_training", "n1", (GPU,), 2.0, t_start_mono_s=2.0,
                 pid=child.pid, pid_start=process_start(child.pid), host=here)
    apply(st, window_open_event(win))
    mine = Window("alive", "t1", "evaluation", "n1", (GPU,), 3.0, t_start_mono_s=3.0,
                  pid=os.getpid(), pid_start=process_start(os.getpid()), host=here)
    apply(st, window_open_event(mine))
    cfg = SamplingConfig(source="constant:1", idle_s=0, spool_dir=str(tmp_path))
    sampler = _Sampler("n1", cfg, "ns", "ledger", ledger_call=WatchingLedger(st),
                       start_threads=False)
    assert sampler.watch_processes() == []  # both alive: seen, nothing closed
    child.kill()
    child.wait()
    assert sampler.watch_processes() == ["k"]
    closed = st.windows["k"]
    assert closed.closed_by == PROCESS_GONE and closed.t_end_s is not None
    assert st.windows["alive"].t_end_s is None  # this process lives: its window stays open
    assert sampler.counts["windows_closed"] == 1 and sampler.counts["watch_errors"] == 0
    sampler.stop()


def test_a_ledger_without_open_windows_costs_the_sampler_nothing(tmp_path):
    from raydistill.cluster.sampler import _Sampler

    cfg = SamplingConfig(source="constant:1", idle_s=0, spool_dir=str(tmp_path))
    calls = []
    sampler = _Sampler("n1", cfg, "ns", "ledger",
                       ledger_call=lambda m, *a: calls.append(m) or None, start_threads=False)
    assert sampler.watch_processes() == [] and sampler.counts["watch_errors"] == 0
    assert calls.count("open_windows") == 1
    sampler.stop()


def test_all_devices_window_of_a_dead_process_is_closed_too():
    st = LedgerState()
    for b in gpu_batches():
        st.ingest(b)
    w = Window("all", "t1", "s", "n1", ALL_DEVICES, 1.0, t_start_mono_s=1.0, pid=5, host="h")
    apply(st, window_open_event(w))
    (gone,) = ProcessWatch(host="h", alive=lambda p, s: False).check(
        [w.__dict__], 8.0, 8.0)
    apply(st, st.leftover_close(gone.window_id, gone.t_end_s, gone.t_end_mono_s, PROCESS_GONE))
    (row,) = st.energy_rows()
    assert row.energy_j == pytest.approx(300.0 * 7.0) and not row.open


SIGTERMED = """
import sys, time
from raydistill.cluster import lifetime

class Window:
    window_ids = ("w",)
    def close(self, closed_by, timeout_s=None):
        print("closed", closed_by, flush=True)

w = Window()
lifetime.register(w)
try:
    print("ready", flush=True)
    time.sleep(60)
except SystemExit:
    print("unwound", flush=True)  # where a `with` block's __exit__ closes its window: "exit"
    raise
"""


def test_sigterm_unwinds_the_process_instead_of_killing_it_outright():
    """SIGTERM's default action ends Python without `finally` or atexit: windows would stay
    open. With a window registered, it becomes SystemExit (status 143 all the same)."""
    import signal

    child = subprocess.Popen([sys.executable, "-c", SIGTERMED], stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGTERM)
    out, _ = child.communicate(timeout=30)
    assert "unwound" in out and child.returncode == 128 + signal.SIGTERM
