"""The whole pipeline on a local Ray, CI-sized: `raydistill run` of the tiny config.

On a constant power source every stage's energy is power × its duration (one node, stages in
sequence, so a stage's windows cover exactly its span); a second run reuses every teacher
artifact, builds none, and says so.
"""

import json
import re

import pandas as pd
import pytest

from raydistill.cli import main
from tests.native_run import SECRET, WATTS, run_argv

pytestmark = [pytest.mark.slow, pytest.mark.shares_ray]


@pytest.fixture(scope="module")
def first_run(native_run):
    """(root, exit code) of the session's native run (tests/native_run.py)."""
    assert native_run.returncode == 0, native_run.stderr[-3000:]
    return native_run.root, native_run.returncode


def test_no_secret_reaches_the_run_directory_or_the_logs(native_run):
    files = [p for p in native_run.run_dir.rglob("*") if p.is_file()]
    assert len(files) > 10
    leaked = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert leaked == []
    log = (native_run.run_dir / "logs" / "console.log").read_text()
    assert "raydistill.run" in log, "the run logged nothing: the capture is broken"
    assert SECRET not in native_run.stdout + native_run.stderr + log


# what the libraries print when they are let through (seen in a default run before)
FOREIGN = re.compile(r"core_worker\.cc|pid=\d+\)|real_accelerator|streaming_executor|"
                     r"\d+%\||it/s\]|WARNING|INFO|Loading weights|Writing model shards")


DONE = re.compile(r"done in [\d.]+ (s|min)( \([\d.]+ (s|min) in its windows\))?, [\d.,]+ (J|kJ)")


def test_the_console_shows_raydistills_lines_and_the_libraries_go_to_the_log(native_run):
    """A default run prints its progress, one line per stage, and its tables; Ray's, Ray
    Data's, DeepSpeed's and lm-eval's output is kept, in RUN/logs/console.log."""
    out = native_run.stdout.splitlines()
    assert native_run.stderr == ""
    assert [line for line in out if FOREIGN.search(line)] == []
    progress = [line for line in out if line.startswith("[raydistill] ")]
    for stage in ("teacher_training [setup]", "teacher_generation [tiny]",
                  "teacher_logit_caching [tiny]", "student_training [tiny]", "evaluation [tiny]",
                  "student_training [tiny-baseline]", "evaluation [tiny-baseline]"):
        done = [line for line in progress if line.startswith(f"[raydistill] {stage}: done in ")]
        assert len(done) == 1, (stage, progress)
        assert DONE.search(done[0]), done[0]
    # the long waits say what they wait for, before they wait
    assert any("starting 1 Ray Train worker(s) and loading the models" in line
               for line in progress)
    # the run ends at the picture
    assert out[-1].startswith("[raydistill] report: ") and out[-1].endswith("report.html")
    assert (native_run.run_dir / "report" / "report.html").is_file()
    log = (native_run.run_dir / "logs" / "console.log").read_text()
    assert "(RayTrainWorker pid=" in log and "rank 0 step" in log  # the workers' own lines
    assert "streaming_executor" in log  # Ray Data's


def test_every_stage_measured_and_exact_on_constant_power(first_run):
    root, first = first_run
    assert first == 0
    table = pd.read_parquet(root / "first" / "results.parquet")
    stages = set(table["stage"])
    for stage in ("teacher_training", "teacher_generation", "teacher_logit_caching",
                  "student_training", "evaluation"):
        assert stage in stages, f"{stage} missing from {sorted(stages)}"
    assert (table["energy_j"] > 0).all()
    # one constant device, stages one after another: energy = power × the stage's span
    for row in table.itertuples():
        # (abs: a window's ends are float64 epoch seconds, ~0.2 µs apart at best, and a span
        # over several processes' windows adds wall-clock starts to monotonic durations,
        # which drift apart by microseconds: 1e-3 J is 25 µs at 40 W; seen 3 µs)
        assert row.energy_j == pytest.approx(WATTS * row.duration_s, rel=1e-6, abs=1e-3), \
            row.stage
    assert set(table["energy_method"]) == {"estimated"}
    # inference EPT in steady state: each probe window long enough to be measured
    inference = table[table["stage"].str.startswith("inference_")]
    assert len(inference) and (inference["duration_s"] >= 0.5).all()
    assert not inference["interpolated"].any() and (inference["unmeasured_s"] == 0).all()
    for col in ("co2e_g", "water_l", "tokens", "side", "nodes", "devices"):
        assert col in table.columns
    assert (table.loc[table["stage"] != "teacher_training", "tokens"] > 0).all()
    # the baseline trial trained the same student without a teacher
    assert {"tiny", "tiny-baseline", "setup"} <= set(table["trial_id"])


def test_seed_metrics_and_scores(first_run):
    root, _ = first_run
    metrics = json.loads((root / "first" / "metrics.json").read_text())
    main_trial = metrics["trials"][0]
    assert main_trial["E_run_j"] > 0
    assert 0 < main_trial["teacher_share"] < 1
    for key in ("teacher_quick_acc", "student_quick_acc", "teacher_raydistill_test_acc",
                "student_raydistill_test_acc"):
        assert 0.0 <= main_trial["scores"][key] <= 1.0
    assert main_trial["EPT_inference_teacher"] > 0 and main_trial["EPT_inference_student"] > 0
    assert (root / "first" / "config.yaml").exists()
    # both students wrote their in-training dev checks; N* at equal quality beside equal steps
    for trial in ("tiny", "tiny-baseline"):
        lines = [json.loads(x) for x in
                 (root / "first" / "students" / trial / "progress.jsonl").read_text().splitlines()]
        assert [x for x in lines if x["step"] > 0 and x["quality"] is not None]
    assert main_trial["N_star_equal_quality_verdict"] is not None
    assert 0.0 <= main_trial["q_star"] <= 1.0


def test_dev_scores_beside_test_scores_on_other_rows(first_run):
    """Dev decides, test reports: each trial carries exact match on the dev split beside the
    test split's, scored in the same evaluation on the split's own rows (20 dev, 60 test)."""
    from raydistill.data.splits import read_rows

    root, _ = first_run
    run_dir = root / "first"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    main_trial, baseline = metrics["trials"]
    assert main_trial["scores"]["quick_acc_rows"] == 60.0
    assert main_trial["dev_scores"]["quick_acc_rows"] == 20.0
    for key in ("teacher_quick_acc", "student_quick_acc"):
        assert 0.0 <= main_trial["dev_scores"][key] <= 1.0
    assert not any("raydistill_test" in k for k in main_trial["dev_scores"])  # no lm-eval
    assert set(baseline["dev_scores"]) == {"student_quick_acc", "quick_acc_rows"}
    # the two splits share no prompt: the dev score is not the test score under another name
    data = run_dir / "data"
    prompts = {s: {json.dumps(r["messages"]) for r in read_rows(data / f"{s}.jsonl")}
               for s in ("dev", "test")}
    assert len(prompts["dev"]) == 20 and not prompts["dev"] & prompts["test"]


def test_second_run_reuses_every_teacher_artifact(first_run, capfd):
    root, _ = first_run
    capfd.readouterr()
    assert main(run_argv(root, "second", "baseline=false", "student.lr=0.003")) == 0
    out = capfd.readouterr().out
    for kind in ("teacher_model", "synthetic_data", "logit_cache"):
        assert f"reusing {kind}" in out
    assert "building" not in out
    table = pd.read_parquet(root / "second" / "results.parquet")
    # nothing on the teacher side was rebuilt, so no window was opened for it
    assert not set(table["stage"]) & {"teacher_training", "teacher_generation",
                                      "teacher_logit_caching"}
    metrics = json.loads((root / "second" / "metrics.json").read_text())
    reused = {r.split(":")[1] for r in metrics["reused_artifacts"]}
    assert reused == {"teacher_model", "synthetic_data", "logit_cache"}
    # each artifact's manifest still says what it cost when it was built
    manifests = list((root / "artifacts").rglob("_artifact.json"))
    assert len(manifests) == 3
    for m in manifests:
        assert json.loads(m.read_text())["built_by"]["energy_j"] > 0
