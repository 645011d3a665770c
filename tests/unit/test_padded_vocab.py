"""Output layers padded past the tokenizer, as hub checkpoints ship them (Qwen2.5-7B 152,064 rows,
0.5B 151,936, one tokenizer of 151,665 tokens): the rows no token reaches are out of every loss,
so a teacher and a student padded by different amounts distil with dense online KD and with a
cached top-k, even one whose ids point past the student's rows."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from raydistill.data.format import encode, response_ids, shared_rows
from raydistill.data.local_models import (
    QWEN2_CHAT_TEMPLATE,
    _default_texts,
    save_model_dir,
    train_tokenizer,
)
from raydistill.distill import losses
from raydistill.distill.losses import TopK
from raydistill.distill.stages import vocab_rows
from raydistill.distill.train import StudentModule, objective
from raydistill.errors import ConfigError

TOKENS = 300  # the tokenizer's length; teacher padded to 384 rows, student to 320
TEXTS = [f"What is {a} plus {b}? The answer is {a + b}. Thank you, assistant." for a in range(40)
         for b in range(0, 40, 7)]


def _save(path, tokenizer, rows: int, hidden: int, seed: int):
    from transformers import AutoModelForCausalLM

    save_model_dir(path, "qwen2", tokenizer, hidden_size=hidden, num_attention_heads=hidden // 32,
                   seed=seed)
    model = AutoModelForCausalLM.from_pretrained(path)
    model.resize_token_embeddings(rows, mean_resizing=False)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("padded")
    tok = train_tokenizer(_default_texts(), TOKENS, QWEN2_CHAT_TEMPLATE, "qwen2")
    assert len(tok) == TOKENS
    return SimpleNamespace(tok=tok, teacher=_save(root / "teacher", tok, 384, 64, 1),
                           student=_save(root / "student", tok, 320, 32, 2),
                           short=_save(root / "short", tok, TOKENS - 8, 32, 3))


def run_cfg(student, teacher, top_k: int = 0):
    return SimpleNamespace(student=SimpleNamespace(model=str(student)),
                           teacher=SimpleNamespace(model=str(teacher)),
                           distill=SimpleNamespace(top_k=top_k))


def loop_cfg(top_k: int) -> dict:
    return {"method": "logit", "loss": "reverse_kl", "temperature": 1.0, "beta": 0.5,
            "alpha": 0.5, "top_k": top_k, "feature_kind": "mse", "chunk_tokens": 7,
            "vocab_rows": TOKENS}


def batch(tok) -> list[dict]:
    out = []
    for i, text in enumerate(TEXTS[:3]):
        messages = [{"role": "user", "content": text[: 20 + 5 * i]}]
        e = encode(tok, messages, response_ids(tok, text[20:], 12), max_prompt_tokens=32,
                   max_seq_len=48)
        out.append({"input_ids": e.input_ids, "prompt_len": e.prompt_len,
                    "teacher_input_ids": e.input_ids, "teacher_prompt_len": e.prompt_len})
    return out


def load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def test_shared_rows_are_the_tokenizers_and_short_models_are_refused(pair):
    assert vocab_rows(run_cfg(pair.student, pair.teacher), "logit", pair.teacher) == TOKENS
    assert vocab_rows(run_cfg(pair.student, pair.teacher, 8), "logit", pair.teacher) == TOKENS
    with pytest.raises(ConfigError, match=r"student .* has 292 output rows but its tokenizer "
                                          r"has 300 tokens"):
        vocab_rows(run_cfg(pair.short, pair.teacher), "sft", pair.teacher)
    with pytest.raises(ConfigError, match=r"teacher .* 292 output rows"):  # online teacher
        vocab_rows(run_cfg(pair.student, pair.short), "logit", pair.short)
    assert shared_rows(pair.tok, {}) == TOKENS


def _loss_and_grad(student, teacher, chosen, cfg):
    module = StudentModule(student, None)
    module.zero_grad(set_to_none=True)
    loss = objective(cfg, module, teacher, chosen, 0, 0, "cpu")  # pad 0: masked, unattended
    loss.backward()
    return loss.detach(), student.get_output_embeddings().weight.grad.clone()


def _boost_padding(model) -> None:
    """Huge logits on the padded rows: were they in a loss, it would change."""
    with torch.no_grad():
        model.get_output_embeddings().weight[TOKENS:] *= 50.0


def test_dense_online_kd_between_differently_padded_models(pair):
    student, teacher, chosen = load(pair.student), load(pair.teacher), batch(pair.tok)
    assert student.config.vocab_size == 320 and teacher.config.vocab_size == 384
    loss, grad = _loss_and_grad(student, teacher, chosen, loop_cfg(0))
    assert torch.isfinite(loss) and loss > 0
    assert (grad[TOKENS:] == 0).all() and grad[:TOKENS].abs().sum() > 0
    _boost_padding(student)
    _boost_padding(teacher)
    again, _ = _loss_and_grad(student, teacher, chosen, loop_cfg(0))
    torch.testing.assert_close(again, loss)


def test_cached_topk_with_ids_past_the_students_rows(pair):
    student, teacher, chosen = load(pair.student), load(pair.teacher), batch(pair.tok)
    _boost_padding(teacher)  # an engine that saw the padded rows puts them in its top-k
    for e in chosen:
        with torch.no_grad():
            logits = teacher(torch.tensor([e["input_ids"]])).logits[0]
        cache = losses.topk_from_logits(logits[e["prompt_len"] - 1:-1], 16)
        assert (cache.indices >= 320).any() and ((cache.indices >= TOKENS)
                                                 & (cache.indices < 320)).any()
        e.update(logprobs=cache.logprobs, indices=cache.indices, tail=cache.tail_logprob)
    loss, grad = _loss_and_grad(student, None, chosen, loop_cfg(16))
    assert torch.isfinite(loss) and (grad[TOKENS:] == 0).all()


@pytest.mark.parametrize("loss", list(losses.LOSSES))
@pytest.mark.parametrize("with_tail", [True, False])
def test_out_of_range_ids_are_moved_into_the_tail(loss, with_tail):
    """A cache entry for a row the student lacks is the same as that entry's mass in the tail."""
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 20, generator=gen, requires_grad=True)
    full = losses.topk_from_logits(torch.randn(2, 3, 26, generator=gen) * 3, 6)
    bad = torch.tensor([0, 3])  # entries pointed past row 19 (ids 20 and 25)
    indices = full.indices.clone()
    indices[..., bad] = torch.tensor([20, 25])
    keep = torch.tensor([1, 2, 4, 5])
    moved = torch.logaddexp(full.tail_logprob, full.logprobs[..., bad].logsumexp(-1))
    padded = TopK(full.logprobs, indices, full.tail_logprob if with_tail else None)
    folded = TopK(full.logprobs[..., keep], indices[..., keep], moved if with_tail else None)
    fn = losses.get_loss(loss)
    got = fn(student, padded, mask=None)
    (g_got,) = torch.autograd.grad(got, student)
    want = fn(student, folded, mask=None)
    (g_want,) = torch.autograd.grad(want, student)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g_got, g_want)


@pytest.mark.slow  # 152k-row logits on 2 cores: seconds
def test_qwen25_row_counts_dense_and_cached():
    """At the real sizes: a 152,064-row teacher (Qwen2.5-7B's padding) into a 151,936-row
    student (0.5B's), one tokenizer of 151,665 tokens; the cache holds the padded rows' ids."""
    from raydistill.distill.tiny import build_tiny

    tokens, spec = 151_665, {"hidden_size": 32, "num_attention_heads": 1,
                             "num_hidden_layers": 1}
    student = build_tiny(spec, 151_936, seed=1)
    teacher = build_tiny(spec, 152_064, seed=2).eval()
    with torch.no_grad():
        teacher.get_output_embeddings().weight[tokens:] *= 50.0  # padded rows in its top-k
    gen = torch.Generator().manual_seed(0)
    chosen = []
    for n in (6, 3):
        ids = torch.randint(0, tokens, (4 + n,), generator=gen).tolist()
        chosen.append({"input_ids": ids, "prompt_len": 4, "teacher_input_ids": ids,
                       "teacher_prompt_len": 4})
    cfg = {**loop_cfg(0), "vocab_rows": tokens, "chunk_tokens": 4}
    loss, grad = _loss_and_grad(student, teacher, chosen, cfg)
    assert torch.isfinite(loss) and (grad[tokens:] == 0).all()
    for e in chosen:
        with torch.no_grad():
            logits = teacher(torch.tensor([e["input_ids"]])).logits[0, 3:-1]
        cache = losses.topk_from_logits(logits, 64)
        assert (cache.indices >= 151_936).any()
        e.update(logprobs=cache.logprobs, indices=cache.indices, tail=cache.tail_logprob)
    loss, grad = _loss_and_grad(student, None, chosen, {**cfg, "top_k": 64})
    assert torch.isfinite(loss) and (grad[tokens:] == 0).all()
