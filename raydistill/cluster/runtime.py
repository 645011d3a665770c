"""Starting or joining Ray, and the run session (ledger + samplers) every command shares."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from raydistill.config import SamplingConfig

log = logging.getLogger(__name__)


def namespace_for(run_dir: Path) -> str:
    """One Ray namespace per run directory: two sweeps on one cluster never share a ledger."""
    digest = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:10]
    return f"raydistill-{run_dir.name[:40]}-{digest}"


def init_ray(address: str | None, namespace: str, num_cpus: int | None = None) -> bool:
    """Join `address` (or RAY_ADDRESS, or 'auto'), else start a local Ray for this process.

    False when Ray was already initialized here: the caller then must not shut it down, since
    whoever started it (a notebook, a test session, a sweep of runs) still needs it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        # A private local cluster: token auth off (nothing listens beyond this machine).
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # The dashboard (bound to 127.0.0.1) serves Ray's state API. Ray Train's placement-group
    # cleaner asks that API whether the train controller is alive, and without it reads "no
    # answer" as "dead" and removes the workers' placement group mid-training (seen here).
    kwargs = {"namespace": namespace, "logging_level": logging.WARNING,
              "include_dashboard": True, "dashboard_host": "127.0.0.1", "log_to_driver": True}
    if address is not None:  # joining: the cluster's own dashboard settings apply
        kwargs.pop("include_dashboard")
        kwargs.pop("dashboard_host")
    elif num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    # address "local": start a private cluster even when another one (`ray start`, another
    # user's run) is up on this machine; None would join that one
    ray.init(address=address or "local", **kwargs)
    return True


@dataclass
class Session:
    """The run's ledger and sampler fleet on a Ray cluster."""

    run_dir: Path
    namespace: str
    sampling: SamplingConfig

    def start(self, reconcile_interval_s: float = 5.0) -> Session:
        from raydistill.cluster.fleet import SamplerFleet
        from raydistill.cluster.ledger_actor import start_ledger

        self.ledger = start_ledger(self.run_dir, self.namespace, self.sampling.max_gap_s)
        self._close_stale()
        self.fleet = SamplerFleet(self.sampling, self.namespace)
        try:
            report = self.fleet.reconcile()
        except Exception:
            self.close()  # the ledger is detached: never leave it behind on a failed start
            raise
        log.info("ledger up; %d samplers on %d nodes", len(report.started), report.alive)
        if report.failed:  # the run goes on; those nodes are retried with backoff
            log.error("no sampler on %d node(s) (%s): their energy is not measured until one "
                      "starts; see the log above for why", len(report.failed),
                      ", ".join(n[:12] for n in report.failed))
        if reconcile_interval_s > 0:
            self.fleet.start_background(reconcile_interval_s)
        return self

    def _close_stale(self) -> None:
        """Windows an earlier session left open (its process crashed with the run): closed
        at their node's last reading of that session, before this session's samplers read
        anything, so they cannot span this session and halve its stages."""
        import ray

        from raydistill.energy.lifetime import STALE

        stale = ray.get(self.ledger.close_open.remote(STALE, None))
        if stale:
            log.warning("%d window(s) of an earlier session were still open (it crashed?); "
                        "closed at their node's last reading, marked %r: %s", len(stale), STALE,
                        ", ".join(w["window_id"] for w in stale))

    def energy_rows(self) -> list[dict]:
        import ray

        self.fleet.flush()
        return ray.get(self.ledger.energy_rows.remote())

    def trial_energy(self, trial_id: str) -> dict[str, float]:
        """{stage: J} of one trial, from a per-trial query of the ledger."""
        import ray

        self.fleet.flush()
        return ray.get(self.ledger.trial_energy.remote([trial_id]))[trial_id]

    def close(self) -> list[dict]:
        import ray

        stats = self.fleet.stop()
        ray.kill(self.ledger, no_restart=True)  # detached: it would outlive the driver
        return stats
