"""Every role that touches a model is placed: a pretrained teacher used as it is loads nothing,
the evaluation and teacher-build tasks hold the GPUs their models need, and `--dry-run` plans
every role offline from the published architectures, the shipped 70B config included."""

import contextlib
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest

from raydistill.architectures import KNOWN, known_architecture
from raydistill.cli import main
from raydistill.config import ExperimentConfig, ModelConfig, from_dict, load_experiment
from raydistill.errors import ConfigError
from raydistill.memory import (
    GIB,
    Architecture,
    TrainingPlan,
    count_params,
)
from raydistill.memory_estimate import estimate_memory, format_memory_plan

CONFIGS = sorted(Path("configs").glob("*.yaml"))
SEVENTY_B = "configs/llama-3.1-70b-to-3.2-1b.yaml"
LLAMA_70B = KNOWN["meta-llama/Llama-3.1-70B-Instruct"]
LLAMA_1B = KNOWN["meta-llama/Llama-3.2-1B"]


# ---- the table of published architectures ----------------------------------------------------
@pytest.mark.parametrize("model,published", [
    ("meta-llama/Llama-3.1-70B-Instruct", 70_553_706_496),
    ("meta-llama/Llama-3.1-8B", 8_030_261_248),
    ("meta-llama/Llama-3.2-1B-Instruct", 1_235_814_400),
    ("Qwen/Qwen2.5-7B-Instruct", 7_615_616_512),
    ("Qwen/Qwen2.5-1.5B", 1_543_714_304),
    ("Qwen/Qwen2.5-0.5B-Instruct", 494_032_768)])
def test_table_entries_give_the_published_parameter_totals(model, published):
    assert count_params(known_architecture(model)) == published


def test_table_has_the_padded_qwen_vocabularies_and_is_not_shared_state():
    assert known_architecture("Qwen/Qwen2.5-7B")["vocab_size"] == 152_064
    assert known_architecture("Qwen/Qwen2.5-0.5B")["vocab_size"] == 151_936
    known_architecture("Qwen/Qwen2.5-7B")["vocab_size"] = 1  # a copy: the table is untouched
    assert KNOWN["Qwen/Qwen2.5-7B"]["vocab_size"] == 152_064
    assert known_architecture("someone/else") is None
    assert all(isinstance(a["max_position_embeddings"], int) for a in KNOWN.values())


# ---- --dry-run of every shipped config, offline ------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_shipped_config_plans_every_role_offline(config, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["run", str(config), "--dry-run", "--artifacts", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "memory estimate: skipped" not in out and "does NOT fit" not in out
    assert "training worker (x" in out and "evaluation + inference probes (x" in out
    assert "teacher generation actor" in out
    cfg = load_experiment(config)
    assert ("teacher build: none" in out) == bool(cfg.teacher.model and not cfg.teacher.steps)
    assert ("teacher build (x" in out) == bool(cfg.teacher.steps)


def _dry(capsys, *sets: str) -> tuple[int, str]:
    argv = ["run", SEVENTY_B, "--dry-run"] + [a for s in sets for a in ("--set", s)]
    code = main(argv)
    return code, capsys.readouterr().out


def test_the_70b_config_lists_every_role_and_fits_on_8x80(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out = _dry(capsys)
    assert code == 0, out
    assert "8 × 80 GiB" in out
    assert "published config.json" in out  # from the table: no hub, no cache
    for role in ("teacher build: none (steps 0",
                 "teacher generation actor (8 GPUs each): vLLM tensor parallel",
                 "teacher caching: written by the generation pass",
                 "training worker (x8 GPUs): student",
                 "evaluation + inference probes (x8 GPUs): teacher layers split, student on "
                 "the first GPU"):
        assert role in out, role
    assert "does NOT fit" not in out and "asks for" not in out
    # the weights of each 70B role are the teacher's 141 GB over 8 GPUs
    per_gpu = 2 * count_params(LLAMA_70B) // 8 / GIB
    assert len(re.findall(rf"teacher weights +{per_gpu:.2f} GiB", out)) == 2


def test_the_70b_teacher_on_one_gpu_is_refused_with_what_to_raise(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out = _dry(capsys, "evaluation.gpus=1")
    assert code == 3
    assert "evaluation + inference probes does not fit: largest line is teacher weights" in out
    assert out.rstrip().endswith("raise evaluation.gpus")


def test_a_role_asking_for_more_gpus_than_the_cluster_has_does_not_fit(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out = _dry(capsys, "hardware.gpus=4")
    assert code == 3
    assert "teacher generation actor asks for 8 GPUs but the cluster has 4" in out
    assert "evaluation + inference probes asks for 8 GPUs but the cluster has 4" in out


def test_a_laptop_without_vllm_still_plans_the_clusters_vllm(capsys, monkeypatch):
    import raydistill.engine_choice as tv

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(tv, "vllm_version", lambda: None)
    code, out = _dry(capsys)
    assert code == 0, out
    assert "not installed here: the cluster needs it" in out
    assert "vLLM tensor parallel" in out


# ---- the memory of the new roles, by their formulas --------------------------------------------
PLAN = TrainingPlan(world_size=8, gpu_memory_gib=80, zero_stage=2, micro_batch_size=4,
                    max_seq_len=640, gradient_checkpointing=True, teacher="cached", top_k=64,
                    loss_chunk_tokens=2048, gpus_per_actor=8, generation_batch_size=256,
                    generation_seq_len=640, generation_engine="vllm", caching_engine="vllm",
                    teacher_as_is=True, eval_gpus=8, cluster_gpus=8)


def test_evaluation_splits_both_models_over_its_gpus():
    t, s = Architecture.from_hf_config(LLAMA_70B), Architecture.from_hf_config(LLAMA_1B)
    for gpus in (1, 2, 8):
        e = estimate_memory(LLAMA_70B, LLAMA_1B, replace(PLAN, eval_gpus=gpus)).evaluation
        assert e.teacher_weights_bytes == 2 * t.params // gpus
        assert e.student_weights_bytes == 2 * s.params  # whole, on the first GPU
        assert e.kv_cache_bytes == 64 * 640 * 2 * 80 * 8 * 128 * 2 // gpus
        assert e.logits_bytes == 64 * 640 * 128256 * 2 * 2
    assert not estimate_memory(LLAMA_70B, LLAMA_1B, replace(PLAN, eval_gpus=1)).fits


def test_a_baseline_only_run_evaluates_the_student_alone():
    e = estimate_memory(LLAMA_70B, LLAMA_1B, replace(PLAN, method="none", teacher="online",
                                                     eval_gpus=1)).evaluation
    assert e.teacher_weights_bytes == 0 and e.fits


def test_teacher_build_is_mixed_precision_adamw_over_its_gpus():
    t = Architecture.from_hf_config(LLAMA_70B)
    plan = replace(PLAN, teacher_as_is=False, teacher_build_gpus=8, teacher_build_batch_size=4)
    m = estimate_memory(LLAMA_70B, LLAMA_1B, plan)
    b = m.teacher_build
    assert (b.weights_bytes, b.gradients_bytes, b.optimizer_states_bytes) == (
        4 * t.params // 8, 4 * t.params // 8, 8 * t.params // 8)  # 16Ψ over 8 GPUs
    assert b.logits_bytes == 4 * 640 * 128256 * (2 + 8)
    assert not b.fits and not m.fits  # 1.1 TB of training state: no 8 × 80 GB holds it
    table = format_memory_plan(m)
    assert "teacher build (x8 GPUs): fine-tuning, layers split" in table
    assert "raise teacher.gpus, or use the teacher as it is (teacher.steps 0)" in table
    assert estimate_memory(LLAMA_70B, LLAMA_1B, replace(PLAN, teacher_build_gpus=0)) \
        .teacher_build is None


def test_vllm_bounds_its_step_by_its_batched_tokens_hf_does_not():
    vllm = estimate_memory(LLAMA_70B, LLAMA_1B, PLAN).generation
    hf = estimate_memory(LLAMA_70B, LLAMA_1B, replace(PLAN, generation_engine="hf")).generation
    assert vllm.activations_bytes * 10 == hf.activations_bytes  # 16,384 vs 256 × 640 tokens
    assert vllm.fits and not hf.fits


def test_zero3_caching_shards_the_teacher_over_its_workers():
    t = Architecture.from_hf_config(LLAMA_70B)
    plan = replace(PLAN, caching_engine="zero3", caching_workers=8, gpus_per_actor=1)
    m = estimate_memory(LLAMA_70B, LLAMA_1B, plan)
    assert m.caching.weights_bytes == 2 * (t.params // 8 + t.largest_gathered_params)
    assert "teacher caching (x8 GPUs): ZeRO-3 sharded over them" in format_memory_plan(m)
    assert "teacher caching asks for" in format_memory_plan(replace(m, plan=replace(
        plan, cluster_gpus=4)))


def test_plan_fields_are_checked():
    with pytest.raises(ConfigError, match="generation_engine 'sglang' unknown"):
        replace(PLAN, generation_engine="sglang")
    with pytest.raises(ConfigError, match="must be >= 0"):
        replace(PLAN, eval_gpus=-1)


# ---- config fields ------------------------------------------------------------------------------
def test_gpu_fields_are_validated_in_one_line():
    with pytest.raises(ConfigError, match=r"evaluation\.gpus must be >= 0"):
        from_dict(ExperimentConfig, {"evaluation": {"gpus": -1}})
    with pytest.raises(ConfigError, match=r"set distill\.num_workers instead"):
        from_dict(ExperimentConfig, {"student": {"gpus": 2, "model": "Qwen/Qwen2.5-0.5B"}})
    cfg = from_dict(ExperimentConfig, {"teacher": {"gpus": 4, "model": "Qwen/Qwen2.5-7B"},
                                       "evaluation": {"gpus": 2}})
    assert (cfg.teacher.gpus, cfg.evaluation.gpus) == (4, 2)


# ---- the pipeline's placement --------------------------------------------------------------------
class _Fail:
    def __getattr__(self, name):
        raise AssertionError(f"a Ray task was started ({name}) for a teacher used as it is")


class _Task:
    def __init__(self, result):
        self.result, self.options_seen = result, []

    def options(self, **kw):
        self.options_seen.append(kw)
        return self

    def remote(self, *args):
        return self.result


def _pipeline(tmp_path, monkeypatch, cfg, gpu: bool):
    import raydistill.distill.pipeline as pl

    monkeypatch.setattr(pl, "_has_gpu", lambda: gpu)
    monkeypatch.setattr(pl.ray, "get", lambda ref: ref)
    progress: list[str] = []
    session = type("Session", (), {"namespace": "ns"})()
    pipe = pl.Pipeline(cfg, tmp_path / "run", session=session, artifacts_root=tmp_path / "store",
                       progress=progress.append)
    monkeypatch.setattr(pipe, "_running", lambda *a: contextlib.nullcontext())
    monkeypatch.setattr(pipe, "_stage_energy_j", lambda *a: 0.0)
    return pipe, progress


def _hub_teacher(**teacher) -> ExperimentConfig:
    return ExperimentConfig(teacher=ModelConfig(model="meta-llama/Llama-3.1-70B-Instruct",
                                                steps=0, **teacher))


def test_a_teacher_used_as_it_is_loads_nothing_and_is_its_hub_id(tmp_path, monkeypatch):
    import raydistill.distill.stages as stages

    monkeypatch.setattr(stages, "train_model_remote", _Fail())
    pipe, progress = _pipeline(tmp_path, monkeypatch, _hub_teacher(), gpu=True)
    art = pipe.teacher_model(data=None)
    assert art.location == "meta-llama/Llama-3.1-70B-Instruct" and not art.reused
    assert [p.name for p in art.path.iterdir()] == ["_artifact.json"]  # no weights copied
    manifest = json.loads((art.path / "_artifact.json").read_text())
    assert manifest["model"] == art.location and manifest["built_by"]["energy_j"] == 0.0
    assert "nothing loaded or copied" in progress[0]
    # found again (another trial, another run on this store): the same reference, reused
    again, _ = _pipeline(tmp_path, monkeypatch, _hub_teacher(gpus=4), gpu=True)
    found = again.teacher_model(data=None)
    assert found.reused and found.key == art.key and found.location == art.location


def test_a_local_teacher_saved_again_is_a_new_reference(tmp_path, monkeypatch):
    model = tmp_path / "teacher"
    model.mkdir()
    (model / "config.json").write_text("{}")
    cfg = ExperimentConfig(teacher=ModelConfig(model=str(model), steps=0))
    pipe, _ = _pipeline(tmp_path, monkeypatch, cfg, gpu=False)
    first = pipe.teacher_model(data=None)
    assert first.location == str(model) and pipe.teacher_model(data=None).key == first.key
    (model / "model.safetensors").write_bytes(b"new weights")
    second = pipe.teacher_model(data=None)
    assert second.key != first.key and not second.reused  # its synthetic data is not reused


def test_train_lm_refuses_to_copy_a_pretrained_teacher():
    from raydistill.distill.stages import train_lm

    with pytest.raises(ConfigError, match="steps 0 is used where it is"):
        train_lm({"model": "meta-llama/Llama-3.1-70B-Instruct", "steps": 0}, "", "", 0, {})


def test_evaluation_and_teacher_build_hold_the_gpus_their_models_need(tmp_path, monkeypatch):
    import raydistill.distill.stages as stages

    cfg = replace(_hub_teacher(), generation=replace(ExperimentConfig().generation,
                                                     gpus_per_actor=4))
    evaluate = _Task({"scores": {}, "inference_tokens": {}})
    monkeypatch.setattr(stages, "evaluate_remote", evaluate)
    pipe, _ = _pipeline(tmp_path, monkeypatch, cfg, gpu=True)
    data = {"test": tmp_path / "test.jsonl"}
    pipe.evaluate("t0", {"teacher": "meta-llama/Llama-3.1-70B-Instruct"}, data)
    assert evaluate.options_seen[-1]["num_gpus"] == 4  # evaluation.gpus 0: the actor's GPUs
    pipe.cfg = replace(cfg, evaluation=replace(cfg.evaluation, gpus=8))
    pipe.evaluate("t0", {"teacher": "x"}, data)
    assert evaluate.options_seen[-1]["num_gpus"] == 8
    # without GPUs: one CPU, as before
    cpu, _ = _pipeline(tmp_path, monkeypatch, cfg, gpu=False)
    cpu.evaluate("t0", {"teacher": "x"}, data)
    assert evaluate.options_seen[-1] == {"num_cpus": 1, "scheduling_strategy": "DEFAULT"}

    build = _Task({"params": 1})
    monkeypatch.setattr(stages, "train_model_remote", build)
    trained = replace(cfg, teacher=replace(cfg.teacher, steps=10, gpus=8))

    class Splits(dict):
        digests: ClassVar[dict] = {"teacher": "d"}

    pipe, _ = _pipeline(tmp_path, monkeypatch, trained, gpu=True)
    pipe._splits = Splits(teacher=tmp_path / "teacher.jsonl")
    art = pipe.teacher_model(pipe._splits)
    assert build.options_seen[-1]["num_gpus"] == 8 and art.location == str(art.path)


def test_hf_caching_is_planned_by_its_chunked_peak(capsys, monkeypatch):
    """HF caching (no vLLM, T ≠ 1, or cache_engine zero3's fallback) was planned as whole
    [batch, sequence, vocabulary] logits: 159 GiB for the Qwen config's batch of 256, 'does NOT
    fit'. The chunked path's peak (cache_memory.hf_cache_peak, checked against a measured peak
    in test_cache_memory) is what the dry run now prints, line for line."""
    from raydistill.cache_memory import CacheShape, hf_cache_peak

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["run", "configs/qwen2.5-1.5b-to-0.5b.yaml", "--dry-run",
                 "--set", "generation.engine=hf"])
    out = capsys.readouterr().out
    assert code == 0 and "does NOT fit" not in out, out
    assert "teacher caching actor (1 GPU each)" in out
    t = Architecture.from_hf_config(KNOWN["Qwen/Qwen2.5-1.5B-Instruct"])
    s = Architecture.from_hf_config(KNOWN["Qwen/Qwen2.5-0.5B"])
    plan = replace(PLAN, generation_engine="hf", caching_engine="hf", generation_batch_size=256,
                   max_seq_len=640, response_tokens=384, cache_chunk_tokens=4096, top_k=64,
                   gpus_per_actor=1)
    caching = estimate_memory(t, s, plan).caching
    peak = hf_cache_peak(CacheShape(
        hidden=t.hidden_size, layers=t.num_layers, vocab_rows=t.vocab_size, batch=256, seq=640,
        response_positions=256 * 384, chunk_tokens=4096, top_k=64, dtype="bf16",
        intermediate=t.intermediate_size, kv_dim=t.num_kv_heads * t.head_dim,
        response_width=384, tied=t.tied_embeddings))
    assert caching.activations_bytes + caching.logits_bytes == peak.transient_bytes
    assert caching.total_gib < 8
    half = estimate_memory(t, s, replace(plan, cache_chunk_tokens=2048)).caching
    assert half.logits_bytes < caching.logits_bytes  # the chunk bounds it


def test_a_models_probe_meters_the_gpus_its_parameters_sit_on():
    """Evaluation's task holds 8 GPUs for a 70B teacher; the 1B student sits on the first one.
    Its inference probe (EPT, the distillation's payoff figure) meters that GPU, not the eight
    of the task, seven of them idle under it."""
    import torch

    from raydistill.distill.teacher import devices_of, gpu_indices

    class Param:
        def __init__(self, index):
            self.device = torch.device("cuda", index) if index is not None else \
                torch.device("cpu")

    class Model:
        def __init__(self, *indices):
            self.indices = indices

        def parameters(self):
            return [Param(i) for i in self.indices]

    held = tuple(f"GPU-{i}" for i in range(8))
    assert gpu_indices(Model(0, 0, 0)) == [0]
    assert devices_of(Model(0, 0), held) == ("GPU-0",)
    assert devices_of(Model(*range(8)), held) == held
    assert devices_of(Model(2, 3), held) == ("GPU-2", "GPU-3")
    assert devices_of(Model(None), ()) == ()  # a CPU task: its share of the node, as before
