"""The ledger actor answers queries off its event loop: ingestion never waits for a query, and a
query still sees every record acknowledged before it. (Driven without Ray: the actor is a thin
shell over `_Ledger`.)"""

import asyncio
import time

import pytest

from raydistill.cluster.ledger_actor import _Ledger
from raydistill.energy import LedgerState
from raydistill.energy.log import read_log
from tests.unit.test_ledger import constant_batches, window

QUERY_S = 1.0


def test_ingest_completes_while_a_slow_query_runs(tmp_path):
    """Before: a query ran on the actor's event loop, so every sampler's ingest call (and every
    window event) waited until it finished."""
    batches = [b.to_bytes() for b in constant_batches(t1=9.0)]  # 5 batches

    async def scenario():
        ledger = _Ledger(str(tmp_path), fsync=False)
        await ledger.ingest(batches[:2])
        await ledger.open_window(window("w", 0.5, None))
        real = ledger.state.trial_rows

        def slow(trial_id):
            time.sleep(QUERY_S)  # a query over a day-long run
            return real(trial_id)

        ledger.state.trial_rows = slow
        query = asyncio.create_task(ledger.trial_rows("t1"))
        await asyncio.sleep(0.1)  # the query is running
        started = time.perf_counter()
        new = await ledger.ingest(batches[2:4])
        took = time.perf_counter() - started
        assert new == 2 and not query.done() and took < QUERY_S / 2
        assert await ledger.ingest(batches[2:4]) == 0  # acknowledged, not yet applied: once
        rows = await query
        ledger.state.trial_rows = real
        after = await ledger.trial_rows("t1")  # a query after the ingest sees it
        await ledger.close_window("w", 8.5, tokens=3)
        stats = await ledger.stats()
        return ledger, rows, after, stats

    ledger, rows, after, stats = asyncio.run(scenario())
    ledger.writer.close()
    assert after[0]["t_end_s"] > rows[0]["t_end_s"]  # the open window reached the new samples
    assert stats["samples"] == 80 and stats["duplicates"] == 2
    replayed = LedgerState()
    for kind, payload in read_log(tmp_path / "ledger").records:
        replayed.apply(kind, payload)
    assert replayed.n_samples == 80  # the duplicate was never written
    assert replayed.energy_rows() == ledger.state.energy_rows()


def test_a_bad_window_event_still_reaches_its_caller(tmp_path):
    async def scenario():
        ledger = _Ledger(str(tmp_path), fsync=False)
        await ledger.record_event({"type": "window_close", "window_id": "nope",
                                   "t_end_s": 1.0, "tokens": 0, "cpu_time_s": None})

    with pytest.raises(KeyError, match="never opened"):
        asyncio.run(scenario())
