"""On-policy distillation's loss and batch mix (GKD; TRL 1.16's `DistillationTrainer`).

`onpolicy_jsd` is the generalized JSD of `trl.trainer.distillation_trainer.
_chunked_divergence_loss`, evaluated on the student's own completion tokens:
M = β·p_T + (1−β)·p_S and JSD_β = β·KL(p_T ‖ M) + (1−β)·KL(p_S ‖ M), with β = 0 forward
KL(p_T ‖ p_S) and β = 1 reverse KL(p_S ‖ p_T) (the mixture formula tends to 0 at both ends, so
both TRL and we switch to the KLs there). Unlike `losses.jsd` it is not multiplied by T²: TRL's
is not, and the point of this one is that a step of ours and a step of TRL's optimise the same
number at every temperature (tests/unit/test_onpolicy_loss.py checks it against the installed
TRL). The teacher is dense logits or a `losses.TopK` (a scoring service that returns the top-k
with its tail mass): the latter is compared on the (k+1)-bucket coarsening, as every logit loss
here is (`losses._pair`). Reduction is TRL's without `num_items_in_batch`: the sum over unmasked
positions ÷ their count (0 for an all-false mask).

`mix_onpolicy(lmbda, rng)`: GKD's λ, whether this step trains on the student's own completions
(True) or on the off-policy batch (the synthetic data).
"""

from __future__ import annotations

import random

import torch

from raydistill.distill.losses import (
    Teacher,
    _check_unit,
    _masked_mean,
    _pair,
    generalized_jsd_per_token,
)
from raydistill.errors import ConfigError


def onpolicy_jsd(student_logits: torch.Tensor, teacher: Teacher, *, beta: float,
                 temperature: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Generalized JSD_β between teacher and student at temperature T, mean over `mask`.

    `student_logits` [B, T, V] in any float dtype (bf16 included: computed in fp32 log space);
    `teacher` dense logits [B, T, V] or a `TopK`; `mask` [B, T] (bool or 0/1), True = counted.
    """
    _check_unit("onpolicy beta", beta)
    log_t, log_s = _pair(student_logits, teacher, temperature)
    return _masked_mean(generalized_jsd_per_token(log_t, log_s, beta), mask)


def mix_onpolicy(lmbda: float, rng: random.Random) -> bool:
    """True with probability `lmbda`: this step's batch is the student's own completions.

    `rng` is the caller's seeded `random.Random`, so a run's sequence of on/off-policy steps
    is reproducible; λ = 1 and λ = 0 never draw (always / never on-policy)."""
    if isinstance(lmbda, bool) or not isinstance(lmbda, (int, float)) or not 0 <= lmbda <= 1:
        raise ConfigError(f"distill.lmbda must be a number in [0, 1], got {lmbda!r}")
    if lmbda >= 1.0:
        return True
    if lmbda <= 0.0:
        return False
    return rng.random() < lmbda
