"""Exactly one PowerSampler per alive node, kept so as nodes join and leave (reconcile)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raydistill.cluster.ledger_actor import LEDGER_NAME
from raydistill.cluster.sampler import PowerSampler
from raydistill.config import SamplingConfig

log = logging.getLogger(__name__)


def sampler_name(node_id: str) -> str:
    return f"raydistill-sampler-{node_id}"


def alive_nodes() -> list[str]:
    return sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))


@dataclass
class ReconcileReport:
    started: list[str] = field(default_factory=list)  # node ids that got a new sampler
    retired: list[str] = field(default_factory=list)  # node ids whose sampler was retired
    alive: int = 0


class SamplerFleet:
    """The samplers of one run (one Ray namespace); `reconcile()` is idempotent."""

    def __init__(self, cfg: SamplingConfig, namespace: str, ledger_name: str = LEDGER_NAME):
        self.cfg = cfg
        self.namespace = namespace
        self.ledger_name = ledger_name
        self.samplers: dict[str, ray.actor.ActorHandle] = {}
        self.sampler_ids: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _healthy(self, node_id: str) -> bool:
        handle = self.samplers.get(node_id)
        if handle is None:
            return False
        try:
            ray.get(handle.ping.remote(), timeout=self.cfg.push_timeout_s)
            return True
        except Exception:
            return False

    def reconcile(self) -> ReconcileReport:
        report = ReconcileReport()
        nodes = alive_nodes()
        report.alive = len(nodes)
        for node_id in list(self.samplers):
            if node_id not in nodes:
                self._retire(node_id, "node left the cluster")
                report.retired.append(node_id)
        starting = {}
        for node_id in nodes:
            if not self._healthy(node_id):
                if node_id in self.samplers:
                    self._retire(node_id, "sampler died")
                    report.retired.append(node_id)
                starting[node_id] = self._start(node_id)
        for node_id, handle in starting.items():  # start them all, then wait for all
            self.sampler_ids[node_id] = ray.get(handle.ping.remote())
            self.samplers[node_id] = handle
            report.started.append(node_id)
        if report.started or report.retired:
            log.info("samplers: %d alive nodes, started %d, retired %d", report.alive,
                     len(report.started), len(report.retired))
        return report

    def _start(self, node_id: str):
        return PowerSampler.options(  # type: ignore[attr-defined]
            name=sampler_name(node_id),
            namespace=self.namespace,
            num_cpus=0,
            max_restarts=0,  # reconcile replaces a dead sampler; Ray must not pin it to a dead node
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        ).remote(node_id, self.cfg, self.namespace, self.ledger_name)

    def _retire(self, node_id: str, why: str) -> None:
        handle = self.samplers.pop(node_id, None)
        sampler_id = self.sampler_ids.pop(node_id, None)
        if handle is not None:
            ray.kill(handle, no_restart=True)
        ledger = ray.get_actor(self.ledger_name, namespace=self.namespace)
        ray.get(ledger.record_event.remote(
            {"type": "sampler_retire", "sampler_id": sampler_id, "node_id": node_id,
             "t_s": time.time(), "why": why}))
        log.warning("sampler on node %s retired: %s", node_id[:12], why)

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
