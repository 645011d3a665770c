"""What a person running `raydistill run` or `sweep` sees: raydistill's own lines, nothing else.

Ray, Ray Data, DeepSpeed, lm-eval and transformers write to the terminal from everywhere: the
driver's C++ core worker (`core_worker.cc` `E` lines straight to file descriptor 2), Python
loggers that captured `sys.stderr` when they were made, tqdm bars, and every Ray worker's
output forwarded to the driver. Filtering each of them is a losing game, so `quiet` moves the
process's file descriptors 1 and 2 to `RUN/logs/console.log` for the duration of the command
(children, Ray's raylet included, inherit them) and gives the CLI a `Console` on a duplicate of
the real terminal. What the libraries said is kept in order and bounded in size
(`console_log.py`: the first 8 MiB in `console.log`, the latest 8-16 MiB in `console.log.tail`
and `.tail.1`); a failed command names the log in its error. `--verbose` skips all of this and
shows them as they come.

The progress lines themselves are made by a pure function beside the code that polls the
ledger for them (`raydistill.cluster.progress.stage_line`), so their format is tested without Ray.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from raydistill.console_log import CappedLog, Pump
from raydistill.errors import ConfigError

PREFIX = "[raydistill]"
LOG_NAME = "console.log"


@dataclass
class Console:
    """The terminal: progress lines and results go here, and only here. Everything else goes
    to `log_path` (None: --verbose, nothing is moved)."""

    stream: IO[str]
    log_path: Path | None = None
    _log: CappedLog | None = None
    _pump: Pump | None = None

    def say(self, message: str) -> None:
        print(f"{PREFIX} {message}", file=self.stream, flush=True)

    def show(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def keep_log_in(self, log_dir: Path) -> None:
        """Move the libraries' output (so far and from now on) to `log_dir/console.log`: called
        once the run directory exists, which is after its config was checked."""
        if self._log is None or self._pump is None:
            return
        log_dir.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        new = self._log.move_to(log_dir / LOG_NAME)
        self._pump.retarget(new)
        self._log, self.log_path = new, new.path


def _log_name(exc: BaseException, path: Path) -> None:
    """A failed command says where the libraries' output is, in its own error: the CLI's
    one-line message (`log_of`) and the traceback's note."""
    exc.console_log = str(path)
    with contextlib.suppress(AttributeError, TypeError):
        exc.add_note(f"[raydistill] console log: {path}")


def log_of(exc: BaseException) -> str | None:
    return getattr(exc, "console_log", None)


def _terminal(stream: IO[str], fd: int) -> tuple[IO[str], bool]:
    """A stream on the terminal that survives fd `fd` being moved: a duplicate of the fd when
    `stream` writes to it, else `stream` itself (pytest's capture, a notebook). The flag says
    whether the caller owns (and must close) it."""
    try:
        if stream.fileno() == fd:
            return os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8",
                             errors="replace"), True
    except (AttributeError, OSError, ValueError):
        pass
    return stream, False


class _ToTerminal(logging.Handler):
    """raydistill's own warnings and errors, on the terminal as one line each."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = "warning" if record.levelno < logging.ERROR else "error"
            self.console.show(f"{PREFIX} {level}: {record.getMessage()}")
        except Exception:  # a log line must never end the run
            self.handleError(record)


QUIET_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


@contextlib.contextmanager
def quiet(verbose: bool = False) -> Iterator[Console]:
    """Within: fds 1 and 2 (and `sys.stdout`/`sys.stderr`) write to a log file, at first a
    temporary one, then (`Console.keep_log_in`) the run's; the yielded Console writes to the
    terminal. `verbose` changes nothing. A command that fails before it has a run directory
    keeps its temporary log and says where it is."""
    if verbose:
        yield Console(sys.stdout)
        return
    out, own_out = _terminal(sys.stdout, 1)
    fd, name = tempfile.mkstemp(prefix="raydistill-", suffix=".log")
    os.close(fd)
    console = Console(out, Path(name), CappedLog(Path(name)))
    sys.stdout.flush()
    sys.stderr.flush()
    streams = sys.stdout, sys.stderr
    handler = _ToTerminal(console)
    ours = logging.getLogger("raydistill")
    # tqdm bars of the workers started from here (lm-eval, transformers) would fill the log
    env = {k: os.environ.get(k) for k in QUIET_ENV}
    failed = False
    try:
        console._pump = Pump(console._log)
        sys.stdout = sys.stderr = open(1, "w", buffering=1, encoding="utf-8",  # noqa: SIM115
                                       errors="replace", closefd=False)
        os.environ.update(QUIET_ENV)
        ours.addHandler(handler)
        logging.captureWarnings(True)  # warnings.warn from any library: to the log
        yield console
    except ConfigError:  # bad input: its one-line message says it all
        raise
    except BaseException as exc:
        failed = True
        _log_name(exc, console.log_path)
        raise
    finally:
        logging.captureWarnings(False)
        ours.removeHandler(handler)
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        sys.stdout, sys.stderr = streams
        if console._pump is not None:
            console._pump.stop()
        if console._pump is None or console._pump.done:
            console._log.close()
        if console.log_path == Path(name):  # no run directory was made
            if failed and Path(name).stat().st_size:
                print(f"{PREFIX} the libraries' output is in {name}", file=sys.stderr)
            else:
                Path(name).unlink(missing_ok=True)
        if own_out:
            out.close()
