"""Published architectures of the checkpoints the shipped configs name (pure data).

`--dry-run` plans a cluster run on a laptop: where a model is neither a local directory nor in
the hub cache, its architecture comes from here. Each entry holds the fields of the model's own
`config.json` on the Hugging Face hub that the memory plan reads (copied, not derived). Qwen2.5
pads its output layer past the tokenizer: 151,936 rows up to 3B, 152,064 from 7B.
"""

from __future__ import annotations

_QWEN25_05B = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
               "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
               "vocab_size": 151936, "tie_word_embeddings": True,
               "max_position_embeddings": 32768}
_QWEN25_15B = {"model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960,
               "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
               "vocab_size": 151936, "tie_word_embeddings": True}
_QWEN25_7B = {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
              "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
              "vocab_size": 152064, "tie_word_embeddings": False}
_LLAMA_31_8B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
                "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                "vocab_size": 128256, "tie_word_embeddings": False,
                "max_position_embeddings": 131072}
_LLAMA_32_1B = {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192,
                "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
                "head_dim": 64, "vocab_size": 128256, "tie_word_embeddings": True,
                "max_position_embeddings": 131072}
_LLAMA_31_70B = {"model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672,
                 "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
                 "vocab_size": 128256, "tie_word_embeddings": False,
                 "max_position_embeddings": 131072}

# The base Qwen2.5 1.5B/7B checkpoints were released with a 131,072-position RoPE window, the
# Instruct ones with 32,768 (their config.json files differ only there, and in eos_token_id).
KNOWN: dict[str, dict] = {
    "Qwen/Qwen2.5-0.5B": _QWEN25_05B,
    "Qwen/Qwen2.5-0.5B-Instruct": _QWEN25_05B,
    "Qwen/Qwen2.5-1.5B": {**_QWEN25_15B, "max_position_embeddings": 131072},
    "Qwen/Qwen2.5-1.5B-Instruct": {**_QWEN25_15B, "max_position_embeddings": 32768},
    "Qwen/Qwen2.5-7B": {**_QWEN25_7B, "max_position_embeddings": 131072},
    "Qwen/Qwen2.5-7B-Instruct": {**_QWEN25_7B, "max_position_embeddings": 32768},
    "meta-llama/Llama-3.1-8B": _LLAMA_31_8B,
    "meta-llama/Llama-3.1-8B-Instruct": _LLAMA_31_8B,
    "meta-llama/Llama-3.2-1B": _LLAMA_32_1B,
    "meta-llama/Llama-3.2-1B-Instruct": _LLAMA_32_1B,
    "meta-llama/Llama-3.1-70B": _LLAMA_31_70B,
    "meta-llama/Llama-3.1-70B-Instruct": _LLAMA_31_70B,
}


def known_architecture(model: str) -> dict | None:
    """The published config.json fields of a hub id in the table (a copy), else None."""
    found = KNOWN.get(model)
    return dict(found) if found is not None else None
