"""Models for the Ray Train student loop: the student (a tiny config built in code, or a hub
model) on the teacher's tokenizer, and the feature-KD projector. Tiny models are built by
`tiny.build_tiny` (random init, seeded, tied embeddings, the byte tokenizer's ids).
"""

from __future__ import annotations

from raydistill.distill.losses import FeatureProjector
from raydistill.distill.tiny import build_tiny


def build_student_model(cfg: dict):
    """(student, tokenizer): the teacher's tokenizer, so both share one vocabulary."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg["tokenizer_path"])
    spec = cfg["student"]
    if spec.get("model"):
        model = AutoModelForCausalLM.from_pretrained(spec["model"])
    else:
        model = build_tiny(spec.get("tiny", {}), len(tokenizer), cfg["seed"] + 1)
    return model, tokenizer


def build_projector(student, teacher) -> FeatureProjector:
    return FeatureProjector(student.config.num_hidden_layers, student.config.hidden_size,
                            teacher.config.hidden_size)
