"""The training engine's pieces: DeepSpeed configs, the LR schedule, the sharded online teacher,
ZeRO-3 parameter gathering, saving, and Ray Train checkpoints.

Precision: what `training.precision` names trains, on a GPU or on the CPU alike (the CPU kernels
run bf16 and fp16, and DeepSpeed's bf16/fp16 sections run over gloo); only `auto` picks fp32 on
a CPU. Below fp32 the weights the optimizer steps stay fp32 (master weights): DeepSpeed keeps
fp32 partitions of them itself, DDP keeps fp32 parameters and runs the forward under autocast
(fp16 with a GradScaler). The online teacher is a ZeRO-3 inference engine sharded across
the training workers, built the way TRL's `prepare_deepspeed` builds it: loaded under
`HfDeepSpeedConfig` so that every rank materialises only its shard, with no optimizer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raydistill.errors import ConfigError

log = logging.getLogger(__name__)

# Dense bf16 peak of the accelerators MFU is quoted against (vendor data sheets, TFLOP/s).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0,
               "L4": 121.0, "V100": 125.0}


def resolve_precision(precision: str) -> str:
    """auto → bf16 where the GPU has it, fp16 on older GPUs, fp32 on CPU (bf16 is slower than
    fp32 there for small models). A named precision is what trains, CPU included: substituting
    fp32 would measure and report another run than the one asked for."""
    if precision in ("bf16", "fp16", "fp32"):
        return precision
    if precision != "auto":
        raise ConfigError(f"training.precision {precision!r} unknown; valid: auto, bf16, fp16, "
                         f"fp32")
    if not torch.cuda.is_available():
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def dtype_of(precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def student_ds_config(cfg: dict, micro_batch: int, precision: str) -> dict:
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": cfg["grad_accum"],
        "zero_optimization": {"stage": cfg["zero_stage"]},
        "zero_allow_untested_optimizer": True,  # a plain torch AdamW, which runs on CPU
        "steps_per_print": 10**9,
    }
    if cfg["clip_norm"] > 0:
        ds["gradient_clipping"] = cfg["clip_norm"]
    if precision == "bf16":
        ds["bf16"] = {"enabled": True}
    elif precision == "fp16":
        ds["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return ds


def autocast_forward(module: nn.Module, precision: str, device_type: str):
    """DDP's mixed precision: `module` keeps its fp32 parameters (AdamW's master weights and
    state stay fp32) and its forward runs under autocast in `precision`. Returns the GradScaler
    fp16 needs (its smallest normal, 6e-5, lets small gradients underflow to 0 unscaled), else
    None."""
    if precision == "fp32":
        return None
    module.forward = torch.autocast(device_type, dtype=dtype_of(precision))(module.forward)
    return torch.amp.GradScaler(device_type) if precision == "fp16" else None


def fp32_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the module's fp32 buffers, to put back after DeepSpeed casts the module."""
    return {n: b.detach().clone() for n, b in module.named_buffers() if b.dtype == torch.float32}


def restore_buffers(module: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Put back buffers DeepSpeed's bf16/fp16 cast rounded. RoPE's inv_freq is one: rounded to
    bf16 (2^-8), a rotation angle at position p is off by ~p/256 rad, so the engine would train
    a model that is not the one it saves (a reload builds inv_freq in fp32 again)."""
    for name, value in saved.items():
        owner, _, leaf = name.rpartition(".")
        sub = module.get_submodule(owner)
        sub._buffers[leaf] = value.to(sub._buffers[leaf].device)


def teacher_ds_config(hidden_size: int, precision: str) -> dict:
    """ZeRO-3 inference: TRL's prepare_deepspeed settings (persistence threshold 10·H keeps
    only small tensors such as norms whole on every rank)."""
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": 10 * hidden_size,
            "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
            "reduce_bucket_size": hidden_size * hidden_size,
        },
        "steps_per_print": 10**9,
    }
    if precision in ("bf16", "fp16"):
        ds[precision] = {"enabled": True}
    return ds


def load_sharded_teacher(path: str, precision: str) -> tuple[Any, dict]:
    """(teacher engine, {resident_params, total_params}): loaded straight into ZeRO-3 shards."""
    import deepspeed
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    hidden = AutoConfig.from_pretrained(path).hidden_size
    ds = teacher_ds_config(hidden, precision)
    keep_alive = HfDeepSpeedConfig(ds)  # from_pretrained loads under zero.Init while it lives
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype_of(precision))
    del keep_alive
    engine, *_ = deepspeed.initialize(model=model, config=ds)
    engine.eval()
    resident = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
                   for p in engine.module.parameters())
    total = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters())
    return engine, {"resident_params": int(resident), "total_params": int(total)}


def lr_factor(step: int, total: int, warmup_ratio: float, schedule: str,
              min_ratio: float) -> float:
    """Linear warm-up over the first warmup_ratio × total steps, then cosine / linear decay to
    min_ratio (or constant)."""
    warmup = int(warmup_ratio * total)
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def gathered_state_dict(module: nn.Module, zero_stage: int, rank: int) -> dict | None:
    """The full parameters on rank 0 (a CPU copy), gathered from ZeRO-3 shards when they are
    partitioned; every rank must call it (the gather is collective)."""
    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    else:
        state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    return state if rank == 0 else None


@contextmanager
def full_parameters(engine, zero_stage: int) -> Iterator[nn.Module]:
    """The whole trained module on every rank, for a forward each rank runs on its own (the dev
    check's generation). Under ZeRO-3 the parameters are gathered once (a collective) and
    DeepSpeed's per-module fetch/release hooks are lifted while it lasts, as TRL's
    `unwrap_model_for_generation` does: with them a rank's every forward would all-gather, and
    ranks generating different numbers of tokens would wait on each other forever."""
    module = getattr(engine, "module", engine)
    if zero_stage != 3:
        yield module
        return
    import deepspeed

    offload = getattr(engine.optimizer, "parameter_offload", engine.optimizer)
    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        for p in module.parameters():
            p.ds_active_sub_modules.clear()
        for hook in [*offload.forward_hooks, *offload.backward_hooks]:
            hook.remove()
        offload.forward_hooks, offload.backward_hooks = [], []
        try:
            yield module
        finally:
            offload._register_deepspeed_module(offload.module)


def save_checkpoint(engine, optimizer, scheduler, cfg: dict, step: int, consumed: int,
                    out: Path, rank: int) -> None:
    """This rank's part of a training checkpoint (DeepSpeed: every rank writes its shards)."""
    out.mkdir(parents=True, exist_ok=True)
    client = {"step": step, "consumed": consumed}
    if cfg["engine"] == "deepspeed":
        engine.save_checkpoint(str(out), tag="ckpt", client_state=client)
    elif rank == 0:
        scaler = getattr(engine, "grad_scaler", None)  # fp16: a resume keeps its loss scale
        torch.save({"model": engine.module.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), **client,
                    **({"scaler": scaler.state_dict()} if scaler is not None else {})},
                   out / "ddp.pt")


def load_checkpoint(engine, optimizer, scheduler, cfg: dict, directory: Path) -> dict:
    """Restore a checkpoint written by save_checkpoint; returns {step, consumed}."""
    if cfg["engine"] == "deepspeed":
        _, client = engine.load_checkpoint(str(directory), tag="ckpt")
        return {"step": int(client["step"]), "consumed": int(client["consumed"])}
    state = torch.load(directory / "ddp.pt", weights_only=True)
    engine.module.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler") and getattr(engine, "grad_scaler", None) is not None:
        engine.grad_scaler.load_state_dict(state["scaler"])
    return {"step": int(state["step"]), "consumed": int(state["consumed"])}


def mfu(params: int, teacher_params: int, tokens_per_s: float) -> tuple[float | None, str]:
    """Model FLOPs utilisation of one worker: (6·N_student + 2·N_online_teacher) FLOPs per
    token (Kaplan et al.) × its tokens/s over one GPU's dense bf16 peak; not estimated without
    a known GPU."""
    if not torch.cuda.is_available():
        return None, "not estimated (CPU: no peak FLOP/s to quote against)"
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    if peak is None:
        return None, f"not estimated (no peak FLOP/s known for {name})"
    flops = (6 * params + 2 * teacher_params) * tokens_per_s
    return flops / (peak * 1e12), f"per worker vs {peak:g} TFLOP/s bf16 ({name})"
