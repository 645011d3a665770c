"""The console log's size bound: the libraries' output of a day-long run (every Ray worker's
lines forwarded to the driver, DeepSpeed and lm-eval chatter) must not fill the disk.

`CappedLog` keeps the first `head_bytes` in `console.log` (where a failed start says why) and
the latest output in `console.log.tail`, rotated into `console.log.tail.1` every `tail_bytes`:
at most head + 2 × tail bytes on disk, the beginning and the end always there.

`Pump` is how output reaches it: the process's file descriptors 1 and 2 (which children
inherit) point at a pipe, and a thread copies the pipe into the log. A plain file on fds 1 and 2
could not be bounded: every process holding it writes at its own offset.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import struct
import termios
import threading
import time
from pathlib import Path

HEAD_BYTES = 8 * 2**20
TAIL_BYTES = 8 * 2**20


class CappedLog:
    """An append-only log of bounded size (see the module doc); thread-safe."""

    def __init__(self, path: Path, head_bytes: int | None = None,
                 tail_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.head_bytes = HEAD_BYTES if head_bytes is None else head_bytes
        self.tail_bytes = TAIL_BYTES if tail_bytes is None else tail_bytes
        self.tail_path = self.path.with_name(self.path.name + ".tail")
        self._lock = threading.Lock()
        self._head = self.path.open("ab")
        self._head_size = self._head.tell()
        self._tail = None
        self._tail_size = 0
        self._moved: CappedLog | None = None
        self._closed = False

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._moved is not None:  # a write racing `move_to`: it goes to the new log
                self._moved.write(data)
                return
            if self._closed:  # a child that outlived the command: its output is dropped
                return
            if self._head_size < self.head_bytes:
                room = self.head_bytes - self._head_size
                self._head.write(data[:room])
                self._head.flush()
                self._head_size += min(room, len(data))
                data = data[room:]
                if self._head_size >= self.head_bytes:
                    self._head.write(
                        f"\n[raydistill] {self.path.name} keeps its first {self.head_bytes:,} "
                        f"bytes; the latest output is in {self.tail_path.name} (and .1 before "
                        "it)\n".encode())
                    self._head.flush()
            while data:
                if self._tail is None or self._tail_size >= self.tail_bytes:
                    self._rotate()
                room = self.tail_bytes - self._tail_size
                self._tail.write(data[:room])
                self._tail_size += min(room, len(data))
                data = data[room:]
            if self._tail is not None:
                self._tail.flush()

    def _rotate(self) -> None:
        if self._tail is not None:
            self._tail.close()
            os.replace(self.tail_path, self.tail_path.with_name(self.tail_path.name + ".1"))
        self._tail = self.tail_path.open("ab")
        self._tail_size = self._tail.tell()

    def files(self) -> list[Path]:
        """Its files, oldest output first."""
        older = self.tail_path.with_name(self.tail_path.name + ".1")
        return [p for p in (self.path, older, self.tail_path) if p.exists()]

    def move_to(self, path: Path) -> CappedLog:
        """The same output (so far and from now on) in a log at `path`, appended to one that
        is there already; these files are removed."""
        new = CappedLog(path, self.head_bytes, self.tail_bytes)
        with self._lock:
            self.close()
            for old in self.files():
                with old.open("rb") as fh:
                    while chunk := fh.read(2**20):
                        new.write(chunk)
                old.unlink()
            self._moved = new
        return new

    def close(self) -> None:
        self._closed = True
        self._head.close()
        if self._tail is not None:
            self._tail.close()


class Pump:
    """Fds 1 and 2 on a pipe whose reader thread writes into `sink` (a CappedLog), which
    `retarget` can swap. `stop` puts fds 1 and 2 back and waits until what this process wrote
    is in the log; a child still holding the pipe keeps writing there until it exits."""

    def __init__(self, sink: CappedLog) -> None:
        self.sink = sink
        self._read, self._write = os.pipe()
        self._saved = os.dup(1), os.dup(2)
        os.dup2(self._write, 1)
        os.dup2(self._write, 2)
        self._thread = threading.Thread(target=self._run, name="raydistill-console-log",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            select.select([self._read], [], [], 1.0)
            try:
                data = os.read(self._read, 65536)
            except BlockingIOError:
                continue
            if not data:  # every writer closed its end
                break
            self.sink.write(data)
        os.close(self._read)

    @property
    def done(self) -> bool:
        """Whether every writer has closed the pipe and all of it is in the log."""
        return not self._thread.is_alive()

    def retarget(self, sink: CappedLog) -> None:
        self.sink = sink

    def stop(self, timeout_s: float = 5.0) -> None:
        for saved, fd in zip(self._saved, (1, 2), strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        os.close(self._write)
        self._thread.join(timeout_s / 5)  # EOF: nobody else holds the pipe
        deadline = time.monotonic() + timeout_s
        while self._thread.is_alive() and _pending(self._read) and time.monotonic() < deadline:
            time.sleep(0.02)  # a child holds it: wait until our lines are read
        if self._thread.is_alive():
            time.sleep(0.05)  # and the last chunk read is written


def _pending(fd: int) -> int:
    with contextlib.suppress(OSError):
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    return 0
