"""Models: tiny causal LMs built from a config in code (random init, seeded), or a hub model.

`build_model(spec)` takes either
  * a dict of config values: {"family": "llama" | "qwen2", "hidden_size", "num_hidden_layers",
    "num_attention_heads", "intermediate_size", "max_position_embeddings", ...}; anything
    not given comes from `TINY_DEFAULTS`, and `vocab_size` from the caller (the tokenizer), or
  * a string: a hub id or local path, loaded with `AutoModelForCausalLM.from_pretrained`.

The tiny defaults tie the input and output embeddings (with a 259-id byte vocabulary the
embedding would otherwise be a large share of a tiny model) and use the byte tokenizer's ids
(pad 0, eos 1, no bos). `TEACHER_TINY` and `STUDENT_TINY` are the built-in experiment's pair,
sized by measurement on a 2-core CPU (see the numbers in the README).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from raydistill.distill.losses import FeatureProjector
from raydistill.distill.tiny import build_tiny
from raydistill.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

FAMILIES = ("llama", "qwen2")
BYTE_VOCAB_SIZE = 259  # ByT5Tokenizer(extra_ids=0): pad, eos, unk + 256 bytes

TINY_DEFAULTS: dict[str, Any] = {
    "family": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": None,  # None = 4 x hidden_size
    "max_position_embeddings": 64,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": None,
    "tie_word_embeddings": True,
}

# The built-in pair (2-digit addition). Parameters with the 259-id vocabulary, tied embeddings.
TEACHER_TINY: dict[str, Any] = {"family": "llama", "hidden_size": 128, "num_hidden_layers": 4,
                                "num_attention_heads": 4, "intermediate_size": 512}
STUDENT_TINY: dict[str, Any] = {"family": "llama", "hidden_size": 64, "num_hidden_layers": 1,
                                "num_attention_heads": 4, "intermediate_size": 256}


def tiny_config(spec: dict[str, Any], vocab_size: int = BYTE_VOCAB_SIZE):
    """The transformers config a tiny spec stands for (defaults filled in, values checked)."""
    from transformers import LlamaConfig, Qwen2Config

    values = {**TINY_DEFAULTS, **spec}
    family = values.pop("family")
    if family not in FAMILIES:
        raise ConfigError(f"model family {family!r} unknown; valid: {', '.join(FAMILIES)}")
    values.setdefault("vocab_size", vocab_size)
    if values["intermediate_size"] is None:
        values["intermediate_size"] = 4 * int(values["hidden_size"])
    if int(values["hidden_size"]) % int(values["num_attention_heads"]):
        raise ConfigError(f"hidden_size {values['hidden_size']} is not a multiple of "
                          f"num_attention_heads {values['num_attention_heads']}")
    config_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[family]
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"tiny model config: {exc}") from None


def build_model(spec: dict[str, Any] | str, vocab_size: int = BYTE_VOCAB_SIZE,
                seed: int = 0) -> PreTrainedModel:
    """A causal LM: a tiny config (random init from `seed`) or a hub id / local path."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM, Qwen2ForCausalLM

    if isinstance(spec, str):
        return AutoModelForCausalLM.from_pretrained(spec)
    config = tiny_config(spec, vocab_size)
    model_cls = LlamaForCausalLM if config.model_type == "llama" else Qwen2ForCausalLM
    # Seed the global generator only for the init, and put it back: building a model must not
    # change what later random draws in the caller give.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    return model


def count_params(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Parameters of a model (tied weights counted once, as `model.parameters()` yields them)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------------------------
# Used by the Ray Train student loop (train.py).


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
