"""PowerSampler: one actor per node that polls the node's power sources and feeds the ledger.

A poller thread reads every source at `hz` (read and append under one lock, so a device's
readings reach the ledger in read order whoever reads); a pusher cuts a batch every
`push_interval_s` and sends what waits in the outbox (`spool.py`: memory, bounded, and a spool on
local disk) until the ledger acknowledges it, resending safely (the ledger ingests a key once).
A failed poll is counted and logged, rate-limited, and sampling goes on; `ping` raises when the
poller is dead or stuck (a stale heartbeat), so that the fleet replaces the sampler. A node
measures what it has: a hardware source it lacks is skipped, with a warning. The actor runs its
methods concurrently (`max_concurrency`, see `fleet.py`); the locks in `__init__` guard it.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import ray

from raydistill.cluster.spool import Outbox, spool_root
from raydistill.config import SamplingConfig
from raydistill.energy.lifetime import PROCESS_GONE, ProcessWatch
from raydistill.energy.samples import Reading, SampleBatch
from raydistill.energy.sources import PowerSource, describe_sources, parse_source_spec
from raydistill.errors import SourceUnavailable

log = logging.getLogger(__name__)

OpenFn = Callable[[str], list[PowerSource]]
LedgerCall = Callable[..., Any]  # (method, *args) -> the ledger's answer; raises if away
HARDWARE = frozenset({"nvml", "rapl"})  # spec parts a node may lack
CPU_SIDE = frozenset({"rapl", "cpu-estimate", "constant", "replay"})  # source names
ERROR_LOG_INTERVAL_S = 60.0  # after the first (with traceback), at most one line this often
# How often the pusher checks that the processes of its node's open windows still live: a
# window of a killed process ends at most this long after the process did.
WATCH_INTERVAL_S = 2.0


class SamplerUnhealthy(RuntimeError):
    """Raised by `ping` when the sampler no longer samples: the fleet replaces it."""


def node_sources(spec: str, node_id: str, open_fn: OpenFn = parse_source_spec
                 ) -> list[PowerSource]:
    """The sources of `spec` this node has, opened part by part. A hardware part the node lacks
    is skipped with a warning; if that leaves no CPU-side source, the CPU estimate is added."""
    sources: list[PowerSource] = []
    skipped: list[tuple[str, SourceUnavailable]] = []
    for part in (p.strip() for p in spec.split(",")):
        try:
            sources.extend(open_fn(part))
        except SourceUnavailable as exc:
            if part.partition(":")[0] not in HARDWARE:
                raise
            skipped.append((part, exc))
    if skipped and not any(s.name in CPU_SIDE for s in sources):
        sources.extend(open_fn("cpu-estimate"))
    for part, exc in skipped:
        log.warning("node %s has no %s (%s): it measures %s instead", node_id[:12], part, exc,
                    describe_sources(sources))
    return sources


def idle_baseline(first: list[Reading], last: list[Reading]
                  ) -> tuple[dict[str, float], tuple[float, float] | None]:
    """Mean power per device between two reads, and the span it was measured over (on the
    node's monotonic clock where every reading has it, else on the wall clock)."""
    mono = all(r.t_mono_s is not None for r in first + last)

    def t(r: Reading) -> float:
        return r.t_mono_s if mono else r.t_wall_s  # type: ignore[return-value]

    begin = {r.device_id: r for r in first}
    idle: dict[str, float] = {}
    used: list[float] = []
    for r in last:
        b = begin.get(r.device_id)
        if b is None:
            continue
        dt = t(r) - t(b)
        de = None
        if r.energy_counter_j is not None and b.energy_counter_j is not None and dt > 0:
            de = r.energy_counter_j - b.energy_counter_j
            if de < 0 and r.counter_range_j:  # the counter wrapped once
                de += r.counter_range_j
        if de is not None and de >= 0:
            idle[r.device_id] = de / dt
        elif r.power_w is not None and b.power_w is not None:
            idle[r.device_id] = 0.5 * (r.power_w + b.power_w)
        else:
            continue
        used += [t(b), t(r)]
    return idle, ((min(used), max(used)) if used else None)


class _Sampler:
    def __init__(self, node_id: str, cfg: SamplingConfig, namespace: str, ledger_name: str,
                 ledger_call: LedgerCall | None = None, open_sources: OpenFn | None = None,
                 start_threads: bool = True, watch: ProcessWatch | None = None,
                 watch_interval_s: float = WATCH_INTERVAL_S) -> None:
        self.node_id = node_id
        self.cfg = cfg
        self.namespace = namespace
        self.ledger_name = ledger_name
        self.sampler_id = f"{node_id[:16]}-{uuid.uuid4().hex[:8]}"
        self._open: OpenFn = open_sources or parse_source_spec
        self._ledger_fn = ledger_call  # None: the named ledger actor, through Ray
        self.sources = node_sources(cfg.source, node_id, self._open)
        self.description = describe_sources(self.sources)
        self._read_lock = threading.Lock()  # read sources + append: one reader at a time
        self._lock = threading.Lock()  # guards the reading buffer
        self._push_lock = threading.Lock()  # one cut-and-push at a time; guards the outbox
        self._error_lock = threading.Lock()  # error counts and their log times
        self._buffer: list[Reading] = []
        self._seq = 0
        self._idle_w: dict[str, float] = {}
        self._idle_span: tuple[float, float] | None = None
        self.counts = {"read": 0, "source_errors": 0, "poll_errors": 0, "push_errors": 0,
                       "watch_errors": 0, "windows_closed": 0}
        # the open windows of processes on this host that are gone (killed: no atexit ran)
        self._watch = watch or ProcessWatch()
        self._watch_interval_s = watch_interval_s
        self._watched_at = -math.inf
        self._outbox = Outbox(spool_root(cfg, namespace, node_id) / self.sampler_id,
                              cfg.max_pending_batches, self.counts, self.sampler_id)
        self._outbox.adopt_orphans()
        self._stop = threading.Event()
        self._closed = False
        self._logged_at: dict[str, float] = {}
        self.thread_ids: dict[str, int] = {}
        self._metrics = None
        self._metrics_warned = False
        self._ledger = None
        self._measure_idle()
        self._ledger_call("record_event", {"type": "sampler_start", "sampler_id": self.sampler_id,
                                            "node_id": node_id, "t_s": time.time(),
                                            "requested": cfg.source,
                                            "sources": self.description})
        self._heartbeat = time.monotonic()
        self._poller = threading.Thread(target=self._poll_loop, name="poll", daemon=True)
        self._pusher = threading.Thread(target=self._push_loop, name="push", daemon=True)
        if start_threads:
            self._poller.start()
            self._pusher.start()

    # ---- reading ---------------------------------------------------------------------------
    def _read_into_buffer(self) -> list[Reading]:
        """Read every source once and append to the buffer, as one step: in read order."""
        with self._read_lock:
            if self._closed:
                return []
            readings = self._read_all()
            with self._lock:
                self._buffer.extend(readings)
        return readings

    def _read_all(self) -> list[Reading]:
        out: list[Reading] = []
        for src in list(self.sources):
            try:
                out.extend(src.read())
            except SourceUnavailable as exc:
                self.counts["source_errors"] += 1
                log.error("source %s failed on node %s: %s; dropping it", src.name,
                          self.node_id, exc)
                self.sources.remove(src)
            except Exception as exc:  # a bug or an OSError: this read is lost, not the source
                self._error("poll_errors", exc, f"source {src.name}")
        if not self.sources:
            log.error("no power source left on node %s: falling back to cpu-estimate",
                      self.node_id)
            self.sources = self._open("cpu-estimate")
        self.counts["read"] += len(out)
        return out

    def _measure_idle(self) -> None:
        """Idle baseline: mean power of each device over the first idle_s seconds."""
        if self.cfg.idle_s <= 0:
            return
        first = self._read_into_buffer()
        time.sleep(self.cfg.idle_s)
        last = self._read_into_buffer()
        self._idle_w, self._idle_span = idle_baseline(first, last)

    def _poll_loop(self) -> None:
        self.thread_ids["poll"] = threading.get_native_id()
        period = 1.0 / self.cfg.hz
        next_t = self._heartbeat = time.monotonic()
        while not self._stop.is_set():
            if self._poll_once():
                self._heartbeat = time.monotonic()
            next_t += period
            delay = next_t - time.monotonic()
            if delay < 0:  # fell behind (a slow source): skip ahead rather than burst
                next_t = time.monotonic()
                delay = 0
            self._stop.wait(delay)

    def _poll_once(self) -> bool:
        try:
            self._read_into_buffer()
            return True
        except Exception as exc:  # never let one poll stop sampling
            self._error("poll_errors", exc, "poll")
            return False

    def _error(self, counter: str, exc: Exception, where: str) -> None:
        """Count an error; log the first with its traceback, then one line a minute at most."""
        with self._error_lock:
            self.counts[counter] += 1
            n, now = self.counts[counter], time.monotonic()
            if now - self._logged_at.get(counter, -math.inf) < ERROR_LOG_INTERVAL_S:
                return
            self._logged_at[counter] = now
        if n == 1:
            log.error("sampler %s on node %s: %s raised; sampling goes on", self.sampler_id,
                      self.node_id[:12], where, exc_info=exc)
        else:
            log.error("sampler %s on node %s: %d %s so far; latest from %s: %s: %s",
                      self.sampler_id, self.node_id[:12], n, counter.replace("_", " "), where,
                      type(exc).__name__, exc)

    # ---- pushing ---------------------------------------------------------------------------
    def _export(self, batch: SampleBatch) -> None:
        """Live Ray metrics (dashboard, Prometheus); never allowed to stop sampling."""
        try:
            if self._metrics is None:
                from raydistill.cluster.ray_metrics import PowerMetrics

                self._metrics = PowerMetrics()
            self._metrics.observe(batch)
        except Exception as exc:  # metrics are a view; the ledger is the record
            if not self._metrics_warned:
                log.warning("sampler %s: Ray metrics export off: %s", self.sampler_id, exc)
                self._metrics_warned = True

    def _cut_batch(self) -> None:
        with self._lock:
            readings, self._buffer = self._buffer, []
        if not readings:
            return
        batch = SampleBatch.from_readings(self.sampler_id, self._seq, self.node_id, readings,
                                          self._idle_w, self._idle_span)
        self._seq += 1
        self._export(batch)
        self._outbox.add(batch.key, batch.to_bytes())

    def _push_pending(self) -> bool:
        return self._outbox.send(lambda payloads: self._ledger_call("ingest", payloads))

    def _ledger_call(self, method: str, *args: Any) -> Any:
        if self._ledger_fn is not None:
            return self._ledger_fn(method, *args)
        if self._ledger is None:  # looked up once; again only after a failure
            self._ledger = ray.get_actor(self.ledger_name, namespace=self.namespace)
        try:
            ref = getattr(self._ledger, method).remote(*args)
            return ray.get(ref, timeout=self.cfg.push_timeout_s)
        except Exception:
            self._ledger = None
            raise

    def _push_loop(self) -> None:
        self.thread_ids["push"] = threading.get_native_id()
        while not self._stop.wait(self.cfg.push_interval_s):
            try:
                with self._push_lock:
                    self._cut_batch()
                    self._push_pending()
            except Exception as exc:  # the next tick tries again
                self._error("push_errors", exc, "push")
            if time.monotonic() - self._watched_at >= self._watch_interval_s:
                self.watch_processes()

    def watch_processes(self) -> list[str]:
        """Close the open windows of this node whose process is gone (`ProcessWatch`), marked
        "process_gone"; the ids closed. Never raises: a failed check is counted and retried."""
        self._watched_at = time.monotonic()
        closed: list[str] = []
        try:
            windows = self._ledger_call("open_windows", self.node_id) or []
            for g in self._watch.check(windows, time.time(), time.monotonic()):
                if self._ledger_call("close_leftover", g.window_id, g.t_end_s, g.t_end_mono_s,
                                     PROCESS_GONE):
                    closed.append(g.window_id)
                    log.warning("window %s: its process %d is gone; closed where it was last "
                                "seen alive", g.window_id, g.pid)
        except Exception as exc:
            self._error("watch_errors", exc, "process watch")
        self.counts["windows_closed"] += len(closed)
        return closed

    # ---- the API -----------------------------------------------------------------------------
    def flush(self) -> bool:
        """Read once more, cut a batch and push everything now; True if the ledger has it all."""
        self._poll_once()
        with self._push_lock:
            self._cut_batch()
            done = self._push_pending()
        self.watch_processes()  # a query or the finish then sees dead processes' windows closed
        return done

    def problem(self) -> str | None:
        """Why this sampler no longer samples, or None while it does."""
        for thread in (self._poller, self._pusher):
            if not thread.is_alive():
                return f"its {thread.name} thread is not running"
        age = time.monotonic() - self._heartbeat
        limit = max(5.0, 20.0 / self.cfg.hz)
        if age > limit:
            return f"no poll completed for {age:.1f} s (limit {limit:.1f} s)"
        return None

    def stats(self) -> dict:
        return {"sampler_id": self.sampler_id, "node_id": self.node_id, "pid": os.getpid(),
                "running_on": (ray.get_runtime_context().get_node_id()
                               if ray.is_initialized() else None),
                "thread_ids": dict(self.thread_ids), "requested": self.cfg.source,
                "sources": self.description, "pending": len(self._outbox.pending),
                "spooled_only": len(self._outbox.spooled_only), "problem": self.problem(),
                **self.counts}

    def ping(self) -> str:
        """The sampler id; raises SamplerUnhealthy when it no longer samples."""
        problem = self.problem()
        if problem is not None:
            raise SamplerUnhealthy(f"sampler {self.sampler_id} on node {self.node_id[:12]}: "
                                   f"{problem}")
        return self.sampler_id

    def stop(self) -> dict:
        self._stop.set()
        for thread in (self._poller, self._pusher):
            if thread.ident is not None:
                thread.join(timeout=5)
        self.flush()
        with self._read_lock:  # a concurrent flush never reads a closed source
            self._closed = True
            for src in self.sources:
                src.close()
        return self.stats()


PowerSampler = ray.remote(_Sampler)
