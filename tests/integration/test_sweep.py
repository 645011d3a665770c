"""The 4-trial smoke sweep end to end on 2 CPUs, with its driver killed and resumed.

The driver is SIGKILLed while the second trial runs; `--resume` finishes the sweep. Then:
every trial is in the table once, the killed attempt's energy is waste (not lost, not added to
the trial), the ledger's total equals setup + trials + waste (nothing counted twice), and
pareto.csv and the hypervolume are what `raydistill.pareto` computes from the trials table.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from raydistill.cli import main
from raydistill.pareto import hypervolume_2d, pareto_front
from tests.shared_ray import spent

pytestmark = [pytest.mark.slow, pytest.mark.shares_ray]
ROOT = Path(__file__).resolve().parents[2]
SPACE = str(ROOT / "search_spaces" / "smoke.yaml")


def _second_trial_started(out: Path) -> bool:
    return any((out / "tune" / "sweep").glob("run_trial_*_00001_*")) and any(
        (out / "students").glob("*_00001~*/progress.jsonl"))


@pytest.fixture(scope="module")
def resumed_sweep(tmp_path_factory, shared_ray):
    with spent("smoke sweep, killed and resumed"):
        return _resumed_sweep(tmp_path_factory.mktemp("sweep") / "smoke")


def _resumed_sweep(out: Path):
    proc = subprocess.Popen([sys.executable, "-m", "raydistill.cli", "sweep", SPACE,
                             "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, cwd=ROOT)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None and not _second_trial_started(out):
            time.sleep(1.0)
    finally:  # also when pytest itself is stopped: the driver has its own session, and a
        # sweep left running would hold the cores for every test after it
        killed = proc.poll() is None
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver dies mid-trial, Ray with it
            proc.wait()
    code = main(["sweep", SPACE, "--out", str(out), "--resume"])
    return out, killed, code


def test_resumed_sweep_finishes_every_trial(resumed_sweep):
    out, killed, code = resumed_sweep
    assert killed, "the first driver finished before it could be killed"
    assert code == 0
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 4 and trials["trial_id"].is_unique
    assert set(trials["status"]) <= {"finished", "stopped_by_scheduler"}
    assert (trials["status"] == "finished").sum() >= 2
    assert (trials["energy_marginal_j"] > 0).all()


def test_no_energy_counted_twice_and_the_lost_attempt_is_waste(resumed_sweep):
    out, _, _ = resumed_sweep
    trials = pd.read_parquet(out / "trials.parquet")
    results = pd.read_parquet(out / "results.parquet")
    retried = trials[trials["attempts"] > 1]
    assert len(retried) >= 1, "the killed trial should have been run again"
    assert (retried["wasted_j"] > 0).all()
    measured = results.loc[~results["stage"].str.startswith("inference_"), "energy_j"].sum()
    setup = results.loc[results["trial_id"] == "setup", "energy_j"].sum()
    finished = trials.loc[trials["status"] == "finished", "energy_marginal_j"].sum()
    # every joule the ledger holds is setup, a finished trial's or waste: once each
    assert measured == pytest.approx(setup + finished + trials["wasted_j"].sum(), rel=1e-9)
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["wasted_j"] == pytest.approx(trials["wasted_j"].sum())


def test_pareto_csv_is_the_front_of_the_trials_table(resumed_sweep):
    out, _, _ = resumed_sweep
    trials = pd.read_parquet(out / "trials.parquet")
    done = trials[trials["status"] == "finished"].reset_index(drop=True)
    front = set(done.iloc[pareto_front(done[["quality", "energy_j"]].to_numpy(),
                                       ("max", "min"))]["trial_id"])
    pareto = pd.read_csv(out / "pareto.csv")
    assert set(pareto["trial_id"]) == front
    assert {"param.distill.method", "param.student.steps"} <= set(pareto.columns)
    summary = json.loads((out / "sweep.json").read_text())
    hv = hypervolume_2d(pareto[["quality", "energy_j"]].to_numpy(), summary["reference"],
                        ("max", "min"))
    assert summary["hypervolume"] == pytest.approx(hv)


def test_the_students_learn_and_the_front_is_chosen_on_dev_with_test_beside(resumed_sweep):
    """The smoke sweep is sized so its students learn and differ: a wrong front (chosen on
    test, or on nothing) would show here."""
    out, _, _ = resumed_sweep
    trials = pd.read_parquet(out / "trials.parquet")
    done = trials[trials["status"] == "finished"]
    assert (trials["quality_selected_on"] == "dev").all()
    assert done["quality"].max() >= 0.2, "no student learned: the front would be noise"
    assert done["quality"].nunique() >= 2 and done["quality_test"].nunique() >= 2
    assert (done["quality_n"] == 64).all()  # the whole dev split
    pareto = pd.read_csv(out / "pareto.csv")
    assert {"quality_dev", "quality_test"} <= set(pareto.columns)
    assert (pareto["quality_dev"] == pareto["quality"]).all()
    # non-dominated on dev: no finished trial is at least as good and cheaper, or better and
    # no dearer, than a member of the set
    for p in pareto.itertuples():
        better = done[(done["quality"] >= p.quality_dev) & (done["energy_j"] <= p.energy_j)
                      & ((done["quality"] > p.quality_dev) | (done["energy_j"] < p.energy_j))]
        assert better.empty, f"{p.trial_id} is dominated on dev by {list(better['trial_id'])}"
    # the best dev trial is in the set (it cannot be dominated in quality)
    assert done.loc[done["quality"].idxmax(), "trial_id"] in set(pareto["trial_id"])
    assert json.loads((out / "sweep.json").read_text())["pareto_selected_on"] == "dev"


def test_dry_run_forecasts_from_the_finished_sweep(resumed_sweep, capsys):
    out, _, _ = resumed_sweep
    assert main(["sweep", SPACE, "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "whole sweep:" in text and "forecast from" in text
