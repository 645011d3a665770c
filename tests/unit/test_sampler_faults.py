"""A node's PowerSampler when things go wrong, driven without Ray (`_Sampler` with a fake
ledger and injected sources), and the fleet when a sampler cannot start (fake Ray calls).

Reads from two threads reach the buffer in read order; a source that raises does not stop
sampling, and a dead or stuck poller makes `ping` raise; the idle baseline carries the span it
was measured over; a hardware source the node lacks falls back with a warning; a sampler that
fails to start is recorded, killed and retried with backoff, never raised to the caller."""

import itertools
import logging
import threading
import time
import types

import pytest

from raydistill.cluster import fleet as fleet_mod
from raydistill.cluster.sampler import SamplerUnhealthy, _Sampler, idle_baseline, node_sources
from raydistill.config import SamplingConfig
from raydistill.energy import Reading
from raydistill.energy.samples import SampleBatch
from raydistill.errors import SourceUnavailable


class Ledger:
    def __init__(self) -> None:
        self.events: list[dict] = []
        self.batches: list[SampleBatch] = []

    def __call__(self, method: str, *args):
        if method == "record_event":
            self.events.append(args[0])
        elif method == "ingest":
            self.batches.extend(SampleBatch.from_bytes(p) for p in args[0])
        return None


class Source:
    """Numbers its reads in call order (t_mono_s = call number); `fail(n)` says which raise."""

    name = "test"

    def __init__(self, fail=lambda n: None, block: threading.Event | None = None) -> None:
        self._n = itertools.count()
        self._lock = threading.Lock()
        self.fail, self.block = fail, block

    def read(self) -> list[Reading]:
        with self._lock:
            n = next(self._n)
        if self.block is not None:
            self.block.wait()
        exc = self.fail(n)
        if exc is not None:
            raise exc
        time.sleep(0.0002)  # let another reader overtake, as a slow driver call would
        return [Reading("dev", "node", 1000.0 + n, 5.0, None, "test", "sampled", float(n))]

    def describe(self) -> str:
        return "test source"

    def close(self) -> None:
        pass


def sampler_with(source, tmp_path, hz: float = 200.0, start: bool = True, **cfg) -> _Sampler:
    config = SamplingConfig(**{"source": "constant:1", "hz": hz, "idle_s": 0,
                               "push_interval_s": 60, "spool_dir": str(tmp_path), **cfg})
    return _Sampler("node-x" * 4, config, "ns", "ledger", ledger_call=Ledger(),
                    open_sources=lambda part: [source], start_threads=start)


# ---- 1. read order ------------------------------------------------------------------------
def test_reads_from_poller_and_flushes_reach_the_buffer_in_read_order(tmp_path):
    sampler = sampler_with(Source(), tmp_path, hz=1000)
    ledger = sampler._ledger_fn

    def hammer() -> None:
        for _ in range(150):
            sampler.flush()

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = sampler.stop()
    order = [float(x) for b in sorted(ledger.batches, key=lambda b: b.batch_seq)
             for x in b.t_mono_s]
    assert len(order) == stats["read"] > 300
    assert order == sorted(order)  # each reading after every one read before it


# ---- 2. errors in the poll loop, health -----------------------------------------------------
def test_a_source_that_raises_does_not_stop_sampling(tmp_path, caplog):
    def fail(n: int):
        return OSError("EIO") if n % 3 == 0 else (KeyError("bug") if n % 3 == 1 else None)

    with caplog.at_level(logging.ERROR):
        sampler = sampler_with(Source(fail), tmp_path)
        time.sleep(0.5)
        assert sampler.ping() == sampler.sampler_id  # still healthy
        stats = sampler.stop()
    assert stats["poll_errors"] >= 20 and stats["read"] >= 10  # it kept reading
    errors = [r for r in caplog.records if r.name.endswith("sampler")]
    assert len(errors) == 1 and errors[0].exc_info is not None  # first with traceback, then quiet


def test_an_error_outside_the_sources_is_caught_per_poll(tmp_path, caplog, monkeypatch):
    calls = itertools.count()
    real = _Sampler._read_all

    def flaky(self):
        if next(calls) % 2:
            raise RuntimeError("a bug in the buffer code")
        return real(self)

    monkeypatch.setattr(_Sampler, "_read_all", flaky)
    with caplog.at_level(logging.ERROR):
        sampler = sampler_with(Source(), tmp_path)
        time.sleep(0.3)
        assert sampler._poller.is_alive()
        sampler.ping()
        stats = sampler.stop()
    assert stats["poll_errors"] >= 10 and stats["read"] >= 10


def test_ping_raises_when_the_poll_thread_is_dead(tmp_path, monkeypatch):
    monkeypatch.setattr(_Sampler, "_poll_loop", lambda self: None)  # the poller ends at once
    sampler = sampler_with(Source(), tmp_path)
    sampler._poller.join(timeout=5)
    with pytest.raises(SamplerUnhealthy, match="poll thread is not running"):
        sampler.ping()
    sampler.stop()


def test_ping_raises_while_the_poller_is_stuck_and_recovers(tmp_path):
    gate = threading.Event()
    source = Source(block=gate)
    sampler = sampler_with(source, tmp_path, hz=10)
    time.sleep(0.2)  # the poller now waits inside read()
    sampler._heartbeat -= 6.0  # as if it had waited 6 s: past max(5 s, 20 polls at 10 Hz)
    with pytest.raises(SamplerUnhealthy, match="no poll completed"):
        sampler.ping()
    gate.set()
    time.sleep(0.3)
    assert sampler.ping() == sampler.sampler_id
    sampler.stop()


def test_a_stuck_poller_makes_the_fleet_replace_the_sampler(monkeypatch):
    monkeypatch.setattr(fleet_mod, "ray", FakeRay(["n1"]))
    fleet = fleet_mod.SamplerFleet(SamplingConfig(source="constant:1"), "ns")
    fleet.samplers["n1"] = Handle(ping_error=SamplerUnhealthy("no poll completed for 9 s"))
    assert fleet._healthy("n1") is False and "no poll completed" in fleet._problem("n1")


# ---- 3. idle baseline span ------------------------------------------------------------------
def test_a_cut_batch_carries_the_idle_baseline_and_its_span(tmp_path):
    cfg = SamplingConfig(source="constant:10", idle_s=0.05, spool_dir=str(tmp_path))
    sampler = _Sampler("node-a", cfg, "ns", "ledger", ledger_call=Ledger(), start_threads=False)
    first, last = sampler._buffer
    sampler._cut_batch()
    (_, payload, _), = sampler._outbox.pending
    batch = SampleBatch.from_bytes(payload)
    assert batch.idle_power_w == pytest.approx({"constant": 10.0})
    assert batch.idle_span_s == (first.t_mono_s, last.t_mono_s)
    assert last.t_mono_s - first.t_mono_s >= 0.05


def test_idle_baseline_handles_a_wrapped_counter_and_wall_only_readings():
    def r(t, e, mono=None, rng=None):
        return Reading("cpu:package-0", "cpu", t, None, e, "rapl", "counter", mono, rng)

    idle, span = idle_baseline([r(10.0, 990.0, 5.0, 1000.0)], [r(12.0, 30.0, 7.0, 1000.0)])
    assert idle == {"cpu:package-0": pytest.approx(20.0)} and span == (5.0, 7.0)
    idle, span = idle_baseline([r(10.0, 0.0)], [r(12.0, 50.0)])  # no monotonic time: wall
    assert idle == {"cpu:package-0": pytest.approx(25.0)} and span == (10.0, 12.0)
    assert idle_baseline([r(10.0, 0.0)], []) == ({}, None)


# ---- 6. sources per node --------------------------------------------------------------------
def test_nvml_on_a_node_without_it_falls_back_and_says_so(tmp_path, caplog):
    from raydistill.energy.nvml import NvmlSource

    try:
        NvmlSource().close()
        pytest.skip("this machine has NVML")
    except SourceUnavailable:
        pass
    cfg = SamplingConfig(source="nvml", idle_s=0, spool_dir=str(tmp_path))
    ledger = Ledger()
    with caplog.at_level(logging.WARNING):
        sampler = _Sampler("headnode0123456789", cfg, "ns", "ledger", ledger_call=ledger,
                           start_threads=False)
    assert [s.name for s in sampler.sources] in (["cpu-estimate"], ["rapl"])
    (start,) = [e for e in ledger.events if e["type"] == "sampler_start"]
    assert start["requested"] == "nvml" and start["sources"] == sampler.description
    assert any("headnode0123" in r.message and "nvml" in r.message
               and sampler.description in r.message for r in caplog.records)


def fake_open(available: set[str]):
    def open_fn(part: str):
        kind = part.partition(":")[0]
        if kind not in available:
            raise SourceUnavailable(f"no {kind} here")
        return [types.SimpleNamespace(name=kind, describe=lambda: kind, close=lambda: None)]
    return open_fn


@pytest.mark.parametrize("spec, available, expect", [
    ("nvml", {"nvml"}, ["nvml"]),  # a GPU node measures what was asked
    ("nvml", {"cpu-estimate"}, ["cpu-estimate"]),
    ("nvml,rapl", {"nvml", "cpu-estimate"}, ["nvml", "cpu-estimate"]),  # rapl falls back
    ("nvml,rapl", {"rapl", "cpu-estimate"}, ["rapl"]),
    ("nvml,constant:5", {"constant", "cpu-estimate"}, ["constant"]),
])
def test_node_sources_skips_what_the_node_lacks(spec, available, expect):
    assert [s.name for s in node_sources(spec, "node", fake_open(available))] == expect


def test_node_sources_does_not_hide_a_missing_trace():
    with pytest.raises(SourceUnavailable):
        node_sources("replay:/nope.csv", "node", fake_open({"cpu-estimate"}))


# ---- 7. a sampler that cannot start ---------------------------------------------------------
class Ref:
    def __init__(self, value=None, error: Exception | None = None) -> None:
        self.value, self.error = value, error


class Handle:
    def __init__(self, ping_error: Exception | None = None, name: str = "s") -> None:
        self.ping_error, self.name = ping_error, name
        self.ping = types.SimpleNamespace(remote=lambda: Ref(self.name, self.ping_error))


class FakeRay:
    def __init__(self, nodes: list[str]) -> None:
        self.alive = nodes
        self.killed: list[Handle] = []
        self.events: list[dict] = []
        ledger = types.SimpleNamespace(record_event=types.SimpleNamespace(
            remote=lambda ev: self.events.append(ev) or Ref()))
        self.get_actor = lambda name, namespace=None: ledger

    def nodes(self):
        return [{"NodeID": n, "Alive": True} for n in self.alive]

    def get(self, ref: Ref, timeout=None):
        if ref.error is not None:
            raise ref.error
        return ref.value

    def kill(self, handle, no_restart=True):
        self.killed.append(handle)


def test_a_sampler_that_fails_to_start_is_recorded_killed_and_retried_with_backoff(
        monkeypatch, caplog):
    fake = FakeRay(["good", "bad"])
    monkeypatch.setattr(fleet_mod, "ray", fake)
    now = [0.0]
    fleet = fleet_mod.SamplerFleet(SamplingConfig(source="nvml"), "ns", clock=lambda: now[0])
    outcome = {"bad": [RuntimeError("creation task failed\nSourceUnavailable: no NVML"),
                       TimeoutError("GetTimeoutError"), None]}
    starts: list[str] = []

    def start(node_id):
        starts.append(node_id)
        if node_id == "good":
            return Handle(name="sampler-good")
        error = outcome["bad"].pop(0)
        if isinstance(error, TimeoutError):
            raise error  # the actor could not even be created
        return Handle(ping_error=error, name="sampler-bad")

    monkeypatch.setattr(fleet, "_start", start)
    with caplog.at_level(logging.ERROR):
        report = fleet.reconcile()  # does not raise
    assert report.started == ["good"] and report.failed == ["bad"]
    assert fleet.failed["bad"]["attempts"] == 1 and "no NVML" in fleet.failed["bad"]["why"]
    assert [h.name for h in fake.killed] == ["sampler-bad"]  # no untracked sampler left
    (event,) = fake.events
    assert event["type"] == "sampler_failed" and event["node_id"] == "bad"
    assert event["retry_in_s"] == 30.0
    assert any("bad" in r.message and "no NVML" in r.message for r in caplog.records)

    now[0] = 29.0
    assert fleet.reconcile().failed == [] and starts.count("bad") == 1  # backing off
    now[0] = 31.0
    assert fleet.reconcile().failed == ["bad"] and fleet.failed["bad"]["attempts"] == 2
    assert fleet.failed["bad"]["retry_in_s"] == 60.0
    now[0] = 31.0 + 59.0
    fleet.reconcile()
    assert starts.count("bad") == 2
    now[0] = 31.0 + 61.0
    report = fleet.reconcile()
    assert report.started == ["bad"] and "bad" not in fleet.failed
    assert set(fleet.samplers) == {"good", "bad"} and starts.count("good") == 1


def test_backoff_doubles_and_is_capped():
    assert [fleet_mod.retry_delay_s(n) for n in (1, 2, 3, 5, 6, 20)] == [
        30.0, 60.0, 120.0, 480.0, 600.0, 600.0]
