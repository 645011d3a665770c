"""Files written whole or not at all: write to a temporary sibling, fsync, rename."""

from __future__ import annotations

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


def prepare_run_dir(path: str | Path) -> Path:
    """Create the run directory; a path that is a file is a one-line error, not a traceback."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"output directory {p} is a file; pass --out a directory path")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output directory {p}: {exc.strerror}") from None
    return p.resolve()


def inside(root: str | Path, relative: str | Path) -> Path:
    """`root / relative`, refusing paths that escape root (.., absolute, symlinks out)."""
    base = Path(root).resolve()
    candidate = (base / relative).resolve()
    if candidate != base and base not in candidate.parents:
        raise ConfigError(f"path {relative} escapes the run directory {base}")
    return candidate
