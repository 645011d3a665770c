"""Decoding stated, never inherited: the HF engine decodes exactly what `generation:` says,
whatever the checkpoint's generation_config.json asks for (Qwen2.5-Instruct's: sampling,
repetition_penalty 1.05, top_k 20, top_p 0.8, temperature 0.7); that file gives stop ids only."""

import json

import pytest
import torch

from raydistill.config import GenerationConfig
from raydistill.data.format import prompt_ids, stop_ids
from raydistill.distill.sampling import GREEDY, sampling_of
from raydistill.distill.teacher import (
    generate_completions,
    load_model_and_tokenizer,
    stated_generation,
    stop_ids_only,
)
from raydistill.errors import ConfigError

MAX_NEW = 32  # the file's 1.05 penalty first changes these greedy completions at 21-26 tokens


def _argmax_decode(model, prompt: list[int], stop: list[int]) -> tuple[list[int], bool]:
    """Plain greedy decoding: the argmax of the full forward pass, token by token."""
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(MAX_NEW):
            t = int(model(input_ids=torch.tensor([ids]), logits_to_keep=1).logits[0, -1].argmax())
            if t in stop:
                return out, True
            out.append(t)
            ids.append(t)
    return out, False


def test_hf_greedy_with_a_repetition_penalty_file_is_plain_argmax(qwen_models):
    # the tied Instruct student repeats a token under plain greedy: where the file's 1.05
    # penalty would act (the old path, which merged the file, wrote other tokens)
    path = qwen_models["qwen2.5-instruct-student"]
    assert json.loads((path / "generation_config.json").read_text())["repetition_penalty"] > 1
    model, tok = load_model_and_tokenizer(str(path))
    stop = stop_ids(tok, path)
    prompt = prompt_ids(tok, [{"role": "user", "content": "What is 12 + 30?"}], 64)
    expected = _argmax_decode(model, prompt, stop)
    assert len(set(expected[0])) < len(expected[0])  # it repeats: the penalty would bite
    (got,) = generate_completions(model, tok, [prompt], MAX_NEW, stop)
    assert (list(got[0].ids), got[0].finished) == expected
    assert model.generation_config.repetition_penalty == 1.05  # the model's own file kept


def test_stated_generation_sets_every_field_from_sampling_alone():
    greedy = stated_generation(GREEDY, 8, 0, [5, 6])
    assert (greedy.do_sample, greedy.repetition_penalty, greedy.num_beams) == (False, 1.0, 1)
    assert greedy.eos_token_id == [5, 6] and greedy.num_return_sequences == 1
    s = sampling_of(GenerationConfig(temperature=0.7, top_p=0.9, n=3, repetition_penalty=1.1), 0)
    sampled = stated_generation(s, 8, 0, [5])
    assert sampled.do_sample and sampled.num_return_sequences == 3
    # top_k 0 = off: transformers' own default (50) is not applied behind the config's back
    assert (sampled.temperature, sampled.top_p, sampled.top_k) == (0.7, 0.9, 0)
    assert sampled.repetition_penalty == 1.1
    assert stated_generation({**s, "top_k": 20}, 8, 0, [5]).top_k == 20


@pytest.mark.parametrize("bad", [{"top_k": -1}, {"top_k": 1.5}, {"repetition_penalty": 0},
                                 {"repetition_penalty": True}])
def test_bad_decoding_settings_are_refused_in_one_line(bad):
    with pytest.raises(ConfigError, match=f"generation.{next(iter(bad))}") as e:
        GenerationConfig(**bad)
    assert "\n" not in str(e.value)


def test_stop_ids_only_keeps_the_files_token_ids_and_nothing_else(qwen_models):
    """What lm-eval's generate (and ours) sees of the checkpoint's generation_config.json."""
    model, _ = load_model_and_tokenizer(str(qwen_models["qwen2.5-instruct-student"]))
    saved = model.generation_config
    with stop_ids_only(model):
        g = model.generation_config
        assert g.eos_token_id == [151_645, 151_643] and g.pad_token_id == 151_643
        assert g.repetition_penalty in (None, 1.0) and g.top_k in (None, 0, 50)
        assert not g.do_sample and g.temperature in (None, 1.0) and g.top_p in (None, 1.0)
    assert model.generation_config is saved and saved.repetition_penalty == 1.05


def _boost_row(model, row: int, like: int, factor: float) -> None:
    """Make output row `row` score `factor` × row `like`'s logit at every position."""
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head[row] = head[like] * factor


def test_padded_output_rows_are_never_written(qwen_models):
    """The Instruct teacher's output layer has 152,064 rows for 151,665 tokens (Qwen2.5-7B's
    padding). A padded row no text has must never be generated, greedy or sampled: the
    student's loss reads the tokenizer's rows only. Here a padded row is made to win."""
    path = qwen_models["qwen2.5-instruct-teacher"]
    model, tok = load_model_and_tokenizer(str(path))
    stop = stop_ids(tok, path)
    prompt = prompt_ids(tok, [{"role": "user", "content": "What is 12 + 30?"}], 64)
    (plain,) = generate_completions(model, tok, [prompt], 4, stop)
    first = plain[0].ids[0]
    _boost_row(model, len(tok) + 100, first, 4.0)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt]), logits_to_keep=1).logits[0, -1]
    assert int(logits.argmax()) == len(tok) + 100  # the padded row would win
    for sampling in (GREEDY, sampling_of(GenerationConfig(temperature=1.0, n=2), 0)):
        (out,) = generate_completions(model, tok, [prompt], 6, stop, sampling)
        assert all(max(c.ids, default=0) < len(tok) for c in out)


def test_a_repetition_penalty_does_not_penalise_the_batchs_left_padding(qwen_models):
    """The HF engine left-pads a batch with the pad id (<|endoftext|>, a stop id); vLLM never
    pads. Were the repetition penalty to read the padding (its processor gathers over the whole
    row), a shorter prompt's EOS would be penalised in a batch only, and the two engines would
    write different data. transformers 5.19 does not: this holds it there. A batched
    completion equals the same prompt's completion alone, with the EOS at a near tie."""
    path = qwen_models["qwen2.5-instruct-student"]
    model, tok = load_model_and_tokenizer(str(path))
    stop = stop_ids(tok, path)
    short = prompt_ids(tok, [{"role": "user", "content": "Hi"}], 64)
    long = prompt_ids(tok, [{"role": "user", "content": "Reverse 'lantern', then add 12 + 30."}],
                      64)
    (alone,) = generate_completions(model, tok, [short], 4, stop)
    first = alone[0].ids[0]
    with torch.no_grad():
        top = float(model(input_ids=torch.tensor([short]), logits_to_keep=1).logits[0, -1, first])
    # EOS (= the pad id) just wins the first step: 10% above the top logit, whatever its sign
    _boost_row(model, tok.pad_token_id, first, 1.1 if top > 0 else 0.9)
    s = sampling_of(GenerationConfig(repetition_penalty=1.5), 0)
    (alone,) = generate_completions(model, tok, [short], 8, stop, s)
    assert alone[0].ids == () and alone[0].finished  # unpadded, nothing penalises the EOS
    batched = generate_completions(model, tok, [long, short], 8, stop, s)
    assert batched[1] == alone
