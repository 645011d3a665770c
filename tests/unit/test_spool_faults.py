"""A sampler whose spool cannot be written (disk full, read-only, a file in the way): batches
stay in memory up to the bound, the failure is counted and logged once, nothing on disk is
touched. (Driven without Ray: the actor is a thin shell over `_Sampler`.)"""

import logging

from raydistill.cluster.sampler import _Sampler
from raydistill.config import SamplingConfig
from raydistill.energy import Reading


def test_unwritable_spool_keeps_batches_in_memory_up_to_the_bound(tmp_path, caplog,
                                                                  monkeypatch):
    # no ledger and no threads: batches are cut by hand below
    monkeypatch.setattr(_Sampler, "_ledger_call", lambda self, *a, **k: None)
    monkeypatch.setattr(_Sampler, "_poll_loop", lambda self: None)
    monkeypatch.setattr(_Sampler, "_push_loop", lambda self: None)
    blocker = tmp_path / "spool"
    blocker.write_text("not a directory")  # every mkdir below it fails, even as root
    cfg = SamplingConfig(source="constant:10", idle_s=0, max_pending_batches=3,
                         spool_dir=str(blocker))
    sampler = _Sampler("node-a", cfg, "ns", "ledger")
    with caplog.at_level(logging.ERROR):
        for k in range(5):
            sampler._buffer = [Reading("cpu:estimate", "cpu", 100.0 + k, 10.0, None, "constant",
                                       "estimated")]
            sampler._cut_batch()
    assert sampler.counts["spool_errors"] == 5
    assert len(sampler._pending) == 3 and sampler.counts["dropped_batches"] == 2
    assert [key[1] for key, _ in sampler._pending] == [2, 3, 4]  # the newest kept
    assert sum("cannot spool" in r.message for r in caplog.records) == 1  # told once
    assert blocker.read_text() == "not a directory"
