"""`raydistill run CONFIG --dry-run`: resolve the config, check the tokenizers, estimate memory.

Nothing is trained or generated (`local:` models are built if missing, a few seconds, as the
run would). Model architectures come from each model's config.json (a local directory, or the
hub cache when the id was downloaded before), else from raydistill's table of the published
config.json files of the models the shipped configs name (`raydistill.architectures`), so a
cluster run is planned offline; a model in none of these is said so, and the checks that need
it are skipped, never guessed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from raydistill.config import ExperimentConfig
from raydistill.errors import ConfigError

log = logging.getLogger(__name__)

BYTE_VOCAB = 259  # the built-in task's byte tokenizer (ByT5, no extra ids)


def architecture(model: str, tiny: dict) -> tuple[dict | None, str]:
    """(config.json as a dict, where it came from), or (None, why not)."""
    if not model:
        spec = dict(tiny)
        spec.pop("family", None)
        hidden = int(spec.get("hidden_size", 64))
        heads = int(spec.get("num_attention_heads", 4))
        return {"model_type": tiny.get("family", "llama"), "hidden_size": hidden,
                "num_hidden_layers": int(spec.get("num_hidden_layers", 2)),
                "num_attention_heads": heads,
                "num_key_value_heads": int(spec.get("num_key_value_heads", heads)),
                "intermediate_size": int(spec.get("intermediate_size", 4 * hidden)),
                "vocab_size": BYTE_VOCAB, "tie_word_embeddings": True}, "tiny (built in code)"
    local = Path(model).expanduser() / "config.json"
    if local.is_file():
        return json.loads(local.read_text()), str(local)
    try:
        from transformers import AutoConfig

        return (AutoConfig.from_pretrained(model, local_files_only=True).to_dict(),
                f"{model} (hub cache)")
    except Exception:  # offline, gated, misspelt: the table, else not in the cache
        pass
    from raydistill.architectures import known_architecture

    known = known_architecture(model)
    if known is not None:
        return known, f"{model} (published config.json, raydistill.architectures; offline)"
    return None, (f"{model} is not in the local hub cache (huggingface-cli download "
                  f"{model} --include config.json tokenizer*, or give a local path)")


def tokenizer_check(cfg: ExperimentConfig, local_only: bool = True) -> str:
    """One line: whether the pair can do the configured method (loads tokenizers only; from
    the local hub cache alone when `local_only`, as a dry run must)."""
    method = cfg.distill.method
    if not cfg.student.model:
        return "tokenizers: the student is built on the teacher's tokenizer (one vocabulary)"
    if not cfg.teacher.model:
        if method in ("logit", "feature"):
            raise ConfigError(f"{method} KD needs one vocabulary, but the built-in teacher has "
                              f"a byte tokenizer and the student {cfg.student.model} its own; "
                              "use distill.method sft, or a pretrained teacher")
        return "tokenizers: two vocabularies (the built-in teacher's bytes); " \
               f"{method} works with either"
    try:
        from transformers import AutoTokenizer

        teacher = AutoTokenizer.from_pretrained(cfg.teacher.model, local_files_only=local_only)
        student = AutoTokenizer.from_pretrained(cfg.student.model, local_files_only=local_only)
    except Exception:
        if not local_only:
            raise
        return ("tokenizers: not checked here (not in the local hub cache); the run checks them "
                "before its first stage")
    from raydistill.data.format import check_vocabulary, same_vocabulary

    if method in ("logit", "feature"):
        check_vocabulary(teacher, student, cfg.teacher.model, cfg.student.model,
                         f"{method} KD")
        return f"tokenizers: one vocabulary ({len(teacher):,} tokens): {method} KD can run"
    same = same_vocabulary(teacher, student)
    return (f"tokenizers: {'one vocabulary' if same else 'two vocabularies'} "
            f"({len(teacher):,} / {len(student):,} tokens); {method} works with either")


def plan_of(cfg: ExperimentConfig, engine: str = "hf") -> Any:
    """The memory plan's layout of `cfg`, its teacher served by `engine` (hf | vllm)."""
    from raydistill.memory import TrainingPlan

    d, t, g = cfg.distill, cfg.training, cfg.generation
    cached = d.method == "logit" and d.top_k > 0
    # as Pipeline.cache_engine: vLLM's raw logprobs are a cache at temperature 1 only
    cache_engine = "zero3" if g.cache_engine == "zero3" else (
        "vllm" if engine == "vllm" and d.temperature == 1.0 else "hf")
    data = cfg.data
    # the plan is for the GPUs named in `hardware` (auto = bf16 there), not for this machine
    precision = t.precision if t.precision != "auto" else "bf16"
    return TrainingPlan(
        world_size=d.num_workers, gpu_memory_gib=cfg.hardware.gpu_memory_gib,
        zero_stage=d.zero_stage if d.engine == "deepspeed" else 0, precision=precision,
        engine=d.engine,
        micro_batch_size=max(1, cfg.student.batch_size // (d.num_workers * t.grad_accum)),
        max_seq_len=t.max_seq_len, gradient_checkpointing=t.gradient_checkpointing,
        method=d.method, teacher="cached" if cached else "online",
        teacher_sharded=d.teacher_sharding == "zero3", top_k=max(d.top_k, 1),
        loss_chunk_tokens=t.chunk_tokens, gpus_per_actor=g.gpus_per_actor,
        generation_batch_size=g.batch_size,
        generation_seq_len=data.max_prompt_tokens + g.max_new_tokens,
        generation_engine=engine, caching_engine=cache_engine,
        caching_workers=max(1, g.num_actors), cache_chunk_tokens=g.cache_chunk_tokens,
        response_tokens=data.max_response_tokens,
        teacher_build_gpus=teacher_build_gpus(cfg),
        teacher_as_is=bool(cfg.teacher.model) and not cfg.teacher.steps,
        teacher_build_batch_size=cfg.teacher.batch_size,
        teacher_build_seq_len=data.max_prompt_tokens + data.max_response_tokens,
        eval_gpus=evaluation_gpus(cfg),
        cluster_gpus=cfg.hardware.gpus or d.num_workers + scoring_gpus(cfg),
        scoring_gpus=scoring_gpus(cfg))


def scoring_gpus(cfg: ExperimentConfig) -> int:
    """GPUs the on-policy teacher_scoring pool holds while the student trains (its actors
    beside the training workers, for the whole training); 0 for other methods."""
    g = cfg.generation
    return g.num_actors * g.gpus_per_actor if cfg.distill.method == "onpolicy" else 0


def teacher_build_gpus(cfg: ExperimentConfig) -> int:
    """GPUs the teacher_training task holds: none when the teacher is a pretrained model used
    as it is (steps 0: nothing is loaded), else teacher.gpus (0 = generation.gpus_per_actor)."""
    if cfg.teacher.model and not cfg.teacher.steps:
        return 0
    return cfg.teacher.gpus or cfg.generation.gpus_per_actor


def evaluation_gpus(cfg: ExperimentConfig) -> int:
    """GPUs of the evaluation task: evaluation.gpus, or the GPUs one teacher generation actor
    holds (what the teacher needs to be served)."""
    return cfg.evaluation.gpus or cfg.generation.gpus_per_actor


def planned_engine(requested: str, teacher: dict | None, on_gpu: bool,
                   choose: Any) -> tuple[str, str]:
    """(engine, why) the cluster will use: `choose` (engine_choice.choose_engine) decides, but
    an explicit vllm is planned even where this machine lacks vLLM (a laptop plans a cluster
    run; the run itself refuses to start without it)."""
    from raydistill.engine_choice import INSTALL, vllm_version

    if requested == "vllm" and vllm_version() is None:
        return "vllm", f"vLLM (generation.engine: vllm; not installed here: the cluster needs " \
                       f"it, {INSTALL})"
    return choose(requested, teacher, on_gpu)


def dry_run(cfg: ExperimentConfig) -> tuple[str, bool]:
    """(the text to print, whether everything fits)."""
    from raydistill.memory_estimate import estimate_memory, format_memory_plan

    lines = [f"config {cfg.name}: {cfg.distill.method} KD, teacher "
             f"{cfg.teacher.model or 'tiny'} → student {cfg.student.model or 'tiny'}, "
             f"data {cfg.data.source}, {cfg.distill.num_workers} training worker(s), "
             f"{cfg.distill.engine}"
             + (f" ZeRO-{cfg.distill.zero_stage}" if cfg.distill.engine == "deepspeed" else "")]
    lines.append(tokenizer_check(cfg))
    teacher, t_from = architecture(cfg.teacher.model, cfg.teacher.tiny)
    student, s_from = architecture(cfg.student.model, cfg.student.tiny)
    lines += [f"teacher architecture: {t_from}", f"student architecture: {s_from}"]
    engine = "hf"
    if cfg.generation.engine != "hf":
        from raydistill.engine_choice import choose_engine

        # for the GPUs named in `hardware`, not this machine (as the memory plan)
        on_gpu = not cfg.hardware.gpu.lower().startswith("none")
        engine, why = planned_engine(cfg.generation.engine, teacher, on_gpu, choose_engine)
        lines.append(f"teacher engine: {why}")
    if teacher is None or student is None:
        lines.append("memory estimate: skipped (an architecture is not reachable; download the "
                     "model or give a local path)")
        return "\n".join(lines), True
    plan = estimate_memory(teacher, student, plan_of(cfg, engine))
    lines.append(f"hardware: {cfg.hardware.gpu}, {plan.plan.cluster_gpus} × "
                 f"{cfg.hardware.gpu_memory_gib:g} GiB")
    lines.append(format_memory_plan(plan))
    return "\n".join(lines), plan.fits
