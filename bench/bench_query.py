"""What a live query costs after 1 h, 6 h and 24 h of a run: one node, 8 GPUs + CPU at 10 Hz.

The samplers send a batch every 2 s (`SamplingConfig`: hz 10, push_interval_s 2: 20 readings
of each of the 9 devices). The run is a training stage on all 8 GPUs, open, with a 2-minute
evaluation every 30 minutes. After each new batch the open trial polls its energy
(`trial_rows`, what `trial_energy` and the Trainer callback ask for). Side by side in one run:
the old way (every new batch dropped the device's timeline: the query rebuilt it from the run's
first sample) and the incremental timeline (the batch appended to it). Pure ledger logic: no Ray.

    python bench/bench_query.py          # ~3 minutes
    python bench/bench_query.py --hours 1 6
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from raydistill.energy import LedgerState, SampleBatch, Window
from raydistill.energy.samples import DeviceInfo

GPUS, HZ, PUSH_S = 8, 10, 2.0
DEVICES = (*(DeviceInfo(f"GPU-{g}", "gpu", "nvml-counter", "counter") for g in range(GPUS)),
           DeviceInfo("cpu:package-0", "cpu", "rapl", "counter"))
EVAL_EVERY_S, EVAL_S = 1800.0, 120.0
WALL_OFFSET_S = 1.7e9


def batch(seq: int, t0: float) -> SampleBatch:
    """One push: 2 s of readings of every device, rows in read order (all devices per poll)."""
    k = len(DEVICES)
    t = np.repeat(t0 + np.arange(int(PUSH_S * HZ)) / HZ, k)
    phase = np.tile(np.arange(k, dtype=float), len(t) // k)
    power = 300.0 + 100.0 * np.sin(t / 7.0 + phase)
    counter = 300.0 * t - 700.0 * (np.cos(t / 7.0 + phase) - np.cos(phase))  # its integral
    return SampleBatch("s0", seq, "n0", DEVICES, np.tile(np.arange(k, dtype=np.int32), len(t) // k),
                       t + WALL_OFFSET_S, power, counter, t_mono_s=t)


def _event(state: LedgerState, w: Window) -> None:
    state.apply_event({"type": "window_open", **w.__dict__})


def _close(state: LedgerState, wid: str, t: float) -> None:
    state.apply_event({"type": "window_close", "window_id": wid, "t_end_s": t + WALL_OFFSET_S,
                       "tokens": 1000, "cpu_time_s": None, "t_end_mono_s": t})


def build(hours: float) -> tuple[LedgerState, int, float]:
    """A ledger after `hours` of the run; returns it, the next batch number and the time."""
    state = LedgerState()
    gpus = tuple(d.device_id for d in DEVICES[:GPUS])
    _event(state, Window("train", "trial0", "student_training", "n0", gpus,
                         WALL_OFFSET_S + 1.0, t_start_mono_s=1.0))
    end_s = hours * 3600.0
    for k, start in enumerate(np.arange(EVAL_EVERY_S, end_s - EVAL_S, EVAL_EVERY_S)):
        _event(state, Window(f"eval{k}", "trial0", "evaluation", "n0", gpus,
                             WALL_OFFSET_S + start, t_start_mono_s=float(start)))
        _close(state, f"eval{k}", float(start + EVAL_S))
    seq = 0
    for t0 in np.arange(0.0, end_s, PUSH_S):
        state.ingest(batch(seq, float(t0)))
        seq += 1
    return state, seq, end_s


def per_query_ms(state: LedgerState, seq: int, t: float, polls: int,
                 rebuild: bool) -> tuple[float, float, float, int, list]:
    """Median ms after each new batch of: the whole rows query (`trial_rows`), its timeline
    part (the new batch parsed and the devices' timelines brought up to date), and the live
    poll (`trial_energy`: {stage: J}, what the Trainer callback and a trial's progress ask)."""
    costs, tl_costs, poll_costs = [], [], []
    rows: list = []
    for _ in range(polls):
        state.ingest(batch(seq, t))
        seq, t = seq + 1, t + PUSH_S
        if rebuild:  # the old way: the new batch dropped every cached timeline
            state._timelines.clear()
        a = time.perf_counter()
        for d in DEVICES:
            state.timeline("n0", d.device_id)
        b = time.perf_counter()
        rows = state.trial_rows("trial0")
        costs.append(time.perf_counter() - a)
        tl_costs.append(b - a)
        state.ingest(batch(seq, t))
        seq, t = seq + 1, t + PUSH_S
        if rebuild:
            state._timelines.clear()
        a = time.perf_counter()
        state.trial_energy("trial0")
        poll_costs.append(time.perf_counter() - a)
    return (statistics.median(costs) * 1e3, statistics.median(tl_costs) * 1e3,
            statistics.median(poll_costs) * 1e3, seq, rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, nargs="+", default=[1.0, 6.0, 24.0])
    ap.add_argument("--polls", type=int, default=15)
    args = ap.parse_args()
    print(f"a live query (trial_rows of the open trial) after each new batch: 1 node, {GPUS} "
          f"GPUs + CPU at {HZ} Hz, a batch every {PUSH_S:.0f} s; median of {args.polls} polls "
          f"(old: 3)")
    print(f"{'hours':>6} {'samples':>10} {'windows':>8} {'build s':>8} {'old ms':>9} "
          f"{'new ms':>8} {'ratio':>6} {'old tl ms':>10} {'new tl ms':>10} {'old poll':>9} "
          f"{'new poll':>9}  same rows")
    for hours in args.hours:
        a = time.perf_counter()
        state, seq, t = build(hours)
        state.trial_rows("trial0")  # the first query parses and builds everything once
        built_s = time.perf_counter() - a
        new_ms, new_tl, new_poll, seq, new_rows = per_query_ms(state, seq, t, args.polls,
                                                               rebuild=False)
        t += 2 * args.polls * PUSH_S
        old_ms, old_tl, old_poll, seq, old_rows = per_query_ms(state, seq, t, 3, rebuild=True)
        cached = state.trial_rows("trial0")  # the same state, built the new way and the old
        state._timelines.clear()
        same = state.trial_rows("trial0") == cached and bool(old_rows)
        state.ingest(batch(seq, t + 6 * PUSH_S))
        state.trial_rows("trial0")  # cache again, then one more append against a rebuild
        state.ingest(batch(seq + 1, t + 7 * PUSH_S))
        appended = state.trial_rows("trial0")
        state._timelines.clear()
        same = same and appended == state.trial_rows("trial0") and bool(new_rows)
        print(f"{hours:>6g} {state.n_samples:>10,} {len(state.windows):>8} {built_s:>8.1f} "
              f"{old_ms:>9.1f} {new_ms:>8.2f} {old_ms / new_ms:>6.0f} {old_tl:>10.1f} "
              f"{new_tl:>10.2f} {old_poll:>9.1f} {new_poll:>9.2f}  {'yes' if same else 'NO'}")
        del state
    print("old: each new batch dropped the device's timeline and the query rebuilt it from the\n"
          "run's first sample. new: the batch is appended to the cached timeline (cost in\n"
          "proportion to the batch); the query's integrals are binary searches.\n"
          "poll: trial_energy ({stage: J}), the figure a live poll asks for, without rows.\n"
          "tl ms: the timeline part alone (the batch parsed, 9 timelines up to date); the rest\n"
          "is the rows of the trial's windows (one per window x device: it grows with the\n"
          "evaluations, 2 an hour here, not with the samples).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
