"""Student training inside Ray Train workers: DeepSpeed ZeRO (CPU: gloo) or DDP.

The loop reads top to bottom: build the student (and, for online KD, the teacher as a ZeRO-3
inference engine sharded across these same workers), wrap the engine, restore the last Ray Train
checkpoint if this is a restart, then step through this rank's stream of examples with gradient
accumulation, the LR schedule and clipping. Each worker trains inside a ledger window on its own
node, holding its own GPUs; everything before the first step is the window's load phase. The
loss is computed chunk by chunk over the sequence (`chunked.py`) so that memory stays bounded at
large vocabularies. Rank 0 writes the student (gathered from its ZeRO-3 shards when it has them)
and the training figures into `out_dir`.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


class StudentModule(nn.Module):
    """The student plus what KD trains beside it, so that one engine (and ZeRO-3's parameter
    gathering) sees every trained parameter inside forward."""

    def __init__(self, student: nn.Module, projector: nn.Module | None) -> None:
        super().__init__()
        self.student = student
        self.projector = projector

    def forward(self, input_ids, attention_mask, want_hidden: bool = False):
        out = self.student(input_ids=input_ids, attention_mask=attention_mask,
                           output_hidden_states=want_hidden)
        if not want_hidden:
            return out.logits, None
        hidden = list(out.hidden_states[1:])  # drop the embeddings
        if self.projector is not None:
            hidden = [self.projector(i, h) for i, h in enumerate(hidden)]
        return out.logits, hidden


def online_teacher(cfg: dict) -> bool:
    return cfg["method"] in ("feature", "relational") or (
        cfg["method"] == "logit" and cfg["top_k"] == 0)


def objective(cfg: dict, engine, teacher, chosen: list[dict], pad_id: int, teacher_pad: int,
              device, normaliser: float | None = None) -> torch.Tensor:
    """This micro-batch's loss: α·CE + (1−α)·KD over the response positions.

    Without `normaliser`, the mean over this micro-batch's response tokens. With it (see
    `batches.step_normaliser`), the token sum divided by it, so the step's gradient is the global
    token mean. Feature KD is a per-token distance and counts like the CE; relational KD is one
    figure per micro-batch (pairs and triplets of its examples), weighted by the micro-batch's
    token count, so its mean over the step is token-weighted like every other term.

    Only the first `cfg["vocab_rows"]` output rows (the shared tokenizer's length) take part:
    hub checkpoints pad their output layer past the tokenizer (Qwen2.5-7B 152,064 rows, 0.5B
    151,936, for 151,665 tokens), rows no token id reaches; cutting both sides to the shared rows
    before the log-softmax (as TRL and DistillKit do) lets a teacher and student padded
    differently meet, and keeps their mass out of every loss.
    """
    from raydistill.distill import losses
    from raydistill.distill.batches import (
        align,
        cached_topk,
        pad_batch,
        response_tokens,
        teacher_index,
        to_device,
    )
    from raydistill.distill.chunked import chunked_kd_objective

    method, rows = cfg["method"], cfg["vocab_rows"]
    batch = to_device(pad_batch(chosen, pad_id), device)
    want_hidden = method in ("feature", "relational")
    logits, hidden = engine(batch["input_ids"], batch["attention_mask"], want_hidden)
    if logits.shape[-1] > rows:  # sliced only when padded: a full-width slice costs a copy
        logits = logits[..., :rows]
    width = logits.shape[1]
    chunk = {"loss": cfg["loss"], "temperature": cfg["temperature"], "beta": cfg["beta"],
             "chunk_tokens": cfg["chunk_tokens"], "normaliser": normaliser}
    if method in ("none", "sft"):
        return chunked_kd_objective(logits, batch["targets"], None, batch["mask"], alpha=1.0,
                                    **chunk)
    t_out = None
    if teacher is not None:
        tb = to_device(pad_batch(chosen, teacher_pad, "teacher_input_ids", "teacher_prompt_len"),
                       device)
        with torch.no_grad():
            t_out = teacher(input_ids=tb["input_ids"], attention_mask=tb["attention_mask"],
                            output_hidden_states=want_hidden)
    if method == "logit":
        if t_out is None:
            target = cached_topk(chosen, width)
            target = losses.TopK(*(x.to(device) for x in (target.logprobs, target.indices,
                                                           target.tail_logprob)))
        else:
            from raydistill.distill.examples import swap_eos_columns

            # the teacher's EOS stands for the student's where each ends its own turn
            target = swap_eos_columns(
                align(t_out.logits[..., :rows], teacher_index(chosen, width), width), chosen)
        return chunked_kd_objective(logits, batch["targets"], target, batch["mask"],
                                    alpha=cfg["alpha"], **chunk)
    ce = chunked_kd_objective(logits, batch["targets"], None, batch["mask"], alpha=1.0, **chunk)
    t_hidden = t_out.hidden_states[1:]
    if method == "feature":
        index = teacher_index(chosen, width)
        pairs = losses.layer_map(len(hidden), len(t_hidden))
        kd = sum(losses.feature_loss(hidden[s], align(t_hidden[t], index, width),
                                     kind=cfg["feature_kind"], mask=batch["mask"])
                 for s, t in pairs) / len(pairs)
    else:  # relational: pooled over each side's own response positions
        kd = losses.relational_loss(losses.pool_hidden(hidden[-1], batch["mask"]),
                                    losses.pool_hidden(t_hidden[-1], tb["mask"]))
    if normaliser is not None:  # a mean over this micro-batch's tokens → their share of the step
        kd = kd * (response_tokens(chosen) / normaliser)
    return cfg["alpha"] * ce + (1 - cfg["alpha"]) * kd


def student_loop(cfg: dict[str, Any]) -> None:
    """Ray Train worker entry point. `cfg` is plain data (see stages.fit_student)."""
    import ray.train
    import ray.train.torch
    from transformers import AutoTokenizer

    from raydistill.cluster.devices import worker_devices
    from raydistill.cluster.windows import StageWindow
    from raydistill.distill import engine as eng
    from raydistill.distill.batches import response_tokens, step_normaliser
    from raydistill.distill.examples import ExampleStream
    from raydistill.distill.models import build_projector, build_student_model
    from raydistill.distill.student_out import (
        probe_logits,
        progress,
        progress_gathered,
        save_student,
    )

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg["seed"] + rank)
    torch.set_num_threads(cfg["threads"])
    precision = eng.resolve_precision(cfg["precision"])
    micro = cfg["batch_size"] // (world * cfg["grad_accum"])
    window = StageWindow(cfg["namespace"], cfg["trial_id"], cfg["stage"], devices=worker_devices(),
                         phase="load")
    with window:  # load phase: process group, models, engines, checkpoint restore
        t_load = time.perf_counter()
        if cfg["engine"] == "deepspeed":  # its process group first; on CPU it speaks gloo
            import deepspeed

            deepspeed.init_distributed("nccl" if torch.cuda.is_available() else "gloo")
        student, tokenizer = build_student_model(cfg)
        teacher_tok = AutoTokenizer.from_pretrained(cfg["teacher_path"])
        if cfg["gradient_checkpointing"]:
            student.gradient_checkpointing_enable({"use_reentrant": False})
        teacher, teacher_info = None, {}
        if online_teacher(cfg):
            teacher, teacher_info = _load_teacher(cfg, precision)
        projector = build_projector(student, teacher) if cfg["method"] == "feature" else None
        module = StudentModule(student, projector)
        optimizer = torch.optim.AdamW(module.parameters(), lr=cfg["lr"],
                                      weight_decay=cfg["weight_decay"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: eng.lr_factor(
            s, cfg["steps"], cfg["warmup_ratio"], cfg["schedule"], cfg["min_lr_ratio"]))
        engine = _wrap(module, optimizer, scheduler, cfg, micro, precision)
        start = {"step": 0, "consumed": 0}
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:  # a restart: continue where the last checkpoint left off
            with checkpoint.as_directory() as d:
                start = eng.load_checkpoint(engine, optimizer, scheduler, cfg, Path(d))
            log.info("rank %d resumed from step %d", rank, start["step"])
        stream = ExampleStream(cfg, tokenizer, teacher_tok, rank, world).batches(
            micro, skip=start["consumed"])
        policy = None
        if cfg["method"] == "onpolicy":  # the teacher scores on its own actors (its pool)
            from raydistill.distill.onpolicy import OnPolicy

            policy = OnPolicy(cfg, rank, world, start["step"])
        device = ray.train.torch.get_device()  # the worker's GPU, or the CPU
        load_s = time.perf_counter() - t_load
        window.loaded()
        log.info("rank %d ready to train in %.1f s (%s, micro-batch %d × %d accumulated)",
                 rank, load_s, precision, micro, cfg["grad_accum"])
        if rank == 0 and cfg.get("progress_every") and not start["step"]:
            progress(None, tokenizer, {**cfg, "dev_path": ""}, 0, math.nan)
        started, losses_seen, tokens = time.perf_counter(), [], 0
        for step in range(start["step"], cfg["steps"]):
            _maybe_fail(cfg, step, rank)
            # the step's micro-batches first: their token count normalises each one's loss
            step_batches = [next(stream) for _ in range(cfg["grad_accum"])]
            if policy is not None:  # the student's own completions, with probability λ
                step_batches = policy.step_batches(step_batches, engine, tokenizer)
            norm = step_normaliser(step_batches, world, device)
            loss_sum = 0.0
            for chosen in step_batches:
                if policy is not None:
                    loss = policy.objective(engine, chosen, tokenizer.pad_token_id, device, norm)
                else:
                    loss = objective(cfg, engine, teacher, chosen, tokenizer.pad_token_id,
                                     teacher_tok.pad_token_id, device, norm)
                _backward(engine, loss, cfg)
                loss_sum += float(loss.detach()) * norm
                n = sum(len(e["input_ids"]) for e in chosen)
                tokens += n
                window.add_tokens(n)
            _optimizer_step(engine, module, optimizer, scheduler, cfg)
            # logged: this rank's per-token mean over the step (no collective for a log line)
            losses_seen.append(loss_sum / max(1, response_tokens(
                [e for b in step_batches for e in b])))
            if step % max(1, cfg["steps"] // 5) == 0:
                log.info("rank %d step %d/%d loss %.4f lr %.2e", rank, step, cfg["steps"],
                         losses_seen[-1], scheduler.get_last_lr()[0])
            done = step + 1
            if cfg.get("progress_every") and done % cfg["progress_every"] == 0:
                progress_gathered(engine, tokenizer, cfg, done, losses_seen[-1], rank)
            if cfg["checkpoint_every"] and done % cfg["checkpoint_every"] == 0 and \
                    done < cfg["steps"]:
                _report_checkpoint(engine, optimizer, scheduler, cfg, done,
                                   done * micro * cfg["grad_accum"], rank)
        train_s = time.perf_counter() - started
        probe = probe_logits(engine, next(stream), tokenizer.pad_token_id, device)  # all ranks
        state = eng.gathered_state_dict(module.student, cfg["zero_stage"]
                                        if cfg["engine"] == "deepspeed" else 0, rank)
        if rank == 0:
            save_student(module.student, state, tokenizer, cfg, {
                "losses": losses_seen, "train_s": train_s, "load_s": load_s, "tokens": tokens,
                "world": world, "precision": precision, "micro_batch": micro,
                "resumed_from_step": start["step"], **teacher_info,
                **(policy.figures() if policy is not None else {})}, probe)
    if losses_seen and not math.isfinite(losses_seen[-1]):
        raise FloatingPointError(f"student loss is {losses_seen[-1]}: lower student.lr")


def _load_teacher(cfg: dict, precision: str):
    """The online teacher: ZeRO-3 shards across the workers, or a full copy in each."""
    from raydistill.distill import engine as eng

    if cfg["teacher_sharding"] == "zero3":
        teacher, info = eng.load_sharded_teacher(cfg["teacher_path"], precision)
        info["teacher_sharding"] = "zero3"
        return teacher, info
    from raydistill.distill.teacher import load_model_and_tokenizer

    teacher, _ = load_model_and_tokenizer(cfg["teacher_path"], single_device=True)
    n = sum(p.numel() for p in teacher.parameters())
    return teacher, {"teacher_sharding": "replicated", "resident_params": n, "total_params": n}


def _maybe_fail(cfg: dict, step: int, rank: int) -> None:
    """Test seam: fail once at a given step (a marker file says it already happened)."""
    marker = cfg.get("fail_once_marker")
    if marker and rank == 0 and step == cfg.get("fail_once_at_step") and \
            not Path(marker).exists():
        Path(marker).write_text(str(step))
        raise RuntimeError(f"injected fault at step {step} (test)")


def _wrap(module: nn.Module, optimizer, scheduler, cfg: dict, micro: int, precision: str):
    """The training engine. Below fp32 both keep fp32 master weights: DeepSpeed its fp32
    partitions behind a bf16/fp16 module, DDP fp32 parameters behind an autocast forward."""
    if cfg["engine"] == "deepspeed":
        import deepspeed

        from raydistill.distill.engine import fp32_buffers, restore_buffers, student_ds_config

        buffers = fp32_buffers(module)
        engine, _, _, _ = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler,
            config=student_ds_config(cfg, micro, precision))
        restore_buffers(engine.module, buffers)
        return engine
    import ray.train.torch

    from raydistill.distill.engine import autocast_forward

    scaler = autocast_forward(module, precision, "cuda" if torch.cuda.is_available() else "cpu")
    engine = ray.train.torch.prepare_model(module)
    engine.grad_scaler = scaler  # read by _backward and _optimizer_step (fp16 only)
    return engine


def _backward(engine, loss: torch.Tensor, cfg: dict) -> None:
    if cfg["engine"] == "deepspeed":
        engine.backward(loss)  # DeepSpeed scales by the accumulation steps itself
        engine.step()  # steps the optimizer and the LR only at the accumulation boundary
        return
    scaled = loss / cfg["grad_accum"]
    scaler = getattr(engine, "grad_scaler", None)
    (scaler.scale(scaled) if scaler is not None else scaled).backward()


def _optimizer_step(engine, module, optimizer, scheduler, cfg: dict) -> None:
    if cfg["engine"] == "deepspeed":
        return
    scaler = getattr(engine, "grad_scaler", None)
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    if cfg["clip_norm"] > 0:
        torch.nn.utils.clip_grad_norm_(module.parameters(), cfg["clip_norm"])
    if scaler is not None:
        scaler.step(optimizer)  # skips the step when a gradient overflowed fp16
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _report_checkpoint(engine, optimizer, scheduler, cfg: dict, step: int, consumed: int,
                       rank: int) -> None:
    """Every rank writes its part and reports it; Ray Train keeps them as one checkpoint."""
    import ray.train

    from raydistill.distill.engine import save_checkpoint

    with tempfile.TemporaryDirectory(prefix="raydistill-ckpt-") as tmp:
        save_checkpoint(engine, optimizer, scheduler, cfg, step, consumed, Path(tmp), rank)
        has_files = any(Path(tmp).iterdir())
        ray.train.report({"step": step}, checkpoint=ray.train.Checkpoint.from_directory(tmp)
                         if has_files else None)


