"""Ledger logic: idempotent ingestion, windows, shared splits, idle baseline, replay."""

import numpy as np
import pytest

from raydistill.energy import ALL_DEVICES, LedgerState, Reading, SampleBatch, Window
from raydistill.energy.log import KIND_BATCH, KIND_EVENT, SegmentWriter, read_log


def constant_batches(node="n1", sampler="s1", watts=100.0, t0=0.0, t1=10.0, hz=10, per=20,
                     device=("cpu:estimate", "cpu"), method="estimated", idle=None):
    times = np.arange(t0, t1 + 1e-9, 1.0 / hz)
    readings = [Reading(device[0], device[1], float(t), watts, None, "constant", method)
                for t in times]
    return [SampleBatch.from_readings(sampler, i // per, node, readings[i:i + per], idle)
            for i in range(0, len(readings), per)]


def window(wid, start, end, node="n1", devices=ALL_DEVICES, cpu=None, tokens=0, trial="t1"):
    return Window(wid, trial, "student_training", node, devices, start, end, tokens, cpu)


def test_constant_power_window_energy_is_power_times_duration():
    st = LedgerState()
    for b in constant_batches():
        assert st.ingest(b)
    st.apply_event({"type": "window_open", **window("w", 2.0, None).__dict__})
    st.apply_event({"type": "window_close", "window_id": "w", "t_end_s": 7.25, "tokens": 99})
    (row,) = st.energy_rows()
    assert row.energy_j == pytest.approx(525.0)
    assert (row.method, row.tokens, row.shared, row.n_gaps) == ("estimated", 99, False, 0)


def test_duplicate_batches_are_ingested_once():
    st = LedgerState()
    batches = constant_batches()
    for b in batches + batches[:3]:
        st.ingest(b)
    assert st.duplicates == 3 and st.n_samples == sum(len(b) for b in batches)


def test_roundtrip_bytes():
    b = constant_batches(idle={"cpu:estimate": 12.5})[0]
    back = SampleBatch.from_bytes(b.to_bytes())
    assert back.key == b.key and back.devices == b.devices and back.idle_power_w == b.idle_power_w
    np.testing.assert_array_equal(back.t_wall_s, b.t_wall_s)


def test_shared_cpu_split_by_cpu_time_share():
    st = LedgerState()
    for b in constant_batches(t1=20.0):
        st.ingest(b)
    # w1 [0, 10] uses 1 CPU-s/s, w2 [5, 15] uses 3 CPU-s/s: overlap [5, 10] split 1:3
    st.apply_event({"type": "window_open", **window("w1", 0.0, 10.0, cpu=10.0).__dict__})
    st.apply_event({"type": "window_open", **window("w2", 5.0, 15.0, cpu=30.0).__dict__})
    rows = {r.window_id: r for r in st.energy_rows()}
    assert rows["w1"].energy_j == pytest.approx(500 + 500 * 0.25)
    assert rows["w2"].energy_j == pytest.approx(500 * 0.75 + 500)
    assert rows["w1"].shared and rows["w2"].shared
    # nothing created or lost: the two windows together get the device's energy over [0, 15]
    assert rows["w1"].energy_j + rows["w2"].energy_j == pytest.approx(1500.0)


def test_gpu_charged_only_to_the_window_that_holds_it():
    st = LedgerState()
    for dev, watts in (("GPU-a", 300.0), ("GPU-b", 200.0)):
        for b in constant_batches(sampler=dev, device=(dev, "gpu"), watts=watts, method="counter"):
            st.ingest(b)
    st.apply_event({"type": "window_open", **window("wa", 0.0, 4.0, devices=("GPU-a",)).__dict__})
    st.apply_event({"type": "window_open", **window("wb", 0.0, 4.0, devices=("GPU-b",)).__dict__})
    rows = {(r.window_id, r.device_id): r.energy_j for r in st.energy_rows()}
    assert rows == {("wa", "GPU-a"): pytest.approx(1200.0), ("wb", "GPU-b"): pytest.approx(800.0)}


def test_idle_baseline_gives_above_idle_energy():
    st = LedgerState()
    for b in constant_batches(idle={"cpu:estimate": 40.0}):
        st.ingest(b)
    st.apply_event({"type": "window_open", **window("w", 1.0, 6.0).__dict__})
    (row,) = st.energy_rows()
    assert row.idle_j == pytest.approx(200.0) and row.above_idle_j == pytest.approx(300.0)


def test_windows_use_the_nodes_own_samples():
    st = LedgerState()
    for b in constant_batches(node="n1", sampler="a", watts=100.0):
        st.ingest(b)
    for b in constant_batches(node="n2", sampler="b", watts=50.0):
        st.ingest(b)
    st.apply_event({"type": "window_open", **window("w2", 0.0, 2.0, node="n2").__dict__})
    (row,) = st.energy_rows()
    assert row.node_id == "n2" and row.energy_j == pytest.approx(100.0)


def test_open_window_runs_to_latest_sample():
    st = LedgerState()
    for b in constant_batches(t1=5.0):
        st.ingest(b)
    st.apply_event({"type": "window_open", **window("w", 1.0, None).__dict__})
    (row,) = st.energy_rows()
    assert row.open and row.t_end_s == pytest.approx(5.0) and row.energy_j == pytest.approx(400.0)


def test_replaying_the_log_rebuilds_identical_totals(tmp_path):
    st, writer = LedgerState(), SegmentWriter(tmp_path, max_segment_bytes=4096)
    batches = constant_batches(t1=30.0)
    w = window("w", 3.0, None)
    for i, b in enumerate(batches):
        writer.append([(KIND_BATCH, b.to_bytes())])
        st.ingest(b)
        if i == 2:
            writer.append([(KIND_EVENT, LedgerState.open_event(w))])
            st.apply_event({"type": "window_open", **w.__dict__})
    close = LedgerState.close_event("w", 25.0, 7, 1.0)
    writer.append([(KIND_EVENT, close)])
    st.apply(KIND_EVENT, close)
    writer.close()
    replayed = LedgerState()
    result = read_log(tmp_path)
    for kind, payload in result.records:
        replayed.apply(kind, payload)
    assert len(list(tmp_path.iterdir())) > 1  # rolled over several segments
    assert not result.damage
    assert replayed.energy_rows() == st.energy_rows()
    assert replayed.energy_rows()[0].energy_j == pytest.approx(2200.0)


def test_truncated_last_record_is_reported_and_cut(tmp_path):
    writer = SegmentWriter(tmp_path)
    batches = constant_batches()
    writer.append([(KIND_BATCH, b.to_bytes()) for b in batches])
    writer.close()
    seg = next(tmp_path.iterdir())
    data = seg.read_bytes()
    seg.write_bytes(data[:-7])  # a crash in the middle of the last write
    result = read_log(tmp_path)
    assert len(result.records) == len(batches) - 1
    assert result.damage and "truncated" in result.damage[0].reason
    reopened = SegmentWriter(tmp_path)  # cuts the torn tail, then appends cleanly
    assert reopened.repaired
    reopened.append([(KIND_BATCH, batches[-1].to_bytes())])
    reopened.close()
    again = read_log(tmp_path)
    assert not again.damage and len(again.records) == len(batches)


def test_corrupted_record_keeps_valid_prefix(tmp_path):
    writer = SegmentWriter(tmp_path)
    batches = constant_batches()
    writer.append([(KIND_BATCH, b.to_bytes()) for b in batches])
    writer.close()
    seg = next(tmp_path.iterdir())
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0xFF
    seg.write_bytes(bytes(data))
    result = read_log(tmp_path)
    assert 0 < len(result.records) < len(batches)
    assert result.damage[0].reason in ("checksum mismatch", "corrupt record header")


def test_bad_gap_limit_rejected():
    with pytest.raises(ValueError, match="max_gap_s"):
        LedgerState(max_gap_s=0)


@pytest.mark.parametrize("skew_s", [0.0, 5.0, -37.5])
def test_clock_skew_between_nodes_does_not_misattribute(skew_s):
    """Node n2's clock runs skew_s ahead; its sampler and its windows read that same clock, so
    each window still gets exactly its own node's energy, on both nodes."""
    st = LedgerState()
    for b in constant_batches(node="n1", sampler="s1", watts=100.0, t0=0.0, t1=20.0):
        st.ingest(b)
    for b in constant_batches(node="n2", sampler="s2", watts=40.0, t0=skew_s, t1=20.0 + skew_s):
        st.ingest(b)
    for wid, node, start, end in [("a", "n1", 2.0, 8.0), ("b", "n2", 2.0 + skew_s, 8.0 + skew_s),
                                  ("c", "n2", 10.0 + skew_s, 19.0 + skew_s)]:
        st.apply_event({"type": "window_open", **window(wid, start, None, node=node).__dict__})
        st.apply_event({"type": "window_close", "window_id": wid, "t_end_s": end, "tokens": 1})
    got = {r.window_id: r.energy_j for r in st.energy_rows()}
    assert got == pytest.approx({"a": 600.0, "b": 240.0, "c": 360.0})
    assert all(r.gap_s == 0 for r in st.energy_rows())
