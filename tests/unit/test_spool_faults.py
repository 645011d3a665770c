"""The sampler's outbox when things fail. A spool that cannot be written (disk full, read-only,
a file in the way): batches stay in memory up to the bound, the failure is counted and logged
once, what the bound drops is counted lost, nothing on disk is touched. A ledger away for longer
than the bound holds: what the bound drops from memory is sent from the spool once the ledger
is back, every batch exactly once. (Driven without Ray: the actor is a thin shell over
`_Sampler`, given a fake ledger and no threads.)"""

import logging
import shutil

from raydistill.cluster.sampler import _Sampler
from raydistill.config import SamplingConfig
from raydistill.energy import Reading
from raydistill.energy.samples import SampleBatch


class FakeLedger:
    """Takes `ingest` calls while `up`, and counts how often it received each batch key."""

    def __init__(self) -> None:
        self.up = True
        self.received: dict[tuple[str, int], int] = {}
        self.calls: list[int] = []  # batches per ingest call
        self.fail_after: int | None = None  # calls to take before going away again

    def __call__(self, method: str, *args):
        if method != "ingest":
            return None
        if not self.up or (self.fail_after is not None and len(self.calls) >= self.fail_after):
            raise ConnectionError("ledger away")
        (payloads,) = args
        self.calls.append(len(payloads))
        for p in payloads:
            key = SampleBatch.key_of(p)
            self.received[key] = self.received.get(key, 0) + 1
        return len(payloads)


def make_sampler(tmp_path, ledger, bound: int, spool_dir=None) -> _Sampler:
    cfg = SamplingConfig(source="constant:10", idle_s=0, max_pending_batches=bound,
                         spool_dir=str(spool_dir or tmp_path / "spool"))
    return _Sampler("node-a", cfg, "ns", "ledger", ledger_call=ledger, start_threads=False)


def cut(sampler: _Sampler, k: int) -> None:
    sampler._buffer = [Reading("cpu:estimate", "cpu", 100.0 + k, 10.0, None, "constant",
                               "estimated", 50.0 + k)]
    sampler._cut_batch()


def test_unwritable_spool_keeps_batches_in_memory_up_to_the_bound(tmp_path, caplog):
    blocker = tmp_path / "spool"
    blocker.write_text("not a directory")  # every mkdir below it fails, even as root
    sampler = make_sampler(tmp_path, FakeLedger(), bound=3, spool_dir=blocker)
    with caplog.at_level(logging.ERROR):
        for k in range(5):
            cut(sampler, k)
    assert sampler.counts["spool_errors"] == 5
    pending = sampler._outbox.pending
    assert len(pending) == 3 and sampler.counts["dropped_batches"] == 2
    assert [key[1] for key, _, _ in pending] == [2, 3, 4]  # the newest kept
    assert sum("cannot spool" in r.message for r in caplog.records) == 1  # told once
    # dropped from memory and never on disk: lost, and said so
    assert sampler.counts["lost_batches"] == 2
    assert any("lost" in r.message for r in caplog.records)
    assert blocker.read_text() == "not a directory"


def test_batches_dropped_at_the_bound_are_sent_from_the_spool_exactly_once(tmp_path):
    ledger = FakeLedger()
    sampler = make_sampler(tmp_path, ledger, bound=2)
    sampler._outbox.chunk = 4  # resent in chunks
    ledger.up = False
    for k in range(25):  # the ledger away for many pushes
        cut(sampler, k)
        assert sampler._push_pending() is False
    assert len(sampler._outbox.pending) == 2 and sampler.counts["dropped_batches"] == 23
    ledger.up = True
    assert sampler.flush() is True  # it reads once more: one batch more
    assert ledger.received == {(sampler.sampler_id, k): 1 for k in range(26)}
    assert max(ledger.calls) <= 4
    assert sampler.counts["resent_batches"] == sampler.counts["dropped_batches"] == 24
    assert sampler.counts["lost_batches"] == 0
    assert len(sampler._outbox) == 0
    assert not sampler._outbox.spool_dir.exists()  # nothing waits: the spool is gone


def test_a_ledger_that_goes_away_mid_resend_still_gets_each_batch_once(tmp_path):
    ledger = FakeLedger()
    sampler = make_sampler(tmp_path, ledger, bound=3)
    sampler._outbox.chunk = 5
    ledger.up = False
    for k in range(30):
        cut(sampler, k)
        sampler._push_pending()
    ledger.up, ledger.fail_after = True, 2  # two chunks taken, then away again
    assert sampler._push_pending() is False
    assert sampler._outbox.spooled_only and sampler._outbox.spool_dir.exists()
    for k in range(30, 33):  # sampling went on meanwhile
        cut(sampler, k)
    ledger.fail_after = None
    assert sampler._push_pending() is True
    assert ledger.received == {(sampler.sampler_id, k): 1 for k in range(33)}
    assert sampler.counts["lost_batches"] == 0


def test_batches_missing_from_the_spool_are_counted_lost(tmp_path, caplog):
    ledger = FakeLedger()
    sampler = make_sampler(tmp_path, ledger, bound=2)
    ledger.up = False
    for k in range(6):
        cut(sampler, k)
    shutil.rmtree(sampler._outbox.spool_dir)  # say, a tmp cleaner
    ledger.up = True
    with caplog.at_level(logging.ERROR):
        assert sampler._push_pending() is True
    assert set(ledger.received) == {(sampler.sampler_id, k) for k in (4, 5)}
    assert sampler.counts["lost_batches"] == 4
    assert any("lost" in r.message and "not found in the spool" in r.message
               for r in caplog.records)
