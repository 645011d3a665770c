"""Each model's own end of turn ends its targets, on the real-tokenizer pair (a base student,
eos <|endoftext|> 151643, of an Instruct teacher, eos <|im_end|> 151645): the teacher's
sequence ends with 151645, the student's with 151643, and the teacher's distribution at that
last position puts its end-of-turn mass on the student's EOS (cached top-k and online logits).
Before, the student's targets ended with the teacher's <|im_end|>: a base student never
learned to stop on its own EOS, and its evaluation (which stops on 151643) ran to the limit."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raydistill.data.format import stop_ids
from raydistill.distill.examples import ExampleStream, swap_eos_columns
from raydistill.distill.logit_cache import decode_row
from raydistill.distill.teacher import cache_batch, load_model_and_tokenizer, load_tokenizer

ENDOFTEXT, IM_END = 151_643, 151_645
K = 8
MESSAGES = [[{"role": "user", "content": "What is 12 + 30?"}],
            [{"role": "user", "content": "Reverse 'lantern'."}]]
ANSWERS = ["42", "nretnal"]


@pytest.fixture(scope="module")
def pair(qwen_models, tmp_path_factory):
    teacher, t_tok = load_model_and_tokenizer(str(qwen_models["qwen2.5-instruct-teacher"]))
    s_tok = load_tokenizer(str(qwen_models["qwen2.5-base-student"]))
    rows = {"example_id": np.arange(2), "id": np.asarray(["a", "b"]),
            "messages": np.asarray([json.dumps(m) for m in MESSAGES]),
            "completion": np.asarray(ANSWERS),
            "completion_ids": [np.asarray(t_tok(a, add_special_tokens=False)["input_ids"])
                               for a in ANSWERS],
            "finished": np.asarray([True, True])}
    data = tmp_path_factory.mktemp("synthetic")
    pq.write_table(pa.table({k: list(v) for k, v in rows.items()}), data / "part.parquet")
    _end_turns_at_eos(teacher)
    table, _ = cache_batch(teacher, t_tok, rows, K, 1.0, "float32", 64, 128)
    cached = {r["example_id"]: decode_row(r) for r in table.to_pylist()}
    return {"teacher": teacher, "t_tok": t_tok, "s_tok": s_tok, "data": data, "rows": rows,
            "cached": cached}


def _end_turns_at_eos(teacher) -> None:
    """A teacher that means to end its turn: its <|im_end|> output row made the top-1 (the
    random one puts negligible mass there, and no top-k would hold it)."""
    with torch.no_grad():
        row = teacher.lm_head.weight[IM_END]
        row.copy_(teacher.model.norm.weight.sign() * row.abs().max() * 50)


def _stream(pair, method: str, top_k: int) -> ExampleStream:
    cfg = {"method": method, "top_k": top_k, "data_path": str(pair["data"]), "seed": 0,
           "max_prompt_tokens": 64, "max_seq_len": 128, "max_response_tokens": 32,
           "shared_vocab": True}
    return ExampleStream(cfg, pair["s_tok"], pair["t_tok"], rank=0, world=1)


def test_each_model_ends_its_own_sequence_with_its_own_eos(pair):
    stream = _stream(pair, "logit", 0)  # online: both sequences built
    for row in stream.rows.values():
        ex = stream.build(row)
        assert ex["input_ids"][-1] == ENDOFTEXT and IM_END not in ex["input_ids"][ex["prompt_len"]:]
        assert ex["teacher_input_ids"][-1] == IM_END
        # the same answer tokens before each one's EOS
        assert ex["input_ids"][ex["prompt_len"]:-1] == \
            ex["teacher_input_ids"][ex["teacher_prompt_len"]:-1]
        assert ex["eos_swap"] == (IM_END, ENDOFTEXT)


def test_cached_target_puts_the_teachers_end_of_turn_mass_on_the_students_eos(pair):
    stream = _stream(pair, "logit", K)
    for eid, row in stream.rows.items():
        cached = pair["cached"][eid]
        assert int(cached["input_ids"][-1]) == IM_END  # the cache is the teacher's own
        assert int(cached["indices"][-1, 0]) == IM_END  # its top-1 there: ending the turn
        ex = stream.build(row, cached)
        assert ex["input_ids"][-1] == ENDOFTEXT
        last, before = ex["indices"][-1], cached["indices"][-1]
        assert int(last[0]) == ENDOFTEXT  # the teacher's EOS mass, on the student's EOS
        assert torch.equal(ex["logprobs"][-1], cached["logprobs"][-1])
        assert IM_END not in last.tolist() or ENDOFTEXT in before.tolist()  # swapped, not lost
        assert torch.equal(ex["indices"][:-1], cached["indices"][:-1])  # other positions kept
        assert int(cached["indices"][-1, 0]) == IM_END  # the cache itself untouched


def test_online_logits_swap_the_eos_columns_at_the_students_last_position(pair):
    stream = _stream(pair, "logit", 0)
    ex = stream.build(stream.rows[0])
    width = len(ex["input_ids"])
    logits = torch.randn(1, width, 152_064)
    out = swap_eos_columns(logits, [ex])
    pos = width - 2  # predicts the last token: the end of turn
    assert out[0, pos, ENDOFTEXT] == logits[0, pos, IM_END]
    assert out[0, pos, IM_END] == logits[0, pos, ENDOFTEXT]
    keep = torch.ones(width, dtype=torch.bool)
    keep[pos] = False
    assert torch.equal(out[0, keep], logits[0, keep])
    assert swap_eos_columns(logits, [{"input_ids": [1, 2]}]) is logits


def test_evaluation_stops_the_student_on_its_own_eos(pair, qwen_models):
    assert ENDOFTEXT in stop_ids(pair["s_tok"], qwen_models["qwen2.5-base-student"])
    assert IM_END not in stop_ids(pair["s_tok"], qwen_models["qwen2.5-base-student"])


@pytest.mark.slow
def test_a_base_student_trained_on_instruct_data_stops_on_its_own_eos(pair, qwen_models):
    """End to end on the training signal: SFT on the examples the stream builds from the
    Instruct teacher's rows, then the base student's own greedy decoding (stop ids from its
    own files) ends each answer on <|endoftext|>. With the teacher's EOS in its targets it
    wrote <|im_end|>, which does not stop it, and ran to the token limit."""
    from transformers import AutoModelForCausalLM

    from raydistill.data.format import prompt_ids
    from raydistill.distill.batches import pad_batch
    from raydistill.distill.teacher import generate_completions

    path = qwen_models["qwen2.5-base-student"]
    student = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    stream = _stream(pair, "sft", 0)
    examples = [stream.build(r) for r in stream.rows.values()]
    batch = pad_batch(examples, pair["s_tok"].pad_token_id)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    torch.manual_seed(0)
    student.train()
    for _ in range(60):
        logits = student(input_ids=batch["input_ids"],
                         attention_mask=batch["attention_mask"]).logits
        loss = torch.nn.functional.cross_entropy(logits[batch["mask"]],
                                                 batch["targets"][batch["mask"]])
        opt.zero_grad()
        loss.backward()
        opt.step()
    student.eval()
    tok = pair["s_tok"]
    stop = stop_ids(tok, path)
    for messages, answer in zip(MESSAGES, ANSWERS, strict=True):
        (c,) = generate_completions(student, tok, [prompt_ids(tok, messages, 64)], 16, stop)[0]
        assert c.finished, f"loss {loss.item():.3g}: {tok.decode(list(c.ids))!r} never stopped"
        # where an answer ends (its tokens may still be half learnt: the stop is the point)
        assert len(c.ids) == len(tok(answer, add_special_tokens=False)["input_ids"])


def test_a_tiny_student_on_a_hub_tokenizer_stops_where_the_teacher_does(qwen_models,
                                                                         tmp_path):
    """A `tiny:` student is built on the teacher's tokenizer: its saved config and
    generation_config.json must stop on that tokenizer's end of turn. Before, build_tiny
    hard-coded eos 1 / pad 0: on the Qwen vocabulary evaluation stopped at '"' (token 1)."""
    from transformers import AutoConfig

    from raydistill.distill.models import build_student_model

    teacher = str(qwen_models["qwen2.5-instruct-teacher"])
    model, tok = build_student_model({"student": {"tiny": {"family": "qwen2",
                                                           "hidden_size": 64,
                                                           "num_attention_heads": 2}},
                                      "student_path": teacher, "seed": 0})
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert stop_ids(tok, tmp_path) == stop_ids(tok, teacher) == [IM_END, ENDOFTEXT]
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.eos_token_id == IM_END and config.pad_token_id == tok.pad_token_id
