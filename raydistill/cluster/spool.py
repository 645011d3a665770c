"""A sampler's outbox: the batches the ledger has not acknowledged yet, in memory and on disk.

Every batch is appended to a spool on local disk as it is cut, and kept in memory (up to a bound)
until the ledger takes it. A batch dropped from memory at the bound is remembered by its key while
the spool holds it, and re-read from the spool and sent once the ledger takes pushes again; one
that the spool could not take is lost, and counted so. Resending is safe: the ledger ingests a
key once. The outbox is not thread-safe: its owner calls it under one lock.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

from raydistill.config import SamplingConfig
from raydistill.energy.log import KIND_BATCH, SegmentWriter, read_log, scan_segment, segments
from raydistill.energy.samples import SampleBatch

log = logging.getLogger(__name__)

Key = tuple[str, int]
Ingest = Callable[[list[bytes]], object]  # sends payloads to the ledger; raises if it is away
SEND_CHUNK = 500  # batches per ingest call
# Spool segments stay small, so re-reading spooled batches holds one segment in memory at a time.
SEGMENT_BYTES = 16 << 20


def _often(n: int) -> bool:
    """Log the 1st, 10th, 100th, ... occurrence, then every 1000th: told, never flooded."""
    return n in (1, 10, 100) or n % 1000 == 0


def spool_root(cfg: SamplingConfig, namespace: str, node_id: str) -> Path:
    """Where the samplers of one run keep their spools on a node (one folder per sampler)."""
    base = Path(cfg.spool_dir) if cfg.spool_dir else Path(tempfile.gettempdir()) / "raydistill"
    return base / "spool" / namespace / node_id


class Outbox:
    def __init__(self, spool_dir: Path, bound: int, counts: dict[str, int], label: str,
                 chunk: int = SEND_CHUNK) -> None:
        self.spool_dir = spool_dir
        self.bound = bound
        self.counts = counts
        self.label = label  # names the sampler in logs
        self.chunk = max(1, chunk)
        for name in ("sent_batches", "push_failures", "dropped_batches", "resent_batches",
                     "lost_batches", "adopted_batches", "spool_errors"):
            counts.setdefault(name, 0)
        self.pending: deque[tuple[Key, bytes, bool]] = deque()  # (key, payload, spooled)
        self.spooled_only: dict[Key, None] = {}  # dropped from memory, in the spool (ordered)
        self._writer: SegmentWriter | None = None

    def __len__(self) -> int:
        return len(self.pending) + len(self.spooled_only)

    # ---- taking batches in -----------------------------------------------------------------
    def add(self, key: Key, payload: bytes) -> None:
        self.pending.append((key, payload, self._spool_write(payload)))
        while len(self.pending) > self.bound:
            old, _, spooled = self.pending.popleft()
            self.counts["dropped_batches"] += 1
            if spooled:
                self.spooled_only[old] = None
                if _often(self.counts["dropped_batches"]):
                    log.warning("sampler %s: pending bound %d reached; %d batches wait in the "
                                "spool only, sent from there once the ledger is back",
                                self.label, self.bound, len(self.spooled_only))
            else:
                self._lost(1, "dropped from memory at the pending bound, and the spool could "
                           "not take it")

    def _lost(self, n: int, why: str) -> None:
        before = self.counts["lost_batches"]
        self.counts["lost_batches"] += n
        if any(_often(k) for k in range(before + 1, before + n + 1)):
            log.error("sampler %s: %d batch(es) lost (%s); %d lost in all", self.label, n, why,
                      self.counts["lost_batches"])

    def _spool_write(self, payload: bytes) -> bool:
        try:
            if self._writer is None:
                self._writer = SegmentWriter(self.spool_dir, max_segment_bytes=SEGMENT_BYTES,
                                             fsync=False)
            self._writer.append([(KIND_BATCH, payload)])
            return True
        except OSError as exc:
            self.counts["spool_errors"] += 1
            if self.counts["spool_errors"] == 1:
                log.error("sampler %s cannot spool to %s (%s): keeping batches in memory only",
                          self.label, self.spool_dir, exc)
            return False

    def adopt_orphans(self) -> None:
        """Queue batches spooled by earlier samplers on this node (the ledger drops repeats)."""
        root = self.spool_dir.parent
        if not root.is_dir():
            return
        for orphan in sorted(p for p in root.iterdir() if p.is_dir() and p != self.spool_dir):
            result = read_log(orphan)
            for _, payload in result.records:
                self.add(SampleBatch.key_of(payload), payload)
            self.counts["adopted_batches"] += len(result.records)
            shutil.rmtree(orphan, ignore_errors=True)
        if self.counts["adopted_batches"]:
            log.warning("sampler %s adopted %d spooled batches", self.label,
                        self.counts["adopted_batches"])

    # ---- sending ---------------------------------------------------------------------------
    def send(self, ingest: Ingest) -> bool:
        """Send what waits, oldest first, in chunks; True if the ledger has it all."""
        if not self:
            return True
        try:
            self._send_spooled(ingest)
            while self.pending:
                items = list(islice(self.pending, self.chunk))
                ingest([p for _, p, _ in items])
                for _ in items:
                    self.pending.popleft()
                self.counts["sent_batches"] += len(items)
        except Exception as exc:  # ledger away: keep everything, try again next tick
            self.counts["push_failures"] += 1
            log.warning("sampler %s: ledger unreachable (%s); %d batches waiting", self.label,
                        type(exc).__name__, len(self))
            return False
        self.clear()
        return True

    def _send_spooled(self, ingest: Ingest) -> None:
        """Re-read the batches dropped from memory from the spool and send them."""
        if not self.spooled_only:
            return
        chunk: dict[Key, bytes] = {}
        for key, payload in self._spooled_records():
            if key in self.spooled_only:
                chunk[key] = payload
            if len(chunk) >= self.chunk:
                self._send_chunk(chunk, ingest)
                chunk = {}
        self._send_chunk(chunk, ingest)
        if self.spooled_only:  # not in the spool after all (damaged, or removed by hand)
            n = len(self.spooled_only)
            self.spooled_only.clear()
            self._lost(n, f"dropped from memory and not found in the spool {self.spool_dir}")

    def _send_chunk(self, chunk: dict[Key, bytes], ingest: Ingest) -> None:
        if not chunk:
            return
        ingest(list(chunk.values()))
        for key in chunk:
            del self.spooled_only[key]
        self.counts["sent_batches"] += len(chunk)
        self.counts["resent_batches"] += len(chunk)

    def _spooled_records(self) -> Iterator[tuple[Key, bytes]]:
        """The spool's batches, one segment in memory at a time (the writer is unbuffered)."""
        for seg in segments(self.spool_dir):
            try:
                records, _, reason = scan_segment(seg)
            except OSError as exc:
                log.error("sampler %s cannot read its spool %s: %s", self.label, seg, exc)
                continue
            if reason is not None:
                log.warning("sampler %s: spool %s damaged (%s); its valid prefix is used",
                            self.label, seg, reason)
            for kind, payload in records:
                if kind == KIND_BATCH:
                    yield SampleBatch.key_of(payload), payload

    def clear(self) -> None:
        """Remove the spool once nothing in it waits any more."""
        if self:
            return
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        shutil.rmtree(self.spool_dir, ignore_errors=True)
