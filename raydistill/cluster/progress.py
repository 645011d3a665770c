"""One progress line per stage, from the ledger: what it waits for, energy so far while it runs
(every `interval_s`), then elapsed time, energy and tokens/s when it is done.

The figures are the ledger's own (the trial's rows for the stage, open windows included), so
the line a person reads is the number the results table will hold, up to the last unflushed
samples of a running stage.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

from raydistill.console import stage_line

log = logging.getLogger(__name__)

HEARTBEAT_S = 20.0


def _rows(session, trial_id: str, stage: str, flush: bool) -> list[dict]:
    import ray

    if flush:
        session.fleet.flush()
    rows = ray.get(session.ledger.trial_rows.remote(trial_id), timeout=30)
    return [r for r in rows if r["stage"] == stage]


@contextlib.contextmanager
def stage_progress(session, trial_id: str, stage: str, say: Callable[[str], None],
                   waiting: str, interval_s: float = HEARTBEAT_S) -> Iterator[None]:
    """`say` the start (with what the stage waits for), a heartbeat while it runs, and the
    done line. A failed ledger query costs a heartbeat, never the stage."""
    say(f"{stage} [{trial_id}]: {waiting} ...")
    started = time.time()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval_s):
            try:
                say(stage_line(stage, trial_id, time.time() - started,
                               _rows(session, trial_id, stage, flush=False), done=False))
            except Exception as exc:  # a progress line is never worth a stage
                log.debug("progress query failed: %s", exc)

    thread = threading.Thread(target=beat, name=f"progress-{stage}", daemon=True)
    thread.start()
    try:
        yield
    except BaseException:
        say(f"{stage} [{trial_id}]: failed after {time.time() - started:.1f} s")
        raise
    finally:
        stop.set()
        thread.join()
    try:
        rows = _rows(session, trial_id, stage, flush=True)
    except Exception as exc:
        log.debug("progress query failed: %s", exc)
        rows = []
    say(stage_line(stage, trial_id, time.time() - started, rows, done=True))
