"""The ledger's durable log: append-only segment files of framed, checksummed records.

Each record is `<u32 payload length><u32 crc32><u8 kind>` then the payload. A writer appends a
group of records with one write and one fsync (group commit) before the ledger acknowledges.
A reader keeps the valid prefix of a damaged segment, reports where the damage begins, and goes
on with the next segment; a writer reopening a log cuts a torn tail off the last segment so
new records never follow garbage.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

HEADER = struct.Struct("<IIB")
KIND_BATCH = 1  # SampleBatch.to_bytes()
KIND_EVENT = 2  # JSON: window open/close, sampler start/retire, baseline
LOG_VERSION = 1
_SEGMENT = re.compile(r"^segment-(\d{6})\.rdl$")
_MAX_RECORD = 1 << 30


@dataclass
class LogDamage:
    segment: str
    offset: int
    reason: str

    def __str__(self) -> str:
        return f"{self.segment} at byte {self.offset}: {self.reason}"


@dataclass
class ReadResult:
    records: list[tuple[int, bytes]] = field(default_factory=list)
    damage: list[LogDamage] = field(default_factory=list)


def frame(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(len(payload), zlib.crc32(payload), kind) + payload


def event_payload(event: dict) -> bytes:
    return json.dumps(event, separators=(",", ":"), sort_keys=True).encode()


def segments(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _SEGMENT.match(p.name)]
    return sorted(found, key=lambda p: p.name)


def scan_segment(path: Path) -> tuple[list[tuple[int, bytes]], int, str | None]:
    """Records of one segment, the length of its valid prefix, and why it ends early (if so)."""
    data = path.read_bytes()
    records: list[tuple[int, bytes]] = []
    off = 0
    while off < len(data):
        if len(data) - off < HEADER.size:
            return records, off, "truncated record header"
        length, crc, kind = HEADER.unpack_from(data, off)
        if length > _MAX_RECORD or kind not in (KIND_BATCH, KIND_EVENT):
            return records, off, "corrupt record header"
        start = off + HEADER.size
        if start + length > len(data):
            return records, off, "truncated record"
        payload = data[start : start + length]
        if zlib.crc32(payload) != crc:
            return records, off, "checksum mismatch"
        records.append((kind, payload))
        off = start + length
    return records, off, None


def read_log(directory: str | Path) -> ReadResult:
    """Every valid record of a log directory, in order, with a list of the damage found."""
    result = ReadResult()
    for seg in segments(Path(directory)):
        records, valid, reason = scan_segment(seg)
        result.records.extend(records)
        if reason is not None:
            result.damage.append(LogDamage(seg.name, valid, reason))
    return result


class SegmentWriter:
    """Appends framed records to `directory/segment-NNNNNN.rdl`, rolling at max_segment_bytes."""

    def __init__(
        self, directory: str | Path, max_segment_bytes: int = 256 << 20, fsync: bool = True
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_segment_bytes = max_segment_bytes
        self.fsync = fsync
        self.repaired: list[LogDamage] = []
        existing = segments(self.directory)
        if existing:
            last = existing[-1]
            _, valid, reason = scan_segment(last)
            if reason is not None:
                # Cut the torn tail so that new records follow the valid prefix directly.
                self.repaired.append(LogDamage(last.name, valid, reason))
                log.warning("ledger log %s damaged at byte %d (%s): cut", last, valid, reason)
                with open(last, "r+b") as fh:
                    fh.truncate(valid)
            self._index = int(_SEGMENT.match(last.name).group(1))  # type: ignore[union-attr]
        else:
            self._index = 1
        self._open()

    def _open(self) -> None:
        path = self.directory / f"segment-{self._index:06d}.rdl"
        # unbuffered: a failed write leaves no bytes in a buffer to reach the file later
        self._fh = open(path, "ab", buffering=0)  # noqa: SIM115 - held for the writer's life
        self._size = self._fh.seek(0, os.SEEK_END)
        self._torn = False  # part of a failed group may be on disk past _size

    def append(self, records: Iterable[tuple[int, bytes]]) -> int:
        """Write records as one group, fsynced before returning; bytes written.

        All or nothing: when the disk is full (or any write or fsync fails) the part of the group
        that reached the file is cut off again before the error is raised, so the log stays a
        valid prefix and a later group never lands behind a torn record (which a restart would
        cut, with every acknowledged record after it)."""
        blob = b"".join(frame(kind, payload) for kind, payload in records)
        if not blob:
            return 0
        if self._torn:  # an earlier failure could not cut its bytes: try again first
            self._cut()
        if self._size and self._size + len(blob) > self.max_segment_bytes:
            self._fh.close()
            self._index += 1
            self._open()
        try:
            view, done = memoryview(blob), 0
            while done < len(blob):
                done += self._fh.write(view[done:])
            if self.fsync:
                os.fsync(self._fh.fileno())
        except OSError:
            self._torn = True
            try:
                self._cut()
            except OSError as exc:
                log.error("ledger log: cannot cut a failed write (%s); retrying on next append",
                          exc)
            raise
        self._size += len(blob)
        return len(blob)

    def _cut(self) -> None:
        os.ftruncate(self._fh.fileno(), self._size)
        if self.fsync:
            os.fsync(self._fh.fileno())
        self._torn = False

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def iter_events(records: Iterable[tuple[int, bytes]]) -> Iterator[dict]:
    for kind, payload in records:
        if kind == KIND_EVENT:
            yield json.loads(payload)
