"""Exactly one PowerSampler per alive node, kept so as nodes join and leave (reconcile).

A node whose sampler cannot start (its constructor raises, or the new actor does not answer)
does not fail the reconcile: it is recorded in `failed`, with a `sampler_failed` ledger event
and an error in the log, its actor is killed, and the start is retried with exponential backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raydistill.cluster.ledger_actor import LEDGER_NAME
from raydistill.cluster.sampler import PowerSampler
from raydistill.config import SamplingConfig

log = logging.getLogger(__name__)

RETRY_FIRST_S = 30.0  # the first retry of a failed start; doubling after each failure
RETRY_MAX_S = 600.0
# Threads per sampler actor: ping and stats are answered while a flush waits on the ledger.
SAMPLER_CONCURRENCY = 4


def sampler_name(node_id: str) -> str:
    return f"raydistill-sampler-{node_id}"


def alive_nodes() -> list[str]:
    return sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))


def retry_delay_s(attempts: int) -> float:
    return min(RETRY_MAX_S, RETRY_FIRST_S * 2.0 ** max(0, attempts - 1))


def _why(exc: BaseException) -> str:
    """One line for an error: Ray wraps a creation failure in a long message."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:500]


@dataclass
class ReconcileReport:
    started: list[str] = field(default_factory=list)  # node ids that got a new sampler
    retired: list[str] = field(default_factory=list)  # node ids whose sampler was retired
    failed: list[str] = field(default_factory=list)  # node ids whose sampler failed to start
    alive: int = 0


class SamplerFleet:
    """The samplers of one run (one Ray namespace); `reconcile()` is idempotent."""

    def __init__(self, cfg: SamplingConfig, namespace: str, ledger_name: str = LEDGER_NAME,
                 clock: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self.namespace = namespace
        self.ledger_name = ledger_name
        self.clock = clock
        self.samplers: dict[str, Any] = {}  # node id -> actor handle
        self.sampler_ids: dict[str, str] = {}
        self.failed: dict[str, dict] = {}  # node id -> {"why", "t_s", "attempts", "retry_in_s"}
        self._retry_at: dict[str, float] = {}  # node id -> clock() of the next start attempt
        # A new sampler measures its idle baseline before it answers.
        self.start_timeout_s = 60.0 + cfg.idle_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _problem(self, node_id: str) -> str | None:
        """Why the node's sampler does not serve, or None when it answers ping."""
        handle = self.samplers.get(node_id)
        if handle is None:
            return "no sampler"
        try:
            ray.get(handle.ping.remote(), timeout=self.cfg.push_timeout_s)
            return None
        except Exception as exc:
            return _why(exc)

    def _healthy(self, node_id: str) -> bool:
        return self._problem(node_id) is None

    def reconcile(self) -> ReconcileReport:
        report = ReconcileReport()
        nodes = alive_nodes()
        report.alive = len(nodes)
        for node_id in list(self.samplers):
            if node_id not in nodes:
                self._retire(node_id, "node left the cluster")
                report.retired.append(node_id)
        for node_id in [n for n in self.failed if n not in nodes]:
            self.failed.pop(node_id)
            self._retry_at.pop(node_id, None)
        starting = {}
        for node_id in nodes:
            problem = self._problem(node_id)
            if problem is None:
                continue
            if node_id in self.samplers:
                self._retire(node_id, f"sampler died ({problem})")
                report.retired.append(node_id)
            if self.clock() < self._retry_at.get(node_id, -float("inf")):
                continue  # backing off after a failed start
            try:
                starting[node_id] = self._start(node_id)
            except Exception as exc:
                self._start_failed(node_id, None, exc)
                report.failed.append(node_id)
        for node_id, handle in starting.items():  # start them all, then wait for all
            try:
                sampler_id = ray.get(handle.ping.remote(), timeout=self.start_timeout_s)
            except Exception as exc:
                self._start_failed(node_id, handle, exc)
                report.failed.append(node_id)
                continue
            self._started(node_id, handle, sampler_id)
            report.started.append(node_id)
        if report.started or report.retired or report.failed:
            log.info("samplers: %d alive nodes, started %d, retired %d, failed to start %d",
                     report.alive, len(report.started), len(report.retired), len(report.failed))
        return report

    def _start(self, node_id: str):
        return PowerSampler.options(  # type: ignore[attr-defined]
            name=sampler_name(node_id),
            namespace=self.namespace,
            num_cpus=0,
            max_restarts=0,  # reconcile replaces a dead sampler; Ray must not pin it to a dead node
            max_concurrency=SAMPLER_CONCURRENCY,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        ).remote(node_id, self.cfg, self.namespace, self.ledger_name)

    def _started(self, node_id: str, handle: Any, sampler_id: str) -> None:
        self.sampler_ids[node_id] = sampler_id
        self.samplers[node_id] = handle
        self._retry_at.pop(node_id, None)
        before = self.failed.pop(node_id, None)
        if before is not None:
            log.warning("sampler on node %s started after %d failed attempt(s)", node_id[:12],
                        before["attempts"])

    def _start_failed(self, node_id: str, handle: Any, exc: BaseException) -> None:
        """Record a failed start, kill what it left behind, and schedule a retry."""
        if handle is not None:
            try:
                ray.kill(handle, no_restart=True)  # no untracked sampler left running
            except Exception as kill_exc:
                log.warning("could not kill the failed sampler on node %s: %s", node_id[:12],
                            _why(kill_exc))
        attempts = self.failed.get(node_id, {}).get("attempts", 0) + 1
        delay = retry_delay_s(attempts)
        why = _why(exc)
        self.failed[node_id] = {"why": why, "t_s": time.time(), "attempts": attempts,
                                "retry_in_s": delay}
        self._retry_at[node_id] = self.clock() + delay
        log.error("no sampler on node %s: it failed to start (%s); attempt %d, retrying in "
                  "%.0f s", node_id[:12], why, attempts, delay)
        self._record_event({"type": "sampler_failed", "node_id": node_id,
                            **self.failed[node_id]})

    def _retire(self, node_id: str, why: str) -> None:
        handle = self.samplers.pop(node_id, None)
        sampler_id = self.sampler_ids.pop(node_id, None)
        if handle is not None:
            ray.kill(handle, no_restart=True)
        self._record_event({"type": "sampler_retire", "sampler_id": sampler_id,
                            "node_id": node_id, "t_s": time.time(), "why": why})
        log.warning("sampler on node %s retired: %s", node_id[:12], why)

    def _record_event(self, event: dict) -> None:
        """Best effort: an unreachable ledger must not stop the fleet from keeping samplers."""
        try:
            ledger = ray.get_actor(self.ledger_name, namespace=self.namespace)
            ray.get(ledger.record_event.remote(event), timeout=self.cfg.push_timeout_s)
        except Exception as exc:
            log.warning("ledger did not record %s for node %s: %s", event["type"],
                        event["node_id"][:12], _why(exc))

    def flush(self) -> None:
        """Make every sampler push what it has read, so that queries see up-to-date totals."""
        refs = [h.flush.remote() for h in self.samplers.values()]
        for ref in refs:
            try:
                ray.get(ref, timeout=self.cfg.push_timeout_s * 2)
            except Exception as exc:
                log.warning("a sampler could not flush: %s", type(exc).__name__)

    def start_background(self, interval_s: float = 5.0) -> None:
        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.reconcile()
                except Exception:
                    log.exception("sampler reconcile failed; will retry")

        self._thread = threading.Thread(target=loop, name="reconcile", daemon=True)
        self._thread.start()

    def stop(self) -> list[dict]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        stats = []
        for handle in self.samplers.values():
            try:
                stats.append(ray.get(handle.stop.remote(), timeout=30))
            except Exception as exc:
                log.warning("a sampler did not stop cleanly: %s", type(exc).__name__)
            ray.kill(handle, no_restart=True)
        self.samplers.clear()
        return stats
