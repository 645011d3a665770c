"""The built-in lm-eval task with an answer pattern, through raydistill's own lm-eval runner
(`lm_eval_scores`: HFLM on rendered prompts) on a real (tiny, random) Qwen2 chat model: it
generates greedily as quick_acc does, so on golds that are the model's own greedy answers
both scores are 1.0, and on shifted golds both are 0."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from raydistill.data.format import answer_of, prompt_ids, stop_ids
from raydistill.data.local_models import make_local_models
from raydistill.distill.evaluate import (
    TASK_NAME,
    exact_match,
    lm_eval_scores,
    stop_strings,
    write_lm_eval_task,
)
from raydistill.distill.teacher import generate_ids

pytestmark = [pytest.mark.slow, pytest.mark.shares_ray]

FIRST_WORD = r"(\S+)"
MAX_NEW = 6


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """The tiny Qwen2 student, its weights redrawn wider (seeded): as saved it writes only
    newlines, and a test of answers needs a model that writes words."""
    path = make_local_models(tmp_path_factory.mktemp("models"))["qwen2-student"]
    model = AutoModelForCausalLM.from_pretrained(path)
    torch.manual_seed(0)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() > 1:
                weight.normal_(0.0, 0.3)
    return model, AutoTokenizer.from_pretrained(path), path


def _own_answers(model, tok, stop) -> list[dict]:
    """Rows whose gold is the model's own greedy answer (those it writes a word in)."""
    messages = [[{"role": "user", "content": f"What is {a} + {a + 3}?"}] for a in range(12)]
    prompts = [prompt_ids(tok, m, 64) for m in messages]
    rows = []
    for m, (ids, _) in zip(messages, generate_ids(model, tok, prompts, MAX_NEW, stop),
                           strict=True):
        text = tok.decode(ids, skip_special_tokens=True)
        if answer_of(text, FIRST_WORD) is not None:
            rows.append({"messages": m, "response": text})
    return rows


def test_generative_task_agrees_with_quick_acc_on_a_real_model(qwen, tmp_path):
    model, tok, path = qwen
    stop = stop_ids(tok, path)
    rows = _own_answers(model, tok, stop)
    assert len(rows) >= 4, "the random model wrote no word: pick other prompts"
    gen = {"max_new_tokens": MAX_NEW, "max_prompt_tokens": 64, "stop": stop,
           "pattern": FIRST_WORD}
    wrong = [{**r, "response": answer_of(r["response"], FIRST_WORD) + "x"} for r in rows]
    for golds, expected in ((rows, 1.0), (wrong, 0.0)):
        assert exact_match(model, tok, golds, **gen).accuracy == expected
        task = write_lm_eval_task(golds, tok, tmp_path / str(expected), pattern=FIRST_WORD,
                                  max_gen_toks=MAX_NEW, until=stop_strings(tok, stop))
        scores = lm_eval_scores(model, tok, task, [TASK_NAME], limit=len(golds))
        assert scores == {TASK_NAME: expected}
