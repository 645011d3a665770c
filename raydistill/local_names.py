"""The `local:NAME` model names a config may give, and their check (pure).

The config checks a name when it is loaded, and `raydistill.local_models` (which builds the
models, with transformers) resolves it later: the names live here, below both, so the config
needs nothing from the module that builds them.
"""

from __future__ import annotations

from raydistill.errors import ConfigError

PREFIX = "local:"
NAMES = ("qwen2-teacher", "qwen2-student", "llama-teacher", "llama-student",
         "llama-other-vocab")
# on the real Qwen2.5 tokenizer with hub row counts (raydistill.data.qwen_models.NAMES)
QWEN_NAMES = ("qwen2.5-instruct-teacher", "qwen2.5-instruct-student", "qwen2.5-base-student")


def is_local(model: str) -> bool:
    return model.startswith(PREFIX)


def check_name(model: str) -> None:
    if is_local(model) and model[len(PREFIX):] not in NAMES + QWEN_NAMES:
        raise ConfigError(f"model {model!r} unknown; local models: "
                          f"{', '.join(PREFIX + n for n in NAMES + QWEN_NAMES)}")
