"""The tiny config trained in bf16 on this CPU (it has AVX-512 bf16), as a GPU would train it:
`raydistill run` end to end with a ZeRO-2 student, then, on the same teacher artifacts, a ZeRO-3
student on 2 workers whose in-training dev check runs on both workers. Each student is saved in
bf16, reloaded and checked, and the run's figures say bf16 (the old code trained fp32 on CPU
and said so; had it trained bf16, the reload check would have failed every run)."""

import dataclasses
import json
import math
import types

import pytest
import torch

from raydistill.cli import main
from tests.native_run import CI_SIZE
from tests.shared_ray import spent

pytestmark = [pytest.mark.slow, pytest.mark.shares_ray]

# the engine's forward and the reload run the same CPU kernels; a GPU engine's differ from the
# CPU reload's (the check's stated tolerance then applies, as save_student enforces)
ON_GPU = torch.cuda.is_available()
BF16 = ["training.precision=bf16", "baseline=false", "evaluation.lm_eval=false"]


@pytest.fixture(scope="module")
def zero2_run(tmp_path_factory, shared_ray):
    root = tmp_path_factory.mktemp("bf16")
    sets = [a for s in [*CI_SIZE, *BF16] for a in ("--set", s)]
    with spent("bf16 ZeRO-2 run"):
        code = main(["run", "configs/tiny.yaml", "--artifacts", str(root / "artifacts"),
                     "--out", str(root / "run"), *sets])
    return root, code


def _saved_in_bf16(student_dir) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    assert json.loads((student_dir / "config.json").read_text())["dtype"] == "bfloat16"
    weights = load_file(student_dir / "model.safetensors")
    assert {v.dtype for v in weights.values()} == {torch.bfloat16}
    # the probe kept the engine's bf16 logits, and the saved student reproduces them in bf16
    probe = torch.load(student_dir / "probe.pt")
    assert probe["logits"].dtype == torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"],
                       attention_mask=probe["attention_mask"]).logits
    keep = probe["attention_mask"].bool()
    diff = float((logits.float() - probe["logits"].float()).abs()[keep].max())
    assert diff == 0.0 or ON_GPU


def test_tiny_config_trains_a_bf16_zero2_student_end_to_end(zero2_run):
    root, code = zero2_run
    assert code == 0
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    train = metrics["train"]["tiny"]
    assert train["precision"] == "bf16" and train["saved_dtype"] == "bfloat16"
    assert train["zero_stage"] == 2 and train["steps_run"] == 12
    assert train["reload_max_abs_diff"] == 0.0 or ON_GPU  # same weights, dtype and kernels
    assert 0.0 <= metrics["trials"][0]["scores"]["student_quick_acc"] <= 1.0
    _saved_in_bf16(root / "run" / "students" / "tiny")


@pytest.fixture(scope="module")
def world(zero2_run):
    """One Ray cluster and ledger session over the ZeRO-2 run's teacher artifacts."""
    from raydistill.cluster.runtime import Session, init_ray, namespace_for
    from raydistill.config import load_experiment
    from raydistill.distill.pipeline import Pipeline
    from raydistill.io import prepare_run_dir

    root, code = zero2_run
    assert code == 0
    cfg = load_experiment("configs/tiny.yaml", [*CI_SIZE, *BF16])
    run_dir = prepare_run_dir(root / "students-run")
    namespace = namespace_for(run_dir)
    init_ray(None, namespace)
    session = Session(run_dir, namespace, cfg.sampling).start()
    try:
        pipe = Pipeline(cfg, run_dir, session, root / "artifacts")
        data = pipe.data()
        teacher = pipe.teacher_model(data)  # reused, as are the next two
        synthetic = pipe.synthetic_data(teacher, data, "gen")
        cache = pipe.logit_cache(teacher, synthetic, "gen")
        yield types.SimpleNamespace(cfg=cfg, pipe=pipe, data=data, teacher=teacher,
                                    synthetic=synthetic, cache=cache)
    finally:
        session.close()  # the session's Ray stays up for the next module


def _student(world, trial: str, extra: dict | None = None, training=None, **distill):
    cfg = world.cfg
    world.pipe.cfg = dataclasses.replace(
        cfg, distill=dataclasses.replace(cfg.distill, **distill),
        training=dataclasses.replace(cfg.training, **(training or {})))
    return world.pipe.student(trial, "logit", world.teacher, world.synthetic.path, world.cache,
                              extra)


def test_bf16_zero3_student_on_two_workers_checks_dev_on_both(world):
    """ZeRO-3 over 2 workers in bf16, with the in-training dev check every 4 steps: each
    worker scores its half of the dev rows on its own device inside one gather."""
    check = {"progress_every": 4, "dev_path": str(world.data["dev"]), "dev_n": 20}
    out, metrics = _student(world, "z3", check, zero_stage=3, num_workers=2)
    assert metrics["world"] == 2 and metrics["zero_stage"] == 3
    assert metrics["precision"] == "bf16" and metrics["saved_dtype"] == "bfloat16"
    assert metrics["reload_max_abs_diff"] == 0.0 or ON_GPU
    _saved_in_bf16(out)
    lines = [json.loads(x) for x in (out / "progress.jsonl").read_text().splitlines()]
    checked = [x for x in lines if x["step"] > 0]
    assert [x["step"] for x in checked] == [4, 8, 12]
    # a quality on the 20 dev rows: each worker's 10 counted, summed across the two
    for x in checked:
        assert x["dev_rows"] == 20
        assert x["quality"] is not None and round(x["quality"] * 20, 9) % 1 == 0


def test_ddp_fp16_student_trains_under_autocast_and_saves_fp16(world):
    """DDP in fp16 on this CPU: fp32 parameters behind an autocast forward, a GradScaler, the
    student saved in fp16 and reloaded within the stated tolerance."""
    from safetensors.torch import load_file

    out, metrics = _student(world, "ddp16", training={"precision": "fp16"}, engine="ddp")
    assert metrics["precision"] == "fp16" and metrics["saved_dtype"] == "float16"
    assert metrics["steps_run"] == 12 and math.isfinite(metrics["final_loss"])
    assert metrics["final_loss"] < metrics["first_loss"]
    assert {v.dtype for v in load_file(out / "model.safetensors").values()} == {torch.float16}
    probe = torch.load(out / "probe.pt")
    assert probe["logits"].dtype == torch.float16 and probe["autocast"]
