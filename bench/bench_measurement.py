"""Measurement accuracy against ground truth on a simulated node, and what the old ways give.

    .venv/bin/python bench/bench_measurement.py [--seeds 200]

Part 1, loads (one H100-like GPU, 10 Hz polling, 30 s windows): raydistill (counter through the
ledger) vs the integral of nvmlDeviceGetPowerUsage (the 1 s moving average on H100) vs the
instant-power field, each against the true integral of the trace: idle, steady, 1 Hz on/off,
and 10 Hz on/off.

Part 2, faults (random schedules of sampler kills and replacements, overlapping samplers, clock
steps, transient NVML errors and a lost GPU, over a random power trace): per window the
ledger's figure vs truth, how much is unmeasured, and whether any figure ever exceeded the truth
beyond the counter's tolerance (a count that must be 0).

Part 3, query cost: energy rows for 1–64 windows over an hour of 8-GPU samples.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from raydistill.energy.ledger import LedgerState
from raydistill.energy.samples import Reading, SampleBatch, Window
from raydistill.energy.simrun import SimRun
from raydistill.energy.simulate import PowerTrace, SimGpu, cpu_node, gpu_node

LOADS = {
    "idle": PowerTrace.constant(70.0),
    "steady": PowerTrace.constant(650.0),
    "on/off 1 Hz": PowerTrace.square(1.0, 650.0, 90.0, until_s=200.0),
    "on/off 10 Hz": PowerTrace.square(0.1, 650.0, 90.0, until_s=200.0),
}


def trapezoid_j(t: list[float], p: list[float]) -> float:
    return sum(0.5 * (p[i] + p[i - 1]) * (t[i] - t[i - 1]) for i in range(1, len(t)))


def load_row(name: str, trace: PowerTrace, tmp: Path, length_s: float) -> dict:
    node = gpu_node(1)
    node.rapl = []
    node.gpus[0].trace = trace
    gpu = node.gpus[0].uuid
    run = SimRun(node, tmp)
    sampler = run.sampler("a")
    nv = node.pynvml()
    nv.nvmlInit()
    h = nv.nvmlDeviceGetHandleByIndex(0)
    t, avg, inst = [], [], []
    while node.true_s() < 10.0 + length_s:
        run.until(node.true_s() + 0.1, only=[sampler])
        if 5.0 <= node.true_s() <= 5.0 + length_s + 1e-9:
            t.append(node.true_s())
            avg.append(nv.nvmlDeviceGetPowerUsage(h) / 1000)
            field = nv.nvmlDeviceGetFieldValues(h, [nv.NVML_FI_DEV_POWER_INSTANT])[0]
            inst.append(field.value.uiVal / 1000)
    run.window("w", t[0], t[-1])
    truth = node.truth_j(gpu, t[0], t[-1])
    ours = run.rows("w")[gpu].energy_j
    return {"load": name, "truth_j": truth, "raydistill": ours, "avg_power": trapezoid_j(t, avg),
            "instant": trapezoid_j(t, inst)}


def fault_run(seed: int, tmp: Path) -> tuple[int, float, float, int]:
    """(windows, worst |error| / truth over fully measured windows, unmeasured share, over)."""
    rng = random.Random(seed)
    node = cpu_node()
    node.rapl = node.rapl[:1]
    times = [i * 10.0 for i in range(7)]
    node.gpus = [SimGpu("GPU-bench", PowerTrace(times, [rng.uniform(60, 700) for _ in times]))]
    node.clock_steps = [(rng.uniform(2, 55), rng.uniform(-0.5, 0.5)) for _ in range(2)]
    run = SimRun(node, tmp)
    run.sampler("s0")
    for at in sorted(rng.uniform(2, 58) for _ in range(5)):
        run.until(round(at, 1))
        kind = rng.choice(["kill", "start", "overlap", "errors", "lose"])
        if kind == "lose" and rng.random() >= 0.3:
            kind = "overlap"  # the GPU is lost in three schedules out of ten that draw it
        run.fault(kind, at)
    run.until(60.0)
    edges = sorted(rng.uniform(1, 59) for _ in range(6))
    for i in range(5):
        run.window(f"w{i}", edges[i], edges[i + 1])
    worst, unmeasured, total_s, over = 0.0, 0.0, 0.0, 0
    for i in range(5):
        for row in run.rows(f"w{i}").values():
            truth = node.truth_j(row.device_id, edges[i], edges[i + 1])
            tol = 2 * 0.1 * 700 + (row.held_s + row.gap_s) * 700 + 1.0
            over += row.energy_j > truth + tol
            unmeasured += row.unmeasured_s
            total_s += row.duration_s
            if row.unmeasured_s == 0 and row.held_s == 0 and row.gap_s == 0 and truth > 0:
                worst = max(worst, abs(row.energy_j - truth) / truth)
    return 5, worst, unmeasured / total_s, over


def query_cost(n_windows: int) -> float:
    state = LedgerState()
    uuids = [f"GPU-q{i}" for i in range(8)]
    for b in range(360):  # an hour of 8 GPUs at 10 Hz, 10 s batches
        readings = [Reading(u, "gpu", b * 10 + k / 10, 300.0, 1e9 + 300.0 * (b * 10 + k / 10),
                            "nvml-counter", "counter", b * 10 + k / 10)
                    for k in range(100) for u in uuids]
        state.ingest(SampleBatch.from_readings("s", b, "n", readings))
    for i in range(n_windows):
        w = Window(f"w{i}", "t", "s", "n", (uuids[i % 8],), i * 50.0, i * 50.0 + 40.0,
                   t_start_mono_s=i * 50.0, t_end_mono_s=i * 50.0 + 40.0)
        state.apply_event({"type": "window_open", **w.__dict__})
    state.energy_rows()  # builds the timelines once
    started = time.perf_counter()
    state.energy_rows()
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=100)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    print("Part 1: one window on a simulated H100, polled at 10 Hz (error vs the true integral)")
    print(f"{'load':<14}{'window':>8}{'truth J':>10}{'raydistill':>12}{'1 s avg power':>15}"
          f"{'instant':>10}")
    for length_s in (30.0, 2.3):
        for name, trace in LOADS.items():
            slug = f"{name}-{length_s}".replace(" ", "_").replace("/", "-")
            r = load_row(name, trace, tmp / slug, length_s)

            def err(x: float, r: dict = r) -> str:
                return f"{(x - r['truth_j']) / r['truth_j']:+.2%}"

            print(f"{name:<14}{length_s:>7.1f}s{r['truth_j']:>10,.0f}{err(r['raydistill']):>12}"
                  f"{err(r['avg_power']):>15}{err(r['instant']):>10}")
    print(f"\nPart 2: {args.seeds} random fault schedules × 5 windows × 4 devices")
    worst, unmeasured, over, n = 0.0, 0.0, 0, 0
    for seed in range(args.seeds):
        k, w, u, o = fault_run(seed, tmp / f"f{seed}")
        n, worst, unmeasured, over = n + k, max(worst, w), unmeasured + u, over + o
    print(f"windows {n}; worst error of a fully measured figure {worst:.3%}; mean unmeasured "
          f"share {unmeasured / args.seeds:.1%}; figures above truth + tolerance: {over}")
    print("\nPart 3: energy_rows() over an hour of 8-GPU samples (288k readings)")
    for n_w in (1, 8, 64):
        print(f"  {n_w:>3} windows: {query_cost(n_w) * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
