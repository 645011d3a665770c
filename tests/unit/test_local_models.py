"""Offline "real" models load as hub models do (Auto classes, architecture, chat template, token
ids, forward pass, round trip), the build is idempotent and seeded, and the chat-task data is
deterministic with correct answers."""

import importlib.resources
import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from raydistill.data.chat_tasks import (
    TEMPLATE_WORDS,
    corpus_for_tokenizer,
    example_path,
    main,
    make_chat_tasks,
    read_chat_tasks,
    write_chat_tasks,
)
from raydistill.data.local_models import (
    CHAT_TEMPLATES,
    MARKER,
    make_local_models,
    save_model_dir,
    train_tokenizer,
)
from raydistill.errors import ConfigError

NAMES = {"qwen2-teacher", "qwen2-student", "llama-teacher", "llama-student", "llama-other-vocab"}
ARCH = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
END_OF_TURN = {"qwen2": "<|im_end|>", "llama": "<|eot_id|>"}
CONVERSATION = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}]
RENDERED = {
    "qwen2": "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
             "<|im_start|>assistant\n",
    "llama": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse."
             "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\n",
}
GENERATION_PROMPT = {"qwen2": "<|im_start|>assistant\n",
                     "llama": "<|start_header_id|>assistant<|end_header_id|>\n\n"}
TEXTS = ["Reverse the word 'lantern'.", "nretnal", "What is 37 + 48?\n\n  85", "Ünïcödé 😀 x",
         "Sort these digits: 5 2 9 1", "<|im_end|> literal text"]


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    return make_local_models(tmp_path_factory.mktemp("local_models"))


@pytest.fixture(scope="session")
def loaded(models):
    return {name: (AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path))
            for name, path in models.items()}


def family(name):
    return name.split("-")[0]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_dirs_load_as_the_family_architecture(models, loaded):
    assert set(models) == NAMES
    for name, (_, model) in loaded.items():
        assert type(model).__name__ == ARCH[family(name)]
        assert json.loads((models[name] / "config.json").read_text())["architectures"] == [
            ARCH[family(name)]]
    for fam in ("qwen2", "llama"):
        assert n_params(loaded[f"{fam}-teacher"][1]) > 2 * n_params(loaded[f"{fam}-student"][1])
        assert (loaded[f"{fam}-teacher"][0].get_vocab()
                == loaded[f"{fam}-student"][0].get_vocab())  # logit KD needs one vocabulary


@pytest.mark.parametrize("name", ["qwen2-teacher", "llama-student"])
def test_chat_template_renders_as_the_real_one(loaded, name):
    tok = loaded[name][0]
    text = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert text == RENDERED[family(name)]
    encoded = tok.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    ids = encoded["input_ids"]  # transformers 5: a BatchEncoding by default
    assert tok.decode(ids) == text
    if tok.bos_token_id is not None:
        assert ids.count(tok.bos_token_id) == 1  # the template's BOS only, none added twice
    closed = tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert closed + GENERATION_PROMPT[family(name)] == text


def test_qwen2_default_system_prompt(loaded):
    tok = loaded["qwen2-student"][0]
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_token_ids_in_config_match_the_tokenizer(models, loaded):
    for name, (tok, model) in loaded.items():
        cfg = model.config
        assert cfg.vocab_size == len(tok)
        assert tok.eos_token == END_OF_TURN[family(name)]
        assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (
            tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
        assert tok.pad_token_id not in (None, tok.eos_token_id)
        gen = GenerationConfig.from_pretrained(models[name])
        assert gen.eos_token_id == tok.convert_tokens_to_ids(END_OF_TURN[family(name)])
        assert cfg.hidden_size // cfg.num_attention_heads >= 32
    assert loaded["qwen2-teacher"][0].bos_token_id is None
    assert loaded["llama-teacher"][0].bos_token == "<|begin_of_text|>"
    assert loaded["llama-teacher"][0].pad_token == "<|reserved_special_token_0|>"


def test_forward_pass_and_round_trip(loaded):
    for name, (tok, model) in loaded.items():
        for text in TEXTS:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.decode(ids) == text, name
            plain = tok(text)["input_ids"]
            assert plain == ([tok.bos_token_id, *ids] if family(name) == "llama" else ids)
        batch = tok(TEXTS[:3], return_tensors="pt", padding=True)
        with torch.no_grad():
            logits = model(**batch).logits
        assert logits.shape == (*batch["input_ids"].shape, len(tok))
        assert torch.isfinite(logits).all()


def test_other_vocab_differs(loaded):
    same, other = loaded["llama-student"][0], loaded["llama-other-vocab"][0]
    assert len(other) != len(same) and other.get_vocab() != same.get_vocab()
    assert other("lantern")["input_ids"] != same("lantern")["input_ids"]
    assert loaded["llama-other-vocab"][1].config.vocab_size == len(other)


def test_rebuild_is_idempotent_and_seeded(models, loaded):
    stamps = {n: (p / "model.safetensors").stat().st_mtime_ns for n, p in models.items()}
    assert make_local_models(models["qwen2-teacher"].parent) == models
    assert stamps == {n: (p / "model.safetensors").stat().st_mtime_ns for n, p in models.items()}
    marker = models["llama-student"] / MARKER
    marker.write_text(marker.read_text().replace('"seed": 0', '"seed": 7'))
    make_local_models(models["llama-student"].parent)
    assert "seed\": 0" in marker.read_text()
    rebuilt = AutoModelForCausalLM.from_pretrained(models["llama-student"])
    for a, b in zip(rebuilt.state_dict().values(), loaded["llama-student"][1].state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)  # same seed, same weights
    others = {n: s for n, s in stamps.items() if n != "llama-student"}
    assert others == {n: (models[n] / "model.safetensors").stat().st_mtime_ns for n in others}


def test_bad_shapes_and_families(tmp_path):
    tok = train_tokenizer(["hello world"] * 10, 300, CHAT_TEMPLATES["llama"], "llama")
    with pytest.raises(ConfigError, match="head_dim"):
        save_model_dir(tmp_path, "llama", tok, hidden_size=64, num_attention_heads=4)
    with pytest.raises(ConfigError, match="num_key_value_heads"):
        save_model_dir(tmp_path, "llama", tok, hidden_size=96, num_attention_heads=3,
                       num_key_value_heads=2)
    with pytest.raises(ConfigError, match="family"):
        train_tokenizer(["x"], 300, "", "gpt2")
    with pytest.raises(ConfigError, match="vocab_size"):
        train_tokenizer(["x"], 259, "", "qwen2")


# The answers recomputed from the prompt text alone, independently of the generator.
SOLVERS = [
    (r"(?:Reverse the word '(\w+)'\.|Write '(\w+)' backwards\.)", lambda w: w[::-1]),
    (r"(?:What is (\d+) \+ (\d+)\?|Add (\d+) and (\d+)\.)", lambda a, b: str(int(a) + int(b))),
    (r"Sort (?:these digits|in ascending order): ([\d ]+)",
     lambda d: " ".join(sorted(d.split()))),
    (r"(?:Uppercase: (\w+)|Write '(\w+)' in capital letters\.)", str.upper),
    (r"(?:How many letters in '(\w+)'\?|Count the letters in '(\w+)'\.)", lambda w: str(len(w))),
]


def solve(prompt):
    for pattern, fn in SOLVERS:
        if m := re.fullmatch(pattern, prompt):
            return fn(*[g for g in m.groups() if g is not None])
    raise AssertionError(f"no task matches {prompt!r}")


def test_chat_tasks_deterministic_and_correct():
    rows = make_chat_tasks(400, seed=3)
    assert rows == make_chat_tasks(400, seed=3)
    assert rows != make_chat_tasks(400, seed=4)
    assert make_chat_tasks(50, seed=3) == rows[:50]
    for row in rows:
        *system, user = row["messages"]
        assert user["role"] == "user" and [m["role"] for m in system] in ([], ["system"])
        assert row["response"] == solve(user["content"])
    assert 0.15 < sum(len(r["messages"]) == 2 for r in rows) / len(rows) < 0.45
    tasks = {next(i for i, (p, _) in enumerate(SOLVERS) if re.fullmatch(p, r["messages"][-1][
        "content"])) for r in rows}
    assert tasks == set(range(len(SOLVERS)))


def test_shipped_file_and_entry_point(tmp_path, capsys):
    shipped = importlib.resources.files("raydistill.data") / "examples" / "chat_tasks.jsonl"
    assert shipped.is_file() and example_path().stat().st_size < 400_000
    rows = read_chat_tasks(example_path())
    assert rows == make_chat_tasks(3000, seed=0)  # regenerating gives the same file
    assert all(r["response"] == solve(r["messages"][-1]["content"]) for r in rows)
    assert main([str(tmp_path / "out.jsonl"), "20", "5"]) == 0
    assert read_chat_tasks(tmp_path / "out.jsonl") == make_chat_tasks(20, seed=5)
    assert capsys.readouterr().out.strip() == str(tmp_path / "out.jsonl")
    assert write_chat_tasks(tmp_path / "a.jsonl", 30, 1).read_bytes() == write_chat_tasks(
        tmp_path / "b.jsonl", 30, 1).read_bytes()


def test_corpus_for_tokenizer():
    rows = make_chat_tasks(5, seed=0)
    texts = corpus_for_tokenizer(rows)
    assert set(TEMPLATE_WORDS) <= set(texts)
    joined = "\n".join(texts)
    for row in rows:
        assert row["response"] in joined
        assert all(m["content"] in joined for m in row["messages"])
