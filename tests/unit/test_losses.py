"""Loss properties: zero on identical inputs, non-negative, JSD symmetry and ends, agreement with
F.kl_div and with TRL's GKD formula, the top-k path equal to the dense path at k = V, masks,
gradients, and one-line errors for bad names and values."""

import itertools
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from raydistill.distill.losses import (
    LOSSES,
    FeatureProjector,
    TopK,
    feature_loss,
    forward_kl,
    get_loss,
    jsd,
    kd_objective,
    layer_map,
    pool_hidden,
    relational_loss,
    reverse_kl,
    topk_from_logits,
    tvd,
)
from raydistill.errors import ConfigError

B, T, V = 3, 5, 11
few = settings(max_examples=15, deadline=None)
temperatures = st.sampled_from([0.5, 1.0, 1.7, 4.0])
betas = st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0])


def logits(seed: int, v: int = V) -> torch.Tensor:
    return torch.randn(B, T, v, generator=torch.Generator().manual_seed(seed)) * 2


def call(name: str, s, t, beta: float = 0.5, **kw) -> torch.Tensor:
    return jsd(s, t, beta=beta, **kw) if name == "jsd" else get_loss(name)(s, t, **kw)


def trl_gjsd(s: torch.Tensor, t: torch.Tensor, beta: float, temp: float) -> torch.Tensor:
    """TRL GKDTrainer.generalized_jsd_loss (no labels, batchmean), rewritten as a reference."""
    ls, lt = F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1)
    b = torch.tensor(beta)
    lm = torch.logsumexp(torch.stack([ls + torch.log(1 - b), lt + torch.log(b)]), dim=0)
    per = (beta * F.kl_div(lm, lt, reduction="none", log_target=True)
           + (1 - beta) * F.kl_div(lm, ls, reduction="none", log_target=True))
    return per.sum() / (s.shape[0] * s.shape[1])


@pytest.mark.parametrize("name", list(LOSSES))
def test_zero_for_identical_inputs_dense_and_topk(name):
    s = logits(0)
    assert call(name, s, s.clone(), temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)
    cache = topk_from_logits(s, 4, temperature=2.0)
    assert call(name, s, cache, temperature=2.0).item() == pytest.approx(0.0, abs=1e-5)


@few
@given(seed=st.integers(0, 10_000), temp=temperatures, beta=betas, k=st.integers(1, V))
def test_non_negative_and_coarsening_never_adds_divergence(seed, temp, beta, k):
    s, t = logits(seed), logits(seed + 1)
    for name in LOSSES:
        dense = call(name, s, t, beta, temperature=temp).item()
        # every loss here is an f-divergence: merging buckets can only lower it (data processing)
        coarse = call(name, s, topk_from_logits(t, k, temp), beta, temperature=temp).item()
        assert -1e-6 <= coarse <= dense + 1e-5 * max(1.0, dense)
    assert tvd(s, t, temperature=temp).item() <= 1.0


@few
@given(seed=st.integers(0, 10_000), temp=temperatures)
def test_jsd_symmetric_at_half_and_ends_are_the_kls(seed, temp):
    s, t = logits(seed), logits(seed + 1)
    assert jsd(s, t, beta=0.5, temperature=temp).item() == pytest.approx(
        jsd(t, s, beta=0.5, temperature=temp).item(), rel=1e-5, abs=1e-7)
    assert jsd(s, t, beta=0.0, temperature=temp).item() == pytest.approx(
        forward_kl(s, t, temperature=temp).item(), rel=1e-6)
    assert jsd(s, t, beta=1.0, temperature=temp).item() == pytest.approx(
        reverse_kl(s, t, temperature=temp).item(), rel=1e-6)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_jsd_matches_trl_gkd_times_t_squared(beta, temp):
    s, t = logits(12), logits(13)
    ours = jsd(s, t, beta=beta, temperature=temp).item()
    assert ours == pytest.approx(trl_gjsd(s, t, beta, temp).item() * temp**2, rel=1e-5)
    # and the textbook form with M = β·p_T + (1−β)·p_S written in probabilities
    p_t, p_s = F.softmax(t / temp, -1), F.softmax(s / temp, -1)
    m = beta * p_t + (1 - beta) * p_s
    ref = (beta * (p_t * (p_t / m).log()).sum(-1)
           + (1 - beta) * (p_s * (p_s / m).log()).sum(-1)).mean() * temp**2
    assert ours == pytest.approx(ref.item(), rel=1e-5)


def test_forward_kl_equals_torch_kl_div_times_t_squared():
    s, t, temp = logits(4), logits(5), 2.0
    ref = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1), log_target=True,
                   reduction="none").sum(-1).mean() * temp**2
    assert forward_kl(s, t, temperature=temp).item() == pytest.approx(ref.item(), rel=1e-6)


@few
@given(seed=st.integers(0, 10_000), temp=temperatures, beta=betas)
def test_topk_path_equals_dense_path_when_k_is_vocab(seed, temp, beta):
    s, t = logits(seed), logits(seed + 1)
    full = topk_from_logits(t, V, temperature=temp)
    no_tail = TopK(full.logprobs, full.indices)  # renormalising over all V tokens is a no-op
    for name in LOSSES:
        dense = call(name, s, t, beta, temperature=temp).item()
        for cache in (full, no_tail):
            sparse = call(name, s, cache, beta, temperature=temp).item()
            assert sparse == pytest.approx(dense, rel=1e-4, abs=1e-6), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_cache_stays_close_and_non_negative(dtype):
    s, t = logits(20, v=64), logits(21, v=64)
    exact = topk_from_logits(t, 16)
    low = TopK(exact.logprobs.to(dtype), exact.indices.int(), exact.tail_logprob.to(dtype))
    for name in LOSSES:
        a, b = call(name, s, exact).item(), call(name, s, low).item()
        assert b >= 0 and b == pytest.approx(a, rel=0.05, abs=1e-3), name


@pytest.mark.parametrize("name", list(LOSSES))
def test_masked_tokens_do_not_count_and_gradients_flow(name):
    s, t = logits(10).requires_grad_(), logits(11)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, -2:] = False
    t2 = t.clone()
    t2[:, -2:] = torch.randn(B, 2, V) * 5  # only masked positions change
    loss = call(name, s, t, mask=mask, temperature=1.5)
    assert loss.item() == pytest.approx(call(name, s, t2, mask=mask, temperature=1.5).item())
    assert loss.item() == pytest.approx(call(name, s, t, mask=mask.float(), temperature=1.5).item())
    kept = call(name, s[:, :-2], t[:, :-2], temperature=1.5)
    assert loss.item() == pytest.approx(kept.item(), rel=1e-6)
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    assert s.grad[:, :-2].abs().sum() > 0 and s.grad[:, -2:].abs().sum() == 0


@pytest.mark.parametrize("name", list(LOSSES))
def test_padded_cache_rows_stay_finite(name):
    """Padding as the training loop writes it: log-probs −1e4, index 0 repeated, tail −1e4."""
    s = logits(30).requires_grad_()
    cache = topk_from_logits(logits(31), 4)
    lp, idx, tail = cache.logprobs.clone(), cache.indices.clone(), cache.tail_logprob.clone()
    lp[:, -1], idx[:, -1], tail[:, -1] = -1e4, 0, -1e4
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, -1] = False
    loss = call(name, s, TopK(lp, idx, tail), mask=mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    assert call(name, s, cache, mask=torch.zeros(B, T)).item() == 0.0  # nothing kept: 0, not nan


def test_kd_objective_and_bad_values():
    assert kd_objective(torch.tensor(2.0), torch.tensor(4.0), 0.25).item() == pytest.approx(3.5)
    with pytest.raises(ConfigError, match=r"valid: forward_kl, reverse_kl, jsd, tvd$"):
        get_loss("kl")
    for bad_t in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="temperature"):
            forward_kl(logits(0), logits(1), temperature=bad_t)
    with pytest.raises(ConfigError, match="temperature"):
        topk_from_logits(logits(0), 3, temperature=0)
    for bad_k in (0, V + 1, 2.5):
        with pytest.raises(ConfigError, match=rf"top-k must be an integer in \[1, {V}\]"):
            topk_from_logits(logits(0), bad_k)
    with pytest.raises(ConfigError, match="beta"):
        jsd(logits(0), logits(1), beta=1.5)
    with pytest.raises(ConfigError, match="alpha"):
        kd_objective(torch.tensor(1.0), torch.tensor(1.0), -0.1)
    with pytest.raises(ValueError, match="same shape"):
        TopK(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="teacher logits"):
        forward_kl(logits(0), logits(1, v=V + 1))


def test_layer_map_is_uniform_and_ends_last_to_last():
    assert layer_map(2, 4) == [(0, 1), (1, 3)]
    assert layer_map(3, 3) == [(0, 0), (1, 1), (2, 2)]
    assert layer_map(2, 5) == [(0, 2), (1, 4)]  # 2.5 rounds up, not to even
    assert layer_map(4, 2) == [(0, 0), (1, 0), (2, 1), (3, 1)]
    for ls, lt in [(1, 7), (5, 3), (6, 32), (12, 40)]:
        pairs = layer_map(ls, lt)
        assert pairs[-1] == (ls - 1, lt - 1) and [p[0] for p in pairs] == list(range(ls))
        assert all(0 <= a[1] <= b[1] < lt for a, b in itertools.pairwise(pairs))
    with pytest.raises(ConfigError, match="layer_map"):
        layer_map(0, 3)


def test_feature_loss_with_projection():
    h = torch.randn(B, T, 8)
    assert feature_loss(h, h.clone()).item() == pytest.approx(0.0)
    assert feature_loss(h, h.clone(), kind="cosine").item() == pytest.approx(0.0, abs=1e-6)
    proj = FeatureProjector(2, 8, 16)
    t = torch.randn(B, T, 16)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0] = False
    for kind in ("mse", "cosine"):
        loss = feature_loss(h, t, proj.layer(1), kind=kind, mask=mask)
        assert loss.item() > 0
        loss.backward()
    assert proj.proj[1].weight.grad is not None and proj.proj[0].weight.grad is None
    assert torch.equal(proj(1, h), proj.layer(1)(h))
    with pytest.raises(ValueError, match="teacher's width"):
        feature_loss(h, t)
    with pytest.raises(ConfigError, match="valid: mse, cosine"):
        feature_loss(h, h, kind="l1")


def test_pool_hidden_is_a_masked_mean():
    h = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    pooled = pool_hidden(h, mask)
    assert torch.allclose(pooled[0], h[0, :2].mean(0)) and torch.equal(pooled[1], torch.zeros(2))
    assert torch.allclose(pool_hidden(h), h.mean(1))


def test_relational_loss_invariances_and_gradients():
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(6, 8, generator=gen)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen))
    assert relational_loss(r, r.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert relational_loss(r, 3 * r).item() == pytest.approx(0.0, abs=1e-5)  # scale
    assert relational_loss(r, r @ rotation + 1.0).item() == pytest.approx(0.0, abs=1e-5)
    s = torch.cat([r[:3], r[:1]]).requires_grad_()  # a duplicated row: zero distances
    loss = relational_loss(s, torch.randn(4, 16, generator=gen))
    assert loss.item() > 0
    loss.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    small = torch.randn(2, 8, requires_grad=True)
    relational_loss(small, torch.randn(2, 4)).backward()  # no triplet: 0, still differentiable
    with pytest.raises(ConfigError, match="angle_weight"):
        relational_loss(r, r, angle_weight=-1.0)


def test_importing_the_subpackage_does_not_import_torch():
    code = "import sys, raydistill.distill; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_config_knows_exactly_the_losses_the_table_has():
    from raydistill.config import LOSS_NAMES
    from raydistill.distill.losses import LOSSES

    assert set(LOSS_NAMES) == set(LOSSES)
