"""The built-in experiment's models: no download. Tokenizer: ByT5's byte-level tokenizer (no
files). Models: Llama or Qwen2 configs of a given size, randomly initialised. (The built-in
task itself is a data source: raydistill.data.addition.)
"""

from __future__ import annotations

import torch

from raydistill.errors import ConfigError

FAMILIES = ("llama", "qwen2")


def make_tokenizer():
    from transformers import ByT5Tokenizer

    return ByT5Tokenizer(extra_ids=0)


def build_tiny(spec: dict, vocab_size: int, seed: int, tokenizer=None):
    """A randomly initialised causal LM from a small config dict; its pad / EOS / BOS ids are
    `tokenizer`'s where one is given (a tiny student on a hub teacher's tokenizer), so that its
    saved config and generation_config.json stop where its tokenizer's turns end."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    spec = dict(spec)
    family = spec.pop("family", "llama")
    if family not in FAMILIES:
        raise ConfigError(f"tiny.family {family!r} unknown; valid: {', '.join(FAMILIES)}")
    hidden = int(spec.get("hidden_size", 64))
    defaults = {"hidden_size": hidden, "num_hidden_layers": 2, "num_attention_heads": 4,
                "intermediate_size": 4 * hidden, "max_position_embeddings": 64,
                "vocab_size": vocab_size, "pad_token_id": 0, "eos_token_id": 1,
                "bos_token_id": None, "tie_word_embeddings": True}
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM),
                             "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[family]
    try:
        config = config_cls(**{**defaults, **spec})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"tiny model config: {exc}") from None
    if tokenizer is not None:
        config.pad_token_id = tokenizer.pad_token_id
        config.eos_token_id = tokenizer.eos_token_id
        config.bos_token_id = tokenizer.bos_token_id
    torch.manual_seed(seed)
    model = model_cls(config)
    if tokenizer is not None:
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig(
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id)
    return model


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
