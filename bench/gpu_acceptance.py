"""GPU acceptance: raydistill's GPU energy against NVML's own counter and Zeus, on real loads.

    .venv/bin/python bench/gpu_acceptance.py [--quick] [--out FILE.json] [--gpu N | --all-gpus]
                                             [--seconds S] [--no-tests] [--no-pipeline]

Under 5 minutes on one NVIDIA GPU. Three loads run on the GPU, ~20 s each (6 s with --quick):
`idle` (sleep), `steady` (a bf16 matmul loop, fp32 where bf16 is missing) and `onoff_1hz` (0.5 s
busy, 0.5 s idle). Each load is measured at once by

- raydistill: an `NvmlSource` polled at 10 Hz in a background thread; its readings go through
  the ledger's pure core (`SampleBatch` → `LedgerState`, one window per load and GPU);
- the direct counter: `nvmlDeviceGetTotalEnergyConsumption` read at the load's start and end,
  the ground truth;
- power integration: the trapezoid integral of `nvmlDeviceGetPowerUsage` (a ~1 s moving
  average on Ampere and newer) sampled in the same thread, to show what that averaging costs
  on the on/off load;
- Zeus's `ZeusMonitor`, where `zeus` imports.

Then the `gpu`-marked tests run (pytest), and a tiny pipeline runs end to end with
`sampling.source=nvml`, so every device in its results is a GPU. Each step has a timeout cut
from one overall budget (`--budget-s`, 290 s by default).

One table is printed at the end (logging goes to stderr); `--out` also writes it as JSON.
Target: raydistill within 1% (`--tolerance-pct`) of the direct counter and of Zeus on every
load. Exit code 0 when everything passes, 1 when something fails, 2 when there is no usable GPU
here (a one-line message: no NVML, no GPU, or a torch build without CUDA).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("gpu_acceptance")

REPO = Path(__file__).resolve().parent.parent
LOADS = ("idle", "steady", "onoff_1hz")
POLL_HZ = 10.0
LOAD_S, QUICK_LOAD_S = 20.0, 6.0
SETTLE_S = 2.0  # between loads, and before the first (the 1 s power average settles)
BUDGET_S = 290.0
TOLERANCE_PCT = 1.0
MATRIX_N = 8192
MATMULS_PER_SYNC = 4
BATCH_READINGS = 64  # readings per SampleBatch fed to the ledger
TESTS_MAX_S, PIPELINE_MAX_S, PIPELINE_RESERVE_S, STEP_MIN_S = 150.0, 150.0, 100.0, 30.0
PIPELINE_SETS = ("sampling.source=nvml", "data.splits.train=200", "teacher.steps=40",
                 "student.steps=30", "evaluation.limit=50", "baseline=false")
STEP_OK = ("passed", "skipped")  # step statuses that do not fail the acceptance


class NoGpu(Exception):
    """No usable NVIDIA GPU here: the script exits 2 with this one-line message."""


# ---- pure parts (unit-tested without a GPU) ---------------------------------------------------


def trapezoid_j(times_s: Sequence[float], power_w: Sequence[float], t0_s: float,
                t1_s: float) -> float:
    """Energy (J) of sampled power over [t0_s, t1_s]: trapezoids between samples, cut at the
    window edges by linear interpolation, power held past the first and last sample."""
    if t1_s < t0_s:
        raise ValueError(f"window ends before it starts ({t0_s} > {t1_s})")
    t = np.asarray(times_s, dtype=np.float64)
    p = np.asarray(power_w, dtype=np.float64)
    if t.size == 0 or t.size != p.size:
        raise ValueError("need as many power samples as times, at least one")
    order = np.argsort(t, kind="stable")
    t, p = t[order], p[order]
    inside = (t > t0_s) & (t < t1_s)
    edge_w = np.interp([t0_s, t1_s], t, p)  # np.interp holds the end values outside the range
    ts = np.concatenate(([t0_s], t[inside], [t1_s]))
    ps = np.concatenate(([edge_w[0]], p[inside], [edge_w[1]]))
    return float(np.sum(0.5 * (ps[1:] + ps[:-1]) * np.diff(ts)))


def diff_pct(value: float | None, reference: float | None) -> float | None:
    """(value − reference) / reference in %, None when either is missing or reference is 0."""
    if value is None or reference is None or reference == 0:
        return None
    return (value - reference) / reference * 100.0


def judge(raydistill_j: float | None, references_j: dict[str, float | None],
          tolerance_pct: float = TOLERANCE_PCT) -> str:
    """PASS when raydistill is within tolerance of every reference present, FAIL when not (or
    when raydistill has no figure), n/a when there is no reference to judge against."""
    present = {k: v for k, v in references_j.items() if v is not None}
    if not present:
        return "n/a"
    if raydistill_j is None:
        return "FAIL"
    diffs = [diff_pct(raydistill_j, v) for v in present.values()]
    ok = all(d is not None and abs(d) <= tolerance_pct for d in diffs)
    return "PASS" if ok else "FAIL"


def make_row(load: str, gpu_index: int, duration_s: float, counter_j: float | None,
             raydistill_j: float | None, raydistill_method: str, power_int_j: float | None,
             zeus_j: float | None, zeus_note: str = "",
             tolerance_pct: float = TOLERANCE_PCT) -> dict[str, Any]:
    """One table row, diffs against the direct counter, and the verdict."""
    reference_j = counter_j if counter_j is not None else raydistill_j
    mean_power_w = reference_j / duration_s if reference_j is not None and duration_s else None
    return {
        "load": load, "gpu_index": gpu_index, "duration_s": duration_s, "counter_j": counter_j,
        "raydistill_j": raydistill_j, "raydistill_diff_pct": diff_pct(raydistill_j, counter_j),
        "raydistill_method": raydistill_method, "power_int_j": power_int_j,
        "power_int_diff_pct": diff_pct(power_int_j, counter_j), "zeus_j": zeus_j,
        "zeus_diff_pct": diff_pct(zeus_j, counter_j), "zeus_note": zeus_note,
        "mean_power_w": mean_power_w,
        "verdict": judge(raydistill_j, {"counter": counter_j, "zeus": zeus_j}, tolerance_pct),
    }


def parse_pytest_counts(output: str) -> dict[str, int]:
    """{'passed': 2, 'failed': 1, ...} from the summary line of `pytest -q`."""
    counts: dict[str, int] = {}
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        found = re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)",
                           line)
        if found:
            for n, word in found:
                counts["error" if word.startswith("error") else word] = int(n)
            break
    return counts


def overall_verdict(rows: list[dict[str, Any]], steps: list[dict[str, Any]]) -> str:
    rows_ok = bool(rows) and all(r["verdict"] == "PASS" for r in rows)
    steps_ok = all(s["status"] in STEP_OK for s in steps)
    return "PASS" if rows_ok and steps_ok else "FAIL"


COLUMNS = (  # (header, row key, format)
    ("load", "load", "{}"), ("gpu", "gpu_index", "{}"), ("duration_s", "duration_s", "{:.2f}"),
    ("counter_J", "counter_j", "{:,.1f}"), ("raydistill_J", "raydistill_j", "{:,.1f}"),
    ("rd_diff_%", "raydistill_diff_pct", "{:+.2f}"), ("rd_method", "raydistill_method", "{}"),
    ("power_int_J", "power_int_j", "{:,.1f}"), ("pi_diff_%", "power_int_diff_pct", "{:+.2f}"),
    ("zeus_J", "zeus_j", "{:,.1f}"), ("zeus_diff_%", "zeus_diff_pct", "{:+.2f}"),
    ("mean_W", "mean_power_w", "{:.1f}"), ("verdict", "verdict", "{}"),
)


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (row.get("zeus_note") if key == "zeus_j" else "") or "n/a"
    return fmt.format(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a fixed-width text table, numbers right-aligned."""
    cells = [[h for h, _, _ in COLUMNS]]
    cells += [[_cell(r, key, fmt) for _, key, fmt in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    text_cols = {0, 6, 12}
    out = []
    for line in cells:
        parts = [c.ljust(w) if i in text_cols else c.rjust(w)
                 for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        out.append("  ".join(parts).rstrip())
    return "\n".join(out)


def _step_line(step: dict[str, Any]) -> str:
    wall = f" in {step['wall_s']:.0f} s" if step.get("wall_s") is not None else ""
    detail = f": {step['detail']}" if step.get("detail") else ""
    return f"{step['name']}: {step['status']}{wall}{detail}"


def format_report(report: dict[str, Any]) -> str:
    """The one table printed at the end: GPUs above, rows, then target, steps and verdict."""
    lines = []
    for g in report["gpus"]:
        counter = "supported" if g["counter_supported"] else "NOT supported"
        lines.append(f"GPU {g['index']}: {g['name']} ({g['uuid']}), driver {g['driver']}, "
                     f"energy counter {counter}")
    lines.append(f"loads of {report['load_s']:g} s; raydistill: NvmlSource at {POLL_HZ:g} Hz "
                 "through LedgerState; power_int: trapezoid of nvmlDeviceGetPowerUsage")
    lines += ["", format_table(report["rows"]), ""]
    lines.append(f"target: raydistill within {report['tolerance_pct']:g}% of the direct "
                 "counter and of Zeus on every load")
    lines += [_step_line(s) for s in report["steps"]]
    lines.append(f"overall: {report['verdict']}")
    return "\n".join(lines)


# ---- NVML and the GPUs --------------------------------------------------------------------------


@dataclass(frozen=True)
class Gpu:
    index: int  # NVML index
    cuda_index: int  # torch / Zeus index (after CUDA_VISIBLE_DEVICES)
    uuid: str
    name: str
    driver: str
    counter_supported: bool
    handle: Any = field(repr=False, compare=False)

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "handle"}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def open_nvml() -> Any:
    """pynvml, initialised, or NoGpu when there is no NVML or no GPU on this machine."""
    try:
        import pynvml
    except ImportError:
        raise NoGpu("pynvml is not installed (pip install nvidia-ml-py)") from None
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError as exc:
        raise NoGpu(f"no NVIDIA GPU/NVML here ({exc}); run this on a machine with an NVIDIA "
                    "GPU and driver") from None
    if count == 0:
        raise NoGpu("NVML sees no GPU on this machine")
    return pynvml


def read_counter_j(nv: Any, handle: Any) -> float | None:
    """The GPU's energy counter in joules (NVML gives mJ), None where unsupported."""
    try:
        return nv.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0
    except nv.NVMLError:
        return None


def _bare_uuid(uuid: str) -> str:
    return uuid.lower().removeprefix("gpu-")


def cuda_index_of(uuid: str, fallback: int) -> int:
    """torch's index of the GPU with this UUID; the NVML index where torch cannot tell."""
    import torch

    for i in range(torch.cuda.device_count()):
        u = getattr(torch.cuda.get_device_properties(i), "uuid", None)
        if u is not None and _bare_uuid(str(u)) == _bare_uuid(uuid):
            return i
    return fallback


def describe_gpus(nv: Any, indices: list[int]) -> list[Gpu]:
    import torch

    if not torch.cuda.is_available():
        raise NoGpu(f"torch {torch.__version__} has no CUDA here; install a CUDA build of torch")
    count = nv.nvmlDeviceGetCount()
    if any(not 0 <= i < count for i in indices):
        raise NoGpu(f"--gpu must be an NVML index in 0..{count - 1}")
    driver = _text(nv.nvmlSystemGetDriverVersion())
    gpus = []
    for i in indices:
        h = nv.nvmlDeviceGetHandleByIndex(i)
        uuid = _text(nv.nvmlDeviceGetUUID(h))
        gpus.append(Gpu(i, cuda_index_of(uuid, i), uuid, _text(nv.nvmlDeviceGetName(h)),
                        driver, read_counter_j(nv, h) is not None, h))
    return gpus


class Poller:
    """Polls raydistill's NvmlSource and NVML's power field at 10 Hz in a background thread."""

    def __init__(self, source: Any, nv: Any, gpus: list[Gpu], hz: float = POLL_HZ) -> None:
        self.source, self.nv, self.gpus, self.period_s = source, nv, gpus, 1.0 / hz
        self.readings: list[Any] = []  # raydistill Readings
        self.power: dict[int, list[tuple[float, float]]] = {g.index: [] for g in gpus}
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-acceptance-poll",
                                        daemon=True)

    def start(self) -> Poller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        next_s = time.monotonic()
        while not self._stop.is_set():
            self._tick()
            next_s += self.period_s
            self._stop.wait(max(0.0, next_s - time.monotonic()))

    def _tick(self) -> None:
        try:
            self.readings.extend(self.source.read())
        except Exception as exc:  # keep polling the power field; the count goes in the log
            self.errors += 1
            if self.errors == 1:
                log.error("raydistill NvmlSource.read() failed: %s", exc)
        for g in self.gpus:
            try:
                power_w = self.nv.nvmlDeviceGetPowerUsage(g.handle) / 1000.0  # mW → W
            except self.nv.NVMLError:
                continue
            self.power[g.index].append((time.time(), power_w))


# ---- the loads ----------------------------------------------------------------------------------


def make_matrices(gpus: list[Gpu]) -> list[tuple[Any, Any]]:
    """(a, out) per GPU for `out = a @ a`: bf16 where supported, else fp32."""
    import torch

    mats = []
    for g in gpus:
        device = torch.device("cuda", g.cuda_index)
        with torch.cuda.device(device):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        a = torch.randn(MATRIX_N, MATRIX_N, device=device, dtype=dtype)
        mats.append((a, torch.empty_like(a)))
    log.info("load matrices: %d × %d %s on %d GPU(s)", MATRIX_N, MATRIX_N, mats[0][0].dtype,
             len(mats))
    return mats


def synchronize(mats: list[tuple[Any, Any]]) -> None:
    import torch

    for a, _ in mats:
        torch.cuda.synchronize(a.device)


def busy_until(mats: list[tuple[Any, Any]], end_s: float) -> None:
    """Matmuls on every GPU until time.time() reaches end_s, synchronised every few."""
    import torch

    while time.time() < end_s:
        for a, out in mats:
            for _ in range(MATMULS_PER_SYNC):
                torch.matmul(a, a, out=out)
        synchronize(mats)


def run_load(kind: str, mats: list[tuple[Any, Any]], seconds: float) -> None:
    start_s = time.time()
    if kind == "idle":
        time.sleep(seconds)
    elif kind == "steady":
        busy_until(mats, start_s + seconds)
    elif kind == "onoff_1hz":
        for k in range(max(1, round(seconds))):  # whole 1 s cycles, phase kept to the start
            busy_until(mats, start_s + k + 0.5)
            time.sleep(max(0.0, start_s + k + 1.0 - time.time()))
    else:
        raise ValueError(f"unknown load {kind!r}")
    synchronize(mats)


@dataclass
class Span:
    load: str
    t0_s: float
    t1_s: float
    counter0_j: dict[int, float | None]
    counter1_j: dict[int, float | None]
    zeus_j: dict[int, float] | None  # by NVML index

    @property
    def duration_s(self) -> float:
        return self.t1_s - self.t0_s

    def counter_energy_j(self, index: int) -> float | None:
        a, b = self.counter0_j[index], self.counter1_j[index]
        return None if a is None or b is None else b - a


def measure_load(kind: str, mats: list[tuple[Any, Any]], seconds: float, nv: Any,
                 gpus: list[Gpu], zeus: Any) -> Span:
    """Run one load between two direct counter reads (and a Zeus window around them)."""
    synchronize(mats)
    if zeus is not None:
        zeus.begin_window(kind, sync_execution=False)  # synchronised just above
    t0_s = time.time()
    c0 = {g.index: read_counter_j(nv, g.handle) for g in gpus}
    run_load(kind, mats, seconds)
    t1_s = time.time()
    c1 = {g.index: read_counter_j(nv, g.handle) for g in gpus}
    zeus_j = None
    if zeus is not None:
        by_cuda = zeus.end_window(kind, sync_execution=False).gpu_energy
        zeus_j = {g.index: float(by_cuda[g.cuda_index]) for g in gpus}
    log.info("%s: %.2f s", kind, t1_s - t0_s)
    return Span(kind, t0_s, t1_s, c0, c1, zeus_j)


def open_zeus(gpus: list[Gpu]) -> tuple[Any, str]:
    """A ZeusMonitor over the GPUs, or None and why not (shown in the Zeus columns)."""
    try:
        from zeus.monitor import ZeusMonitor
    except ImportError:
        return None, "not installed"
    try:
        return ZeusMonitor(gpu_indices=[g.cuda_index for g in gpus]), ""
    except Exception as exc:
        log.error("ZeusMonitor failed to start: %s", exc)
        return None, "failed"


# ---- raydistill's figure, through the ledger's pure core --------------------------------------


def window_id(load: str, gpu: Gpu) -> str:
    return f"{load}@gpu{gpu.index}"


def raydistill_energy(readings: list[Any], spans: list[Span],
                      gpus: list[Gpu]) -> dict[str, tuple[float, str]]:
    """{window id: (energy_j, method)} as raydistill's ledger computes it from the readings."""
    from raydistill.energy.ledger import LedgerState
    from raydistill.energy.samples import SampleBatch

    node_id = socket.gethostname()
    state = LedgerState()
    for seq, start in enumerate(range(0, len(readings), BATCH_READINGS)):
        chunk = readings[start:start + BATCH_READINGS]
        state.ingest(SampleBatch.from_readings("gpu-acceptance", seq, node_id, chunk))
    for span in spans:
        for g in gpus:
            wid = window_id(span.load, g)
            state.apply_event({"type": "window_open", "window_id": wid,
                               "trial_id": "gpu-acceptance", "stage": span.load,
                               "node_id": node_id, "devices": (g.uuid,),
                               "t_start_s": span.t0_s, "t_end_s": None, "tokens": 0,
                               "cpu_time_s": None})
            state.apply_event({"type": "window_close", "window_id": wid,
                               "t_end_s": span.t1_s, "tokens": 0, "cpu_time_s": None})
    wanted = {window_id(s.load, g): g.uuid for s in spans for g in gpus}
    return {r.window_id: (float(r.energy_j), r.method) for r in state.energy_rows()
            if wanted.get(r.window_id) == r.device_id}


def power_integral_j(poller: Poller, gpu: Gpu, span: Span) -> float | None:
    samples = poller.power[gpu.index]
    if not samples:
        return None
    times_s, power_w = zip(*samples, strict=True)
    return trapezoid_j(times_s, power_w, span.t0_s, span.t1_s)


def measure_loads(nv: Any, gpus: list[Gpu], seconds: float,
                  tolerance_pct: float) -> list[dict[str, Any]]:
    """The three loads, each measured four ways; one row per load and GPU."""
    import torch

    from raydistill.energy.nvml import NvmlSource

    zeus, zeus_note = open_zeus(gpus)
    source = NvmlSource()
    mats = make_matrices(gpus)
    poller = Poller(source, nv, gpus).start()
    try:
        busy_until(mats, time.time() + 1.0)  # warm-up: cuBLAS handles, clocks
        spans = []
        for kind in LOADS:
            time.sleep(SETTLE_S)
            spans.append(measure_load(kind, mats, seconds, nv, gpus, zeus))
        time.sleep(0.5)  # samples past the last window's end
    finally:
        poller.stop()
        source.close()
        del mats
        torch.cuda.empty_cache()
    log.info("%d raydistill readings, %d read errors", len(poller.readings), poller.errors)
    ours = raydistill_energy(poller.readings, spans, gpus)
    rows = []
    for span in spans:
        for g in gpus:
            rd_j, rd_method = ours.get(window_id(span.load, g), (None, "none"))
            zeus_j = span.zeus_j[g.index] if span.zeus_j is not None else None
            rows.append(make_row(span.load, g.index, span.duration_s,
                                 span.counter_energy_j(g.index), rd_j, rd_method,
                                 power_integral_j(poller, g, span), zeus_j, zeus_note,
                                 tolerance_pct))
    return rows


# ---- the gpu tests and the tiny pipeline, as subprocesses under the budget --------------------


class Deadline:
    def __init__(self, budget_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.end_s = clock() + budget_s

    def timeout_s(self, max_s: float, reserve_s: float = 0.0) -> float:
        """Seconds a step may take: at most max_s, leaving reserve_s for the steps after it."""
        return max(0.0, min(max_s, self.end_s - self.clock() - reserve_s))


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    for key, value in (("RAY_AUTH_MODE", "disabled"), ("RAY_USAGE_STATS_ENABLED", "0"),
                       ("DS_BUILD_OPS", "0"), ("TORCH_EXTENSIONS_DIR",
                                               str(REPO / ".torch_extensions"))):
        env.setdefault(key, value)
    return env


def run_step(cmd: list[str], timeout_s: float, log_path: Path) -> tuple[int | None, float, str]:
    """(exit code or None on timeout, wall seconds, output). A timeout kills the whole process
    group, so Ray's and pytest's children go too."""
    start_s = time.monotonic()
    with log_path.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    output = log_path.read_text(errors="replace")
    if rc != 0:
        tail = "\n".join(output.splitlines()[-15:])
        log.warning("%s: %s (log %s); its last lines:\n%s", " ".join(cmd[:4]),
                    "timed out" if rc is None else f"exit {rc}", log_path, tail)
    return rc, time.monotonic() - start_s, output


def not_run(name: str, why: str) -> dict[str, Any]:
    status = "skipped" if why.startswith("--") else "not run"
    return {"name": name, "status": status, "wall_s": None, "detail": why}


def run_gpu_tests(deadline: Deadline, work: Path, reserve_s: float) -> dict[str, Any]:
    timeout_s = deadline.timeout_s(TESTS_MAX_S, reserve_s)
    if timeout_s < STEP_MIN_S:
        return not_run("gpu tests", f"under {STEP_MIN_S:.0f} s of the budget left")
    log.info("gpu-marked tests (timeout %.0f s)", timeout_s)
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"]
    rc, wall_s, output = run_step(cmd, timeout_s, work / "gpu_tests.log")
    counts = parse_pytest_counts(output)
    shown = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("passed", "failed", "error", "skipped"))
    if rc is None:
        return {"name": "gpu tests", "status": "timed out", "wall_s": wall_s,
                "detail": f"after {timeout_s:.0f} s", "counts": counts}
    status = "passed" if rc == 0 and counts.get("passed", 0) > 0 else "failed"
    return {"name": "gpu tests", "status": status, "wall_s": wall_s,
            "detail": f"{shown} (exit {rc})", "counts": counts}


def pipeline_energy(run_dir: Path) -> dict[str, Any]:
    """GPU energy of a finished run (source nvml: every device in it is a GPU), its E_run and
    the methods, from results.parquet and metrics.json."""
    import pandas as pd

    table = pd.read_parquet(run_dir / "results.parquet")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    methods = sorted({m for s in table["energy_method"].astype(str) for m in s.split("+")})
    return {"gpu_energy_j": float(table["energy_j"].sum()),
            "e_run_j": float(metrics["trials"][0]["E_run_j"]), "methods": methods,
            "stages": len(table)}


def run_pipeline(deadline: Deadline, work: Path) -> dict[str, Any]:
    timeout_s = deadline.timeout_s(PIPELINE_MAX_S)
    if timeout_s < STEP_MIN_S:
        return not_run("pipeline", f"under {STEP_MIN_S:.0f} s of the budget left")
    run_dir = work / "run"
    cmd = [sys.executable, "-m", "raydistill.cli", "run", "configs/tiny.yaml",
           "--out", str(run_dir)]
    for item in PIPELINE_SETS:
        cmd += ["--set", item]
    log.info("tiny pipeline on the GPU (timeout %.0f s), run dir %s", timeout_s, run_dir)
    rc, wall_s, _ = run_step(cmd, timeout_s, work / "pipeline.log")
    step: dict[str, Any] = {"name": "pipeline", "wall_s": wall_s, "run_dir": str(run_dir)}
    if rc != 0:
        why = f"after {timeout_s:.0f} s" if rc is None else f"exit {rc}"
        return {**step, "status": "timed out" if rc is None else "failed", "detail": why}
    try:
        energy = pipeline_energy(run_dir)
    except (OSError, KeyError, IndexError, ValueError) as exc:
        return {**step, "status": "failed", "detail": f"exit 0 but no results: {exc}"}
    detail = (f"exit 0, GPU energy {energy['gpu_energy_j']:,.1f} J over {energy['stages']} "
              f"stages (E_run {energy['e_run_j']:,.1f} J, method "
              f"{'+'.join(energy['methods'])}); run dir {run_dir}")
    return {**step, **energy, "status": "passed", "detail": detail}


# ---- command line -------------------------------------------------------------------------------


def _positive_s(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help=f"{QUICK_LOAD_S:g} s loads")
    p.add_argument("--seconds", type=_positive_s, default=None,
                   help=f"length of each load (default {LOAD_S:g}, {QUICK_LOAD_S:g} with --quick)")
    p.add_argument("--out", default=None, help="also write the table as JSON to this file")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--gpu", type=int, default=0, help="NVML index of the GPU (default 0)")
    which.add_argument("--all-gpus", action="store_true", help="load and measure every GPU")
    p.add_argument("--no-tests", action="store_true", help="skip the gpu-marked tests")
    p.add_argument("--no-pipeline", action="store_true", help="skip the tiny pipeline run")
    p.add_argument("--tolerance-pct", type=float, default=TOLERANCE_PCT,
                   help=f"PASS band around the counter and Zeus (default {TOLERANCE_PCT:g}%%)")
    p.add_argument("--budget-s", type=_positive_s, default=BUDGET_S,
                   help="the whole run's time budget; the steps' timeouts are cut from it")
    return p.parse_args(argv)


def run_steps(args: argparse.Namespace, deadline: Deadline) -> list[dict[str, Any]]:
    work = Path(tempfile.mkdtemp(prefix="gpu-acceptance-"))
    reserve_s = 0.0 if args.no_pipeline else PIPELINE_RESERVE_S
    tests = (not_run("gpu tests", "--no-tests") if args.no_tests
             else run_gpu_tests(deadline, work, reserve_s))
    pipeline = (not_run("pipeline", "--no-pipeline") if args.no_pipeline
                else run_pipeline(deadline, work))
    return [tests, pipeline]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # CUDA order = NVML order
    deadline = Deadline(args.budget_s)
    try:
        nv = open_nvml()
        count = nv.nvmlDeviceGetCount()
        gpus = describe_gpus(nv, list(range(count)) if args.all_gpus else [args.gpu])
    except NoGpu as exc:
        print(f"gpu_acceptance: {exc}", file=sys.stderr)
        return 2
    seconds = args.seconds or (QUICK_LOAD_S if args.quick else LOAD_S)
    rows = measure_loads(nv, gpus, seconds, args.tolerance_pct)
    steps = run_steps(args, deadline)
    report = {"gpus": [g.describe() for g in gpus], "tolerance_pct": args.tolerance_pct,
              "load_s": seconds, "rows": rows, "steps": steps,
              "verdict": overall_verdict(rows, steps)}
    print(format_report(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))
        log.info("wrote %s", args.out)
    return 0 if report["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
