"""How a tracked run ends: the owner waits for the ranks that joined, then closes what is
still open; a joined rank closes its own windows and says it is done (a thin Ray shell)."""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


def close_leftovers(session) -> list[str]:
    """Close every window still open, marked "finish", before the figures are computed: an
    open window's end is the node's latest sample, and it would share its devices with
    nothing, or with any later stage appended to this directory. This process's own windows
    first (with their tokens), after the samplers closed those of processes that are gone (at
    their last sign of life), then the rest at the finish."""
    import ray

    from raydistill.cluster import lifetime
    from raydistill.energy.lifetime import FINISH

    own = lifetime.close_all(FINISH)
    session.fleet.flush()
    here = {ray.get_runtime_context().get_node_id(): (time.time(), time.monotonic())}
    rest = ray.get(session.ledger.close_open.remote(FINISH, here))
    closed = own + [f"{w['window_id']} (pid {w['pid']})" for w in rest]
    if closed:
        log.warning("Run.finish: %d window(s) were still open; closed at the finish, marked "
                    "'finish' (metrics.json windows_closed_by): %s", len(closed),
                    ", ".join(closed))
    return closed


def wait_for_ranks(namespace: str, world_size: int) -> None:
    """The owner's finish: wait for every rank that joined to leave its block (bounded)."""
    from raydistill.tracking import launch

    if world_size <= 1:
        return
    timeout = launch.timeout_s(launch.ENV_RANKS_TIMEOUT, launch.RANKS_TIMEOUT_S)
    missing = launch.wait_for_ranks(namespace, world_size, timeout)
    if missing:
        log.warning("rank(s) %s did not finish tracking within %g s; their windows still "
                    "open are closed at the finish, marked 'finish' (raise %s to wait longer)",
                    ", ".join(map(str, missing)), timeout, launch.ENV_RANKS_TIMEOUT)


def leave(namespace: str, rank: int | None, error: str | None) -> None:
    """A joined rank's finish: its windows end here (not at the owner's end), then it says it
    is done (the owner waits for that)."""
    from raydistill.cluster import lifetime
    from raydistill.energy.lifetime import FINISH
    from raydistill.tracking import launch

    lifetime.close_all(FINISH)
    if rank is not None:
        launch.mark_done(namespace, rank, error)
    launch.unregister_job()


def flush_samplers(namespace: str, timeout_s: float) -> None:
    """Ask each node's sampler (by its name) to push what it has read: from a process that
    does not own the run's session (a worker, a rank)."""
    import ray

    from raydistill.cluster.fleet import alive_nodes, sampler_name

    refs = []
    for node in alive_nodes():
        try:
            refs.append(ray.get_actor(sampler_name(node), namespace=namespace).flush.remote())
        except ValueError:  # no sampler on that node (yet): nothing of it to flush
            continue
    for ref in refs:
        try:
            ray.get(ref, timeout=timeout_s)
        except Exception as exc:  # a figure a little behind, not a failed stage
            log.warning("a sampler could not flush: %s", type(exc).__name__)
