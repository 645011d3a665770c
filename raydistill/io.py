"""Files written whole or not at all: write to a temporary sibling, fsync, rename."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from raydistill.errors import ConfigError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)`, then rename tmp_path over `path` (same directory, same disk)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)
    return target


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


RUN_FORMAT = 2  # bump when the layout of a run directory changes
FORMAT_FILE = "raydistill-format.json"


def check_run_format(p: Path) -> None:
    """A run directory written by another layout version is refused, never mixed into."""
    marker = p / FORMAT_FILE
    if marker.is_file():
        try:
            found = json.loads(marker.read_text()).get("format")
        except (json.JSONDecodeError, AttributeError):
            found = None
        if found != RUN_FORMAT:
            raise ConfigError(f"{p} holds a run of layout version {found}, this raydistill "
                              f"writes version {RUN_FORMAT}; use a new --out directory")
    elif (p / "ledger").is_dir():
        raise ConfigError(f"{p} holds a run from an older raydistill (no {FORMAT_FILE}); "
                          "use a new --out directory")


def prepare_run_dir(path: str | Path) -> Path:
    """Create the run directory; a path that is a file is a one-line error, not a traceback."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"output directory {p} is a file; pass --out a directory path")
    if p.is_dir():
        check_run_format(p)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output directory {p}: {exc.strerror}") from None
    if not os.access(p, os.W_OK):
        raise ConfigError(f"output directory {p} is not writable")
    atomic_write_text(p / FORMAT_FILE, json.dumps({"format": RUN_FORMAT}))
    return p.resolve()


def inside(root: str | Path, relative: str | Path) -> Path:
    """`root / relative`, refusing paths that escape root (.., absolute, symlinks out)."""
    base = Path(root).resolve()
    candidate = (base / relative).resolve()
    if candidate != base and base not in candidate.parents:
        raise ConfigError(f"path {relative} escapes the run directory {base}")
    return candidate
