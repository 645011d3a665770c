"""What the row and poll functions read of the ledger's state (`LedgerView`, a Protocol).

`energy/ledger.py`'s `LedgerState` keeps the samples and windows and calls `rows.py` (a
finished window's energy rows) and `poll.py` (a live trial's energy so far). Those two take
the state as an argument; naming its type here instead of importing `LedgerState` keeps the
dependency one way (ledger -> poll -> rows -> this), with `LedgerState` one implementation.
"""

from __future__ import annotations

from typing import Any, Protocol

from raydistill.energy.samples import Window
from raydistill.energy.timeline import DeviceTimeline


class LedgerView(Protocol):
    windows: dict[str, Window]
    warnings: list[str]
    wall_windows: set[str]
    # private to the ledger, read by its own helpers in rows.py and poll.py
    _series: dict[tuple[str, str], Any]  # (node, device) -> its sample series
    _methods: list[str]  # timeline method code -> its name
    _poll: Any  # poll.PollCache: a live poll's settled windows

    def devices(self, node_id: str) -> list[tuple[str, str]]: ...

    def trial_window_ids(self, trial_id: str) -> list[str]: ...

    def overlapping(self, node_id: str, lo: float, hi: float) -> list[Window]: ...

    def parent(self, w: Window) -> Window | None: ...

    def ancestors(self, w: Window) -> list[Window]: ...

    def uses_mono(self, node_id: str) -> bool: ...

    def to_timeline(self, node_id: str, wall_s: float, mono_s: float | None) -> float: ...

    def to_wall(self, node_id: str, t_s: float) -> float: ...

    def timeline(self, node_id: str, device_id: str) -> DeviceTimeline: ...

    def _span(self, w: Window) -> tuple[float, float]: ...
