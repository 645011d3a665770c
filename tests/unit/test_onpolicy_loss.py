"""onpolicy_jsd: its ends are the two KLs, it is a divergence (≥ 0, 0 on equal inputs), the mask
is honoured, the top-k path equals the dense one at k = V, bf16 student logits give a finite loss
near fp32's; and it equals the installed TRL's own on-policy loss
(`distillation_trainer._chunked_divergence_loss`, value and gradient; the server trainer's
top-k-with-tail divergence for a TopK teacher) to 1e-6. mix_onpolicy is GKD's λ."""

import random
import warnings

import pytest
import torch

from raydistill.distill.losses import TopK, forward_kl, reverse_kl, topk_from_logits
from raydistill.distill.onpolicy_loss import mix_onpolicy, onpolicy_jsd
from raydistill.errors import ConfigError

B, T, V, H = 3, 6, 17, 8
BETAS = (0.0, 0.5, 1.0)


def logits(seed: int, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(B, T, V, generator=torch.Generator().manual_seed(seed)) * scale


def mask() -> torch.Tensor:
    m = torch.ones(B, T, dtype=torch.bool)
    m[0, 4:] = False  # a completion that ended early: right padding, as TRL pads
    m[2, 1:] = False
    return m


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_ends_are_forward_and_reverse_kl(temp):
    s, t = logits(0), logits(1)
    # forward_kl / reverse_kl scale by T²; the on-policy loss is TRL's, unscaled
    fwd = forward_kl(s, t, temperature=temp, mask=mask()) / temp**2
    rev = reverse_kl(s, t, temperature=temp, mask=mask()) / temp**2
    assert onpolicy_jsd(s, t, beta=0.0, temperature=temp, mask=mask()).item() == \
        pytest.approx(fwd.item(), rel=1e-6)
    assert onpolicy_jsd(s, t, beta=1.0, temperature=temp, mask=mask()).item() == \
        pytest.approx(rev.item(), rel=1e-6)
    assert fwd.item() != pytest.approx(rev.item(), rel=1e-3)  # the two ends do differ


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_nonnegative_and_zero_on_equal_inputs(beta):
    for seed in range(5):
        s, t = logits(seed), logits(seed + 100)
        assert onpolicy_jsd(s, t, beta=beta).item() >= 0.0
        assert onpolicy_jsd(s, s.clone(), beta=beta).item() == pytest.approx(0.0, abs=1e-6)


def test_half_is_the_symmetric_jsd_bounded_by_log2():
    s, t = logits(3, scale=6.0), logits(4, scale=6.0)
    ab = onpolicy_jsd(s, t, beta=0.5).item()
    ba = onpolicy_jsd(t, s, beta=0.5).item()
    assert ab == pytest.approx(ba, rel=1e-5)  # JSD_½ swaps teacher and student freely
    assert 0.0 < ab <= torch.log(torch.tensor(2.0)).item() + 1e-6
    # β and 1 − β swap the roles: JSD_β(p_T, p_S) = JSD_{1−β}(p_S, p_T)
    assert onpolicy_jsd(s, t, beta=0.2).item() == \
        pytest.approx(onpolicy_jsd(t, s, beta=0.8).item(), rel=1e-5)


def test_mask_counts_only_kept_positions():
    s, t, m = logits(5), logits(6), mask()
    loss = onpolicy_jsd(s, t, beta=0.5, mask=m)
    garbage = s.clone()
    garbage[~m] = float("nan")  # padded positions may hold anything; they must not leak
    assert onpolicy_jsd(garbage, t, beta=0.5, mask=m).item() == pytest.approx(loss.item())
    kept = onpolicy_jsd(s[m].unsqueeze(0), t[m].unsqueeze(0), beta=0.5)
    assert loss.item() == pytest.approx(kept.item(), rel=1e-6)  # mean over kept tokens
    none = torch.zeros(B, T, dtype=torch.bool)
    assert onpolicy_jsd(s, t, beta=0.5, mask=none).item() == 0.0


@pytest.mark.parametrize("beta", BETAS)
def test_topk_with_the_whole_vocabulary_is_the_dense_loss(beta):
    s, t = logits(7), logits(8)
    dense = onpolicy_jsd(s, t, beta=beta, temperature=1.5, mask=mask())
    cache = topk_from_logits(t, V, temperature=1.5)
    assert onpolicy_jsd(s, cache, beta=beta, temperature=1.5, mask=mask()).item() == \
        pytest.approx(dense.item(), rel=1e-5, abs=1e-6)
    small = topk_from_logits(t, 3, temperature=1.5)  # coarser: never more divergence
    assert onpolicy_jsd(s, small, beta=beta, temperature=1.5).item() <= \
        onpolicy_jsd(s, t, beta=beta, temperature=1.5).item() + 1e-6


@pytest.mark.parametrize("beta", BETAS)
def test_bf16_student_logits_are_computed_stably(beta):
    s, t = logits(9, scale=30.0), logits(10, scale=30.0)  # peaked: exp() of bf16 would flush
    s16 = s.to(torch.bfloat16).requires_grad_()
    loss = onpolicy_jsd(s16, t.to(torch.bfloat16), beta=beta, mask=mask())
    ref = onpolicy_jsd(s.to(torch.bfloat16).float(), t.to(torch.bfloat16).float(), beta=beta,
                       mask=mask())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)  # no bf16 arithmetic inside
    loss.backward()
    assert s16.grad is not None and torch.isfinite(s16.grad.float()).all()


def test_bad_beta_and_temperature_are_one_line_errors():
    s = logits(0)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="beta"):
            onpolicy_jsd(s, s, beta=bad)
    with pytest.raises(ConfigError, match="temperature"):
        onpolicy_jsd(s, s, beta=0.5, temperature=0.0)


def test_mix_onpolicy_is_gkd_lambda():
    rng = random.Random(0)
    assert all(mix_onpolicy(1.0, rng) for _ in range(50))
    assert not any(mix_onpolicy(0.0, rng) for _ in range(50))
    draws = [mix_onpolicy(0.3, random.Random(1)) for _ in range(1)]
    assert draws == [mix_onpolicy(0.3, random.Random(1))]  # seeded: reproducible
    share = sum(mix_onpolicy(0.3, rng) for _ in range(4000)) / 4000
    assert share == pytest.approx(0.3, abs=0.03)
    for bad in (-0.5, 2, True):
        with pytest.raises(ConfigError, match="lmbda"):
            mix_onpolicy(bad, rng)


# ---- parity with the installed TRL -------------------------------------------------------------


def _trl():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TRL warns about the vLLM version it finds
        from trl.trainer import distillation_trainer
    return distillation_trainer


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_equals_trl_chunked_divergence_loss(beta, temp):
    """Same hidden states and heads: TRL's chunked loss against ours on the projected logits,
    value and gradient with respect to the student's hidden states."""
    g = torch.Generator().manual_seed(int(beta * 10 + temp))
    h_s = torch.randn(B, T, H, generator=g).requires_grad_()
    h_t, w_s, w_t = torch.randn(B, T, H, generator=g), torch.randn(V, H, generator=g), \
        torch.randn(V, H, generator=g)
    m = mask().long()
    theirs, _, n_valid = _trl()._chunked_divergence_loss(h_s, h_t, w_s, w_t, m, beta,
                                                          temperature=temp)
    (grad_theirs,) = torch.autograd.grad(theirs, h_s)
    ours = onpolicy_jsd(h_s @ w_s.T, h_t @ w_t.T, beta=beta, temperature=temp, mask=m)
    (grad_ours,) = torch.autograd.grad(ours, h_s)
    assert int(n_valid) == int(m.sum())
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6, abs=1e-6)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("beta", BETAS)
def test_topk_equals_trl_server_topk_with_tail(beta):
    """A teacher behind a server returns its top-k: TRL's server trainer compares the student's
    log-probs at those ids plus one tail bucket on each side (`_add_tail_bucket`,
    `_jsd_divergence`), as `TopK` does here."""
    from trl.experimental.server_distillation import server_distillation_trainer as srv

    s, t, m, k = logits(11), logits(12), mask(), 4
    cache = topk_from_logits(t, k)
    log_s = torch.log_softmax(s, -1).gather(-1, cache.indices)
    support = torch.ones_like(log_s, dtype=torch.bool)
    s_tail, full = srv._add_tail_bucket(log_s, support)
    t_tail, _ = srv._add_tail_bucket(cache.logprobs, support)
    per = srv._jsd_divergence(s_tail, t_tail, beta, support_mask=full).sum(-1)
    theirs = per[m].mean()
    ours = onpolicy_jsd(s, TopK(cache.logprobs, cache.indices, cache.tail_logprob), beta=beta,
                        mask=m)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6, abs=1e-6)
