"""One local Ray for the test session, and what slow fixtures spent.

A Ray start is 5-15 s on 2 cores. Modules marked `shares_ray` (and `sim_world`) run on one
session Ray, started when the first of them needs it; `raydistill run`/`sweep` called in-process
join it and leave it up. A module without the mark finds it shut down (conftest), as it found
no Ray before, so a module that builds its own cluster is unchanged.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator


@contextlib.contextmanager
def spent(what: str) -> Iterator[None]:
    """Print what a slow fixture spent (seen with -s; its seconds are in --durations too)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        print(f"\n[fixture] {what}: {time.perf_counter() - start:.1f} s", file=sys.stderr)



class _SessionRay:
    """The session's local Ray: its GCS address tells it from a cluster a module built."""

    gcs_address: str | None = None

    def ours(self) -> bool:
        if "ray" not in sys.modules:
            return False
        import ray

        return (ray.is_initialized() and self.gcs_address is not None
                and ray.get_runtime_context().gcs_address == self.gcs_address)

    def up(self) -> None:
        import logging

        import ray

        if self.ours():
            return
        if ray.is_initialized():  # another module's own cluster, left up: not ours to join
            ray.shutdown()
        # as raydistill's init_ray starts one (dashboard on: Ray Train's placement-group
        # cleaner asks it whether the controller lives), with the 2 CPUs these tests size for
        with spent("local Ray start (shared by the shares_ray modules)"):
            ray.init(address="local", num_cpus=2, namespace="tests-shared",
                     logging_level=logging.WARNING, include_dashboard=True,
                     dashboard_host="127.0.0.1", log_to_driver=True)
        self.gcs_address = ray.get_runtime_context().gcs_address

    def down(self) -> None:
        if self.ours():
            import ray

            ray.shutdown()
        self.gcs_address = None


SESSION_RAY = _SessionRay()
