"""PowerSampler: one actor per node that polls the node's power sources and feeds the ledger.

Two threads: a poller reads every source at `hz`; a pusher sends what was read as one batch
every `push_interval_s`. A batch gets a sequence number when it is cut, and keeps it until the
ledger acknowledges it: resending is safe (the ledger ingests a key once). While the ledger is
away, unacknowledged batches wait in memory (bounded) and in a spool file on local disk; a
sampler that starts on a node adopts spool files left there by a dead predecessor.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import deque
from pathlib import Path

import ray

from raydistill.config import SamplingConfig
from raydistill.energy.log import KIND_BATCH, SegmentWriter, read_log
from raydistill.energy.samples import Reading, SampleBatch
from raydistill.errors import SourceUnavailable

log = logging.getLogger(__name__)


def spool_root(cfg: SamplingConfig, namespace: str, node_id: str) -> Path:
    base = Path(cfg.spool_dir) if cfg.spool_dir else Path(tempfile.gettempdir()) / "raydistill"
    return base / "spool" / namespace / node_id


class _Sampler:
    def __init__(self, node_id: str, cfg: SamplingConfig, namespace: str, ledger_name: str) -> None:
        from raydistill.energy.sources import describe_sources, parse_source_spec

        self.node_id = node_id
        self.cfg = cfg
        self.namespace = namespace
        self.ledger_name = ledger_name
        self.sampler_id = f"{node_id[:16]}-{uuid.uuid4().hex[:8]}"
        self.sources = parse_source_spec(cfg.source)
        self.description = describe_sources(self.sources)
        self._lock = threading.Lock()  # guards the reading buffer
        self._push_lock = threading.Lock()  # one cut-and-push at a time (pusher thread or flush)
        self._buffer: list[Reading] = []
        self._pending: deque[tuple[tuple[str, int], bytes]] = deque()
        self._seq = 0
        self._idle_w: dict[str, float] = {}
        self.counts = {"read": 0, "sent_batches": 0, "push_failures": 0, "dropped_batches": 0,
                       "adopted_batches": 0, "spool_errors": 0, "source_errors": 0}
        self._spool_dir = spool_root(cfg, namespace, node_id) / self.sampler_id
        self._spool: SegmentWriter | None = None
        self._adopt_orphans()
        self._stop = threading.Event()
        self.thread_ids: dict[str, int] = {}
        self._metrics = None
        self._metrics_warned = False
        self._ledger = None
        self._measure_idle()
        self._ledger_call("record_event", {"type": "sampler_start", "sampler_id": self.sampler_id,
                                            "node_id": node_id, "t_s": time.time(),
                                            "sources": self.description})
        self._poller = threading.Thread(target=self._poll_loop, name="poll", daemon=True)
        self._pusher = threading.Thread(target=self._push_loop, name="push", daemon=True)
        self._poller.start()
        self._pusher.start()

    # ---- reading ---------------------------------------------------------------------------
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
        if not self.sources:
            from raydistill.energy.sources import parse_source_spec

            log.error("no power source left on node %s: falling back to cpu-estimate",
                      self.node_id)
            self.sources = parse_source_spec("cpu-estimate")
        self.counts["read"] += len(out)
        return out

    def _measure_idle(self) -> None:
        """Idle baseline: mean power of each device over the first idle_s seconds."""
        if self.cfg.idle_s <= 0:
            return
        first = self._read_all()
        time.sleep(self.cfg.idle_s)
        last = self._read_all()
        with self._lock:
            self._buffer.extend(first + last)
        begin = {r.device_id: r for r in first}
        for r in last:
            b = begin.get(r.device_id)
            if b is None:
                continue
            dt = r.t_wall_s - b.t_wall_s
            if r.energy_counter_j is not None and b.energy_counter_j is not None and dt > 0:
                self._idle_w[r.device_id] = (r.energy_counter_j - b.energy_counter_j) / dt
            elif r.power_w is not None and b.power_w is not None:
                self._idle_w[r.device_id] = 0.5 * (r.power_w + b.power_w)

    def _poll_loop(self) -> None:
        self.thread_ids["poll"] = threading.get_native_id()
        period = 1.0 / self.cfg.hz
        next_t = time.monotonic()
        while not self._stop.is_set():
            readings = self._read_all()
            with self._lock:
                self._buffer.extend(readings)
            next_t += period
            delay = next_t - time.monotonic()
            if delay < 0:  # fell behind (a slow source): skip ahead rather than burst
                next_t = time.monotonic()
                delay = 0
            self._stop.wait(delay)

    # ---- pushing ---------------------------------------------------------------------------
    def _export(self, batch: SampleBatch) -> None:
        """Live Ray metrics (dashboard, Prometheus); never allowed to stop sampling."""
        try:
            if self._metrics is None:
                from raydistill.report.ray_metrics import PowerMetrics

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
        batch = SampleBatch.from_readings(
            self.sampler_id, self._seq, self.node_id, readings, self._idle_w
        )
        self._seq += 1
        self._export(batch)
        payload = batch.to_bytes()
        self._pending.append((batch.key, payload))
        self._spool_write(payload)
        while len(self._pending) > self.cfg.max_pending_batches:
            self._pending.popleft()
            self.counts["dropped_batches"] += 1
            log.error("sampler %s: pending bound %d reached, oldest batch dropped from memory "
                      "(still in the spool if the disk took it)", self.sampler_id,
                      self.cfg.max_pending_batches)

    def _spool_write(self, payload: bytes) -> None:
        try:
            if self._spool is None:
                self._spool = SegmentWriter(self._spool_dir, fsync=False)
            self._spool.append([(KIND_BATCH, payload)])
        except OSError as exc:
            self.counts["spool_errors"] += 1
            if self.counts["spool_errors"] == 1:
                log.error("sampler %s cannot spool to %s (%s): keeping batches in memory only",
                          self.sampler_id, self._spool_dir, exc)

    def _push_pending(self) -> bool:
        if not self._pending:
            return True
        items = list(self._pending)
        try:
            self._ledger_call("ingest", [p for _, p in items])
        except Exception as exc:  # ledger away: keep everything, try again next tick
            self.counts["push_failures"] += 1
            log.warning("sampler %s: ledger unreachable (%s); %d batches waiting",
                        self.sampler_id, type(exc).__name__, len(items))
            return False
        for _ in items:
            self._pending.popleft()
        self.counts["sent_batches"] += len(items)
        if not self._pending:
            self._clear_spool()
        return True

    def _ledger_call(self, method: str, *args):
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
            with self._push_lock:
                self._cut_batch()
                self._push_pending()

    # ---- spool files -----------------------------------------------------------------------
    def _clear_spool(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        shutil.rmtree(self._spool_dir, ignore_errors=True)

    def _adopt_orphans(self) -> None:
        """Queue batches spooled by earlier samplers on this node (the ledger drops repeats)."""
        root = self._spool_dir.parent
        if not root.is_dir():
            return
        for orphan in sorted(p for p in root.iterdir() if p.is_dir()):
            result = read_log(orphan)
            for _, payload in result.records:
                self._pending.append((SampleBatch.key_of(payload), payload))
                self._spool_write(payload)
            self.counts["adopted_batches"] += len(result.records)
            shutil.rmtree(orphan, ignore_errors=True)
        if self.counts["adopted_batches"]:
            log.warning("sampler %s adopted %d spooled batches", self.sampler_id,
                        self.counts["adopted_batches"])

    # ---- the API -----------------------------------------------------------------------------
    def flush(self) -> bool:
        """Read once more, cut a batch and push everything now; True if the ledger has it all."""
        readings = self._read_all()
        with self._lock:
            self._buffer.extend(readings)
        with self._push_lock:
            self._cut_batch()
            return self._push_pending()

    def stats(self) -> dict:
        return {"sampler_id": self.sampler_id, "node_id": self.node_id, "pid": os.getpid(),
                "running_on": ray.get_runtime_context().get_node_id(),
                "thread_ids": dict(self.thread_ids),
                "sources": self.description, "pending": len(self._pending), **self.counts}

    def ping(self) -> str:
        return self.sampler_id

    def stop(self) -> dict:
        self._stop.set()
        self._poller.join(timeout=5)
        self._pusher.join(timeout=5)
        self.flush()
        for src in self.sources:
            src.close()
        return self.stats()


PowerSampler = ray.remote(_Sampler)
