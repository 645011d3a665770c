"""Student training inside Ray Train workers: DeepSpeed ZeRO (CPU: gloo) or DDP.

The loop reads top to bottom: build the student (and, for feature/relational KD, the online
teacher), load this rank's share of the examples, wrap the engine, then step. Each worker trains
inside a ledger window on its own node, holding its own GPUs. Rank 0 writes the student and the
training figures into `out_dir` (a file, not `Result.metrics`: reporting without a checkpoint
leaves Result.metrics empty in Ray Train V2).
"""

from __future__ import annotations

import json
import logging
import math
import time
from itertools import pairwise
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


def pad_batch(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad input_ids and the loss mask; position t's mask says token t+1 is a target."""
    n = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    attn = torch.zeros((len(examples), n), dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.bool)
    for i, e in enumerate(examples):
        L = len(e["input_ids"])
        ids[i, :L] = torch.as_tensor(e["input_ids"])
        attn[i, :L] = 1
        mask[i, e["prompt_len"] - 1 : L - 1] = True
    return {"input_ids": ids, "attention_mask": attn, "mask": mask}


def cached_topk(examples: list[dict], width: int, device=None):
    """Teacher top-k for a batch, padded to `width` positions (padding carries no mass)."""
    from raydistill.distill.losses import TopK

    k = examples[0]["logprobs"].shape[-1]
    lp = torch.full((len(examples), width, k), -1e4)
    idx = torch.zeros((len(examples), width, k), dtype=torch.long)
    tail = torch.full((len(examples), width), -1e4)
    for i, e in enumerate(examples):
        L = e["logprobs"].shape[0]
        lp[i, :L], idx[i, :L], tail[i, :L] = e["logprobs"], e["indices"], e["tail"]
    if device is not None:
        lp, idx, tail = lp.to(device), idx.to(device), tail.to(device)
    return TopK(logprobs=lp, indices=idx, tail_logprob=tail)


def masked_ce(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of predicting token t+1 at position t, mean over masked positions."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = input_ids[:, 1:]
    nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    m = mask[:, :-1].float()
    return (nll * m).sum() / m.sum().clamp(min=1.0)


def kd_term(cfg: dict, batch: dict, logits, hidden, examples, teacher) -> torch.Tensor:
    """The teacher's term of the loss for this batch (zero for sft / none)."""
    from raydistill.distill import losses

    method = cfg["method"]
    if method == "logit":
        if teacher is None:
            target = cached_topk(examples, logits.shape[1], logits.device)
        else:
            with torch.no_grad():
                target = teacher(input_ids=batch["input_ids"],
                                 attention_mask=batch["attention_mask"]).logits
        fn = losses.get_loss(cfg["loss"])
        kwargs = {"beta": cfg["beta"]} if cfg["loss"] == "jsd" else {}
        return fn(logits, target, temperature=cfg["temperature"], mask=batch["mask"], **kwargs)
    if method in ("feature", "relational"):
        with torch.no_grad():
            t_hidden = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               output_hidden_states=True).hidden_states[1:]
        if method == "feature":
            pairs = losses.layer_map(len(hidden), len(t_hidden))
            return sum(losses.feature_loss(hidden[s], t_hidden[t], kind=cfg["feature_kind"],
                                           mask=batch["attention_mask"].bool())
                       for s, t in pairs) / len(pairs)
        am = batch["attention_mask"].bool()
        return losses.relational_loss(losses.pool_hidden(hidden[-1], am),
                                      losses.pool_hidden(t_hidden[-1], am))
    return torch.zeros((), device=logits.device)


def student_loop(cfg: dict[str, Any]) -> None:
    """Ray Train worker entry point. `cfg` is plain data (see pipeline.student_train_config)."""
    import ray.train
    import ray.train.torch

    from raydistill.cluster.windows import StageWindow, worker_devices
    from raydistill.distill.examples import load_examples
    from raydistill.distill.models import build_projector, build_student_model

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg["seed"] + rank)
    torch.set_num_threads(cfg["threads"])
    window = StageWindow(cfg["namespace"], cfg["trial_id"], cfg["stage"], devices=worker_devices())
    with window:
        ready = {"start": time.perf_counter()}
        # DeepSpeed's process group must exist before its engine; on CPU it speaks gloo.
        if cfg["engine"] == "deepspeed":
            import deepspeed

            deepspeed.init_distributed("nccl" if torch.cuda.is_available() else "gloo")
        ready["process group"] = time.perf_counter()
        examples = load_examples(cfg)[rank::world]
        ready["data"] = time.perf_counter()
        student, tokenizer = build_student_model(cfg)
        teacher = None
        if cfg["method"] in ("feature", "relational") or (
                cfg["method"] == "logit" and cfg["top_k"] == 0):
            from raydistill.distill.teacher import load_model_and_tokenizer

            teacher, _ = load_model_and_tokenizer(cfg["teacher_path"])
        projector = build_projector(student, teacher) if cfg["method"] == "feature" else None
        module = StudentModule(student, projector)
        optimizer = torch.optim.AdamW(module.parameters(), lr=cfg["lr"])
        ready["models"] = time.perf_counter()
        engine = _wrap(module, optimizer, cfg)
        ready["engine"] = time.perf_counter()
        marks = list(ready.items())
        log.info("rank %d ready to train in %.1f s (%s)", rank, marks[-1][1] - marks[0][1],
                 ", ".join(f"{k} {t - p:.1f} s" for (_, p), (k, t) in pairwise(marks)))
        want_hidden = cfg["method"] in ("feature", "relational")
        device = ray.train.torch.get_device()  # the worker's GPU, or the CPU
        gen = torch.Generator().manual_seed(cfg["seed"])
        started, losses_seen = time.perf_counter(), []
        if rank == 0 and cfg.get("progress_every"):  # "ready": the profile keeps set-up apart
            _progress(None, tokenizer, {**cfg, "dev_path": ""}, 0, math.nan)
        for step in range(cfg["steps"]):
            pick = torch.randint(len(examples), (cfg["batch_size"],), generator=gen).tolist()
            chosen = [examples[i] for i in pick]
            batch = {k: v.to(device) for k, v in pad_batch(chosen, tokenizer.pad_token_id).items()}
            logits, hidden = engine(batch["input_ids"], batch["attention_mask"], want_hidden)
            ce = masked_ce(logits, batch["input_ids"], batch["mask"])
            if cfg["method"] in ("none", "sft"):
                loss = ce
            else:
                kd = kd_term(cfg, batch, logits, hidden, chosen, teacher)
                loss = cfg["alpha"] * ce + (1 - cfg["alpha"]) * kd
            _step(engine, optimizer, loss, cfg)
            window.add_tokens(int(batch["attention_mask"].sum()))
            losses_seen.append(float(loss.detach()))
            if step % max(1, cfg["steps"] // 5) == 0:
                log.info("rank %d step %d/%d loss %.4f", rank, step, cfg["steps"], losses_seen[-1])
            if rank == 0 and cfg.get("progress_every") and (step + 1) % cfg["progress_every"] == 0:
                _progress(module.student, tokenizer, cfg, step + 1, losses_seen[-1])
        if rank == 0:
            _save(module.student, tokenizer, cfg, losses_seen, time.perf_counter() - started)
    if not math.isfinite(losses_seen[-1]):
        raise FloatingPointError(f"student loss is {losses_seen[-1]}: lower distill lr")


def _wrap(module: nn.Module, optimizer, cfg: dict):
    if cfg["engine"] == "deepspeed":
        import deepspeed

        ds_config = {
            "train_micro_batch_size_per_gpu": cfg["batch_size"],
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": cfg["zero_stage"]},
            "zero_allow_untested_optimizer": True,  # a plain torch AdamW, which runs on CPU
        }
        engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer,
                                               config=ds_config)
        return engine
    import ray.train.torch

    return ray.train.torch.prepare_model(module)


def _step(engine, optimizer, loss: torch.Tensor, cfg: dict) -> None:
    if cfg["engine"] == "deepspeed":
        engine.backward(loss)
        engine.step()
    else:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def _progress(student, tokenizer, cfg: dict, step: int, loss: float) -> None:
    """One line of progress.jsonl: the sweep's trial reads it to report quality so far (a quick
    greedy accuracy on a small dev slice) to Tune's scheduler while training goes on."""
    quality = None
    if cfg.get("dev_path") and cfg["zero_stage"] < 3:  # ZeRO-3 would need a parameter gather
        from raydistill.distill.evaluate import read_jsonl
        from raydistill.distill.tiny import greedy_accuracy

        rows = read_jsonl(cfg["dev_path"])[: cfg.get("dev_n", 64)]
        quality, _ = greedy_accuracy(student, tokenizer, rows, cfg.get("max_new_tokens", 5))
        student.train()
    out = Path(cfg["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    import ray

    node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    with open(out / "progress.jsonl", "a") as fh:  # node_id: where rank 0 trains (for operators)
        fh.write(json.dumps({"step": step, "steps": cfg["steps"], "loss": loss,
                             "quality": quality, "t": time.time(), "node_id": node_id}) + "\n")


def _save(student, tokenizer, cfg: dict, losses_seen: list[float], train_s: float) -> None:
    out = Path(cfg["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "train_metrics.json").write_text(json.dumps({
        "final_loss": losses_seen[-1], "first_loss": losses_seen[0], "steps": len(losses_seen),
        "train_s": train_s, "engine": cfg["engine"], "zero_stage": cfg["zero_stage"],
    }))
