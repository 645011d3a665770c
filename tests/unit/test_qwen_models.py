"""Hub-shaped Qwen2.5 models on the real Qwen tokenizer load as the hub's do: real token ids
and counts, special tokens at their ids, the chat template, padded output rows, hub-like
generation configs (Instruct samples with a repetition penalty; base stops on <|endoftext|>)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from raydistill.data.format import same_vocabulary, stop_ids
from raydistill.data.qwen_models import (
    ADDED_TOKENS,
    ENDOFTEXT,
    IM_END,
    IM_START,
    MARKER,
    TOKENIZER_SIZE,
    make_qwen_models,
)

ROWS = {"qwen2.5-instruct-teacher": 152_064, "qwen2.5-instruct-student": 151_936,
        "qwen2.5-base-student": 151_936}


@pytest.fixture(scope="module")
def tokenizers(qwen_models):
    return {name: AutoTokenizer.from_pretrained(path) for name, path in qwen_models.items()}


def test_real_qwen_vocabulary_and_special_ids(tokenizers):
    tok = tokenizers["qwen2.5-instruct-teacher"]
    assert len(tok) == TOKENIZER_SIZE == 151_665
    # ids the hub's Qwen2.5 tokenizer gives (BPE ranks of qwen.tiktoken; digits split one by one)
    assert tok("Hello world", add_special_tokens=False)["input_ids"] == [9707, 1879]
    assert tok("12345", add_special_tokens=False)["input_ids"] == [16, 17, 18, 19, 20]
    for i, (content, _) in enumerate(ADDED_TOKENS):
        assert tok.convert_tokens_to_ids(content) == ENDOFTEXT + i
    assert tok.convert_tokens_to_ids("<|file_sep|>") == 151_664
    assert tok.bos_token_id is None and tok.pad_token_id == ENDOFTEXT
    text = "Ünïcödé 😀 <|im_end|> x\n\n  y"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert IM_END in ids and tok.decode(ids) == text
    # tool-call tokens are not special on the hub: skipping specials keeps them
    assert tok.decode([IM_START, 151_657], skip_special_tokens=True) == "<tool_call>"


def test_each_variant_ends_its_turn_on_its_own_eos(tokenizers, qwen_models):
    assert tokenizers["qwen2.5-instruct-student"].eos_token_id == IM_END
    assert tokenizers["qwen2.5-base-student"].eos_token_id == ENDOFTEXT
    assert stop_ids(tokenizers["qwen2.5-instruct-teacher"],
                    qwen_models["qwen2.5-instruct-teacher"]) == [IM_END, ENDOFTEXT]
    assert stop_ids(tokenizers["qwen2.5-base-student"],
                    qwen_models["qwen2.5-base-student"]) == [ENDOFTEXT]
    # one vocabulary: logit KD between them is allowed, only the EOS differs
    assert same_vocabulary(tokenizers["qwen2.5-base-student"],
                           tokenizers["qwen2.5-instruct-teacher"])


def test_chat_template_is_qwen25s(tokenizers):
    tok = tokenizers["qwen2.5-base-student"]
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a "
                    "helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\n")


def test_hub_like_configs_and_padded_rows(qwen_models):
    for name, path in qwen_models.items():
        config = json.loads((path / "config.json").read_text())
        gen = json.loads((path / "generation_config.json").read_text())
        assert config["vocab_size"] == ROWS[name] > TOKENIZER_SIZE
        assert config["architectures"] == ["Qwen2ForCausalLM"]
        assert config["dtype"] == "bfloat16"
        head_dim = config["hidden_size"] // config["num_attention_heads"]
        assert head_dim >= 32  # vLLM's CPU attention
        if "instruct" in name:
            assert config["eos_token_id"] == IM_END
            assert gen["eos_token_id"] == [IM_END, ENDOFTEXT]
            assert gen["do_sample"] is True and gen["repetition_penalty"] == 1.05
            assert (gen["temperature"], gen["top_p"], gen["top_k"]) == (0.7, 0.8, 20)
        else:
            assert config["eos_token_id"] == gen["eos_token_id"] == ENDOFTEXT
            assert not {"repetition_penalty", "temperature", "top_p", "top_k"} & set(gen)
    teacher = AutoModelForCausalLM.from_pretrained(qwen_models["qwen2.5-instruct-teacher"])
    with torch.no_grad():
        logits = teacher(input_ids=torch.tensor([[9707, 1879, IM_END]])).logits
    assert logits.shape == (1, 3, 152_064)


def test_build_is_idempotent(qwen_models):
    root = qwen_models["qwen2.5-base-student"].parent
    stamp = {n: (p / MARKER).stat().st_mtime_ns for n, p in qwen_models.items()}
    again = make_qwen_models(root)
    assert again == qwen_models
    assert {n: (p / MARKER).stat().st_mtime_ns for n, p in again.items()} == stamp


def test_config_names_them_as_local_models():
    from raydistill.errors import ConfigError
    from raydistill.local_names import check_name

    for name in ROWS:
        check_name(f"local:{name}")
    with pytest.raises(ConfigError, match=r"local:qwen2\.5-base-student"):
        check_name("local:qwen2.5-nope")


def test_a_config_naming_them_resolves_to_their_directories(qwen_models, tmp_path):
    from raydistill.config import ExperimentConfig, from_dict
    from raydistill.local_models import resolve_models

    (tmp_path / "qwen_models").symlink_to(qwen_models["qwen2.5-base-student"].parent)
    cfg = from_dict(ExperimentConfig, {"teacher": {"model": "local:qwen2.5-instruct-teacher"},
                                       "student": {"model": "local:qwen2.5-base-student"}})
    out = resolve_models(cfg, tmp_path)
    assert out.teacher.model == str(qwen_models["qwen2.5-instruct-teacher"].resolve())
    assert out.student.model == str(qwen_models["qwen2.5-base-student"].resolve())
    assert not (tmp_path / "local_models").exists()  # the 1,024-token set was not built
