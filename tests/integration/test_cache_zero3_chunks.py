"""HF logit caching through a ZeRO-3 engine (what `cache_engine: zero3` runs): the body's
forward under the engine's gather hooks, the output layer gathered once per batch and applied
in chunks, padded rows cut; the cache equals the plain model's. A one-rank gloo world in a
subprocess (its process group and DeepSpeed's globals stay out of the test process)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.shares_ray]

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    import deepspeed
    from raydistill.distill.engine import load_sharded_teacher
    from raydistill.distill.logit_cache import decode_row
    from raydistill.distill.teacher import cache_batch
    from raydistill.distill.tiny import make_tokenizer

    out = sys.argv[1]
    tok = make_tokenizer()
    torch.manual_seed(0)
    # tied embeddings (the output layer is the embedding: gathered twice per forward) and 61
    # padded rows, made the largest logits: none may reach the cache
    cfg = Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=128, vocab_size=len(tok) + 61,
                      max_position_embeddings=128, tie_word_embeddings=True, pad_token_id=0)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight[len(tok):] = model.lm_head.weight[:len(tok)].abs().amax(0) * 3
    model.save_pretrained(out)
    tok.save_pretrained(out)
    deepspeed.init_distributed("gloo")
    engine, _ = load_sharded_teacher(out, "fp32")
    plain = Qwen2ForCausalLM.from_pretrained(out).eval()
    batch = {"example_id": [0, 1, 2],
             "messages": [json.dumps([{"role": "user", "content": p}])
                          for p in ("a+b", "hello", "x" * 30)],
             "completion_ids": [[50, 51], [52], [60, 61, 62, 63]],
             "finished": [True, False, True]}
    for _ in range(2):  # a second batch: the engine's hooks after a first chunked pass
        sharded, _ = cache_batch(engine, tok, batch, 4, 1.0, "float32", 64, 96, chunk_tokens=3)
    whole, _ = cache_batch(plain, tok, batch, 4, 1.0, "float32", 64, 96, chunk_tokens=3)
    for x, y in zip(sharded.to_pylist(), whole.to_pylist(), strict=True):
        x, y = decode_row(x), decode_row(y)
        assert torch.equal(x["indices"], y["indices"]), (x, y)
        assert torch.allclose(x["logprobs"], y["logprobs"], atol=1e-5)
        assert int(x["indices"].max()) < len(tok)
    print("ZERO3-CACHE-OK")
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_zero3_engine_caches_what_the_plain_model_caches(tmp_path: Path):
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "teacher")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert "ZERO3-CACHE-OK" in done.stdout, done.stderr[-3000:]
