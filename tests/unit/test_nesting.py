"""Nested windows: a device-second belongs to the innermost window that holds the device; only
windows really side by side split it; a stage's tokens are counted once (pure ledger)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raydistill.energy import ALL_DEVICES, LedgerState, Reading, SampleBatch, Window
from raydistill.energy.samples import window_open_event
from raydistill.results import energy_frame, stage_totals

HZ = 10
# power that ramps with time (a different ramp per device): trapezoids are exact on it, and an
# interval's true energy differs from interval to interval, so a halved figure cannot pass
RAMPS = {"GPU-a": (300.0, 4.0, "gpu"), "GPU-b": (200.0, 2.0, "gpu"),
         "cpu:package-0": (120.0, 1.0, "cpu")}


def truth_j(device: str, a: float, b: float) -> float:
    p0, k, _ = RAMPS[device]
    return p0 * (b - a) + k * (b * b - a * a) / 2


def ledger(nodes: tuple[str, ...] = ("n1",), t1: float = 30.0) -> LedgerState:
    st = LedgerState()
    times = np.arange(0.0, t1 + 1e-9, 1.0 / HZ)
    for node in nodes:
        for dev, (p0, k, kind) in RAMPS.items():
            readings = [Reading(dev, kind, float(t), p0 + k * float(t), None, "sim", "sampled")
                        for t in times]
            for i in range(0, len(readings), 50):
                st.ingest(SampleBatch.from_readings(f"s-{node}-{dev}", i // 50, node,
                                                    readings[i:i + 50]))
    return st


def add(st: LedgerState, wid: str, start: float, end: float | None, *, devices=ALL_DEVICES,
        parent: str | None = None, trial: str = "t1", stage: str = "student_training",
        tokens: int = 0, cpu: float | None = None, node: str = "n1") -> None:
    w = Window(wid, trial, stage, node, tuple(devices), start, parent_id=parent)
    st.apply_event(json.loads(window_open_event(w)))
    if end is not None:
        st.apply_event({"type": "window_close", "window_id": wid, "t_end_s": end,
                        "tokens": tokens, "cpu_time_s": cpu})


def by_window(st: LedgerState) -> dict[tuple[str, str], float]:
    return {(r.window_id, r.device_id): r.energy_j for r in st.energy_rows()}


def test_evaluations_inside_a_training_stage_get_their_whole_interval():
    st = ledger()
    add(st, "train", 0.0, 20.0, devices=("GPU-a",))
    add(st, "eval1", 3.0, 5.0, devices=("GPU-a",), parent="train", stage="evaluation")
    add(st, "eval2", 10.0, 13.5, devices=("GPU-a",), parent="train", stage="evaluation")
    got = by_window(st)
    for dev in ("GPU-a", "cpu:package-0"):
        assert got[("eval1", dev)] == pytest.approx(truth_j(dev, 3.0, 5.0), rel=1e-9)
        assert got[("eval2", dev)] == pytest.approx(truth_j(dev, 10.0, 13.5), rel=1e-9)
        rest = truth_j(dev, 0.0, 20.0) - truth_j(dev, 3.0, 5.0) - truth_j(dev, 10.0, 13.5)
        assert got[("train", dev)] == pytest.approx(rest, rel=1e-9)
    rows = st.energy_rows()
    assert not any(r.shared for r in rows)  # nested, not side by side
    assert {r.parent_id for r in rows if r.window_id.startswith("eval")} == {"train"}
    # the stages: evaluation is not halved, training is the rest, nothing counted twice
    totals = stage_totals(energy_frame(rows)).set_index("stage")["energy_j"]
    assert totals["evaluation"] == pytest.approx(
        sum(truth_j(d, 3.0, 5.0) + truth_j(d, 10.0, 13.5) for d in ("GPU-a", "cpu:package-0")))
    assert totals.sum() == pytest.approx(
        sum(truth_j(d, 0.0, 20.0) for d in ("GPU-a", "cpu:package-0")))


def test_a_child_on_one_gpu_takes_it_from_a_parent_holding_every_device():
    st = ledger()
    add(st, "outer", 0.0, 10.0)  # measure --stage: the whole node
    add(st, "rank0", 2.0, 8.0, devices=("GPU-a",), parent="outer")
    got = by_window(st)
    assert got[("rank0", "GPU-a")] == pytest.approx(truth_j("GPU-a", 2.0, 8.0))
    assert got[("outer", "GPU-a")] == pytest.approx(
        truth_j("GPU-a", 0.0, 2.0) + truth_j("GPU-a", 8.0, 10.0))
    assert got[("outer", "GPU-b")] == pytest.approx(truth_j("GPU-b", 0.0, 10.0))  # the rest
    assert ("rank0", "GPU-b") not in got
    # the node's CPU while the child runs is the child's: it is the work the parent is doing
    assert got[("rank0", "cpu:package-0")] == pytest.approx(truth_j("cpu:package-0", 2.0, 8.0))


def test_two_ranks_inside_one_stage_split_only_what_they_share():
    st = ledger()
    add(st, "outer", 0.0, 10.0)
    add(st, "r0", 1.0, 9.0, devices=("GPU-a",), parent="outer", cpu=8.0)
    add(st, "r1", 1.0, 9.0, devices=("GPU-b",), parent="outer", cpu=24.0)
    got = by_window(st)
    assert got[("r0", "GPU-a")] == pytest.approx(truth_j("GPU-a", 1.0, 9.0))
    assert got[("r1", "GPU-b")] == pytest.approx(truth_j("GPU-b", 1.0, 9.0))
    cpu = truth_j("cpu:package-0", 1.0, 9.0)  # side by side: split 1:3 by CPU time
    assert got[("r0", "cpu:package-0")] == pytest.approx(cpu / 4)
    assert got[("r1", "cpu:package-0")] == pytest.approx(3 * cpu / 4)
    assert got[("outer", "cpu:package-0")] == pytest.approx(
        truth_j("cpu:package-0", 0.0, 10.0) - cpu)


def test_concurrent_trials_still_split_and_a_nested_window_shares_with_the_other_trial():
    st = ledger()
    add(st, "a", 0.0, 10.0, trial="t1", cpu=10.0)
    add(st, "b", 0.0, 10.0, trial="t2", cpu=10.0)
    add(st, "a-eval", 4.0, 6.0, trial="t1", stage="evaluation", parent="a", cpu=2.0)
    got = by_window(st)
    whole = truth_j("GPU-a", 0.0, 10.0)
    mid = truth_j("GPU-a", 4.0, 6.0)
    assert got[("b", "GPU-a")] == pytest.approx(whole / 2)  # two trials: equal halves
    assert got[("a-eval", "GPU-a")] == pytest.approx(mid / 2)  # a's share, not a quarter
    assert got[("a", "GPU-a")] == pytest.approx((whole - mid) / 2)
    rows = {(r.window_id, r.device_id): r for r in st.energy_rows()}
    assert rows[("b", "GPU-a")].shared and rows[("a-eval", "GPU-a")].shared


@pytest.mark.parametrize("parent", ["elsewhere", "never-opened", "self"])
def test_a_parent_on_another_node_or_unknown_is_no_parent(parent):
    st = ledger(nodes=("n1", "n2"))
    add(st, "elsewhere", 0.0, 10.0, node="n2")
    add(st, "outer", 0.0, 10.0, devices=("GPU-a",))
    add(st, "self", 2.0, 4.0, devices=("GPU-a",), parent=parent)
    got = by_window(st)
    assert got[("self", "GPU-a")] == pytest.approx(truth_j("GPU-a", 2.0, 4.0) / 2)
    assert got[("outer", "GPU-a")] == pytest.approx(
        truth_j("GPU-a", 0.0, 10.0) - truth_j("GPU-a", 2.0, 4.0) / 2)
    assert all(r.parent_id is None for r in st.energy_rows())


def test_an_open_child_inside_an_open_parent_takes_the_device_up_to_the_latest_sample():
    st = ledger(t1=12.0)
    add(st, "outer", 0.0, None, devices=("GPU-a",))
    add(st, "inner", 5.0, None, devices=("GPU-a",), parent="outer", stage="evaluation")
    got = by_window(st)
    assert got[("inner", "GPU-a")] == pytest.approx(truth_j("GPU-a", 5.0, 12.0))
    assert got[("outer", "GPU-a")] == pytest.approx(truth_j("GPU-a", 0.0, 5.0))


def test_a_grandchild_takes_the_device_from_both_ancestors():
    st = ledger()
    add(st, "outer", 0.0, 10.0)
    add(st, "train", 1.0, 9.0, devices=("GPU-a",), parent="outer")
    add(st, "eval", 4.0, 5.0, devices=("GPU-a",), parent="train", stage="evaluation")
    got = by_window(st)
    assert got[("eval", "GPU-a")] == pytest.approx(truth_j("GPU-a", 4.0, 5.0))
    assert got[("train", "GPU-a")] == pytest.approx(
        truth_j("GPU-a", 1.0, 9.0) - truth_j("GPU-a", 4.0, 5.0))
    assert got[("outer", "GPU-a")] == pytest.approx(
        truth_j("GPU-a", 0.0, 10.0) - truth_j("GPU-a", 1.0, 9.0))


def test_a_stage_with_its_tokens_stated_outside_counts_them_once():
    st = ledger()
    add(st, "outer", 0.0, 10.0, tokens=500)  # measure --stage student_training --tokens 500
    add(st, "r0", 1.0, 9.0, devices=("GPU-a",), parent="outer", tokens=240)  # the callback's
    add(st, "r1", 1.0, 9.0, devices=("GPU-b",), parent="outer", tokens=260)
    add(st, "ev", 9.0, 9.5, devices=("GPU-a",), parent="outer", stage="evaluation", tokens=30)
    totals = stage_totals(energy_frame(st.energy_rows())).set_index("stage")["tokens"]
    assert totals["student_training"] == 500
    assert totals["evaluation"] == 30  # another stage's tokens are its own


def test_inner_windows_count_the_tokens_when_the_outer_states_none():
    st = ledger()
    add(st, "outer", 0.0, 10.0)  # run.stage("student_training") around trainer.train()
    add(st, "r0", 1.0, 9.0, devices=("GPU-a",), parent="outer", tokens=240)
    add(st, "r1", 1.0, 9.0, devices=("GPU-b",), parent="outer", tokens=260)
    totals = stage_totals(energy_frame(st.energy_rows())).set_index("stage")["tokens"]
    assert totals["student_training"] == 500


def test_the_parent_survives_the_log_and_the_load_work_split():
    w = Window("w", "t", "s", "n", ("GPU-a",), 1.0, parent_id="p")
    back = Window.from_event(json.loads(window_open_event(w)))
    assert back == w
    old = {k: v for k, v in json.loads(window_open_event(w)).items() if k != "parent_id"}
    assert Window.from_event(old).parent_id is None  # logs from before nesting
    assert w.continued("w2", 2.0, None).parent_id == "p"  # loaded(): the work window nests too


def test_a_parent_opened_after_its_child_is_no_parent_so_a_cycle_loses_no_energy():
    st = ledger()
    add(st, "a", 0.0, 10.0, devices=("GPU-a",), parent="b")  # only a hand-made log says this
    add(st, "b", 0.0, 10.0, devices=("GPU-a",), parent="a")
    got = by_window(st)
    assert got[("b", "GPU-a")] == pytest.approx(truth_j("GPU-a", 0.0, 10.0))
    assert got[("a", "GPU-a")] == pytest.approx(0.0)


def test_new_work_nests_in_the_innermost_open_window_else_in_the_environments(monkeypatch):
    import contextvars

    from raydistill.cluster.windows import PARENT_ENV, _swap_open, innermost_window

    def scenario() -> list[str | None]:
        seen = [innermost_window()]
        _swap_open(None, "outer")
        _swap_open(None, "load")
        seen.append(innermost_window())
        _swap_open("load", "work")  # loaded(): the work window takes the load window's place
        seen.append(innermost_window())
        _swap_open("outer", None)  # closed out of order: the inner one stays innermost
        seen.append(innermost_window())
        _swap_open("work", None)
        seen.append(innermost_window())
        return seen

    monkeypatch.delenv(PARENT_ENV, raising=False)
    assert contextvars.copy_context().run(scenario) == [None, "load", "work", "work", None]
    monkeypatch.setenv(PARENT_ENV, "measure-window")  # a process started inside a stage
    assert contextvars.copy_context().run(scenario) == [
        "measure-window", "load", "work", "work", "measure-window"]


def test_a_parent_closed_before_the_child_opened_is_a_stale_name_not_a_parent():
    """A window finished (closed by a finish or an exit) leaves its name in the environment;
    a later stage naming it must neither lose its tokens nor its device-seconds to it."""
    st = ledger()
    add(st, "old", 0.0, 5.0, devices=("GPU-a",), tokens=100)
    add(st, "later", 10.0, 14.0, devices=("GPU-a",), parent="old", tokens=40)
    (row,) = [r for r in st.energy_rows() if r.window_id == "later" and r.device_id == "GPU-a"]
    assert row.parent_id is None and row.tokens == 40
    assert row.energy_j == pytest.approx(truth_j("GPU-a", 10.0, 14.0))
