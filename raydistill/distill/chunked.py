"""α·CE + (1−α)·KD computed chunk by chunk along the sequence, so that memory stays bounded.

Why: at a 128k–152k vocabulary one fp32 copy of [B, T, V] is 8 GB at B = 8, T = 2048, and the
plain autograd loss keeps several such copies alive until backward (`.float()`, the two
log_softmaxes, `exp`, the products of the KL, the CE's own log_softmax, ...).

How: `ChunkedObjective` is an autograd Function whose forward walks the positions in chunks.
For each chunk it computes that chunk's share of the loss on a detached copy of the slice,
takes d loss / d chunk at once with `torch.autograd.grad` (which frees the chunk's graph), and
writes it into a gradient buffer of the logits' shape and dtype. Backward hands that buffer
back, times grad_output. Peak memory above the inputs: one gradient buffer (which any backward
needs anyway) plus ONE chunk's fp32 intermediates, instead of several full fp32 copies. A chunk
costs about 8 fp32 vocabulary rows per token (4.8 MiB at V = 152k; bench/bench_kd_memory.py), so
the default 1024 tokens adds ~5 GB, against ~7 full fp32 copies for the unchunked loss.

A chunk is all B rows × c positions, c = max(1, chunk_tokens // B): at most max(chunk_tokens, B)
tokens. Slicing along T keeps the slices views, so non-contiguous logits (`logits[:, :-1]`) are
never copied whole. Means are over the masked count of the whole batch, not per chunk: each
chunk's masked mean is scaled by its count / the total count, so the result equals the unchunked
`alpha * masked_ce + (1 - alpha) * kd` to float tolerance, and so do the gradients.

`normaliser`: the count to divide the summed token losses by, instead of this batch's own count.
The training loop passes the token count of the whole optimizer step (every micro-batch of every
rank, see `step_normaliser`), so that tokens weigh the same whatever micro-batch they fell in.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from raydistill.distill import losses
from raydistill.distill.losses import Teacher, TopK
from raydistill.errors import ConfigError

ChunkLoss = Callable[[torch.Tensor, int, int], torch.Tensor]  # (chunk logits, start, end) → loss


class ChunkedObjective(torch.autograd.Function):
    """forward(logits, objective, spans): Σ over spans of objective(logits[:, s:e], s, e), with
    the gradient w.r.t. the logits computed chunk by chunk during the forward pass."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, objective: ChunkLoss,
                spans: list[tuple[int, int]]) -> torch.Tensor:
        need_grad = ctx.needs_input_grad[0]
        grad = torch.zeros_like(logits) if need_grad else None
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        for start, end in spans:
            if not need_grad:
                total += objective(logits[:, start:end], start, end).detach().float()
                continue
            with torch.enable_grad():
                chunk = logits[:, start:end].detach().requires_grad_()
                value = objective(chunk, start, end)
                (g,) = torch.autograd.grad(value, chunk)
            grad[:, start:end].copy_(g)
            total += value.detach().float()
        # saved, not a ctx attribute: autograd frees it after backward unless retain_graph
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (grad,) = ctx.saved_tensors
        if grad is None:
            return None, None, None
        if torch.equal(grad_output, torch.ones_like(grad_output)):  # the usual loss.backward()
            return grad, None, None
        return grad * grad_output.to(grad.dtype), None, None


def _check_normaliser(normaliser: float) -> float:
    ok = isinstance(normaliser, numbers.Real) and not isinstance(normaliser, bool)
    if not (ok and math.isfinite(normaliser) and normaliser > 0):
        raise ValueError(f"normaliser must be a finite number > 0 (a token count), got "
                         f"{normaliser!r}")
    return float(normaliser)


def _slice(teacher: Teacher, start: int, end: int) -> Teacher:
    if isinstance(teacher, TopK):
        tail = teacher.tail_logprob
        return TopK(teacher.logprobs[:, start:end], teacher.indices[:, start:end],
                    None if tail is None else tail[:, start:end])
    return teacher[:, start:end].detach()


def chunked_kd_objective(student_logits: torch.Tensor, targets: torch.Tensor,
                         teacher: Teacher | None, mask: torch.Tensor | None = None, *,
                         loss: str = "forward_kl", alpha: float = 0.5, temperature: float = 1.0,
                         beta: float = 0.5, chunk_tokens: int = 1024,
                         normaliser: float | None = None) -> torch.Tensor:
    """α · masked-mean CE(student_logits, targets) + (1 − α) · losses.get_loss(loss) over the
    same positions, computed `chunk_tokens` tokens at a time (see the module docstring).
    With `normaliser`, the token sums are divided by it instead of by the masked count.

    All tensors are aligned along [B, T]: position t's logits predict `targets[:, t]`, and the
    teacher's distribution at t is the one to match. `mask` [B, T] (bool or 0/1, None = all)
    selects the counted positions; targets there may be anything (e.g. −100) where it is false.
    """
    fn = losses.get_loss(loss)
    is_int = isinstance(chunk_tokens, numbers.Integral) and not isinstance(chunk_tokens, bool)
    if not (is_int and chunk_tokens >= 1):
        raise ConfigError(f"chunk_tokens must be an integer ≥ 1, got {chunk_tokens!r}")
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):  # also rejects nan
        raise ConfigError(f"alpha must lie in [0, 1], got {alpha!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
            and temperature > 0):
        raise ConfigError(f"temperature must be a finite number > 0, got {temperature!r}")
    if student_logits.dim() != 3:
        raise ValueError(f"student logits must be [B, T, V], got {tuple(student_logits.shape)}")
    bt = student_logits.shape[:2]
    if mask is None:
        mask = torch.ones(bt, dtype=torch.bool, device=student_logits.device)
    keep = mask.bool()
    if alpha < 1 and teacher is None:
        raise ValueError("a teacher is needed when alpha < 1 (alpha = 1 is CE only)")
    checks = [("targets", targets), ("mask", keep)]
    if alpha < 1:
        checks.append(("teacher", teacher.logprobs if isinstance(teacher, TopK) else teacher))
    for name, t in checks:
        if t.shape[:2] != bt or (name != "teacher" and t.dim() != 2):
            raise ValueError(f"{name} {tuple(t.shape)} does not match student logits [B, T] "
                             f"{tuple(bt)}")
    kwargs = {"beta": beta} if loss == "jsd" else {}
    safe_targets = torch.where(keep, targets, torch.zeros_like(targets)).long()

    width = max(1, int(chunk_tokens) // bt[0])
    starts = list(range(0, bt[1], width))
    # one host sync for all chunks' counts: empty chunks are skipped, the rest are weighted
    per_pos = F.pad(keep.sum(0), (0, len(starts) * width - bt[1]))
    counts = [int(c) for c in per_pos.view(len(starts), width).sum(1).tolist()]
    n_total = sum(counts) if normaliser is None else _check_normaliser(normaliser)
    spans = [(s, min(s + width, bt[1])) for s, c in zip(starts, counts, strict=True) if c > 0]
    count_of = dict(zip(starts, counts, strict=True))

    def objective(chunk: torch.Tensor, start: int, end: int) -> torch.Tensor:
        m = keep[:, start:end]
        value = chunk.new_zeros((), dtype=torch.float32)
        if alpha > 0:
            nll = F.cross_entropy(chunk.float().flatten(0, 1), safe_targets[:, start:end].flatten(),
                                  reduction="none").view(m.shape)
            value = value + alpha * torch.where(m, nll, torch.zeros_like(nll)).sum() / n_total
        if alpha < 1:
            kd = fn(chunk, _slice(teacher, start, end), temperature=temperature, mask=m, **kwargs)
            value = value + (1 - alpha) * kd * (count_of[start] / n_total)
        return value

    return ChunkedObjective.apply(student_logits, objective, spans)
