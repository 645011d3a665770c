"""Sampler overhead: CPU seconds per wall second, and the slowdown of a busy loop.

For each rate, one PowerSampler actor runs on a local Ray for `--seconds`; its process CPU time
(psutil) is read before and after, for the whole actor process (Ray's own threads included) and
for the sampler's two threads alone. Then a fixed CPU-bound loop is timed with the sampler off
and on, alternating, in the same run; the ratio is the slowdown.

    python bench/bench_sampler.py [--source cpu-estimate] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import psutil
import ray

from raydistill.cluster.fleet import SamplerFleet
from raydistill.cluster.ledger_actor import start_ledger
from raydistill.config import SamplingConfig


def busy_loop(n: int = 3_000_000) -> float:
    start = time.perf_counter()
    acc = 0
    for i in range(n):
        acc += i * i % 7
    return time.perf_counter() - start


def thread_cpu(proc: psutil.Process, ids: set[int]) -> float:
    return sum(t.user_time + t.system_time for t in proc.threads() if t.id in ids)


def measure(source: str, hz: float, seconds: float) -> dict:
    ns = f"bench-sampler-{time.time_ns()}"
    ledger = start_ledger(tempfile.mkdtemp(prefix="sampler-bench-"), ns)
    cfg = SamplingConfig(source=source, hz=hz, push_interval_s=2.0, idle_s=0.0)
    fleet = SamplerFleet(cfg, ns)
    fleet.reconcile()
    (handle,) = fleet.samplers.values()
    time.sleep(1.0)  # let it settle
    stats = ray.get(handle.stats.remote())
    proc = psutil.Process(stats["pid"])
    ids = set(stats["thread_ids"].values())  # the poll and push threads' native ids
    cpu0, thr0, t0 = sum(proc.cpu_times()[:2]), thread_cpu(proc, ids), time.perf_counter()
    time.sleep(seconds)
    cpu1, thr1, t1 = sum(proc.cpu_times()[:2]), thread_cpu(proc, ids), time.perf_counter()
    wall = t1 - t0
    sampler_threads = thr1 - thr0
    reads = ray.get(handle.stats.remote())["read"]
    on = [busy_loop() for _ in range(3)]
    fleet.stop()
    ray.kill(ledger, no_restart=True)
    off = [busy_loop() for _ in range(3)]
    return {"hz": hz, "process": (cpu1 - cpu0) / wall, "threads": sampler_threads / wall,
            "reads": reads, "loop_on": min(on), "loop_off": min(off)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default="cpu-estimate")
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    print(f"sampler overhead, source {args.source}, {args.seconds:.0f} s per rate, "
          f"{os.cpu_count()} cores")
    print(f"{'Hz':>5} {'actor process':>14} {'sampler threads':>16} {'busy loop on/off':>17}")
    for hz in (10.0, 100.0):
        r = measure(args.source, hz, args.seconds)
        print(f"{r['hz']:>5.0f} {r['process'] * 100:>12.2f} % {r['threads'] * 100:>14.2f} % "
              f"{r['loop_on'] / r['loop_off']:>17.3f}")
        sys.stdout.flush()
    print("(% = CPU seconds per wall second of one core; busy loop ratio = time with the sampler "
          "on / off, best of 3 each)")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
