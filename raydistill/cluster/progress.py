"""One progress line per stage, from the ledger: what it waits for, energy so far while it runs
(every `interval_s`), then elapsed time, energy and tokens/s when it is done.

The figures are the ledger's own (the trial's rows for the stage, open windows included), so
the line a person reads is the number the results table will hold, up to the last unflushed
samples of a running stage.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator

from raydistill.units import fmt_duration_s, fmt_energy_j, fmt_sig

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


# ---- progress lines (pure) -------------------------------------------------------------------


def stage_line(stage: str, trial: str, elapsed_s: float, rows: list[dict],
               done: bool) -> str:
    """'teacher_generation [tiny]: done in 12.2 s, 170 J (load 161 J), 11,900 tokens/s
    steady state', the figures the results table will hold for the stage (`stage_totals` of
    its ledger rows); while it runs, its elapsed time and energy so far."""
    from raydistill.results import energy_frame, stage_totals

    totals = stage_totals(energy_frame(rows)) if rows else None
    if not done:
        if totals is None:  # 0 J would read as "measured nothing"; nothing has been opened yet
            return f"{stage} [{trial}]: {fmt_duration_s(elapsed_s)} so far, no window open yet"
        energy = float(totals["energy_j"].sum())
        return f"{stage} [{trial}]: {fmt_duration_s(elapsed_s)} so far, {fmt_energy_j(energy)}"
    if totals is None:
        return f"{stage} [{trial}]: done in {fmt_duration_s(elapsed_s)}, no energy measured"
    energy = float(totals["energy_j"].sum())
    load = float(totals["load_j"].sum())
    took = f"done in {fmt_duration_s(elapsed_s)}"
    windows_s = float(totals["duration_s"].max())
    if elapsed_s - windows_s > max(1.0, 0.1 * elapsed_s):
        # the table's duration is its windows'; the rest (workers starting, the ledger's
        # answer) was the wait before them, said so the two figures do not look contradictory
        took += f" ({fmt_duration_s(windows_s)} in its windows)"
    parts = [f"{stage} [{trial}]: {took}, {fmt_energy_j(energy)}"
             + (f" (model load {fmt_energy_j(load)})" if load > 0 else "")]
    rate = float(totals["tokens_per_s"].sum()) if len(totals) == 1 else math.nan
    if math.isfinite(rate) and rate > 0:
        parts.append(f"{fmt_sig(rate)} tokens/s steady state")
    return ", ".join(parts)
