"""`local:NAME` model names: hub-shaped models made offline, resolved to directories.

`teacher.model: local:qwen2-teacher` names one of the directories `raydistill.data.
local_models.make_local_models` builds (a scaled-down Qwen2 or Llama with random weights, saved
with `save_pretrained` next to a locally trained BPE tokenizer with its family's chat template).
They are built once under the artifacts root and then loaded through `AutoModelForCausalLM` /
`AutoTokenizer` from that path, exactly as a hub model is: the laptop and CI configs exercise
the real-model path without a download. The names themselves (and their check, which the config
runs) are in `raydistill.local_names`, below the config.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from raydistill.config import ExperimentConfig
from raydistill.local_names import PREFIX, QWEN_NAMES, is_local


def resolve_models(cfg: ExperimentConfig, root: Path) -> ExperimentConfig:
    """The config with every `local:` model replaced by its directory (built if missing)."""
    if not (is_local(cfg.teacher.model) or is_local(cfg.student.model)):
        return cfg
    from transformers.utils import logging as hf_logging

    from raydistill.data.local_models import make_local_models
    from raydistill.data.qwen_models import make_qwen_models

    names = {getattr(cfg, role).model[len(PREFIX):] for role in ("teacher", "student")
             if is_local(getattr(cfg, role).model)}
    hf_logging.disable_progress_bar()  # save_pretrained's bars are not this command's output
    try:
        dirs: dict[str, Path] = {}
        if names - set(QWEN_NAMES):
            dirs.update(make_local_models(Path(root) / "local_models"))
        if names & set(QWEN_NAMES):  # only then: converting the real tokenizer takes seconds
            dirs.update(make_qwen_models(Path(root) / "qwen_models"))
    finally:
        hf_logging.enable_progress_bar()
    out = cfg
    for role in ("teacher", "student"):
        model = getattr(cfg, role).model
        if is_local(model):
            path = str(dirs[model[len(PREFIX):]].resolve())
            out = dataclasses.replace(out, **{role: dataclasses.replace(getattr(out, role),
                                                                        model=path)})
    return out
