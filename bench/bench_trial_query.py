"""What one running trial's poll of the ledger costs, against the number of windows in the sweep.

A sweep of many trials on 4 nodes of 8 GPUs (each trial 4 windows: two teacher stages, student
training, evaluation, on one GPU; the CPU package shared), sampled at 10 Hz with absolute
counters. A running trial polls for its own energy every 2 s; before each poll a fresh batch of
samples has arrived (so the device timelines are rebuilt, as on a live cluster). Compared side by
side in one run: the whole-sweep recomputation trials used before (`energy_rows`, then filter)
and the per-trial query (`trial_rows`). Pure ledger logic: no Ray.

    python bench/bench_trial_query.py          # ~1 minute
    python bench/bench_trial_query.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from raydistill.energy import LedgerState, SampleBatch, Window
from raydistill.energy.samples import DeviceInfo

NODES, GPUS, HZ = 4, 8, 10
STAGES = ("teacher_generation", "teacher_logit_caching", "student_training", "evaluation")


def _devices(node: int) -> tuple[DeviceInfo, ...]:
    gpus = tuple(DeviceInfo(f"GPU-{node}-{g}", "gpu", "nvml-counter", "counter")
                 for g in range(GPUS))
    return (*gpus, DeviceInfo("cpu:package-0", "cpu", "rapl", "counter"))


def _batch(node: int, seq: int, t0: float, t1: float) -> SampleBatch:
    devs = _devices(node)
    t = np.arange(t0, t1, 1.0 / HZ)
    n = len(t)
    idx = np.repeat(np.arange(len(devs), dtype=np.int32), n)
    times = np.tile(t, len(devs))
    power = 200.0 + 50.0 * np.sin(times)
    energy = 200.0 * times + 50.0 * (1 - np.cos(times))  # the counter of that power
    return SampleBatch(f"s{node}", seq, f"n{node}", devs, idx, times, power, energy,
                       t_mono_s=times)


def build(n_windows: int) -> tuple[LedgerState, str, float]:
    """A ledger holding `n_windows` windows; returns it, the running trial and the time now."""
    state = LedgerState()
    slots = NODES * GPUS
    n_trials = max(1, n_windows // len(STAGES))
    per_slot = -(-n_trials // slots)
    stage_s = 5.0
    t_end = per_slot * len(STAGES) * stage_s
    for trial in range(n_trials):
        node, gpu = divmod(trial % slots, GPUS)
        t = (trial // slots) * len(STAGES) * stage_s
        for k, stage in enumerate(STAGES):
            w = Window(f"w{trial}-{k}", f"trial{trial}", stage, f"n{node}",
                       (f"GPU-{node}-{gpu}",), t + k * stage_s, None, 0, 0.5,
                       t_start_mono_s=t + k * stage_s)
            state.apply_event({"type": "window_open", **w.__dict__})
            last = trial == n_trials - 1 and k == len(STAGES) - 1
            if not last:  # the newest trial's last window is still running
                state.apply_event({"type": "window_close", "window_id": w.window_id,
                                   "t_end_s": w.t_start_s + stage_s, "tokens": 0,
                                   "t_end_mono_s": w.t_start_s + stage_s,
                                   "cpu_time_s": 0.5 * stage_s})
    for node in range(NODES):
        for seq, a in enumerate(np.arange(0.0, t_end, 60.0)):
            state.ingest(_batch(node, seq, float(a), float(min(a + 60.0, t_end))))
    return state, f"trial{n_trials - 1}", t_end


def per_poll_ms(n_windows: int, polls: int) -> tuple[float, float, bool, float]:
    state, trial, t = build(n_windows)
    duration_s = t
    node = (n_windows // len(STAGES) - 1) % (NODES * GPUS) // GPUS
    full, mine, seq = [], [], 10_000
    for _ in range(polls):
        state.ingest(_batch(node, seq, t, t + 2.0))
        seq, t = seq + 1, t + 2.0
        a = time.perf_counter()
        whole = [r for r in state.energy_rows() if r.trial_id == trial]
        full.append(time.perf_counter() - a)
        state.ingest(_batch(node, seq, t, t + 2.0))
        seq, t = seq + 1, t + 2.0
        a = time.perf_counter()
        own = state.trial_rows(trial)
        mine.append(time.perf_counter() - a)
    same = [r.window_id for r in own] == [r.window_id for r in whole]
    return statistics.median(full) * 1e3, statistics.median(mine) * 1e3, same, duration_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    sizes = (16, 160, 800) if args.quick else (16, 160, 800, 3200)
    polls = 3 if args.quick else 5
    print(f"cost of one trial's poll ({NODES} nodes × {GPUS} GPUs + CPU at {HZ} Hz; "
          f"median of {polls} polls, new samples before each)")
    print(f"{'windows':>8} {'sweep s':>8} {'whole sweep ms':>15} {'per-trial ms':>13} "
          f"{'ratio':>7}  same rows")
    for n in sizes:
        full_ms, trial_ms, same, duration_s = per_poll_ms(n, polls)
        print(f"{n:>8} {duration_s:>8,.0f} {full_ms:>15.2f} {trial_ms:>13.2f} "
              f"{full_ms / trial_ms:>7.1f}  {'yes' if same else 'NO'}")
    print("whole sweep: every window integrated (linear in windows). per-trial: the trial's\n"
          "windows and their neighbours in time, found through a span index; what is left\n"
          "grows with the samples of the trial's own devices (their timelines are rebuilt\n"
          "after new samples), not with the sweep's windows.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
