"""Models for the Ray Train student loop: the student (a tiny config built in code on the
teacher's tokenizer, or a hub model with its own), and the feature-KD projector. Tiny models
are built by `tiny.build_tiny` (random init, seeded, tied embeddings, the tokenizer's ids).
"""

from __future__ import annotations

from raydistill.distill.losses import FeatureProjector
from raydistill.distill.tiny import build_tiny


def build_student_model(cfg: dict):
    """(student, tokenizer): a pretrained student with its own tokenizer, or a tiny one built on
    the teacher's tokenizer (so that the two share one vocabulary)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = cfg["student"]
    tokenizer = AutoTokenizer.from_pretrained(cfg["student_path"])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if spec.get("model"):
        # fp32 whatever the checkpoint's dtype: these are the weights the optimizer steps (the
        # master weights). transformers would load a bf16 checkpoint as bf16 (dtype "auto"),
        # and AdamW on bf16 weights loses every update under 2^-8 of a weight; DeepSpeed casts
        # its own compute copy to bf16/fp16, DDP computes under autocast.
        model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    else:
        model = build_tiny(spec.get("tiny", {}), len(tokenizer), cfg["seed"] + 1, tokenizer)
        _stop_like_the_teacher(model, tokenizer, cfg["student_path"])
    return model, tokenizer


def _stop_like_the_teacher(model, tokenizer, teacher_path: str) -> None:
    """A tiny student speaks the teacher's tokenizer and chat template, so it ends a turn where
    the teacher does: the teacher's stop ids (its generation_config.json's EOS list) go into the
    student's generation config, and so into the saved student's generation_config.json, which
    evaluation and users read."""
    from raydistill.data.format import stop_ids

    stops = stop_ids(tokenizer, teacher_path)
    model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]


def build_projector(student, teacher) -> FeatureProjector:
    """Student width → teacher width; `teacher` may be a DeepSpeed engine (its `.module`)."""
    teacher_config = getattr(teacher, "module", teacher).config
    return FeatureProjector(student.config.num_hidden_layers, student.config.hidden_size,
                            teacher_config.hidden_size)
