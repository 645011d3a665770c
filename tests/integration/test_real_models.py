"""The pipeline on real architectures, offline: Qwen2 models saved with save_pretrained next to
a locally trained BPE tokenizer with a ChatML template, loaded from their directories exactly as
hub models are; a JSONL chat data file; every method on 2 Ray Train workers, ZeRO-2 and ZeRO-3,
online KD with the teacher sharded as a ZeRO-3 inference engine across the workers.

One Ray cluster, one ledger session and one set of teacher artifacts serve the whole module.
"""

import json
import types

import pandas as pd
import pytest
import torch

from raydistill.config import ExperimentConfig, from_dict
from raydistill.data.chat_tasks import example_path
from raydistill.data.local_models import make_local_models

pytestmark = [pytest.mark.slow, pytest.mark.shares_ray]

WATTS = 40.0


def config(models: dict, data_file, **distill) -> ExperimentConfig:
    return from_dict(ExperimentConfig, {
        "name": "real",
        "data": {"source": str(data_file), "splits": {"test": 16, "dev": 8, "labelled": 48,
                                                      "train": 64},
                 "max_prompt_tokens": 64, "max_response_tokens": 12},
        "teacher": {"model": str(models["qwen2-teacher"]), "steps": 0},
        "student": {"model": str(models["qwen2-student"]), "steps": 6, "batch_size": 8,
                    "lr": 3e-3},
        "distill": {"method": "logit", "top_k": 8, "num_workers": 2, "zero_stage": 3,
                    **distill},
        "training": {"max_seq_len": 96, "chunk_tokens": 32, "warmup_ratio": 0.2},
        "generation": {"max_new_tokens": 8, "batch_size": 32},
        "evaluation": {"lm_eval": False, "inference_prompts": 8, "inference_min_s": 0.3},
        "sampling": {"source": f"constant:{WATTS}", "hz": 20, "push_interval_s": 0.5,
                     "idle_s": 0},
    })


@pytest.fixture(scope="module")
def world(tmp_path_factory, shared_ray):
    from raydistill.cluster.runtime import Session, init_ray, namespace_for
    from raydistill.distill.pipeline import Pipeline
    from raydistill.io import prepare_run_dir

    root = tmp_path_factory.mktemp("real")
    models = make_local_models(root / "models")
    data_file = root / "chat.jsonl"  # a user's file: the shipped rows, read as any JSONL
    data_file.write_text("".join(example_path().read_text().splitlines(True)[:400]))
    cfg = config(models, data_file)
    run_dir = prepare_run_dir(root / "run")
    namespace = namespace_for(run_dir)
    init_ray(None, namespace)
    session = Session(run_dir, namespace, cfg.sampling).start()
    pipe = Pipeline(cfg, run_dir, session, root / "artifacts")
    data = pipe.data()
    teacher = pipe.teacher_model(data)
    synthetic = pipe.synthetic_data(teacher, data, "gen")
    cache = pipe.logit_cache(teacher, synthetic, "gen")
    yield types.SimpleNamespace(root=root, models=models, cfg=cfg, run_dir=run_dir, pipe=pipe,
                                session=session, data=data, teacher=teacher,
                                synthetic=synthetic, cache=cache)
    session.close()  # the session's Ray stays up for the next module


def test_teacher_generates_through_its_chat_template(world):
    from transformers import AutoTokenizer

    from raydistill.data.format import prompt_ids
    from raydistill.distill.examples import read_synthetic

    tok = AutoTokenizer.from_pretrained(world.teacher.location)
    rows = read_synthetic(world.synthetic.path)
    assert len(rows) == 64
    for r in rows[:8]:
        messages = json.loads(r["messages"])
        ids = prompt_ids(tok, messages, 64)
        text = tok.decode(ids)
        assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")
        assert tok.eos_token_id not in list(r["completion_ids"])  # cut before the stop token
        assert len(r["completion_ids"]) <= 8
    # the teacher's stages kept the model load apart from the steady-state work
    rows = pd.DataFrame(world.session.energy_rows())
    gen = rows[rows["stage"] == "teacher_generation"]
    assert set(gen["phase"]) == {"load", "work"}
    assert gen.loc[gen["phase"] == "load", "tokens"].sum() == 0


def test_cache_holds_the_teachers_true_distribution_over_each_response(world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raydistill.distill.examples import read_synthetic
    from raydistill.distill.logit_cache import read_cache
    from raydistill.distill.teacher import teacher_examples

    tok = AutoTokenizer.from_pretrained(world.teacher.location)
    model = AutoModelForCausalLM.from_pretrained(world.teacher.location).eval()
    cache = read_cache(world.cache.path)
    rows = read_synthetic(world.synthetic.path)[:6]
    batch = {k: [r[k] for r in rows] for k in ("messages", "completion_ids", "finished")}
    for r, ex in zip(rows, teacher_examples(tok, batch, 64, 96), strict=True):
        cached = cache[r["example_id"]]
        response = ex.input_ids[ex.prompt_len:]
        assert cached["input_ids"].tolist() == response
        assert (response[-1] == tok.eos_token_id) == bool(r["finished"])
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ex.input_ids])).logits[0]
        at = logits[ex.prompt_len - 1: len(ex.input_ids) - 1] / world.cfg.distill.temperature
        logp = torch.log_softmax(at, -1)
        top = logp.gather(-1, cached["indices"])
        assert torch.allclose(top, cached["logprobs"], atol=0.02)  # bf16 storage
        assert (cached["indices"][:, 0] == logp.argmax(-1)).all()


STUDENTS = [  # (method, ZeRO stage, top_k): every method, each ZeRO stage several times
    ("logit", 3, 8),  # cached top-k
    ("logit", 3, 0),  # online dense logits, teacher sharded ZeRO-3 over the 2 workers
    ("feature", 2, 8),  # online hidden states, sharded teacher
    ("relational", 3, 8),
    ("sft", 2, 8),  # with a worker fault at step 4: restarted from the step-3 checkpoint
    ("none", 3, 8),
]


@pytest.mark.parametrize(("method", "zero", "top_k"), STUDENTS)
def test_student_trains_saves_and_reloads(world, method, zero, top_k, tmp_path):
    import dataclasses

    from transformers import AutoModelForCausalLM

    cfg = world.cfg
    fault = method == "sft"
    cfg = dataclasses.replace(
        cfg, distill=dataclasses.replace(cfg.distill, method=method, zero_stage=zero,
                                         top_k=top_k),
        training=dataclasses.replace(cfg.training, checkpoint_every=3 if fault else 0))
    world.pipe.cfg = cfg
    trial = f"{method}-z{zero}-k{top_k}"
    data_path = world.data["labelled"] if method == "none" else world.synthetic.path
    cache = world.cache if method == "logit" and top_k else None
    marker = tmp_path / "failed-once"
    extra = {"fail_once_at_step": 4, "fail_once_marker": str(marker)} if fault else None
    out, metrics = world.pipe.student(trial, method, world.teacher, data_path, cache, extra)
    assert metrics["world"] == 2
    if fault:  # the fault happened at step 4; the restart lost only step 3 (not steps 0-3)
        assert marker.read_text() == "4"
        assert metrics["resumed_from_step"] == 3 and metrics["steps_run"] == 3
    else:
        assert metrics["resumed_from_step"] == 0 and metrics["steps_run"] == 6
    assert all(map(torch.isfinite, torch.tensor([metrics["first_loss"],
                                                 metrics["final_loss"]])))
    assert metrics["tokens"] > 0 and metrics["tokens_per_s_rank0"] > 0
    assert metrics["mfu"] is None and "not estimated" in metrics["mfu_basis"]  # CPU
    # the saved student is whole (gathered from its shards under ZeRO-3) and reproduces the
    # trained engine's outputs when loaded the way a user loads a hub model
    probe = torch.load(out / "probe.pt")
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"],
                       attention_mask=probe["attention_mask"]).logits
    keep = probe["attention_mask"].bool()
    assert (logits - probe["logits"]).abs()[keep].max() < 1e-3
    assert metrics["reload_max_abs_diff"] < 1e-3
    if top_k == 0 or method in ("feature", "relational"):
        # each worker holds about half the teacher: sharded, not a copy per worker
        share = metrics["resident_params"] / metrics["total_params"]
        assert metrics["teacher_sharding"] == "zero3" and share < 0.65, share
    rows = pd.DataFrame(world.session.energy_rows())
    mine = rows[(rows["trial_id"] == trial) & (rows["stage"] == "student_training")]
    assert set(mine["phase"]) == {"load", "work"}
    assert mine["energy_j"].sum() > 0


def test_logit_kd_refuses_two_vocabularies(world, capsys):
    from raydistill.cli import main

    code = main(["run", "configs/local-chat.yaml", "--artifacts", str(world.root / "art2"),
                 "--out", str(world.root / "mismatch"), "--set",
                 "teacher.model=local:llama-teacher", "--set",
                 "student.model=local:llama-other-vocab"])
    err = capsys.readouterr().err
    assert code == 2
    assert "logit KD needs one vocabulary" in err and "llama-other-vocab" in err
    assert len(err.strip().splitlines()) == 1


def test_cache_from_a_zero3_sharded_teacher_matches_the_pool(world):
    """Logit caching as a Ray Train job over the teacher sharded across 2 workers gives the
    cache the actor pool gives (same response positions, same top-k, to bf16 rounding)."""
    import dataclasses

    from raydistill.distill.logit_cache import read_cache
    from raydistill.distill.sharded_cache import build_sharded_cache

    out = world.root / "sharded-cache"
    out.mkdir()
    cfg = dataclasses.replace(world.cfg, generation=dataclasses.replace(
        world.cfg.generation, num_actors=2, cache_engine="zero3"))
    build_sharded_cache(cfg, world.synthetic.path, world.teacher.location, out, world.run_dir,
                        world.session.namespace, "sharded-cache", use_gpu=False)
    assert len(list(out.glob("part-*.parquet"))) == 2  # one shard per worker
    pool, sharded = read_cache(world.cache.path), read_cache(out)
    assert sorted(pool) == sorted(sharded)
    for i in pool:
        assert pool[i]["input_ids"].tolist() == sharded[i]["input_ids"].tolist()
        assert torch.allclose(pool[i]["logprobs"], sharded[i]["logprobs"], atol=0.02)
    rows = pd.DataFrame(world.session.energy_rows())
    mine = rows[rows["trial_id"] == "sharded-cache"]
    assert set(mine["phase"]) == {"load", "work"} and mine["tokens"].sum() > 0
