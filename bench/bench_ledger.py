"""How many nodes can one EnergyLedger actor keep up with, durably, on this machine?

Simulated nodes of 8 GPUs sampled at 10 Hz each cut a batch every `push_interval_s` (the
sampler's real schedule), their phases spread over the interval. A few client processes (Ray
actors) speak for many nodes each; a client sends the node batches that fell due in the last
`coalesce_s` as one call (a relay: what a per-host aggregator would do). The ledger writes and
fsyncs every group before acknowledging. A configuration keeps up when the acknowledged sample
rate matches the offered rate and the p99 sample-to-disk latency stays below the push interval.

    python bench/bench_ledger.py            # the full table (~3 minutes)
    python bench/bench_ledger.py --quick    # a smaller table (~1 minute)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import ray

from raydistill.cluster.ledger_actor import start_ledger
from raydistill.energy.samples import DeviceInfo, SampleBatch

GPUS, HZ = 8, 10


class SimNode:
    """One node's sampler: 8 GPUs × HZ samples per second, cut every interval_s."""

    def __init__(self, node: int, interval_s: float) -> None:
        n_per = int(HZ * interval_s)
        self.node = node
        self.devices = tuple(DeviceInfo(f"GPU-{node}-{g}", "gpu", "nvml-counter", "counter")
                             for g in range(GPUS))
        self.idx = np.repeat(np.arange(GPUS, dtype=np.int32), n_per)
        self.offsets = np.tile(np.arange(n_per) / HZ, GPUS)
        self.power = np.full(self.offsets.shape, 300.0)

    def batch(self, seq: int, t0: float) -> bytes:
        times = t0 + self.offsets
        return SampleBatch(f"sim-{self.node}", seq, f"node-{self.node}", self.devices, self.idx,
                           times, self.power, 300.0 * times).to_bytes()


@ray.remote(num_cpus=0)
class Relay:
    """Speaks for nodes [first, first + count): sends their batches on the real schedule."""

    def __init__(self, namespace: str):
        self.ledger = ray.get_actor("raydistill-ledger", namespace=namespace)

    def run(self, first: int, count: int, duration_s: float, interval_s: float,
            coalesce_s: float) -> dict:
        phases = {first + i: (i / count) * interval_s for i in range(count)}
        nodes = {n: SimNode(n, interval_s) for n in phases}
        start = time.time() + 0.2
        seq = dict.fromkeys(phases, 0)
        latencies: list[float] = []
        sent = 0
        inflight: list[tuple[ray.ObjectRef, float, int]] = []
        next_tick = start
        while True:
            now = time.time()
            if now >= start + duration_s:
                break
            due = []
            for node, phase in phases.items():
                while start + phase + seq[node] * interval_s <= now:
                    cut_at = start + phase + seq[node] * interval_s
                    due.append((cut_at, nodes[node].batch(seq[node], cut_at - interval_s)))
                    seq[node] += 1
            if due:
                ref = self.ledger.ingest.remote([b for _, b in due])
                oldest = min(c for c, _ in due)
                inflight.append((ref, oldest, len(due)))
                sent += len(due)
            ready_refs = [r for r, _, _ in inflight]
            done, _ = ray.wait(ready_refs, num_returns=len(ready_refs), timeout=0)
            done_set = set(done)
            for ref, oldest, n in list(inflight):
                if ref in done_set:
                    ray.get(ref)
                    latencies.extend([time.time() - oldest] * n)
                    inflight.remove((ref, oldest, n))
            next_tick += coalesce_s
            time.sleep(max(0.0, next_tick - time.time()))
        for ref, oldest, n in inflight:
            ray.get(ref)
            latencies.extend([time.time() - oldest] * n)
        per_batch = GPUS * int(HZ * interval_s)
        return {"samples": sent * per_batch, "latencies": latencies, "end": time.time()}


def run_case(nodes: int, clients: int, duration_s: float, interval_s: float,
             coalesce_s: float) -> dict:
    run_dir = tempfile.mkdtemp(prefix="ledger-bench-")
    ns = f"bench-{time.time_ns()}"
    ledger = start_ledger(run_dir, ns)
    relays = [Relay.options(namespace=ns).remote(ns) for _ in range(clients)]
    per = nodes // clients
    results = ray.get([r.run.remote(i * per, per, duration_s, interval_s, coalesce_s)
                       for i, r in enumerate(relays)])
    stats = ray.get(ledger.stats.remote())
    lat = np.concatenate([np.asarray(r["latencies"]) for r in results])
    sent = sum(r["samples"] for r in results)
    for r in relays:
        ray.kill(r)
    ray.kill(ledger, no_restart=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "nodes": nodes, "clients": clients, "offered_sps": nodes * GPUS * HZ,
        "acked_sps": stats["samples"] / duration_s, "sent": sent,
        "p50_s": float(np.percentile(lat, 50)), "p99_s": float(np.percentile(lat, 99)),
        "commits": stats["commits"], "samples": stats["samples"],
    }


def raw_throughput(batch_samples: int, batches: int) -> float:
    run_dir = tempfile.mkdtemp(prefix="ledger-raw-")
    ns = f"raw-{time.time_ns()}"
    ledger = start_ledger(run_dir, ns)
    n_per = batch_samples // GPUS
    blobs = []
    for i in range(batches):
        t = 1000.0 + i * n_per / HZ + np.arange(n_per) / HZ
        devices = tuple(DeviceInfo(f"GPU-{g}", "gpu", "nvml-counter", "counter")
                        for g in range(GPUS))
        times = np.tile(t, GPUS)
        blobs.append(SampleBatch("raw", i, "node-raw", devices,
                                 np.repeat(np.arange(GPUS, dtype=np.int32), n_per), times,
                                 np.full(times.shape, 300.0), 300.0 * times).to_bytes())
    start = time.perf_counter()
    ray.get([ledger.ingest.remote([b]) for b in blobs])
    elapsed = time.perf_counter() - start
    ray.kill(ledger, no_restart=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    return batch_samples * batches / elapsed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--interval-s", type=float, default=2.0, help="sampler push interval")
    ap.add_argument("--coalesce-s", type=float, default=0.25)
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    duration = 6.0 if args.quick else 12.0
    node_counts = [2_500, 10_000] if args.quick else [2_500, 10_000, 15_000]
    print(f"ledger capacity: {GPUS} GPUs/node at {HZ} Hz, push every {args.interval_s} s, "
          f"relays coalesce {args.coalesce_s} s, fsync per group, {duration:.0f} s per case, "
          f"{os.cpu_count()} cores")
    print(f"{'nodes':>7} {'clients':>7} {'offered/s':>11} {'acked/s':>11} {'acked':>6} "
          f"{'p50 s':>6} {'p99 s':>6} {'commits':>7}  keeps up")
    for clients in (1, 4, 16):
        for nodes in node_counts:
            r = run_case(nodes, clients, duration, args.interval_s, args.coalesce_s)
            ok = r["samples"] == r["sent"] and r["p99_s"] < args.interval_s
            print(f"{nodes:>7} {clients:>7} {r['offered_sps']:>11,.0f} {r['acked_sps']:>11,.0f} "
                  f"{r['samples'] / max(r['sent'], 1):>6.2f} {r['p50_s']:>6.2f} "
                  f"{r['p99_s']:>6.2f} {r['commits']:>7}  {'yes' if ok else 'NO'}")
            sys.stdout.flush()
    for size in (10_000, 100_000):
        sps = raw_throughput(size, 20 if args.quick else 50)
        print(f"raw columnar throughput, {size:,}-sample batches: {sps:,.0f} samples/s")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
