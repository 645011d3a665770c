"""The EnergyLedger actor: a thin, durable shell around `LedgerState`.

Every batch and window event is appended to the run directory's log and fsynced *before* it is
applied and acknowledged. Concurrent calls are committed as one group (one write, one fsync), so
the ledger's cost grows with the number of commits, not the number of callers. On restart the
actor rebuilds its state by replaying the log; a damaged tail is kept to its valid prefix and
reported.

Ingestion never waits for a query: the state (not thread-safe) lives on one worker thread that
applies committed records and answers queries in order, off the event loop. A batch is
acknowledged once its fsync is done and its apply is queued (every later query sees it); a
window event once it is applied too (the caller may act on the window next, and learns of a bad
one). The event loop keeps only what deduplication needs (the accepted keys).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import ray

from raydistill.energy.ledger import LedgerState
from raydistill.energy.log import KIND_BATCH, KIND_EVENT, SegmentWriter, event_payload, read_log
from raydistill.energy.samples import LOAD, SampleBatch, Window

log = logging.getLogger(__name__)

LEDGER_NAME = "raydistill-ledger"


class _Ledger:
    def __init__(self, run_dir: str, max_gap_s: float = 2.0, fsync: bool = True) -> None:
        self.log_dir = Path(run_dir) / "ledger"
        self.state = LedgerState(max_gap_s=max_gap_s)
        started = time.perf_counter()
        replay = read_log(self.log_dir)
        for kind, payload in replay.records:
            self.state.apply(kind, payload)
        self.damage = [str(d) for d in replay.damage]
        self.writer = SegmentWriter(self.log_dir, fsync=fsync)
        self.replayed_records = len(replay.records)
        if self.replayed_records:
            log.warning(
                "ledger replayed %d records in %.2f s%s", self.replayed_records,
                time.perf_counter() - started, f"; damage: {self.damage}" if self.damage else "",
            )
        self._pending: list[tuple[list[tuple[int, bytes]], asyncio.Future]] = []
        self._flushing = False
        self.commits = 0
        self._closing: set[str] = set()  # windows a leftover close is being committed for
        self._own_closing: dict[str, int] = {}  # windows their process is closing (in flight)
        # the event loop's own view for deduplication: keys of every batch written to the log
        self._keys: set[tuple[str, int]] = set(self.state.seen)
        self.duplicates = 0  # found by the event loop (the state counts those of the replay)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-state")

    async def _on_state(self, fn: Callable, *args: Any) -> Any:
        """Run fn on the state's thread, after every record committed before this call."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    def _apply_group(self, accepted: list[list[tuple[int, bytes]]]) -> list[Exception | None]:
        """Apply each caller's records in commit order (on the state's thread)."""
        errors: list[Exception | None] = []
        for kept in accepted:
            try:
                for kind, payload in kept:
                    self.state.apply(kind, payload)
                errors.append(None)
            except Exception as exc:  # the caller is told where it waits; logged where not
                errors.append(exc)
                if all(k == KIND_BATCH for k, _ in kept):
                    msg = f"a committed batch failed to apply: {exc!r}"
                    self.state.warnings.append(msg)
                    log.error(msg)
        return errors

    # ---- the write path: group commit ------------------------------------------------------
    async def _commit(self, records: list[tuple[int, bytes]]) -> Any:
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((records, fut))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                group, self._pending = self._pending, []
                try:
                    keys: set = set()
                    accepted = [self._dedupe(records, keys) for records, _ in group]
                    blob = [r for kept in accepted for r in kept]
                    # The write and fsync run off the event loop, so that more calls queue up
                    # meanwhile and become the next group.
                    await loop.run_in_executor(None, self.writer.append, blob)
                    self.commits += 1
                    self._keys.update(SampleBatch.key_of(p) for k, p in blob if k == KIND_BATCH)
                    applied = loop.run_in_executor(self._worker, self._apply_group, accepted)
                    for i, (kept, (_, fut)) in enumerate(zip(accepted, group, strict=True)):
                        new = sum(1 for k, _ in kept if k == KIND_BATCH)
                        if any(k == KIND_EVENT for k, _ in kept):
                            applied.add_done_callback(partial(_ack_applied, i, fut, new))
                        elif not fut.done():  # durable: acknowledged, its apply queued
                            fut.set_result(new)
                except Exception as exc:  # a full disk must reach every caller, not hang them
                    for _, fut in group:
                        if not fut.done():
                            fut.set_exception(exc)
        finally:
            self._flushing = False

    def _dedupe(self, records: list[tuple[int, bytes]], keys: set) -> list[tuple[int, bytes]]:
        """Drop batches already in the ledger or earlier in this group (resent after a lost ack)."""
        kept = []
        for kind, payload in records:
            if kind == KIND_BATCH:
                key = SampleBatch.key_of(payload)
                if key in self._keys or key in keys:
                    self.duplicates += 1
                    continue
                keys.add(key)
            kept.append((kind, payload))
        return kept

    # ---- the API -----------------------------------------------------------------------------
    async def ingest(self, batches: list[bytes]) -> int:
        """Append sample batches (SampleBatch.to_bytes); returns how many were new."""
        return await self._commit([(KIND_BATCH, b) for b in batches])

    async def open_window(self, window: Window) -> str:
        await self._commit([(KIND_EVENT, LedgerState.open_event(window))])
        return window.window_id

    async def close_window(
        self, window_id: str, t_end_s: float, tokens: int = 0, cpu_time_s: float | None = None,
        t_end_mono_s: float | None = None, generated_tokens: int = 0,
        closed_by: str | None = None,
    ) -> None:
        """Close (or move the end of) a window: `tokens` it processed so far, of which
        `generated_tokens` the model generated (ValueError unless 0 <= generated <= tokens);
        `closed_by` says what closed it (`energy/lifetime.py`)."""
        if window_id not in self.state.windows:
            raise KeyError(f"window {window_id!r} was never opened")
        # its own close in flight: a leftover close (a finish, a watch) must not overwrite it
        self._own_closing[window_id] = self._own_closing.get(window_id, 0) + 1
        try:
            await self._commit([(KIND_EVENT, LedgerState.close_event(
                window_id, t_end_s, tokens, cpu_time_s, t_end_mono_s,
                generated_tokens=generated_tokens, closed_by=closed_by))])
        finally:
            self._own_closing[window_id] -= 1
            if not self._own_closing[window_id]:
                del self._own_closing[window_id]

    async def open_windows(self, node_id: str | None = None) -> list[dict]:
        """The open windows (of one node) with the process that opened each: what the node's
        sampler checks for processes that are gone."""
        keys = ("window_id", "pid", "pid_start", "host", "t_start_s", "t_start_mono_s",
                "trial_id", "stage", "node_id")
        return await self._on_state(
            lambda: [{k: getattr(w, k) for k in keys} for w in self.state.open_windows(node_id)])

    async def close_leftover(self, window_id: str, t_end_s: float,
                             t_end_mono_s: float | None, closed_by: str) -> bool:
        """Close a window its process did not close (gone, or the run finished first); False
        when it was closed meanwhile (the process was quicker)."""
        if window_id in self._closing or window_id in self._own_closing:
            return False
        event = await self._on_state(  # on the state's thread: it may parse pending batches
            self.state.leftover_close, window_id, t_end_s, t_end_mono_s, closed_by)
        if event is None or window_id in self._own_closing:
            return False
        self._closing.add(window_id)
        try:
            await self._commit([(KIND_EVENT, event)])
        finally:
            self._closing.discard(window_id)
        return True

    async def close_open(self, closed_by: str,
                         at: dict[str, tuple[float, float | None]] | None = None) -> list[dict]:
        """Close every window still open, each at `at[its node]` (wall, monotonic) where
        given, else at its node's latest sample (the end it had while open); the windows
        closed, as `open_windows` gives them."""
        closed = []
        for w in await self.open_windows():
            node = w["node_id"]
            end = (at or {}).get(node) or await self._on_state(
                self.state.latest_clocks, node) or (w["t_start_s"], w["t_start_mono_s"])
            if await self.close_leftover(w["window_id"], end[0], end[1], closed_by):
                closed.append(w)
        return closed

    async def split_window(
        self, window_id: str, new_window_id: str, t_s: float, cpu_time_s: float | None = None,
        t_mono_s: float | None = None,
    ) -> Window:
        """Close a window at `t_s` as phase "load" and open the work window that continues it
        from that instant (returned), as one commit: both records reach the log or neither."""
        w = self.state.windows.get(window_id)
        if w is None:
            raise KeyError(f"window {window_id!r} was never opened")
        work = w.continued(new_window_id, t_s, t_mono_s)
        await self._commit([
            (KIND_EVENT, LedgerState.close_event(window_id, t_s, 0, cpu_time_s, t_mono_s, LOAD)),
            (KIND_EVENT, LedgerState.open_event(work)),
        ])
        return work

    async def record_event(self, event: dict) -> None:
        await self._commit([(KIND_EVENT, event_payload(event))])

    async def energy_rows(self) -> list[dict]:
        return await self._on_state(lambda: [r.__dict__ for r in self.state.energy_rows()])

    async def trial_rows(self, trial_id: str) -> list[dict]:
        """One trial's rows (equal to its rows in `energy_rows`), computed from its own windows
        and the ones overlapping them: what a running trial polls."""
        return await self._on_state(
            lambda: [r.__dict__ for r in self.state.trial_rows(trial_id)])

    async def trial_energy(self, trial_ids: list[str]) -> dict[str, dict[str, float]]:
        """{trial: {stage: J}} for the given trials (per-trial queries, not the whole sweep)."""
        return await self._on_state(self._trial_energy, trial_ids)

    def _trial_energy(self, trial_ids: list[str]) -> dict[str, dict[str, float]]:
        return {trial_id: self.state.trial_energy(trial_id) for trial_id in trial_ids}

    async def windows(self) -> list[dict]:
        return await self._on_state(lambda: [w.__dict__ for w in self.state.windows.values()])

    async def stats(self) -> dict:
        return await self._on_state(self._stats)

    def _stats(self) -> dict:
        return {
            "samples": self.state.n_samples,
            "batches": len(self.state.seen),
            "duplicates": self.state.duplicates + self.duplicates,
            "windows": len(self.state.windows),
            "commits": self.commits,
            "replayed_records": self.replayed_records,
            "damage": self.damage + [str(d) for d in self.writer.repaired],
            "samplers": dict(self.state.samplers),
            "latest_t_s": dict(self.state.latest_t_s),
            "warnings": list(self.state.warnings),
        }

    async def ping(self) -> bool:
        return True


def _ack_applied(i: int, fut: asyncio.Future, new: int, applied: asyncio.Future) -> None:
    """Acknowledge the i-th caller of a group once the group is applied (on the event loop)."""
    if fut.done():
        return
    exc = applied.exception() or applied.result()[i]
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(new)


# The actor class is defined once here; `start_ledger` gives it its options.
EnergyLedger = ray.remote(_Ledger)


def start_ledger(
    run_dir: str | Path, namespace: str, max_gap_s: float = 2.0, fsync: bool = True
):
    """Start (or find) the run's named, detached ledger; it restarts on failure and replays."""
    from raydistill.cluster.environment import on_driver_node

    handle = EnergyLedger.options(  # type: ignore[attr-defined]
        name=LEDGER_NAME,
        namespace=namespace,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_task_retries=-1,  # calls in flight during a restart are retried: ingest is idempotent
        num_cpus=0,
        max_concurrency=1000,
        # the driver's node when it can: a lost worker node then costs no ledger restart
        scheduling_strategy=on_driver_node(soft=True),
    ).remote(str(Path(run_dir).resolve()), max_gap_s, fsync)
    ray.get(handle.ping.remote())
    return handle


def get_ledger(namespace: str):
    return ray.get_actor(LEDGER_NAME, namespace=namespace)
