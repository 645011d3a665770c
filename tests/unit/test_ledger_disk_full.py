"""The ledger's disk fills up mid-write: the group fails as a whole, every caller is told, nothing
is applied or acknowledged, and the log stays a valid prefix — so what the senders resend after
the disk frees up is counted once, and a restart replays exactly what was acknowledged.
(Driven without Ray: the actor is a thin shell over `_Ledger`.)"""

import asyncio
import errno

import pytest

from raydistill.cluster.ledger_actor import _Ledger
from raydistill.energy import LedgerState
from raydistill.energy.log import KIND_BATCH, SegmentWriter, read_log
from tests.unit.test_ledger import constant_batches, window


class FillsUp:
    """A segment file that takes `room` more bytes, then fails like a full disk (ENOSPC)."""

    def __init__(self, fh, room: int) -> None:
        self.fh, self.room = fh, room

    def write(self, data) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = self.fh.write(data[: self.room])
        self.room -= n
        return n  # a short write, as the OS gives when the disk fills mid-write

    def __getattr__(self, name):
        return getattr(self.fh, name)


def test_a_write_torn_by_a_full_disk_is_cut_and_later_groups_survive_a_restart(tmp_path):
    batches = [b.to_bytes() for b in constant_batches(t1=6.0)]  # 4 batches
    writer = SegmentWriter(tmp_path)
    writer.append([(KIND_BATCH, batches[0])])
    real = writer._fh
    writer._fh = FillsUp(real, room=len(batches[1]) // 2)  # half of the next group fits
    with pytest.raises(OSError, match="No space"):
        writer.append([(KIND_BATCH, batches[1]), (KIND_BATCH, batches[2])])
    writer._fh = real  # space freed
    writer.append([(KIND_BATCH, batches[3])])
    writer.close()
    result = read_log(tmp_path)
    assert result.damage == []  # no torn record in the middle of the log
    assert [p for _, p in result.records] == [batches[0], batches[3]]


def test_full_disk_reaches_every_caller_and_a_resend_is_counted_once(tmp_path):
    batches = [b.to_bytes() for b in constant_batches(t1=9.0)]  # 5 batches

    async def scenario():
        ledger = _Ledger(str(tmp_path), fsync=False)
        await ledger.ingest(batches[:2])
        w = window("w", 0.5, None)
        await ledger.open_window(w)
        real = ledger.writer._fh
        ledger.writer._fh = FillsUp(real, room=10)
        calls = [ledger.ingest([b]) for b in batches[2:]]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(o, OSError) for o in outcomes)  # told, not hung, not acked
        assert ledger.state.n_samples == sum(20 for _ in batches[:2])  # nothing applied
        ledger.writer._fh = real  # the disk has room again: the samplers resend
        assert await ledger.ingest(batches[2:]) == 3
        assert await ledger.ingest(batches[2:]) == 0  # a lost ack resent: counted once
        await ledger.close_window("w", 8.5, tokens=5)
        return ledger

    live = asyncio.run(scenario())
    live.writer.close()
    replayed = LedgerState()
    result = read_log(tmp_path / "ledger")
    for kind, payload in result.records:
        replayed.apply(kind, payload)
    assert result.damage == []
    assert replayed.n_samples == live.state.n_samples == 91
    (row,) = replayed.energy_rows()
    assert row.energy_j == pytest.approx(100.0 * 8.0)  # the window, exact after the fault
    assert replayed.energy_rows() == live.state.energy_rows()
