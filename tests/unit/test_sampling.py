"""How a completion ends (`sampling.end_completion`), the sampling settings in the content
address (`sampling_of`) and the ids of n completions per prompt: pure, no torch, no vLLM."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raydistill.config import GenerationConfig
from raydistill.distill.sampling import (
    Completion,
    cut_at_stop,
    end_completion,
    output_example_id,
    sampling_of,
)

EOT, EOS = 90, 91
# a toy vocabulary: one character (or a few) per token
TEXT = {1: "a", 2: "b", 3: "\n", 4: "\n", 5: "c", 6: "##", 7: "END", EOT: "<eot>", EOS: "<eos>"}


def decode(ids) -> str:
    return "".join(TEXT[int(i)] for i in ids)


def steps_for(ids):
    return [{int(i): -0.1 * j} for j, i in enumerate(ids)]


def test_stop_token_ends_the_completion_and_is_dropped():
    raw = [1, 2, EOT, 5, 5]  # an engine may run past the stop (static batches do)
    c = end_completion(raw, [EOT, EOS], [], decode, steps_for(raw))
    assert c.ids == (1, 2) and c.finished
    assert len(c.steps) == len(c.ids) + 1  # the stop position's top-k is kept: kept + 1
    assert c.steps[-1] == {EOT: pytest.approx(-0.2)}
    assert c.generated_tokens == 3


def test_first_of_several_stop_tokens_wins():
    c = end_completion([1, EOS, 2, EOT], [EOT, EOS], [], decode)
    assert c.ids == (1,) and c.finished and c.steps is None


def test_no_stop_leaves_the_completion_unfinished():
    raw = [1, 2, 5]
    c = end_completion(raw, [EOT], [], decode, steps_for(raw))
    assert c.ids == (1, 2, 5) and not c.finished
    assert len(c.steps) == 3 and c.generated_tokens == 3


def test_stop_string_cuts_at_the_token_that_completes_it():
    raw = [1, 3, 4, 5, 2]  # "a\n\ncb": "\n\n" is complete at token 2 (the second "\n")
    c = end_completion(raw, [EOT], ["\n\n"], decode, steps_for(raw))
    assert c.ids == (1, 3) and c.finished  # that token and every later one dropped
    assert len(c.steps) == 3 and c.generated_tokens == 3
    assert cut_at_stop(raw, decode, ["\n\n"]) == 2


def test_stop_string_inside_one_token_and_the_earliest_of_several():
    raw = [1, 7, 2, 6]  # "aENDb##"
    assert end_completion(raw, [], ["##", "EN"], decode).ids == (1,)
    assert end_completion(raw, [], ["##"], decode).ids == (1, 7, 2)


def test_stop_string_is_only_matched_within_the_completion():
    # the prompt ended in "\n": a completion starting "\nc" holds no "\n\n" of its own
    c = end_completion([3, 5, 1], [EOT], ["\n\n"], decode)
    assert c.ids == (3, 5, 1) and not c.finished
    # nor is it matched past a stop token: the completion ended there
    c = end_completion([1, EOT, 3, 4], [EOT], ["\n\n"], decode)
    assert c.ids == (1,) and c.finished


def test_stop_string_before_a_stop_token_wins():
    c = end_completion([3, 4, 5, EOT], [EOT], ["\n\n"], decode)
    assert c.ids == (3,) and c.finished


def test_stop_strings_need_a_decoder():
    c = end_completion([3, 4, 5], [EOT], ["\n\n"], None)
    assert c.ids == (3, 4, 5) and not c.finished


def test_steps_never_outrun_the_tokens():
    # an engine's steps for a completion that ended by the length limit: kept only
    c = end_completion([1, 2], [EOT], [], decode, steps_for([1, 2]))
    assert len(c.steps) == 2
    c = end_completion([EOT], [EOT], [], decode, steps_for([EOT]))
    assert c.ids == () and c.finished and len(c.steps) == 1 and c.generated_tokens == 1


@given(st.lists(st.sampled_from(sorted(TEXT)), max_size=12),
       st.lists(st.sampled_from(["\n\n", "ab", "##", "c"]), max_size=2))
@settings(max_examples=300, deadline=None)
def test_end_completion_properties(raw, stops):
    steps = steps_for(raw)
    c = end_completion(raw, [EOT, EOS], stops, decode, steps)
    n = len(c.ids)
    assert tuple(raw[:n]) == c.ids  # a prefix of what the engine wrote
    assert not set(c.ids) & {EOT, EOS}
    assert not any(s in decode(c.ids) for s in stops)  # no stop string left in the text
    assert c.generated_tokens == n + int(c.finished)
    assert len(c.steps) == min(len(raw), c.generated_tokens)
    if not c.finished:
        assert c.ids == tuple(raw)
    else:
        assert n < len(raw)


def test_completion_generated_tokens():
    assert Completion((1, 2, 3), True).generated_tokens == 4
    assert Completion((1, 2, 3), False).generated_tokens == 3
    assert Completion((), True).generated_tokens == 1
    assert Completion((), False).generated_tokens == 0


# ---- sampling_of ---------------------------------------------------------------------------

KEYS = {"decoding", "temperature", "top_p", "top_k", "repetition_penalty", "n", "seed", "stop",
        "max_new_tokens"}


def test_sampling_of_greedy_takes_the_experiment_seed():
    s = sampling_of(GenerationConfig(max_new_tokens=32), experiment_seed=11)
    assert s == {"decoding": "greedy", "temperature": 0.0, "top_p": 1.0, "top_k": 0,
                 "repetition_penalty": 1.0, "n": 1, "seed": 11, "stop": [],
                 "max_new_tokens": 32}


def test_sampling_of_sampled_with_its_own_seed_and_stops():
    g = GenerationConfig(max_new_tokens=16, temperature=0.7, top_p=0.9, n=4, seed=3,
                         stop=("\n\n", "###"))
    s = sampling_of(g, experiment_seed=11)
    assert set(s) == KEYS
    assert s == {"decoding": "sample", "temperature": 0.7, "top_p": 0.9, "top_k": 0,
                 "repetition_penalty": 1.0, "n": 4, "seed": 3, "stop": ["\n\n", "###"],
                 "max_new_tokens": 16}
    assert sampling_of(GenerationConfig(temperature=0.7, seed=0), 11)["seed"] == 0  # 0 is a seed


@pytest.mark.parametrize("change", [
    {"temperature": 0.8}, {"top_p": 0.5}, {"n": 2}, {"seed": 9}, {"stop": ("x",)},
    {"max_new_tokens": 9}, {"top_k": 20}, {"repetition_penalty": 1.05},
])
def test_every_sampling_setting_changes_the_address(change):
    base = {"temperature": 1.0, "top_p": 0.95, "n": 1, "seed": 1, "stop": (),
            "max_new_tokens": 8}
    a = sampling_of(GenerationConfig(**base), 0)
    b = sampling_of(GenerationConfig(**{**base, **change}), 0)
    assert a != b


def test_sampling_of_is_plain_data():
    s = sampling_of(GenerationConfig(temperature=1, top_p=1, n=2, stop=("a",)), 5)
    assert isinstance(s["temperature"], float) and isinstance(s["top_p"], float)
    assert isinstance(s["stop"], list) and isinstance(s["n"], int) and isinstance(s["seed"], int)


# ---- output_example_id ---------------------------------------------------------------------


def test_output_example_id_is_the_prompt_id_for_n_1():
    assert [output_example_id(e, 0, 1) for e in (0, 1, 7, 10**9)] == [0, 1, 7, 10**9]


@given(st.lists(st.integers(0, 10**6), unique=True, min_size=1, max_size=50),
       st.integers(2, 16))
@settings(max_examples=200, deadline=None)
def test_output_example_ids_are_unique_for_n_above_1(prompt_ids, n):
    ids = [output_example_id(e, j, n) for e in prompt_ids for j in range(n)]
    assert len(set(ids)) == len(ids)
    assert all(isinstance(i, int) for i in ids)
