"""What the student loop leaves behind: progress lines for the sweep, the saved student
(checked by reloading it), and its training figures. Rank 0 writes; under ZeRO-3 every rank
takes part in the gathers."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch


def progress_gathered(module, tokenizer, cfg: dict, step: int, loss: float, rank: int) -> None:
    """The in-training quality check on rank 0, on a plain copy of the student (gathered from
    its shards under ZeRO-3: every rank takes part in the gather)."""
    from raydistill.distill.engine import gathered_state_dict, plain_copy

    student = module.student
    if cfg["engine"] == "deepspeed" and cfg["zero_stage"] == 3 and cfg.get("dev_path"):
        state = gathered_state_dict(student, 3, rank)
        if rank == 0:
            progress(plain_copy(student, state), tokenizer, cfg, step, loss)
    elif rank == 0:
        progress(student, tokenizer, cfg, step, loss)
        student.train()


def progress(student, tokenizer, cfg: dict, step: int, loss: float) -> None:
    """One line of progress.jsonl: the sweep's trial reads it to report quality so far (exact
    match on a small slice of the dev split) to Tune's scheduler while training goes on."""
    quality = None
    if cfg.get("dev_path") and student is not None:
        from raydistill.data.format import stop_ids
        from raydistill.data.splits import read_rows
        from raydistill.distill.evaluate import exact_match

        rows = read_rows(cfg["dev_path"])[: cfg.get("dev_n", 64)]
        quality, _ = exact_match(student, tokenizer, rows, max_new_tokens=cfg["max_new_tokens"],
                                 max_prompt_tokens=cfg["max_prompt_tokens"],
                                 stop=stop_ids(tokenizer, cfg.get("student_path")),
                                 pattern=cfg.get("answer_pattern", ""))
    out = Path(cfg["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    import ray

    node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    with open(out / "progress.jsonl", "a") as fh:  # node_id: where rank 0 trains (for operators)
        fh.write(json.dumps({"step": step, "steps": cfg["steps"], "loss": loss,
                             "quality": quality, "t": time.time(), "node_id": node_id}) + "\n")


def probe_logits(engine, chosen: list[dict], pad_id: int, device) -> dict:
    """The trained engine's own logits on one batch (a collective forward under ZeRO-3): what
    the saved student must reproduce."""
    from raydistill.distill.batches import pad_batch

    batch = pad_batch(chosen, pad_id)
    engine.eval()
    with torch.no_grad():
        logits, _ = engine(batch["input_ids"].to(device), batch["attention_mask"].to(device))
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "logits": logits.float().cpu()}


def _check_reload(out: Path, probe: dict) -> float:
    """Reload the saved student as a user would and compare it with the engine's outputs:
    a ZeRO-3 save that missed a gather shows here, not at the user's first load."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"],
                       attention_mask=probe["attention_mask"]).logits.float()
    keep = probe["attention_mask"].bool()
    diff = float((logits - probe["logits"]).abs()[keep].max())
    torch.save(probe, out / "probe.pt")
    scale = float(probe["logits"].abs()[keep].max()) or 1.0
    if diff > 1e-3 * max(1.0, scale) + (0.05 * scale if probe["logits"].dtype != torch.float32
                                       else 0.0):
        raise RuntimeError(f"the saved student does not reproduce the trained one (max |Δ "
                           f"logit| {diff:.3g}): the save missed parameters")
    return diff


def save_student(student, state: dict, tokenizer, cfg: dict, figures: dict, probe: dict) -> None:
    """The student as a hub-shaped directory (full weights, whatever the ZeRO stage), checked
    by reloading it, and the training figures (tokens/s and MFU next to the loss)."""
    from raydistill.distill.engine import mfu

    out = Path(cfg["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(out, state_dict=state)
    tokenizer.save_pretrained(out)
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
