"""Exact match never credits a missing answer, and the built-in lm-eval task reads answers with
the same pattern: a model that writes "I don't know" scores 0 whatever the gold looks like, an
unreadable output is counted (`extract_fail_rate`), and a GSM8K-style worked solution scores
1.0 through the real `lm_eval.simple_evaluate` when its final answer is right."""

import logging

import pytest

from raydistill.data.format import answer_of, gold_answer, score_answers
from raydistill.distill import evaluate
from raydistill.distill.evaluate import (
    TASK_NAME,
    exact_match,
    stop_strings,
    task_scores,
    write_lm_eval_task,
)

GSM8K = r"####\s*(-?[\d,\.]+)"
GOLD = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")


# ---- pure scoring ------------------------------------------------------------------------


def test_i_dont_know_against_a_gold_without_the_answer_line_is_wrong():
    # main: answer_of gave "" for both, and "" == "" scored it correct
    score = score_answers(["I don't know"], ["The answer is seventy-two."], GSM8K)
    assert score.correct == 0 and score.extract_failures == 1 and score.gold_unextracted == 1


def test_output_and_gold_both_without_a_match_is_wrong():
    score = score_answers(["no idea", "#### 5"], ["seventy-two", "#### 5"], GSM8K)
    assert (score.correct, score.rows, score.extract_failures) == (1, 2, 1)
    assert score.accuracy == 0.5 and score.extract_fail_rate == 0.5


def test_commas_and_whitespace_still_normalised():
    score = score_answers(["so\n####   1,234  \n", "#### -3.5", "  58 \n"],
                          ["#### 1234", "#### -3.5", "#### 58"], GSM8K)
    assert score.correct == 2  # "  58 " has no answer line: not read, not credited
    assert score.extract_failures == 1
    assert score_answers([" 1,000 "], ["1000"]).correct == 1  # no pattern: the stripped text


def test_a_gold_the_pattern_cannot_read_is_compared_whole():
    assert gold_answer("72", GSM8K) == ("72", False)
    assert gold_answer(" 1,234\n", GSM8K) == ("1234", False)
    assert gold_answer(GOLD, GSM8K) == ("72", True)
    assert score_answers(["#### 72", "#### 7"], ["72", " 72 "], GSM8K).correct == 1


def test_answer_of_says_none_when_nothing_matches():
    assert answer_of("I think it is 72", GSM8K) is None
    assert answer_of("I think it is 72") == "I think it is 72"
    assert answer_of("#### 1,000", GSM8K) == answer_of("#### 1000", GSM8K) == "1000"


def test_unequal_lengths_refused():
    with pytest.raises(ValueError, match="2 outputs for 1 gold"):
        score_answers(["a", "b"], ["a"])


# ---- exact_match over a model: the fixed outputs of a fake generator ------------------------


class WordTokenizer:
    """A tokenizer of whole texts: id i decodes to TEXTS[i] (enough for exact_match)."""

    chat_template = None
    bos_token_id = None
    bos_token = None

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [len(text)]}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(self.texts[i] for i in ids)


class Model:
    def eval(self) -> None:
        pass


def _fake_generation(monkeypatch, outputs: list[str]) -> WordTokenizer:
    from raydistill.distill import teacher

    def generate_ids(model, tokenizer, prompts, max_new_tokens, stop):
        return [([i], True) for i in range(len(prompts))]

    monkeypatch.setattr(teacher, "generate_ids", generate_ids)
    return WordTokenizer(outputs)


def _rows(golds: list[str]) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"q{i}"}], "response": g}
            for i, g in enumerate(golds)]


def test_exact_match_counts_extraction_failures_and_warns_once(monkeypatch, caplog):
    tok = _fake_generation(monkeypatch, ["I don't know", "#### 72", "#### 9"])
    rows = _rows(["seventy-two", GOLD, "9"])
    evaluate._WARNED.clear()
    with caplog.at_level(logging.WARNING, logger=evaluate.__name__):
        result = exact_match(Model(), tok, rows, max_new_tokens=8, max_prompt_tokens=8,
                             stop=[0], pattern=GSM8K)
        exact_match(Model(), tok, rows, max_new_tokens=8, max_prompt_tokens=8, stop=[0],
                    pattern=GSM8K)
    assert (result.correct, result.rows, result.generated_tokens,
            result.extract_failures) == (2, 3, 6, 1)
    assert result.scores("student", GSM8K) == {
        "student_quick_acc": 2 / 3, "quick_acc_rows": 3.0, "student_extract_fail_rate": 1 / 3}
    assert "student_extract_fail_rate" not in result.scores("student", "")
    warnings = [r.getMessage() for r in caplog.records if "gold responses" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("2 of 3 gold responses")


def test_exact_match_without_pattern_compares_stripped_text(monkeypatch):
    tok = _fake_generation(monkeypatch, [" 58\n", "I don't know"])
    result = exact_match(Model(), tok, _rows(["58", ""]), max_new_tokens=8,
                         max_prompt_tokens=8, stop=[0])
    assert (result.correct, result.extract_failures) == (1, 0)


# ---- the built-in lm-eval task through the real simple_evaluate ----------------------------


WORKED = ("Half of 48 is <<48/2=24>>24, and 48 + 24 = <<48+24=72>>72.\n#### 72")


def _fake_lm(generation: str):
    from lm_eval.api.model import LM

    class FixedLM(LM):
        """Always writes `generation`; never finds the long gold response greedy (a worked
        solution with calculator annotations is not what a model writes token by token)."""

        def loglikelihood(self, requests):
            return [(-50.0, False) for _ in requests]

        def loglikelihood_rolling(self, requests):
            return [-50.0 for _ in requests]

        def generate_until(self, requests):
            self.kwargs = [r.args[1] for r in requests]
            return [generation for _ in requests]

    return FixedLM()


def _evaluate(task_dir, lm) -> float:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    result = simple_evaluate(model=lm, tasks=[TASK_NAME],
                             task_manager=TaskManager(include_path=[str(task_dir)]),
                             log_samples=False, verbosity="ERROR")
    return task_scores(result)[TASK_NAME]


@pytest.fixture(scope="module")
def gsm8k_rows():
    golds = [GOLD, "Half is <<48/2=24>>24, so <<48+24=72>>72 in all.\n#### 72",
             "She has 48 + 24 = 72.\n#### 72"]
    return _rows(golds)


def test_old_loglikelihood_task_scores_zero_on_worked_solutions(gsm8k_rows, tmp_path):
    task = write_lm_eval_task(gsm8k_rows, WordTokenizer([]), tmp_path / "old")
    assert _evaluate(task, _fake_lm(WORKED)) == 0.0  # today's task without a pattern


def test_generative_task_reads_the_answer_with_the_same_pattern(gsm8k_rows, tmp_path):
    # main: write_lm_eval_task had no pattern; its task scored the right answer 0
    task = write_lm_eval_task(gsm8k_rows, WordTokenizer([]), tmp_path / "new", pattern=GSM8K,
                              max_gen_toks=48, until=("<|im_end|>",))
    lm = _fake_lm(WORKED)
    assert _evaluate(task, lm) == 1.0
    assert lm.kwargs[0]["max_gen_toks"] == 48 and lm.kwargs[0]["until"] == ["<|im_end|>"]
    assert lm.kwargs[0]["do_sample"] is False


def test_generative_task_scores_unreadable_output_wrong_and_normalises_commas(tmp_path):
    rows = _rows(["So <<1000+234=1234>>1234.\n#### 1234", "seventy-two"])
    task = write_lm_eval_task(rows, WordTokenizer([]), tmp_path / "t", pattern=GSM8K)
    assert _evaluate(task, _fake_lm("that is\n#### 1,234")) == 0.5
    assert _evaluate(task, _fake_lm("I don't know")) == 0.0


def test_stop_strings_are_each_stop_ids_text():
    tok = WordTokenizer(["<|im_end|>", "<|endoftext|>", ""])
    assert stop_strings(tok, [0, 1, 0, 2]) == ("<|im_end|>", "<|endoftext|>")
