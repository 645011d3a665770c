"""Distillation losses: pure functions `(student_logits, teacher, *, temperature, mask) -> scalar`.

The teacher is either dense logits [B, T, V] or a `TopK` cache (top-k of the teacher's true
log-softmax over the full vocabulary, plus the log of the tail mass). A cache is compared on the
(k+1)-bucket coarsening of both distributions: the k cached tokens and one bucket for the rest.
When the cache holds the whole vocabulary (k = V) that is the dense loss exactly.

Conventions: the KL family (forward_kl, reverse_kl, jsd) is scaled by T² (Hinton et al.), so its
gradients keep their size as the temperature changes; tvd is not. `jsd` follows TRL's GKD:
β = 0 is forward KL(p_T ‖ p_S), β = 1 reverse KL(p_S ‖ p_T), between them
β·KL(p_T ‖ M) + (1−β)·KL(p_S ‖ M) with M = β·p_T + (1−β)·p_S. Every loss is the mean over the
unmasked token positions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from raydistill.errors import ConfigError

NEG = -1e4  # stands for log 0 without producing inf - inf = nan


@dataclass(frozen=True)
class TopK:
    logprobs: torch.Tensor  # [B, T, k] true log-softmax values (any float dtype)
    indices: torch.Tensor  # [B, T, k] vocabulary ids
    tail_logprob: torch.Tensor | None = None  # [B, T] log(1 - Σ top-k probs); None: renormalise


def topk_from_logits(logits: torch.Tensor, k: int, temperature: float = 1.0) -> TopK:
    _check_temperature(temperature)
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    values, indices = logp.topk(k, dim=-1)
    return TopK(values, indices, tail_logmass(logp, indices))


def tail_logmass(logp: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """log of the probability outside `indices`, summed over the other tokens themselves:
    exactly log 0 (→ NEG) when the indices cover the vocabulary, where 1 − Σ top-k would leave
    rounding noise."""
    outside = logp.scatter(-1, indices.long(), float("-inf"))
    return torch.logsumexp(outside, dim=-1).clamp(min=NEG)


def _check_temperature(temperature: float) -> None:
    ok = isinstance(temperature, (int, float)) and math.isfinite(temperature)
    if not (ok and temperature > 0):
        raise ConfigError(f"temperature must be > 0, got {temperature}")


def _pair(student_logits: torch.Tensor, teacher: torch.Tensor | TopK, temperature: float):
    """(log p_T, log p_S) over the same buckets: the vocabulary, or the top-k + tail."""
    _check_temperature(temperature)
    log_s = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    if not isinstance(teacher, TopK):
        return torch.log_softmax(teacher.float() / temperature, dim=-1), log_s
    log_t = teacher.logprobs.float().clamp(min=NEG)
    log_s_k = log_s.gather(-1, teacher.indices.long())
    if teacher.tail_logprob is None:
        # no tail: compare the two distributions renormalised over the cached tokens
        return torch.log_softmax(log_t, -1), torch.log_softmax(log_s_k, -1)
    tail_t = teacher.tail_logprob.float().clamp(min=NEG).unsqueeze(-1)
    tail_s = tail_logmass(log_s, teacher.indices).unsqueeze(-1)
    return torch.cat([log_t, tail_t], -1), torch.cat([log_s_k, tail_s], -1)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per position, with 0 · log 0 = 0."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def _masked_mean(per_token: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per_token.mean()
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp(min=1.0)


def forward_kl(student_logits, teacher, *, temperature: float = 1.0, mask=None) -> torch.Tensor:
    log_t, log_s = _pair(student_logits, teacher, temperature)
    return _masked_mean(_kl(log_t, log_s), mask) * temperature**2


def reverse_kl(student_logits, teacher, *, temperature: float = 1.0, mask=None) -> torch.Tensor:
    log_t, log_s = _pair(student_logits, teacher, temperature)
    return _masked_mean(_kl(log_s, log_t), mask) * temperature**2


def jsd(student_logits, teacher, *, temperature: float = 1.0, beta: float = 0.5,
        mask=None) -> torch.Tensor:
    if not 0.0 <= beta <= 1.0:
        raise ConfigError(f"jsd beta must lie in [0, 1], got {beta}")
    log_t, log_s = _pair(student_logits, teacher, temperature)
    if beta == 0.0:
        per = _kl(log_t, log_s)
    elif beta == 1.0:
        per = _kl(log_s, log_t)
    else:
        log_m = torch.logsumexp(torch.stack([log_t + math.log(beta),
                                             log_s + math.log(1 - beta)]), dim=0)
        per = beta * _kl(log_t, log_m) + (1 - beta) * _kl(log_s, log_m)
    return _masked_mean(per, mask) * temperature**2


def tvd(student_logits, teacher, *, temperature: float = 1.0, mask=None) -> torch.Tensor:
    log_t, log_s = _pair(student_logits, teacher, temperature)
    return _masked_mean(0.5 * (log_t.exp() - log_s.exp()).abs().sum(-1), mask)


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
    """α·CE on the data + (1−α)·KD towards the teacher."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must lie in [0, 1], got {alpha}")
    return alpha * ce_loss + (1 - alpha) * kd_loss


# ---- feature and relational KD ---------------------------------------------------------------


def layer_map(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Student layer i ↦ teacher layer round((i+1)·Lt/Ls) − 1: spread evenly, last to last."""
    if n_student < 1 or n_teacher < 1:
        raise ConfigError("layer_map needs at least one layer on each side")
    return [(i, max(0, round((i + 1) * n_teacher / n_student) - 1)) for i in range(n_student)]


class FeatureProjector(nn.Module):
    """One learned Linear per student layer, from the student's width to the teacher's."""

    def __init__(self, n_layers: int, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(student_dim, teacher_dim) for _ in range(n_layers))

    def forward(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj[layer](hidden)


def feature_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, *,
                 kind: str = "mse", mask: torch.Tensor | None = None) -> torch.Tensor:
    """Distance between (projected) student and teacher hidden states [B, T, H]."""
    t = teacher_hidden.float()
    s = student_hidden.float()
    if kind == "mse":
        per = ((s - t) ** 2).mean(-1)
    elif kind == "cosine":
        per = 1.0 - F.cosine_similarity(s, t, dim=-1)
    else:
        raise ConfigError(f"unknown feature loss {kind!r}; valid: mse, cosine")
    return _masked_mean(per, mask)


def pool_hidden(hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Masked mean over positions: [B, T, H] → [B, H]."""
    if mask is None:
        return hidden.float().mean(1)
    m = mask.to(torch.float32).unsqueeze(-1)
    return (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1.0)


def _normalised_distances(x: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(x, x)
    off = d[~torch.eye(len(x), dtype=torch.bool, device=x.device)]
    return d / off.mean().clamp(min=1e-8)


def _angles(x: torch.Tensor) -> torch.Tensor:
    e = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)  # e[i, j] = unit(x_j - x_i)
    return torch.bmm(e, e.transpose(1, 2)).flatten()  # cos of the angle at i between j and k


def relational_loss(student_repr: torch.Tensor, teacher_repr: torch.Tensor, *,
                    distance_weight: float = 1.0, angle_weight: float = 2.0) -> torch.Tensor:
    """RKD (Park et al., 2019): match normalised pairwise distances and triplet angles."""
    s, t = student_repr.float(), teacher_repr.float().detach()
    if len(s) < 3:
        return torch.zeros((), device=s.device)
    dist = F.smooth_l1_loss(_normalised_distances(s), _normalised_distances(t))
    angle = F.smooth_l1_loss(_angles(s), _angles(t))
    return distance_weight * dist + angle_weight * angle
