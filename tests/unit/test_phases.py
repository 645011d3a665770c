"""A stage's model load and its steady-state work: two windows (phases "load" and "work"), one
row per stage in the results table, J/token from the work alone; compared with the true
integral of a simulated node whose power steps where loading ends."""

import asyncio
import json
import types
from pathlib import Path

import pandas as pd
import pytest

from raydistill.cluster import windows as windows_mod
from raydistill.cluster.ledger_actor import _Ledger
from raydistill.cluster.windows import StageWindow
from raydistill.energy.ledger import LedgerState
from raydistill.energy.log import KIND_BATCH, KIND_EVENT, read_log
from raydistill.energy.samples import ALL_DEVICES, Window
from raydistill.energy.simrun import SimRun
from raydistill.energy.simulate import PowerTrace, SimNode, gpu_node
from raydistill.report.data import ReportData
from raydistill.report.rules import design_rules
from raydistill.results import energy_frame, results_table, seed_metrics

LOAD_W, WORK_W = 150.0, 600.0  # the GPU while a model loads from disk, then while generating
T0, SPLIT, T1 = 0.5, 40.5, 45.5  # true seconds: 40 s of load, 5 s of work
TOKENS = 1000


def counter_tol_j(power_w: float, refresh_s: float = 0.1) -> float:
    """The NVML counter refreshes every 100 ms: at each window edge it lags by up to that."""
    return 2 * refresh_s * power_w + 1.0


def loading_node() -> tuple[SimNode, str]:
    """One GPU at LOAD_W until SPLIT, WORK_W after; two CPU packages with DRAM (constant)."""
    node = gpu_node(1)
    gpu = node.gpus[0]
    gpu.trace = PowerTrace([0.0, SPLIT, SPLIT], [LOAD_W, LOAD_W, WORK_W])
    return node, gpu.uuid


def truth_j(node: SimNode, state: LedgerState, a: float, b: float) -> float:
    """The true energy of every device the ledger measured, over true seconds [a, b]."""
    return sum(node.truth_j(d, a, b) for n in state.nodes() for d, _ in state.devices(n))


def split_stage(run: SimRun, trial: str = "t1", stage: str = "teacher_generation",
                tokens: int = TOKENS, generated: int = 0) -> None:
    """What `StageWindow.loaded()` writes: a window closed as load at SPLIT, and its work
    window opened at that same instant."""
    w0, m0 = run.at(T0)
    ws, ms = run.at(SPLIT)
    w1, m1 = run.at(T1)
    load = Window(f"{trial}-load", trial, stage, run.node_id, ALL_DEVICES, w0, t_start_mono_s=m0)
    run.apply(KIND_EVENT, LedgerState.open_event(load))
    run.apply(KIND_EVENT, LedgerState.close_event(load.window_id, ws, 0, None, ms, "load"))
    work = load.continued(f"{trial}-work", ws, ms)
    run.apply(KIND_EVENT, LedgerState.open_event(work))
    run.apply(KIND_EVENT, LedgerState.close_event(work.window_id, w1, tokens, None, m1,
                                                  generated_tokens=generated))


@pytest.fixture
def split_run(tmp_path):
    node, gpu = loading_node()
    run = SimRun(node, tmp_path)
    run.sampler("a")
    run.until(T1 + 1.0)
    split_stage(run)
    run.push_all()
    return node, gpu, run


def test_load_and_work_are_each_the_true_energy_of_their_phase(split_run):
    node, gpu, run = split_run
    rows = run.state.energy_rows()
    assert {(r.window_id, r.phase) for r in rows} == {("t1-load", "load"), ("t1-work", "work")}
    assert not any(r.shared for r in rows)  # back to back: the CPU package is not split
    load = {r.device_id: r for r in rows if r.phase == "load"}
    work = {r.device_id: r for r in rows if r.phase == "work"}
    assert load[gpu].energy_j == pytest.approx(LOAD_W * 40, abs=counter_tol_j(WORK_W))
    assert work[gpu].energy_j == pytest.approx(WORK_W * 5, abs=counter_tol_j(WORK_W))
    assert load[gpu].tokens == 0 and work[gpu].tokens == TOKENS

    (row,) = results_table(rows).itertuples()
    tol = counter_tol_j(WORK_W) + 2.0  # the GPU's edge; RAPL is read to the microjoule
    assert row.load_j == pytest.approx(truth_j(node, run.state, T0, SPLIT), abs=tol)
    assert row.work_j == pytest.approx(truth_j(node, run.state, SPLIT, T1), abs=tol)
    assert row.load_j + row.work_j == row.energy_j  # exactly
    assert row.energy_j == pytest.approx(truth_j(node, run.state, T0, T1), abs=2.0)
    assert (row.load_s, row.work_s, row.duration_s) == pytest.approx((40.0, 5.0, 45.0))
    assert row.tokens == TOKENS
    assert row.j_per_token == row.work_j / TOKENS
    assert row.j_per_token_incl_load == row.energy_j / TOKENS
    assert row.j_per_token < row.j_per_token_incl_load / 4  # the 40 s load is not per token


def test_a_split_stage_totals_what_one_window_over_both_would(split_run, tmp_path):
    node, _, run = split_run
    whole = SimRun(node, tmp_path / "whole")  # the same node, read again from the start
    node.clock.set(0.0)
    whole.sampler("a")
    whole.until(T1 + 1.0)
    w0, m0 = whole.at(T0)
    w1, m1 = whole.at(T1)
    one = Window("t1-one", "t1", "teacher_generation", whole.node_id, ALL_DEVICES, w0,
                 t_start_mono_s=m0)
    whole.apply(KIND_EVENT, LedgerState.open_event(one))
    whole.apply(KIND_EVENT, LedgerState.close_event("t1-one", w1, TOKENS, None, m1))
    (split,) = results_table(run.state.energy_rows()).itertuples()
    (single,) = results_table(whole.rows("t1-one").values()).itertuples()
    assert split.energy_j == pytest.approx(single.energy_j, abs=1e-6)
    assert split.duration_s == pytest.approx(single.duration_s)
    assert (single.load_j, single.load_s, single.work_s) == (0.0, 0.0, single.duration_s)
    assert single.j_per_token == single.j_per_token_incl_load == single.energy_j / TOKENS
    assert split.j_per_token_incl_load == pytest.approx(single.j_per_token, abs=1e-8)


def test_phases_survive_the_log_replay(split_run):
    _, _, run = split_run
    again = LedgerState()
    for kind, payload in run.records:
        again.apply(kind, payload)
    assert again.windows == run.state.windows
    assert again.energy_rows() == run.state.energy_rows()


def test_stages_without_a_load_phase_keep_their_figures(split_run):
    """A stage without load: the old sums, to the bit (energy_j, j_per_token)."""
    _, _, run = split_run
    w0, m0 = run.at(T0)
    w1, m1 = run.at(T1)
    plain = Window("t2-train", "t2", "student_training", run.node_id, ALL_DEVICES, w0,
                   t_start_mono_s=m0)
    run.apply(KIND_EVENT, LedgerState.open_event(plain))
    run.apply(KIND_EVENT, LedgerState.close_event("t2-train", w1, 777, None, m1))
    rows = run.state.energy_rows()
    table = results_table(rows).set_index(["trial_id", "stage"])
    df = energy_frame(rows)
    old = df.groupby(["trial_id", "stage"], sort=False)["energy_j"].sum()
    mine = table.loc[("t2", "student_training")]
    assert mine["energy_j"] == old[("t2", "student_training")]
    assert mine["j_per_token"] == old[("t2", "student_training")] / 777
    assert mine["load_j"] == 0.0 and mine["work_j"] == mine["energy_j"]
    assert len(table) == 2  # one row per trial × stage, not per phase


def test_old_records_without_a_phase_load_as_work(tmp_path):
    """Logs written before phases: window events without "phase" (and rows without the
    column) are work; fields a newer version wrote are ignored."""
    state = LedgerState()
    old_open = {"type": "window_open", "window_id": "w", "trial_id": "t", "stage": "s",
                "node_id": "n", "devices": ["*"], "t_start_s": 1.0, "t_end_s": None,
                "tokens": 0, "cpu_time_s": None, "t_start_mono_s": None, "t_end_mono_s": None}
    old_close = {"type": "window_close", "window_id": "w", "t_end_s": 5.0, "tokens": 10,
                 "cpu_time_s": None}
    state.apply(KIND_EVENT, json.dumps(old_open).encode())
    state.apply(KIND_EVENT, json.dumps(old_close).encode())
    assert state.windows["w"].phase == "work" and state.windows["w"].devices == ("*",)
    newer = {**old_open, "window_id": "v", "phase": "load", "added_in_v9": 1}
    state.apply(KIND_EVENT, json.dumps(newer).encode())
    assert state.windows["v"].phase == "load"

    node, _ = loading_node()
    run = SimRun(node, tmp_path)
    run.sampler("a")
    run.until(10.0)
    run.window("w", 1.0, 9.0)
    rows = [{k: v for k, v in r.__dict__.items() if k != "phase"}
            for r in run.rows("w").values()]  # as an energy.csv of an old run has them
    assert set(energy_frame(rows)["phase"]) == {"work"}
    (row,) = results_table(rows).itertuples()
    assert row.load_j == 0.0 and row.work_j == row.energy_j
    old_table = results_table(rows).drop(columns=["load_j", "load_s", "work_j", "work_s"])
    assert seed_metrics(old_table, "trial", {})["E_run_j"] == row.energy_j


def test_window_phase_is_checked():
    with pytest.raises(ValueError, match="phase"):
        Window("w", "t", "s", "n", ALL_DEVICES, 0.0, phase="warmup")
    with pytest.raises(ValueError, match="phase"):
        StageWindow("ns", "t", "s", phase="warmup")


def test_seed_metrics_charge_tokens_with_the_work_and_the_run_with_both(split_run):
    _, _, run = split_run
    table = results_table(run.state.energy_rows())
    (row,) = table.itertuples()
    m = seed_metrics(table, "t1", {})
    assert m["EPT_j_per_token"]["teacher_generation"] == row.work_j / TOKENS
    assert m["EPT_incl_load_j_per_token"]["teacher_generation"] == row.energy_j / TOKENS
    assert m["E_run_j"] == m["teacher_side_j"] == row.energy_j  # load counted once, not twice


def test_design_rules_name_the_load(split_run):
    _, _, run = split_run
    table = results_table(run.state.energy_rows())
    trials = pd.DataFrame(columns=["trial_id", "status", "quality", "energy_j"])
    data = ReportData(Path("."), "run", table, trials, [], 0.0, (0.0, 1.0), None)
    (rule,) = [r for r in design_rules(data) if r.startswith("Loading models")]
    assert f"{table['load_j'].iloc[0]:,.1f} J" in rule and "teacher_generation of t1" in rule


# ---- StageWindow.loaded() against the real ledger actor class, with Ray faked ---------------


class _Handle:
    """An actor handle whose `.method.remote(...)` runs the actor's coroutine at once."""

    def __init__(self, actor: _Ledger) -> None:
        self.actor = actor

    def __getattr__(self, name: str):
        method = getattr(self.actor, name)
        return types.SimpleNamespace(remote=lambda *a, **k: asyncio.run(method(*a, **k)))


def test_stage_window_loaded_splits_into_load_and_work(tmp_path, monkeypatch):
    node, _ = loading_node()
    run = SimRun(node, tmp_path)
    run.sampler("a")
    ledger = _Ledger(str(tmp_path / "run"), fsync=False)
    handle = _Handle(ledger)
    monkeypatch.setattr(windows_mod, "ray", types.SimpleNamespace(
        get_actor=lambda name, namespace: handle, get=lambda x: x,
        get_runtime_context=lambda: types.SimpleNamespace(get_node_id=lambda: run.node_id)))
    monkeypatch.setattr(windows_mod, "time", types.SimpleNamespace(time=node.wall,
                                                                   monotonic=node.mono))
    run.until(T0)
    with StageWindow("ns", "t1", "teacher_generation") as w:
        run.until(SPLIT)  # loading
        w.add_tokens(10)  # counted before loaded(): still the work window's
        w.loaded()
        run.until(T1 - 1.0)
        w.checkpoint()  # closes the work window, not the load one
        run.until(T1)
        w.add_tokens(TOKENS - 10)
    assert ledger.commits == 4  # open, the split (close and open together), checkpoint, exit
    run.until(T1 + 1.0)
    run.push_all()
    asyncio.run(ledger.ingest([p for k, p in run.records if k == KIND_BATCH]))

    load_id, work_id = w.window_ids
    load, work = ledger.state.windows[load_id], ledger.state.windows[work_id]
    assert (load.phase, work.phase) == ("load", "work")
    assert (load.t_end_s, load.t_end_mono_s) == (work.t_start_s, work.t_start_mono_s)
    assert (load.trial_id, load.stage, load.node_id, load.devices) == \
        (work.trial_id, work.stage, work.node_id, work.devices)
    assert (load.tokens, work.tokens) == (0, TOKENS)
    assert w.load_window == load and w.window.window_id == work_id
    assert work.t_end_mono_s == pytest.approx(node.mono_base_s + T1)
    assert w.duration_s == pytest.approx(T1 - SPLIT)

    (row,) = results_table(ledger.state.energy_rows()).itertuples()
    tol = counter_tol_j(WORK_W) + 2.0
    assert row.load_j == pytest.approx(truth_j(node, ledger.state, T0, SPLIT), abs=tol)
    assert row.work_j == pytest.approx(truth_j(node, ledger.state, SPLIT, T1), abs=tol)
    assert row.j_per_token == row.work_j / TOKENS

    # both records went to the log in one commit, and replay to the same windows
    records = read_log(tmp_path / "run" / "ledger").records
    events = [json.loads(p) for k, p in records if k == KIND_EVENT]
    assert [e["type"] for e in events] == ["window_open", "window_close", "window_open",
                                           "window_close", "window_close"]
    assert events[1]["phase"] == "load" and "phase" not in events[3]
    assert _Ledger(str(tmp_path / "run"), fsync=False).state.windows == ledger.state.windows


def test_loaded_outside_a_with_block_is_an_error():
    with pytest.raises(RuntimeError, match="with block"):
        StageWindow("ns", "t", "s").loaded()
