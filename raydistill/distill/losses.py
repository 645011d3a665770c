"""Distillation losses: pure functions that return a scalar tensor, the mean over unmasked tokens.

Logit losses take `(student_logits [B, T, V], teacher, *, temperature, mask)`, where the teacher
is dense logits [B, T, V] or a `TopK` cache (the top-k of the teacher's true log-softmax over the
full vocabulary, plus the log of the mass outside it). A cache is compared on the (k+1)-bucket
coarsening of both distributions: the k cached tokens and one bucket for all the rest. When the
cache holds the whole vocabulary (k = V) the tail has zero mass and that is the dense loss
exactly. A cache without a tail renormalises both sides over the k cached tokens.

Conventions
- Temperature: both sides are softened as softmax(logits / T). The KL family (forward_kl,
  reverse_kl, jsd) is multiplied by T² (Hinton et al., 2015) so that its gradients keep their size
  as T changes and α in `kd_objective` means the same thing at every T. tvd is a distance bounded
  by 1 and is not scaled. At T = 1 nothing changes.
- jsd follows TRL's `GKDTrainer.generalized_jsd_loss`: M = β·p_T + (1−β)·p_S, built in log space
  with logsumexp, and JSD_β = β·KL(p_T ‖ M) + (1−β)·KL(p_S ‖ M). The ends are special-cased as in
  TRL: β = 0 is forward KL(p_T ‖ p_S), β = 1 is reverse KL(p_S ‖ p_T). (The formula itself tends
  to 0 at both ends; TRL switches to the KLs, and so do we.) TRL does not scale by T²; we do, for
  the reason above, so at T = 1 the two agree.
- Masks are bool or 0/1 [B, T], True = counted. An all-false mask gives 0, not nan.
- A cached id at or past the student's rows (an engine that saw a padded output layer) is a
  token the student cannot emit: its teacher mass is moved into the tail bucket.
- The caller runs the teacher under `torch.no_grad()`; nothing here detaches.

On-policy distillation's loss (TRL DistillationTrainer's generalized JSD, unscaled by T²) and
GKD's λ mix are `onpolicy_loss.onpolicy_jsd` and `onpolicy_loss.mix_onpolicy`, not in LOSSES.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from raydistill.errors import ConfigError

NEG = -1e4  # log 0 stand-in: finite, so 0 · (log 0 − x) and padded positions never become nan


@dataclass(frozen=True)
class TopK:
    """A teacher's top-k cache. `logprobs` are true log-softmax values over the full vocabulary
    (any float dtype, fp16/bf16 included); `tail_logprob` = log(1 − Σ exp(logprobs)), or None."""

    logprobs: torch.Tensor  # [B, T, k]
    indices: torch.Tensor  # [B, T, k] vocabulary ids
    tail_logprob: torch.Tensor | None = None  # [B, T]

    def __post_init__(self) -> None:
        if self.logprobs.shape != self.indices.shape:
            raise ValueError(f"TopK logprobs {tuple(self.logprobs.shape)} and indices "
                             f"{tuple(self.indices.shape)} must have the same shape")
        tail = self.tail_logprob
        if tail is not None and tail.shape != self.logprobs.shape[:-1]:
            raise ValueError(f"TopK tail_logprob {tuple(tail.shape)} must be "
                             f"{tuple(self.logprobs.shape[:-1])}")


Teacher = torch.Tensor | TopK


def topk_from_logits(logits: torch.Tensor, k: int, temperature: float = 1.0) -> TopK:
    """The top-k of log_softmax(logits / T) over the full vocabulary, with the exact tail mass."""
    _check_temperature(temperature)
    vocab = logits.shape[-1]
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= vocab:
        raise ConfigError(f"top-k must be an integer in [1, {vocab}], got {k!r}")
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    values, indices = logp.topk(int(k), dim=-1)
    return TopK(values, indices, tail_logmass(logp, indices))


def tail_logmass(logp: torch.Tensor, indices: torch.Tensor,
                 rows: int | None = None) -> torch.Tensor:
    """log of the probability outside `indices`, as a logsumexp over those other tokens.

    Equal to log(1 − Σ top-k probs), but without its cancellation: that form loses all precision
    when the top-k holds nearly all the mass, and leaves rounding noise instead of log 0 at k = V.
    With `rows` (= V), an index equal to `rows` stands for no token and excludes nothing.
    """
    if rows is None:
        outside = logp.scatter(-1, indices.long(), float("-inf"))
    else:  # one spare column takes the no-token entries: a byte per row, no index collides
        hit = torch.zeros((*logp.shape[:-1], rows + 1), dtype=torch.bool, device=logp.device)
        hit.scatter_(-1, indices.long(), True)
        outside = logp.masked_fill(hit[..., :rows], float("-inf"))
    return torch.logsumexp(outside, dim=-1).clamp(min=NEG)


def _check_temperature(temperature: float) -> None:
    ok = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
    if not (ok and math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"temperature must be a finite number > 0, got {temperature!r}")


def _check_unit(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):  # also rejects nan
        raise ConfigError(f"{name} must lie in [0, 1], got {value!r}")


def _pair(student_logits: torch.Tensor, teacher: Teacher,
          temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p_T, log p_S) over the same buckets: the vocabulary, or the top-k plus the tail."""
    _check_temperature(temperature)
    log_s = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    if not isinstance(teacher, TopK):
        if teacher.shape != student_logits.shape:
            raise ValueError(f"teacher logits {tuple(teacher.shape)} != student logits "
                             f"{tuple(student_logits.shape)}")
        return torch.log_softmax(teacher.float() / temperature, dim=-1).clamp(min=NEG), log_s
    # An id at or past the student's rows (a cache from an engine that saw a padded output
    # layer) is a token the student cannot emit: its teacher mass joins the tail bucket and its
    # bucket holds log 0 on both sides, instead of gathering past the end of the logits.
    rows = log_s.shape[-1]
    indices = teacher.indices.long()
    valid = indices < rows
    safe = torch.where(valid, indices, torch.zeros_like(indices))
    log_t = teacher.logprobs.float().clamp(min=NEG)
    log_s_k = log_s.gather(-1, safe).masked_fill(~valid, NEG)
    moved = torch.logsumexp(log_t.masked_fill(valid, float("-inf")), -1, keepdim=True)
    log_t = log_t.masked_fill(~valid, NEG)
    if teacher.tail_logprob is None:
        return torch.log_softmax(log_t, -1), torch.log_softmax(log_s_k, -1)
    tail_t = teacher.tail_logprob.float().clamp(min=NEG).unsqueeze(-1)
    tail_t = torch.logaddexp(tail_t, moved).clamp(min=NEG)
    tail_s = tail_logmass(log_s, torch.where(valid, indices, rows), rows).unsqueeze(-1)
    # fp16/bf16 caches sum to 1 ± ε after rounding: renormalise so KL ≥ 0 and TVD ≤ 1 still hold
    log_t = torch.log_softmax(torch.cat([log_t, tail_t], -1), -1)
    return log_t, torch.cat([log_s_k, tail_s], -1)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per position, with 0 · log 0 = 0."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def _masked_mean(per_token: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per_token.mean()
    if mask.shape != per_token.shape:
        raise ValueError(f"mask {tuple(mask.shape)} != tokens {tuple(per_token.shape)}")
    keep = mask.bool()
    # where, not multiply: garbage (inf, nan) at padded positions must not leak into the mean
    kept = torch.where(keep, per_token, torch.zeros_like(per_token))
    return kept.sum() / keep.sum().clamp(min=1)


def forward_kl(student_logits: torch.Tensor, teacher: Teacher, *, temperature: float = 1.0,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """T² · KL(p_T ‖ p_S): mode-covering; the classic Hinton distillation loss."""
    log_t, log_s = _pair(student_logits, teacher, temperature)
    return _masked_mean(_kl(log_t, log_s), mask) * temperature**2


def reverse_kl(student_logits: torch.Tensor, teacher: Teacher, *, temperature: float = 1.0,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """T² · KL(p_S ‖ p_T): mode-seeking (MiniLLM, on-policy GKD with β = 1)."""
    log_t, log_s = _pair(student_logits, teacher, temperature)
    return _masked_mean(_kl(log_s, log_t), mask) * temperature**2


def jsd(student_logits: torch.Tensor, teacher: Teacher, *, temperature: float = 1.0,
        beta: float = 0.5, mask: torch.Tensor | None = None) -> torch.Tensor:
    """T² · generalized JSD_β as in TRL's GKD (see the module docstring for the ends)."""
    _check_unit("jsd beta", beta)
    log_t, log_s = _pair(student_logits, teacher, temperature)
    return _masked_mean(generalized_jsd_per_token(log_t, log_s, beta), mask) * temperature**2


def generalized_jsd_per_token(log_t: torch.Tensor, log_s: torch.Tensor,
                              beta: float) -> torch.Tensor:
    """JSD_β per position from log-probabilities: β 0 KL(T‖S), 1 KL(S‖T), else the β-mixture's
    divergence (`jsd` and the on-policy loss share it)."""
    if beta == 0.0:
        return _kl(log_t, log_s)
    if beta == 1.0:
        return _kl(log_s, log_t)
    # log M by logsumexp: never exp() then log() a sum that can underflow in the tails
    log_m = torch.logaddexp(log_t + math.log(beta), log_s + math.log1p(-beta))
    return beta * _kl(log_t, log_m) + (1 - beta) * _kl(log_s, log_m)


def tvd(student_logits: torch.Tensor, teacher: Teacher, *, temperature: float = 1.0,
        mask: torch.Tensor | None = None) -> torch.Tensor:
    """Total variation ½ Σ |p_T − p_S| at temperature T, in [0, 1], not scaled by T²."""
    log_t, log_s = _pair(student_logits, teacher, temperature)
    return _masked_mean(0.5 * (log_t.exp() - log_s.exp()).abs().sum(-1), mask)


def masked_ce(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of predicting token t+1 at position t, mean over masked positions (the
    unchunked form, for the teacher's own training; the student's goes through chunked.py)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = input_ids[:, 1:]
    nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    m = mask[:, :-1].float()
    return (nll * m).sum() / m.sum().clamp(min=1.0)


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": jsd,
    "tvd": tvd,
}


def get_loss(name: str) -> Callable[..., torch.Tensor]:
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
    return LOSSES[name]


def kd_objective(ce_loss: torch.Tensor, kd_loss: torch.Tensor, alpha: float) -> torch.Tensor:
    """α·CE on the data + (1−α)·KD towards the teacher (α = 1: plain SFT, α = 0: pure KD)."""
    _check_unit("alpha", alpha)
    return alpha * ce_loss + (1 - alpha) * kd_loss


# ---- feature KD --------------------------------------------------------------------------------


def layer_map(n_student_layers: int, n_teacher_layers: int) -> list[tuple[int, int]]:
    """Uniform map, student layer i ↦ teacher layer round((i+1)·Lt/Ls) − 1 (halves round up).

    Spreads the student's layers evenly over the teacher's depth and always maps last to last.
    A student deeper than its teacher maps several layers to one teacher layer (never below 0).
    """
    ls, lt = n_student_layers, n_teacher_layers
    if ls < 1 or lt < 1:
        raise ConfigError(f"layer_map needs ≥ 1 layer on each side, got {ls} and {lt}")
    # floor(x + ½) in integers: Python's round() would send halves to the even neighbour
    return [(i, max(0, (2 * (i + 1) * lt + ls) // (2 * ls) - 1)) for i in range(ls)]


class FeatureProjector(nn.Module):
    """One learned Linear per student layer (every student layer is mapped, see `layer_map`),
    from the student's hidden width to the teacher's (FitNets-style regressors)."""

    def __init__(self, n_layers: int, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(student_dim, teacher_dim) for _ in range(n_layers))

    def layer(self, index: int) -> nn.Module:
        """The projection of student layer `index`, to pass to `feature_loss`."""
        return self.proj[index]

    def forward(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj[index](hidden)


def _mse(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return ((s - t) ** 2).mean(-1)  # mean over width: the scale does not grow with H


def _cosine(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 1.0 - F.cosine_similarity(s, t, dim=-1)


FEATURE_KINDS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": _mse,
    "cosine": _cosine,
}


def feature_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                 projection: nn.Module | None = None, *, kind: str = "mse",
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token distance between projection(student_hidden) [B, T, Ht] and teacher_hidden.

    `projection=None` means the student states are already in the teacher's width.
    """
    if kind not in FEATURE_KINDS:
        raise ConfigError(f"unknown feature loss {kind!r}; valid: {', '.join(FEATURE_KINDS)}")
    s = student_hidden if projection is None else projection(student_hidden)
    s, t = s.float(), teacher_hidden.float()
    if s.shape != t.shape:
        raise ValueError(f"student hidden {tuple(s.shape)} != teacher hidden {tuple(t.shape)}; "
                         "project the student to the teacher's width")
    return _masked_mean(FEATURE_KINDS[kind](s, t), mask)


def pool_hidden(hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Masked mean over positions: [B, T, H] → [B, H] (a row with no kept token gives 0)."""
    if mask is None:
        return hidden.float().mean(1)
    m = mask.to(torch.float32).unsqueeze(-1)
    return (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1.0)


# ---- relational KD (RKD, Park et al., CVPR 2019) -----------------------------------------------


def _distances_and_directions(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise distances over their mean, and unit vectors e[i, j] = unit(x_j − x_i)."""
    diff = x.unsqueeze(0) - x.unsqueeze(1)  # [N, N, H]
    off = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
    # clamp before sqrt: the gradient of √· at the zero diagonal would be inf
    dist = diff.pow(2).sum(-1).clamp(min=1e-12).sqrt() * off
    dist = dist / dist[off].mean().clamp(min=1e-8)
    return dist, F.normalize(diff, p=2, dim=2)


def relational_loss(student_repr: torch.Tensor, teacher_repr: torch.Tensor, *,
                    distance_weight: float = 1.0, angle_weight: float = 2.0) -> torch.Tensor:
    """RKD: smooth-L1 between the two sets' normalised pairwise distances, plus between the
    cosines of all triplet angles (O(N³): meant for a batch of pooled states, N in the tens).
    Distances are divided by their mean, so a uniformly scaled copy costs nothing; the widths
    Hs and Ht may differ. Default weights 1 and 2 are the paper's."""
    for name, w in (("distance_weight", distance_weight), ("angle_weight", angle_weight)):
        if not (math.isfinite(w) and w >= 0):
            raise ConfigError(f"relational {name} must be a finite number ≥ 0, got {w!r}")
    if len(student_repr) != len(teacher_repr):
        raise ValueError(f"relational_loss needs as many student rows ({len(student_repr)}) "
                         f"as teacher rows ({len(teacher_repr)})")
    if len(student_repr) < 3:  # no triplet to take an angle of; keep the graph for backward()
        return student_repr.float().sum() * 0.0
    d_s, e_s = _distances_and_directions(student_repr.float())
    d_t, e_t = _distances_and_directions(teacher_repr.float())
    angle_s = torch.bmm(e_s, e_s.transpose(1, 2))  # cos of the angle at i between j and k
    angle_t = torch.bmm(e_t, e_t.transpose(1, 2))
    return (distance_weight * F.smooth_l1_loss(d_s, d_t)
            + angle_weight * F.smooth_l1_loss(angle_s, angle_t))
