"""Loss properties: zero on identical inputs, non-negative, symmetry, the ends of JSD,
F.kl_div agreement, and the top-k path equal to the dense path at k = V."""

import pytest
import torch
import torch.nn.functional as F

from raydistill.distill.losses import (
    LOSSES,
    feature_loss,
    forward_kl,
    get_loss,
    jsd,
    layer_map,
    pool_hidden,
    relational_loss,
    reverse_kl,
    topk_from_logits,
)
from raydistill.errors import ConfigError

B, T, V = 3, 5, 11


def logits(seed):
    return torch.randn(B, T, V, generator=torch.Generator().manual_seed(seed)) * 2


@pytest.mark.parametrize("name", list(LOSSES))
def test_zero_for_identical_inputs_and_non_negative(name):
    fn = get_loss(name)
    s = logits(0)
    assert fn(s, s.clone(), temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)
    for seed in range(5):
        assert fn(logits(seed), logits(seed + 10), temperature=1.5).item() >= -1e-7


def test_jsd_symmetric_at_half_and_ends_equal_kls():
    s, t = logits(2), logits(3)
    assert jsd(s, t, beta=0.5).item() == pytest.approx(jsd(t, s, beta=0.5).item(), rel=1e-6)
    assert jsd(s, t, beta=0.0, temperature=2).item() == pytest.approx(
        forward_kl(s, t, temperature=2).item(), rel=1e-6)
    assert jsd(s, t, beta=1.0, temperature=2).item() == pytest.approx(
        reverse_kl(s, t, temperature=2).item(), rel=1e-6)


def test_forward_kl_equals_torch_kl_div_times_t_squared():
    s, t, temp = logits(4), logits(5), 2.0
    ref = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1), log_target=True,
                   reduction="none").sum(-1).mean() * temp**2
    assert forward_kl(s, t, temperature=temp).item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("name", list(LOSSES))
def test_topk_path_equals_dense_path_when_k_is_vocab(name):
    s, t, temp = logits(6), logits(7), 1.7
    cache = topk_from_logits(t, V, temperature=temp)
    dense = get_loss(name)(s, t, temperature=temp)
    sparse = get_loss(name)(s, cache, temperature=temp)
    assert sparse.item() == pytest.approx(dense.item(), rel=1e-5, abs=1e-6)


def test_topk_with_tail_is_close_and_positive_for_small_k():
    s, t = logits(8), logits(9)
    approx = forward_kl(s, topk_from_logits(t, 4))
    assert 0 < approx.item() <= forward_kl(s, t).item() + 1e-6  # coarsening never adds KL


def test_mask_excludes_positions_and_gradients_flow():
    s, t = logits(10).requires_grad_(), logits(11)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, -2:] = False
    t2 = t.clone()
    t2[:, -2:] = torch.randn(B, 2, V)  # only masked positions change
    a = forward_kl(s, t, mask=mask)
    assert a.item() == pytest.approx(forward_kl(s, t2, mask=mask).item(), rel=1e-6)
    a.backward()
    assert s.grad is not None and s.grad[:, :-2].abs().sum() > 0
    assert s.grad[:, -2:].abs().sum() == 0


def test_feature_and_relational():
    h = torch.randn(B, T, 8)
    assert feature_loss(h, h.clone()).item() == pytest.approx(0.0)
    assert feature_loss(h, h.clone(), kind="cosine").item() == pytest.approx(0.0, abs=1e-6)
    r = torch.randn(6, 8)
    assert relational_loss(r, r.clone()).item() == pytest.approx(0.0, abs=1e-6)
    # invariant to scale: RKD normalises distances
    assert relational_loss(r, 3 * r).item() == pytest.approx(0.0, abs=1e-5)
    assert relational_loss(r, torch.randn(6, 16)).item() > 0
    assert layer_map(2, 4) == [(0, 1), (1, 3)] and layer_map(3, 3) == [(0, 0), (1, 1), (2, 2)]
    assert pool_hidden(h, torch.ones(B, T)).shape == (B, 8)


def test_bad_names_and_values():
    with pytest.raises(ConfigError, match="valid: forward_kl, reverse_kl, jsd, tvd"):
        get_loss("kl")
    with pytest.raises(ConfigError, match="temperature"):
        forward_kl(logits(0), logits(1), temperature=0)
    with pytest.raises(ConfigError, match="beta"):
        jsd(logits(0), logits(1), beta=1.5)
    with pytest.raises(ConfigError, match="mse, cosine"):
        feature_loss(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), kind="l1")
