"""Generated tokens apart from prompt tokens: a window's `generated_tokens` (the part of its
`tokens` the model wrote), carried from StageWindow through the durable log to the energy rows,
the stage table (prompt_tokens, j_per_generated_token, generated_tokens_per_s) and the report."""

import asyncio
import json
import math
import types

import pytest

from raydistill.cluster import windows as windows_mod
from raydistill.cluster.ledger_actor import _Ledger
from raydistill.cluster.windows import StageWindow
from raydistill.energy.ledger import LedgerState
from raydistill.energy.log import KIND_BATCH, KIND_EVENT, SegmentWriter, read_log
from raydistill.energy.samples import window_close_event
from raydistill.energy.simrun import SimRun
from raydistill.report.data import load_report_data
from raydistill.report.html import _stage_table, write_report
from raydistill.results import energy_frame, results_table
from tests.report_fixture import WATTS, make_sweep_dir
from tests.unit.test_phases import (
    SPLIT,
    T0,
    T1,
    WORK_W,
    _Handle,
    counter_tol_j,
    loading_node,
    split_stage,
    truth_j,
)

TOKENS, GENERATED = 300, 100  # a generation stage: 200 prompt tokens read, 100 written


def generation_stage(run: SimRun, trial: str = "t1", stage: str = "teacher_generation",
                     tokens: int = TOKENS, generated: int = GENERATED) -> None:
    """What a generating StageWindow writes: load until SPLIT, then work until T1 with
    `tokens` processed, `generated` of them generated."""
    split_stage(run, trial, stage, tokens, generated)


@pytest.fixture
def gen_run(tmp_path):
    node, gpu = loading_node()
    run = SimRun(node, tmp_path)
    run.sampler("a")
    run.until(T1 + 1.0)
    generation_stage(run)
    run.push_all()
    return node, gpu, run


def test_j_per_generated_token_is_the_work_energy_per_generated_token(gen_run):
    node, _, run = gen_run
    rows = run.state.energy_rows()
    assert {(r.phase, r.tokens, r.generated_tokens) for r in rows} == \
        {("load", 0, 0), ("work", TOKENS, GENERATED)}
    (row,) = results_table(rows).itertuples()
    tol = counter_tol_j(WORK_W) + 2.0  # the GPU's edge; RAPL is read to the microjoule
    assert row.work_j == pytest.approx(truth_j(node, run.state, SPLIT, T1), abs=tol)
    assert (row.tokens, row.generated_tokens, row.prompt_tokens) == (TOKENS, GENERATED, 200)
    assert row.j_per_generated_token == row.work_j / 100  # exactly: steady state, load left out
    assert row.j_per_token == row.work_j / TOKENS  # unchanged: every token processed
    assert row.generated_tokens_per_s == pytest.approx(GENERATED / 5.0)
    assert row.tokens_per_s == pytest.approx(TOKENS / 5.0)


def test_a_stage_that_generates_nothing_has_no_per_generated_figures(gen_run):
    _, _, run = gen_run
    generation_stage(run, trial="t2", stage="student_training", tokens=777, generated=0)
    table = results_table(run.state.energy_rows()).set_index(["trial_id", "stage"])
    train = table.loc[("t2", "student_training")]
    assert train["generated_tokens"] == 0 and train["tokens"] == 777
    assert math.isnan(train["prompt_tokens"]) and math.isnan(train["j_per_generated_token"])
    assert math.isnan(train["generated_tokens_per_s"])
    assert train["j_per_token"] == train["work_j"] / 777


def test_generated_tokens_survive_the_durable_log(gen_run, tmp_path):
    _, _, run = gen_run
    writer = SegmentWriter(tmp_path / "ledger", max_segment_bytes=4096, fsync=False)
    for record in run.records:
        writer.append([record])
    writer.close()
    replayed = LedgerState()
    log = read_log(tmp_path / "ledger")
    assert not log.damage
    for kind, payload in log.records:
        replayed.apply(kind, payload)
    assert replayed.windows == run.state.windows
    assert replayed.windows["t1-work"].generated_tokens == GENERATED
    assert replayed.energy_rows() == run.state.energy_rows()


def test_old_records_without_generated_tokens_read_as_zero(tmp_path):
    state = LedgerState()
    old_open = {"type": "window_open", "window_id": "w", "trial_id": "t", "stage": "s",
                "node_id": "n", "devices": ["*"], "t_start_s": 1.0, "t_end_s": None,
                "tokens": 0, "cpu_time_s": None, "t_start_mono_s": None, "t_end_mono_s": None}
    old_close = {"type": "window_close", "window_id": "w", "t_end_s": 5.0, "tokens": 10,
                 "cpu_time_s": None}
    state.apply(KIND_EVENT, json.dumps(old_open).encode())
    assert state.windows["w"].generated_tokens == 0
    state.apply(KIND_EVENT, json.dumps(old_close).encode())
    assert (state.windows["w"].tokens, state.windows["w"].generated_tokens) == (10, 0)

    node, _ = loading_node()
    run = SimRun(node, tmp_path)
    run.sampler("a")
    run.until(10.0)
    run.window("w", 1.0, 9.0)
    rows = [{k: v for k, v in r.__dict__.items() if k != "generated_tokens"}
            for r in run.rows("w").values()]  # as an energy.csv of an older run has them
    assert set(energy_frame(rows)["generated_tokens"]) == {0}
    (row,) = results_table(rows).itertuples()
    assert row.generated_tokens == 0 and math.isnan(row.j_per_generated_token)


def test_generated_tokens_beyond_the_tokens_are_refused():
    w = StageWindow("ns", "t", "s")
    with pytest.raises(ValueError, match="generated"):
        w.add_tokens(10, generated=11)
    with pytest.raises(ValueError, match="generated"):
        w.add_tokens(10, generated=-1)
    assert (w.tokens, w.generated_tokens) == (0, 0)  # nothing counted
    w.add_tokens(10, generated=10)
    w.add_tokens(5)
    assert (w.tokens, w.generated_tokens) == (15, 10)
    with pytest.raises(ValueError, match="generated_tokens"):
        window_close_event("w", 1.0, 10, None, generated_tokens=11)


def test_stage_window_sends_generated_tokens_with_each_close(tmp_path, monkeypatch):
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
    with StageWindow("ns", "t1", "teacher_generation", phase="load") as w:
        run.until(SPLIT)
        w.add_tokens(30, generated=10)  # counted before loaded(): still the work window's
        w.loaded()
        run.until(T1 - 1.0)
        w.checkpoint()
        run.until(T1)
        w.add_tokens(TOKENS - 30, generated=GENERATED - 10)
    load_id, work_id = w.window_ids
    windows = ledger.state.windows
    assert (windows[load_id].tokens, windows[load_id].generated_tokens) == (0, 0)
    assert (windows[work_id].tokens, windows[work_id].generated_tokens) == (TOKENS, GENERATED)

    events = [json.loads(p) for k, p in read_log(tmp_path / "run" / "ledger").records
              if k == KIND_EVENT and json.loads(p)["type"] == "window_close"]
    assert [e["generated_tokens"] for e in events] == [0, 10, GENERATED]  # split, ckpt, exit
    assert _Ledger(str(tmp_path / "run"), fsync=False).state.windows == windows  # replayed

    with pytest.raises(ValueError, match="generated_tokens"):  # refused before the log
        asyncio.run(ledger.close_window(work_id, 1.0, 5, generated_tokens=6))
    assert len(read_log(tmp_path / "run" / "ledger").records) == 5

    run.until(T1 + 1.0)
    run.push_all()
    asyncio.run(ledger.ingest([p for k, p in run.records if k == KIND_BATCH]))
    (row,) = results_table(ledger.state.energy_rows()).itertuples()
    assert row.j_per_generated_token == row.work_j / GENERATED and row.prompt_tokens == 200


def test_the_report_shows_generated_tokens_where_a_stage_has_them(tmp_path):
    d = make_sweep_dir(tmp_path)
    stages = _stage_table(load_report_data(d).results).set_index(["trial_id", "stage"])
    gen = stages.loc[("t1", "teacher_generation")]  # window 2: 200 tokens, 50 generated
    assert gen["generated_tokens"] == 50
    assert gen["j_per_generated_token"] == pytest.approx(WATTS["n2"] * 4.0 / 50)
    rest = stages.drop(index=("t1", "teacher_generation"))
    assert rest["generated_tokens"].isna().all() and rest["j_per_generated_token"].isna().all()

    write_report(d, tmp_path / "out")
    md = (tmp_path / "out" / "tables.md").read_text()
    assert "generated_tokens" in md and "j_per_generated_token" in md
    assert "generated_tokens" in (tmp_path / "out" / "report.html").read_text()
