"""The chunked α·CE + (1−α)·KD equals the plain autograd one, in value and in gradient."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raydistill.distill import losses
from raydistill.distill.chunked import chunked_kd_objective
from raydistill.errors import ConfigError

B, T, V = 2, 7, 23


def masked_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    nll = -torch.log_softmax(logits.float(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, nll, torch.zeros_like(nll)).sum() / mask.sum().clamp(min=1)


def reference(logits, targets, teacher, mask, *, loss, alpha, temperature=1.0, beta=0.5):
    kwargs = {"beta": beta} if loss == "jsd" else {}
    value = alpha * masked_ce(logits, torch.where(mask, targets, 0), mask)
    if alpha < 1:
        kd = losses.get_loss(loss)(logits, teacher, temperature=temperature, mask=mask, **kwargs)
        value = value + (1 - alpha) * kd
    return value


def value_and_grad(fn, logits, *args, **kwargs):
    leaf = logits.detach().clone().requires_grad_()
    value = fn(leaf, *args, **kwargs)
    value.backward()
    return value.detach(), leaf.grad


def make(seed: int, b: int = B, t: int = T, v: int = V, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    student = (torch.randn(b, t, v, generator=gen) * 2).to(dtype)
    teacher = torch.randn(b, t, v, generator=gen) * 2
    targets = torch.randint(v, (b, t), generator=gen)
    mask = torch.rand(b, t, generator=gen) > 0.3
    mask[:, :2] = False  # fully masked chunks at small chunk sizes
    mask[0, -1] = True
    targets[~mask] = -100  # garbage where masked: must never be read
    return student, teacher, targets, mask


def teacher_of(kind: str, dense: torch.Tensor, temperature: float):
    if kind == "dense":
        return dense
    cache = losses.topk_from_logits(dense, 5, temperature)
    return cache if kind == "topk_tail" else losses.TopK(cache.logprobs, cache.indices)


def check(student, teacher, targets, mask, *, atol=1e-5, rtol=1e-4, chunk_tokens, **kw):
    want_v, want_g = value_and_grad(reference, student, targets, teacher, mask, **kw)
    got_v, got_g = value_and_grad(chunked_kd_objective, student, targets, teacher, mask,
                                  chunk_tokens=chunk_tokens, **kw)
    assert torch.isfinite(got_v) and torch.isfinite(got_g.float()).all()
    assert got_g.dtype == student.dtype and got_g.shape == student.shape
    torch.testing.assert_close(got_v, want_v.float(), atol=atol, rtol=rtol)
    torch.testing.assert_close(got_g.float(), want_g.float(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("loss", list(losses.LOSSES))
@pytest.mark.parametrize("kind", ["dense", "topk_tail", "topk_notail"])
@pytest.mark.parametrize("chunk_tokens", [1, 4, 5, 2 * 7, 1000])  # 4, 5: width 2, T = 7
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_matches_unchunked(loss, kind, chunk_tokens, alpha):
    student, dense, targets, mask = make(0)
    temperature = 2.0 if kind != "topk_notail" else 1.0
    teacher = teacher_of(kind, dense, temperature) if alpha < 1 else None
    check(student, teacher, targets, mask, chunk_tokens=chunk_tokens, loss=loss, alpha=alpha,
          temperature=temperature, beta=0.3)


@pytest.mark.parametrize("loss", list(losses.LOSSES))
@pytest.mark.parametrize("kind", ["dense", "topk_tail"])
def test_bf16_logits(loss, kind):
    student, dense, targets, mask = make(1, dtype=torch.bfloat16)
    teacher = teacher_of(kind, dense.to(torch.bfloat16), 1.0)
    check(student, teacher, targets, mask, chunk_tokens=3, loss=loss, alpha=0.5,
          atol=2e-3, rtol=2e-2)


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_jsd_ends(beta):
    student, dense, targets, mask = make(2)
    check(student, dense, targets, mask, chunk_tokens=2, loss="jsd", alpha=0.2, beta=beta)


def test_non_contiguous_logits_and_shifted_targets():
    student, dense, ids, mask = make(3, t=9)
    ids = torch.randint(V, ids.shape, generator=torch.Generator().manual_seed(3))
    leaf = student.clone().requires_grad_()
    got = chunked_kd_objective(leaf[:, :-1], ids[:, 1:], dense[:, :-1], mask[:, :-1],
                               loss="forward_kl", alpha=0.5, chunk_tokens=4)
    got.backward()
    ref_leaf = student.clone().requires_grad_()
    want = reference(ref_leaf[:, :-1], ids[:, 1:], dense[:, :-1], mask[:, :-1],
                     loss="forward_kl", alpha=0.5)
    want.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(leaf.grad, ref_leaf.grad)
    assert (leaf.grad[:, -1] == 0).all()


def test_grad_output_scales_and_mask_none():
    student, dense, targets, _ = make(4)
    targets = targets.clamp(min=0)
    leaf = student.clone().requires_grad_()
    (3.0 * chunked_kd_objective(leaf, targets, dense, None, loss="tvd", chunk_tokens=3)).backward()
    ref_leaf = student.clone().requires_grad_()
    full = torch.ones(B, T, dtype=torch.bool)
    (3.0 * reference(ref_leaf, targets, dense, full, loss="tvd", alpha=0.5)).backward()
    torch.testing.assert_close(leaf.grad, ref_leaf.grad)


def test_all_masked_gives_zero_and_no_grad_path():
    student, dense, targets, mask = make(5)
    leaf = student.clone().requires_grad_()
    value = chunked_kd_objective(leaf, targets, dense, torch.zeros_like(mask), chunk_tokens=2)
    value.backward()
    assert value.item() == 0.0 and (leaf.grad == 0).all()
    with torch.no_grad():
        got = chunked_kd_objective(student, targets, dense, mask, loss="jsd", chunk_tokens=3)
    want = reference(student, targets, dense, mask, loss="jsd", alpha=0.5)
    assert not got.requires_grad
    torch.testing.assert_close(got, want)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 3), t=st.integers(1, 9), v=st.integers(11, 50),
       chunk_tokens=st.integers(1, 30), alpha=st.sampled_from([0.0, 0.3, 1.0]),
       loss=st.sampled_from(list(losses.LOSSES)), kind=st.sampled_from(["dense", "topk_tail"]),
       seed=st.integers(0, 2**16))
def test_matches_unchunked_random_shapes(b, t, v, chunk_tokens, alpha, loss, kind, seed):
    student, dense, targets, mask = make(seed, b, t, v)
    teacher = teacher_of(kind, dense, 1.5) if alpha < 1 else None
    check(student, teacher, targets, mask, chunk_tokens=chunk_tokens, loss=loss, alpha=alpha,
          temperature=1.5)


@pytest.mark.parametrize("chunk_tokens", [0, -3, 2.0, True, "8", None])
def test_bad_chunk_tokens(chunk_tokens):
    student, dense, targets, mask = make(6)
    with pytest.raises(ConfigError, match="chunk_tokens"):
        chunked_kd_objective(student, targets, dense, mask, chunk_tokens=chunk_tokens)


def test_unknown_loss_and_bad_alpha():
    student, dense, targets, mask = make(7)
    with pytest.raises(ConfigError, match="unknown loss 'kl'"):
        chunked_kd_objective(student, targets, dense, mask, loss="kl")
    with pytest.raises(ConfigError, match="alpha"):
        chunked_kd_objective(student, targets, dense, mask, alpha=1.5)


def test_missing_teacher_and_bad_shapes():
    student, dense, targets, mask = make(8)
    with pytest.raises(ValueError, match="teacher is needed"):
        chunked_kd_objective(student, targets, None, mask, alpha=0.5)
    with pytest.raises(ValueError, match="teacher"):
        chunked_kd_objective(student, targets, dense[:, :-1], mask)
    with pytest.raises(ValueError, match="mask"):
        chunked_kd_objective(student, targets, dense, mask[:, :-1])


def test_retain_graph_backward_twice_accumulates():
    student, dense, targets, mask = make(9)
    leaf = student.clone().requires_grad_()
    value = chunked_kd_objective(leaf, targets, dense, mask, loss="reverse_kl", chunk_tokens=3)
    value.backward(retain_graph=True)
    once = leaf.grad.clone()
    value.backward()
    torch.testing.assert_close(leaf.grad, 2 * once)
