"""The EnergyLedger actor: a thin, durable shell around `LedgerState`.

Every batch and window event is appended to the run directory's log and fsynced *before* it is
applied and acknowledged. Concurrent calls are committed as one group (one write, one fsync), so
the ledger's cost grows with the number of commits, not the number of callers. On restart the
actor rebuilds its state by replaying the log; a damaged tail is kept to its valid prefix and
reported.
"""

from __future__ import annotations

import asyncio
import logging
import time
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
                    for kept, (_, fut) in zip(accepted, group, strict=True):
                        for kind, payload in kept:
                            self.state.apply(kind, payload)
                        if not fut.done():
                            fut.set_result(sum(1 for k, _ in kept if k == KIND_BATCH))
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
                if key in self.state.seen or key in keys:
                    self.state.duplicates += 1
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
        await self._commit([(KIND_EVENT, LedgerState.close_event(
            window_id, t_end_s, tokens, cpu_time_s, t_end_mono_s,
            generated_tokens=generated_tokens, closed_by=closed_by))])

    async def open_windows(self, node_id: str | None = None) -> list[dict]:
        """The open windows (of one node) with the process that opened each: what the node's
        sampler checks for processes that are gone."""
        keys = ("window_id", "pid", "pid_start", "host", "t_start_s", "t_start_mono_s",
                "trial_id", "stage", "node_id")
        return [{k: getattr(w, k) for k in keys} for w in self.state.open_windows(node_id)]

    async def close_leftover(self, window_id: str, t_end_s: float,
                             t_end_mono_s: float | None, closed_by: str) -> bool:
        """Close a window its process did not close (gone, or the run finished first); False
        when it was closed meanwhile (the process was quicker)."""
        if window_id in self._closing:
            return False
        event = self.state.leftover_close(window_id, t_end_s, t_end_mono_s, closed_by)
        if event is None:
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
            end = (at or {}).get(node) or self.state.latest_clocks(node) or (
                w["t_start_s"], w["t_start_mono_s"])
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
        return [r.__dict__ for r in self.state.energy_rows()]

    async def trial_rows(self, trial_id: str) -> list[dict]:
        """One trial's rows (equal to its rows in `energy_rows`), computed from its own windows
        and the ones overlapping them: what a running trial polls."""
        return [r.__dict__ for r in self.state.trial_rows(trial_id)]

    async def trial_energy(self, trial_ids: list[str]) -> dict[str, dict[str, float]]:
        """{trial: {stage: J}} for the given trials (per-trial queries, not the whole sweep)."""
        out: dict[str, dict[str, float]] = {}
        for trial_id in trial_ids:
            stages = out.setdefault(trial_id, {})
            for r in self.state.trial_rows(trial_id):
                stages[r.stage] = stages.get(r.stage, 0.0) + r.energy_j
        return out

    async def windows(self) -> list[dict]:
        return [w.__dict__ for w in self.state.windows.values()]

    async def stats(self) -> dict:
        return {
            "samples": self.state.n_samples,
            "batches": len(self.state.seen),
            "duplicates": self.state.duplicates,
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


# The actor class is defined once here; `start_ledger` gives it its options.
EnergyLedger = ray.remote(_Ledger)


def start_ledger(
    run_dir: str | Path, namespace: str, max_gap_s: float = 2.0, fsync: bool = True
):
    """Start (or find) the run's named, detached ledger; it restarts on failure and replays."""
    from raydistill.cluster.runtime import on_driver_node

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
