"""The value objects of the accounting protocol: readings, sample batches, windows.

Units live in the names: `_w` watts, `_j` joules, `_s` seconds. Vendor units (mW, mJ, µJ)
are converted by the sources, before anything here sees them.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from raydistill.energy.log import event_payload

# How a figure was obtained; every energy number in a report carries one of these.
# "modelled": a counter whose energy is a model of activity, not a measurement (AMD's RAPL).
METHODS = ("counter", "sampled", "modelled", "estimated", "replayed")
# Device kinds. GPUs are charged to the windows that hold them; the others are node-level
# devices shared by every window on the node (split by CPU-time share).
# "mig" is a MIG instance charged a share of its parent GPU: held only by windows that name it
# (a window of the whole node is charged the parent GPU, not its instances a second time).
DEVICE_KINDS = ("gpu", "cpu", "dram", "node", "mig")
SHARED_KINDS = frozenset({"cpu", "dram", "node"})


@dataclass(frozen=True)
class Reading:
    """One device read once by a source. At least one of power_w / energy_counter_j is set."""

    device_id: str  # "GPU-<uuid>", "cpu:package-0", "dram:package-0", "cpu:estimate", ...
    device_kind: str  # one of DEVICE_KINDS
    t_wall_s: float  # time.time() on the node that read it
    power_w: float | None
    energy_counter_j: float | None  # monotonic except at wrap/reset; None if no counter
    source: str  # "nvml-counter", "nvml-power", "nvml-power-instant", "rapl", ...
    method: str  # one of METHODS
    # time.monotonic() on the node when read: it never steps, so the ledger integrates on it
    # (windows carry it too); t_wall_s is for display and for nodes that lack it.
    t_mono_s: float | None = None
    # The counter wraps to 0 past this many joules (RAPL's max_energy_range_uj); None: it
    # does not wrap (NVML's 64-bit mJ counter), so a decrease is a reset or a glitch.
    counter_range_j: float | None = None
    # The device's model as its driver names it ("NVIDIA H100 80GB HBM3"); "" when unknown. It
    # picks the stated error's class and the peak power that bounds unmeasured seconds.
    model: str = ""


@dataclass(frozen=True)
class DeviceInfo:
    device_id: str
    device_kind: str
    source: str
    method: str
    counter_range_j: float | None = None
    model: str = ""  # "" in logs from before models were recorded


@dataclass(frozen=True)
class SampleBatch:
    """Columnar samples from one sampler, the unit of ingestion.

    `(sampler_id, batch_seq)` is the idempotency key: the ledger ingests each key once, so a
    batch resent after a lost acknowledgement is never counted twice.
    """

    sampler_id: str
    batch_seq: int
    node_id: str
    devices: tuple[DeviceInfo, ...]
    device_idx: np.ndarray  # int32 [n], index into devices
    t_wall_s: np.ndarray  # float64 [n]
    power_w: np.ndarray  # float64 [n], NaN where absent
    energy_counter_j: np.ndarray  # float64 [n], NaN where absent
    idle_power_w: dict[str, float] = field(default_factory=dict)  # device_id -> idle baseline
    # The stretch (on the node's timeline: monotonic where t_mono_s is set) over which the
    # sampler measured idle_power_w: the ledger uses a baseline only for stretches it is valid
    # for, and only if no window held the device while it was measured.
    idle_span_s: tuple[float, float] | None = None
    t_mono_s: np.ndarray | None = None  # float64 [n], NaN where absent; None: no column

    @property
    def key(self) -> tuple[str, int]:
        return (self.sampler_id, self.batch_seq)

    def __len__(self) -> int:
        return int(self.t_wall_s.shape[0])

    @staticmethod
    def from_readings(
        sampler_id: str,
        batch_seq: int,
        node_id: str,
        readings: list[Reading],
        idle_power_w: dict[str, float] | None = None,
        idle_span_s: tuple[float, float] | None = None,
    ) -> SampleBatch:
        index: dict[DeviceInfo, int] = {}
        idx = np.empty(len(readings), dtype=np.int32)
        t = np.empty(len(readings), dtype=np.float64)
        p = np.empty(len(readings), dtype=np.float64)
        e = np.empty(len(readings), dtype=np.float64)
        m = np.empty(len(readings), dtype=np.float64)
        for i, r in enumerate(readings):
            info = DeviceInfo(r.device_id, r.device_kind, r.source, r.method, r.counter_range_j,
                              r.model)
            idx[i] = index.setdefault(info, len(index))
            t[i] = r.t_wall_s
            p[i] = math.nan if r.power_w is None else r.power_w
            e[i] = math.nan if r.energy_counter_j is None else r.energy_counter_j
            m[i] = math.nan if r.t_mono_s is None else r.t_mono_s
        return SampleBatch(
            sampler_id, batch_seq, node_id, tuple(index), idx, t, p, e, dict(idle_power_w or {}),
            idle_span_s, m,
        )

    # Compact binary form for the ledger log and the spool. A fixed prefix carries the
    # idempotency key and the sample count, so the ledger's hot path reads 20-odd bytes and
    # never parses JSON; the JSON header and the raw columns follow.
    def to_bytes(self) -> bytes:
        head: dict = {
            "node_id": self.node_id,
            "devices": [asdict(d) for d in self.devices],
            "idle_power_w": self.idle_power_w,
        }
        if self.idle_span_s is not None:
            head["idle_span_s"] = list(self.idle_span_s)
        cols = [self.t_wall_s, self.power_w, self.energy_counter_j]
        if self.t_mono_s is not None:  # a fourth column; logs written before it have three
            head["mono"] = True
            cols.append(self.t_mono_s)
        header = json.dumps(head, separators=(",", ":")).encode()
        sid = self.sampler_id.encode()
        return b"".join(
            (
                _PREFIX.pack(len(sid)),
                sid,
                _KEY.pack(self.batch_seq, len(self), len(header)),
                header,
                np.ascontiguousarray(self.device_idx, dtype="<i4").tobytes(),
                *(np.ascontiguousarray(c, dtype="<f8").tobytes() for c in cols),
            )
        )

    @staticmethod
    def peek(data: bytes | memoryview) -> tuple[tuple[str, int], int]:
        """((sampler_id, batch_seq), n_samples) of a serialised batch, from its prefix alone."""
        (slen,) = _PREFIX.unpack_from(data, 0)
        sid = bytes(memoryview(data)[_PREFIX.size : _PREFIX.size + slen]).decode()
        seq, n, _ = _KEY.unpack_from(data, _PREFIX.size + slen)
        return (sid, seq), n

    @staticmethod
    def key_of(data: bytes | memoryview) -> tuple[str, int]:
        return SampleBatch.peek(data)[0]

    @staticmethod
    def from_bytes(data: bytes | memoryview) -> SampleBatch:
        buf = memoryview(data)
        (slen,) = _PREFIX.unpack_from(buf, 0)
        sid = bytes(buf[_PREFIX.size : _PREFIX.size + slen]).decode()
        off = _PREFIX.size + slen
        seq, n, hlen = _KEY.unpack_from(buf, off)
        off += _KEY.size
        header = json.loads(bytes(buf[off : off + hlen]))
        off += hlen
        idx = np.frombuffer(buf, dtype="<i4", count=n, offset=off)
        off += 4 * n
        cols = []
        for _ in range(4 if header.get("mono") else 3):
            cols.append(np.frombuffer(buf, dtype="<f8", count=n, offset=off))
            off += 8 * n
        if off != len(buf):
            raise ValueError(f"sample batch has {len(buf) - off} trailing bytes")
        return SampleBatch(
            sid,
            int(seq),
            header["node_id"],
            tuple(DeviceInfo(**d) for d in header["devices"]),
            idx,
            cols[0],
            cols[1],
            cols[2],
            {k: float(v) for k, v in header.get("idle_power_w", {}).items()},
            tuple(header["idle_span_s"]) if "idle_span_s" in header else None,
            cols[3] if len(cols) == 4 else None,
        )


_PREFIX = struct.Struct("<H")  # length of sampler_id
_KEY = struct.Struct("<qII")  # batch_seq, n samples, header length


ALL_DEVICES = ("*",)
# What a window's work was: "load" (model load, engine start-up: paid once, before the first
# token) or "work" (steady state: what a token costs). Windows recorded without one are work.
# On-policy distillation adds two: "rollout", the student generating its own completions inside
# student_training (nested in the training window: its J and tokens kept apart from the
# update's), and "idle", a teacher_scoring actor holding its devices between requests (each
# request a nested "work" window), so that a held, waiting GPU is shown as such, not as work.
LOAD, WORK, ROLLOUT, IDLE = "load", "work", "rollout", "idle"
PHASES = (LOAD, WORK, ROLLOUT, IDLE)


@dataclass(frozen=True)
class Window:
    """A stretch of work on one node: a trial's stage, charged for the devices it holds.

    `devices` lists GPU ids the work holds, or ALL_DEVICES for every device on the node.
    Node-level shared devices (CPU package, DRAM, estimates) are charged to every window on the
    node, split by `cpu_time_s` share where windows overlap. Times are read on the node itself,
    from the same clock as that node's sampler, so clock skew between nodes cannot misattribute.
    """

    window_id: str
    trial_id: str
    stage: str
    node_id: str
    devices: tuple[str, ...]
    t_start_s: float
    t_end_s: float | None = None  # None while open
    tokens: int = 0
    cpu_time_s: float | None = None  # CPU seconds the work used; None = unknown (equal split)
    # The same edges on the node's monotonic clock (time.monotonic()), which NTP cannot step:
    # the ledger integrates on it. None for windows recorded without it.
    t_start_mono_s: float | None = None
    t_end_mono_s: float | None = None
    phase: str = WORK  # one of PHASES
    # The part of `tokens` the model generated (decode); the rest (tokens - generated_tokens)
    # it read (prompts). 0 for work that generates nothing, and for windows recorded without it.
    generated_tokens: int = 0
    # The window this one runs inside (an evaluation inside a training stage, a torchrun rank's
    # window inside `measure --stage`'s): on the devices both hold, the inner one takes the
    # device-seconds (`rows._split`). Ignored unless it names a window of the same node.
    # None for top-level windows and for windows recorded before nesting.
    parent_id: str | None = None
    # The process that opened it (a window must not outlive it): its pid, its start time in
    # clock ticks since boot (a reused pid has another), and its host's identity (boot and PID
    # namespace, `lifetime.host_identity`). None for windows recorded without them.
    pid: int | None = None
    pid_start: int | None = None
    host: str | None = None
    # How it was closed (`lifetime.py`: "stage", "atexit", "process_gone", "finish", ...);
    # None while open, and for windows closed before closings were marked.
    closed_by: str | None = None

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"window {self.window_id}: phase must be one of {PHASES}, "
                             f"got {self.phase!r}")

    @staticmethod
    def from_event(ev: dict) -> Window:
        """The window a `window_open` record describes. Fields it lacks take their defaults
        (older logs: no monotonic times, phase "work", no generated tokens); fields this
        version does not know
        (newer logs) are left out."""
        fields = {k: v for k, v in ev.items() if k in Window.__dataclass_fields__}
        return Window(**{**fields, "devices": tuple(fields["devices"])})

    def closed(self, ev: dict) -> Window:
        """This window as a `window_close` record leaves it (the record may name its phase:
        a window found to have been loading is closed as phase "load"; records written before
        generated tokens were counted read as 0 of them)."""
        return replace(self, t_end_s=ev["t_end_s"], tokens=ev["tokens"],
                       cpu_time_s=ev.get("cpu_time_s"), t_end_mono_s=ev.get("t_end_mono_s"),
                       phase=ev.get("phase", self.phase),
                       generated_tokens=int(ev.get("generated_tokens", 0)),
                       closed_by=ev.get("closed_by"))

    def continued(self, window_id: str, t_s: float, t_mono_s: float | None) -> Window:
        """The work window that takes over from this one at `t_s` (wall) / `t_mono_s`: the same
        trial, stage, node, devices and parent, opened at the instant this one is closed, so
        the two neither overlap nor leave a gap between them."""
        return Window(window_id, self.trial_id, self.stage, self.node_id, self.devices, t_s,
                      t_start_mono_s=t_mono_s, phase=WORK, parent_id=self.parent_id, pid=self.pid,
                      pid_start=self.pid_start, host=self.host)

    def claims(self, device_id: str, device_kind: str) -> bool:
        if device_kind == "mig":
            return device_id in self.devices
        return device_kind in SHARED_KINDS or self.devices == ALL_DEVICES or (
            device_id in self.devices
        )


# ---- windows as log records (the ledger writes these before applying them) -----------------


def window_open_event(w: Window) -> bytes:
    return event_payload({"type": "window_open", **asdict(w)})


def window_close_event(window_id: str, t_end_s: float, tokens: int, cpu_time_s: float | None,
                       t_end_mono_s: float | None = None, phase: str | None = None,
                       generated_tokens: int = 0, closed_by: str | None = None) -> bytes:
    """Fields added since the first logs are optional, so that every log still replays:
    `t_end_mono_s`, `phase`, the phase the window is closed as (None keeps the one it was
    opened with), `generated_tokens`, how many of `tokens` the model generated (read as 0
    where a record lacks it), and `closed_by`, what closed it (`lifetime.py`)."""
    tokens, generated_tokens = int(tokens), int(generated_tokens)
    if generated_tokens and not 0 < generated_tokens <= tokens:  # 0 is always valid
        raise ValueError(f"window {window_id}: generated_tokens must be between 0 and tokens "
                         f"({tokens}), got {generated_tokens}")
    ev = {"type": "window_close", "window_id": window_id, "t_end_s": t_end_s,
          "tokens": tokens, "cpu_time_s": cpu_time_s, "generated_tokens": generated_tokens}
    if t_end_mono_s is not None:
        ev["t_end_mono_s"] = t_end_mono_s
    if phase is not None:
        ev["phase"] = phase
    if closed_by is not None:
        ev["closed_by"] = closed_by
    return event_payload(ev)
