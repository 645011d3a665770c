"""What the student loop leaves behind: progress lines for the sweep, the saved student
(checked by reloading it), and its training figures. Rank 0 writes; under ZeRO-3 every rank
takes part in the gathers."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist


def progress_gathered(engine, tokenizer, cfg: dict, step: int, loss: float, rank: int) -> None:
    """The in-training quality check, shared by every rank on its own device: each scores its
    slice of the dev rows (under ZeRO-3 on the parameters gathered once for the whole check),
    the counts are summed across ranks, and rank 0 writes the line. Every rank must call it."""
    from raydistill.distill.engine import dtype_of, full_parameters, resolve_precision

    if not cfg.get("dev_path"):
        if rank == 0:
            progress(None, tokenizer, cfg, step, loss)
        return
    zero_stage = cfg["zero_stage"] if cfg["engine"] == "deepspeed" else 0
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    mine = _dev_rows(cfg)[rank::world]
    precision = resolve_precision(cfg["precision"])
    with full_parameters(engine, zero_stage) as module:
        student = module.student
        device = next(student.parameters()).device
        # the engine's own compute dtype (DDP keeps fp32 weights and trains under autocast)
        with torch.autocast(device.type, dtype=dtype_of(precision),
                            enabled=precision != "fp32"):
            correct = _correct(student, tokenizer, cfg, mine)
        student.train()
    counts = torch.tensor([correct, len(mine)], dtype=torch.int64)
    if world > 1:  # nccl reduces device tensors only, gloo host ones
        counts = counts.to(device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(counts)
    if rank == 0:
        progress(None, tokenizer, cfg, step, loss, quality=int(counts[0]) / max(1, int(counts[1])),
                 scored=int(counts[1]))


def _dev_rows(cfg: dict) -> list[dict]:
    from raydistill.data.splits import read_rows

    return read_rows(cfg["dev_path"])[: cfg.get("dev_n", 64)]


def _correct(student, tokenizer, cfg: dict, rows: list[dict]) -> int:
    """How many of `rows` the student answers exactly (greedy, until its own stop ids)."""
    from raydistill.data.format import stop_ids
    from raydistill.distill.evaluate import exact_match

    if not rows:
        return 0
    # an answer the pattern cannot read counts as wrong, as in the final evaluation
    return exact_match(student, tokenizer, rows, max_new_tokens=cfg["max_new_tokens"],
                       max_prompt_tokens=cfg["max_prompt_tokens"],
                       stop=stop_ids(tokenizer, cfg.get("student_path")),
                       pattern=cfg.get("answer_pattern", "")).correct


def progress(student, tokenizer, cfg: dict, step: int, loss: float,
             quality: float | None = None, scored: int | None = None) -> None:
    """One line of progress.jsonl: the sweep's trial reads it to report quality so far (exact
    match on a small slice of the dev split) to Tune's scheduler while training goes on.
    `quality` is given when the ranks scored the slice together (progress_gathered), with the
    number of dev rows they `scored` in all."""
    if quality is None and cfg.get("dev_path") and student is not None:
        rows = _dev_rows(cfg)
        quality, scored = _correct(student, tokenizer, cfg, rows) / max(1, len(rows)), len(rows)
    out = Path(cfg["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    import ray

    node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    with open(out / "progress.jsonl", "a") as fh:  # node_id: where rank 0 trains (for operators)
        fh.write(json.dumps({"step": step, "steps": cfg["steps"], "loss": loss,
                             # n: the dev rows checked (the contract's name; dev_rows kept
                             # for readers of older lines)
                             "quality": quality, "n": scored, "dev_rows": scored,
                             "t": time.time(),
                             "node_id": node_id}) + "\n")


def probe_logits(engine, chosen: list[dict], pad_id: int, device) -> dict:
    """The trained engine's own logits on one batch (a collective forward under ZeRO-3), in
    the dtype the engine computed them in: what the saved student must reproduce."""
    from raydistill.distill.batches import pad_batch

    batch = pad_batch(chosen, pad_id)
    engine.eval()
    with torch.no_grad():
        logits, _ = engine(batch["input_ids"].to(device), batch["attention_mask"].to(device))
    # DDP below fp32: fp32 weights, half-precision logits (its forward runs under autocast)
    autocast = next(engine.parameters()).dtype == torch.float32 and \
        logits.dtype != torch.float32
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "logits": logits.detach().cpu(), "autocast": autocast}


# Significant bits of each compute dtype (stored mantissa + the implicit one).
SIGNIFICANT_BITS = {torch.float32: 24, torch.bfloat16: 8, torch.float16: 11}


def reload_tolerance(dtype: torch.dtype, scale: float, layers: int) -> float:
    """The largest |Δ logit| the reload check lets through. fp32: 1e-3 of the logits' scale
    (ZeRO-3's gathered forward and the reload sum in other orders; fp32's roundings are 2^-24
    of a value, far below). bf16 / fp16: the reload computes as the engine did, from weights
    saved in that dtype; what may still differ is a rounding where the two paths store a value
    at different points (DDP's fp32 norm weights are saved rounded to half; a reduction split
    otherwise), each at most u = 2^-(significant bits) of the value, on the residual stream's
    two adds per layer and the final norm, carried into the logits: 2·(layers + 1)·u of the
    scale, 2.3% at 2 bf16 layers. A save that missed parameters moves the logits by the order
    of their scale itself."""
    if dtype == torch.float32:
        return 1e-3 * max(1.0, scale)
    u = 2.0 ** -SIGNIFICANT_BITS[dtype]
    return 2 * (layers + 1) * u * max(1.0, scale)


def _check_reload(out: Path, probe: dict) -> float:
    """Reload the saved student as a user would, computing as the engine computed (in its
    dtype; under autocast where DDP trained under autocast), and compare it with its outputs:
    a ZeRO-3 save that missed a gather shows here, not at the user's first load."""
    from transformers import AutoModelForCausalLM

    dtype, autocast = probe["logits"].dtype, bool(probe.get("autocast"))
    model = AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32 if autocast else dtype).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=autocast):
        logits = model(input_ids=probe["input_ids"],
                       attention_mask=probe["attention_mask"]).logits.float()
    keep = probe["attention_mask"].bool()
    expected = probe["logits"].float()
    diff = float((logits - expected).abs()[keep].max())
    torch.save(probe, out / "probe.pt")
    scale = float(expected.abs()[keep].max())
    tolerance = reload_tolerance(dtype, scale, model.config.num_hidden_layers)
    if diff > tolerance:
        raise RuntimeError(f"the saved student does not reproduce the trained one (max |Δ "
                           f"logit| {diff:.3g} > {tolerance:.3g} allowed in {dtype}): the save "
                           f"missed parameters")
    return diff


def save_weights(student, state: dict, out: Path, precision: str) -> torch.dtype:
    """Write the student's weights in the dtype it computed in: a bf16 run saves bf16 weights,
    as hub checkpoints ship and as inference loads them, so the reload check compares exactly
    what a user gets. (The fp32 master weights are the optimizer's: the training checkpoints
    keep them for a resume.) DeepSpeed's module already holds those bf16/fp16 copies; DDP's fp32
    parameters are rounded once here. Returns the dtype written."""
    from raydistill.distill.engine import dtype_of

    dtype = dtype_of(precision)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    student.save_pretrained(out, state_dict=state)
    if student.dtype != dtype:  # config.json names the parameters' dtype, not the state's
        student.config.dtype = dtype
        student.config.to_json_file(out / "config.json")
    return dtype


def save_student(student, state: dict, tokenizer, cfg: dict, figures: dict, probe: dict) -> None:
    """The student as a hub-shaped directory (full weights, whatever the ZeRO stage), checked
    by reloading it, and the training figures (tokens/s and MFU next to the loss)."""
    from raydistill.distill.engine import mfu

    out = Path(cfg["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    saved = save_weights(student, state, out, figures["precision"])
    tokenizer.save_pretrained(out)
    figures["saved_dtype"] = str(saved).removeprefix("torch.")
    figures["reload_max_abs_diff"] = _check_reload(out, probe)
    losses_seen = figures.pop("losses")
    tokens_per_s = figures["tokens"] / figures["train_s"] if figures["train_s"] > 0 else 0.0
    params = sum(v.numel() for k, v in state.items() if "lm_head" not in k or
                 not getattr(student.config, "tie_word_embeddings", False))
    online = figures.get("total_params", 0)
    util, basis = mfu(params, online, tokens_per_s)
    (out / "train_metrics.json").write_text(json.dumps({
        "final_loss": losses_seen[-1] if losses_seen else math.nan,
        "first_loss": losses_seen[0] if losses_seen else math.nan, "steps": cfg["steps"],
        "steps_run": len(losses_seen), "engine": cfg["engine"], "zero_stage": cfg["zero_stage"],
        "tokens_per_s_rank0": tokens_per_s, "mfu": util, "mfu_basis": basis,
        "student_params": params, **figures,
    }))
