"""The whole pipeline on a local Ray, CI-sized: `raydistill run` of the tiny config.

On a constant power source every stage's energy is power × its duration (one node, stages in
sequence, so a stage's windows cover exactly its span); a second run reuses every teacher
artifact, builds none, and says so.
"""

import json
import logging

import pandas as pd
import pytest

from raydistill.cli import main

pytestmark = pytest.mark.slow

WATTS = 40.0
CI_SIZE = [
    "data.splits.labelled=200", "data.splits.train=300", "data.splits.test=60",
    "data.splits.dev=20",
    "teacher.steps=40", "student.steps=12", "student.batch_size=32",
    "generation.batch_size=150", "evaluation.limit=40", "evaluation.inference_prompts=20",
    "evaluation.inference_min_s=0.5",
    f"sampling.source=constant:{WATTS}", "sampling.hz=20", "sampling.push_interval_s=0.5",
    "sampling.idle_s=0",
]


def run_argv(root, name, *extra):
    sets = [a for s in [*CI_SIZE, *extra] for a in ("--set", s)]
    return ["run", "configs/tiny.yaml", "--artifacts", str(root / "artifacts"),
            "--out", str(root / name), *sets]


SECRET = "hf_raydistillSentinel0123456789"  # a token in the environment must go nowhere
RECORDS: list[logging.LogRecord] = []  # what the driver logged during the first run


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    handler = logging.Handler()
    handler.emit = RECORDS.append
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.INFO)  # progress lines are INFO: capture them too
    root_logger.addHandler(handler)
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_TOKEN", SECRET)
    mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    try:
        code = main(run_argv(root, "first"))
    finally:
        mp.undo()
        root_logger.removeHandler(handler)
        root_logger.setLevel(level)
    return root, code


def test_no_secret_reaches_the_run_directory_or_the_logs(first_run):
    root, _ = first_run
    files = [p for p in (root / "first").rglob("*") if p.is_file()]
    assert len(files) > 10
    leaked = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert leaked == []
    assert RECORDS, "the run logged nothing: the capture is broken"
    assert not [r for r in RECORDS if SECRET in r.getMessage()]


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
