"""Scoring teacher and student on the data's dev and test splits, and with lm-eval.

Two scores per model:
- `quick_acc`: generative exact match (on test, and on dev for the search's decisions). Each
  model reads the prompt through its own chat template, answers greedily until its own stop
  tokens, and the answer (group 1 of `data.answer_pattern`, else the stripped text) is compared
  with the gold one; an output the pattern cannot read is wrong, and counted
  (`extract_fail_rate`).
- lm-eval (`lm_eval.simple_evaluate`, test only): a local task written from the test split
  (`raydistill_test`: with an answer pattern, greedy generation read by lm-eval's regex filter
  with the same pattern, then exact match with the gold's answer; without one, loglikelihood of
  the gold response, `acc` = it is the greedy one), plus
  installed tasks by name (`gsm8k`, `hellaswag`, ... when their data is reachable) and task
  YAMLs from local directories. The local task holds each model's own rendered prompt, so it is
  written once per model. The task's `data_files` path is absolute, because lm-eval resolves a
  relative one against the current directory, not the YAML's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from raydistill.data.format import AnswerScore

log = logging.getLogger(__name__)

TASK_NAME = "raydistill_test"


@dataclass(frozen=True)
class ExactMatch(AnswerScore):
    """Greedy exact match on some rows (`AnswerScore`: the score, how many outputs the answer
    pattern could not read, each scored wrong) and the tokens it generated."""

    generated_tokens: int = 0

    def scores(self, model: str, pattern: str) -> dict[str, float]:
        """The score keys of one model: `<model>_quick_acc`, `quick_acc_rows`, and
        `<model>_extract_fail_rate` where a pattern says what an answer is."""
        out = {f"{model}_quick_acc": self.accuracy, "quick_acc_rows": float(self.rows)}
        if pattern:
            out[f"{model}_extract_fail_rate"] = self.extract_fail_rate
        return out


def exact_match(model, tokenizer, rows: list[dict], *, max_new_tokens: int,
                max_prompt_tokens: int, stop: list[int], pattern: str = "",
                batch_size: int = 64) -> ExactMatch:
    """Greedy answers on rows {messages, response} scored by `format.score_answers`: plain
    argmax decoding (`teacher.stated_generation`), nothing taken from the model's
    generation_config.json but its stop ids (`stop`), so a checkpoint's repetition penalty or
    sampling defaults do not change a score. An output `pattern` cannot read is wrong."""
    from raydistill.data.format import prompt_ids, score_answers
    from raydistill.distill.teacher import generate_ids

    model.eval()
    generated = 0
    outputs: list[str] = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        prompts = [prompt_ids(tokenizer, r["messages"], max_prompt_tokens) for r in chunk]
        for ids, done in generate_ids(model, tokenizer, prompts, max_new_tokens, stop):
            generated += len(ids) + int(done)
            outputs.append(tokenizer.decode(ids, skip_special_tokens=True))
    score = score_answers(outputs, [r["response"] for r in rows], pattern)
    if score.gold_unextracted:
        _warn_once(f"{score.gold_unextracted} of {score.rows} gold responses do not match "
                   f"data.answer_pattern {pattern!r}: each is compared whole (stripped) with "
                   "the model's extracted answer")
    return ExactMatch(score.correct, score.rows, score.extract_failures,
                      score.gold_unextracted, generated)


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """One warning per distinct message in a process: the in-training dev check scores the
    same rows at every check, and the same count need not be said each time."""
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


# lm-eval's result key of the built-in generative task: metric, then the filter's name
ANSWER_FILTER = "answer"
GENERATIVE_KEY = f"exact_match,{ANSWER_FILTER}"
# commas between digits do not count, as in `format.answer_of` (golds come normalised already)
DIGIT_COMMA = r"(?<=\d),(?=\d)"


def write_lm_eval_task(rows: list[dict], tokenizer, out_dir: str | Path,
                       task_name: str = TASK_NAME, *, pattern: str = "",
                       max_gen_toks: int = 256, until: tuple[str, ...] = ()) -> Path:
    """The built-in lm-eval task over the test rows, each prompt rendered with this model's
    template (BOS included as text when the template has one: lm-eval must not add another).

    With an answer `pattern` it is generative: greedy up to `max_gen_toks`, stopped at the
    model's end-of-turn strings (`until`; lm-eval adds the tokenizer's EOS), the output read by
    lm-eval's regex filter with the same pattern, then `exact_match` against the gold's answer,
    extracted here as quick_acc extracts it (`format.gold_answer`). An output the filter cannot
    read becomes "[invalid]" and is wrong. lm-eval's filter takes group 1 of a one-group
    pattern (as quick_acc does); of a pattern with several groups, the first non-empty one.
    Without a pattern: the loglikelihood task, `acc` = the whole gold response is the greedy
    continuation (fine for short answers; on worked solutions it is ~0)."""
    from raydistill.data.format import gold_answer, render_prompt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs = out / "test.jsonl"
    with open(docs, "w") as fh:
        for r in rows:
            answer = gold_answer(r["response"], pattern)[0] if pattern else r["response"]
            fh.write(json.dumps({"prompt": render_prompt(tokenizer, r["messages"]),
                                 "answer": answer}) + "\n")
    spec = {
        "task": task_name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(docs.resolve())}},
        "test_split": "test",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answer}}",
        "target_delimiter": "",
        **(_generative(pattern, max_gen_toks, until) if pattern else {
            "output_type": "loglikelihood",
            "metric_list": [{"metric": "acc", "aggregation": "mean",
                             "higher_is_better": True}]}),
        "metadata": {"version": 3.0 if pattern else 2.0},
    }
    (out / f"{task_name}.yaml").write_text(
        f"# written by raydistill; run with lm_eval --include_path {out} --tasks {task_name}\n"
        + yaml.safe_dump(spec, sort_keys=False))
    return out


def _generative(pattern: str, max_gen_toks: int, until: tuple[str, ...]) -> dict:
    return {
        "output_type": "generate_until",
        "generation_kwargs": {"until": list(until), "do_sample": False, "temperature": 0.0,
                              "max_gen_toks": max_gen_toks},
        "filter_list": [{"name": ANSWER_FILTER, "filter": [
            {"function": "regex", "regex_pattern": pattern, "group_select": 0},
            {"function": "take_first"}]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean",
                         "higher_is_better": True, "regexes_to_ignore": [DIGIT_COMMA]}],
    }


def stop_strings(tokenizer, stop: list[int]) -> tuple[str, ...]:
    """The text of each stop id (lm-eval stops on strings): a model's end-of-turn tokens."""
    texts = (tokenizer.decode([i], skip_special_tokens=False) for i in stop)
    return tuple(dict.fromkeys(t for t in texts if t))


def model_max_length(model, tokenizer) -> int:
    """The context the model was built for (its config), not a fixed guess."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(model.config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", 0)
    return value if 0 < value < 1_000_000 else 2048


def lm_eval_scores(model, tokenizer, own_task_dir: Path | None, tasks: list[str], limit: int,
                   include: tuple[str, ...] = (), chat_template: bool = False) -> dict:
    """lm_eval.simple_evaluate on an in-memory model; {task: acc}. The own task (rendered
    prompts) runs without lm-eval's BOS; named tasks get BOS when the tokenizer has one."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from raydistill.distill.teacher import stop_ids_only

    device = "cuda" if _cuda() else "cpu"
    scores: dict[str, float] = {}
    own = [t for t in tasks if t == TASK_NAME]
    named = [t for t in tasks if t != TASK_NAME]
    runs = []
    if own and own_task_dir is not None:
        runs.append((own, [str(own_task_dir)], False, False))
    if named:
        runs.append((named, list(include), tokenizer.bos_token_id is not None, chat_template))
    for names, paths, bos, chat in runs:
        cls = _rendered_prompt_lm() if names is own else HFLM
        lm = cls(pretrained=model, tokenizer=tokenizer, device=device, batch_size=64,
                 max_length=model_max_length(model, tokenizer), add_bos_token=bos)
        manager = TaskManager(include_path=paths or None)
        # a generative task decodes as the task says, not with the checkpoint's sampling
        # defaults or repetition penalty (lm-eval passes its own kwargs only)
        with stop_ids_only(model):
            result = simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit,
                                     log_samples=False, verbosity="ERROR",
                                     apply_chat_template=chat and bool(tokenizer.chat_template))
        scores.update(task_scores(result))
    return scores


def task_scores(result: dict) -> dict[str, float]:
    """{task: score} from a `simple_evaluate` result: `acc`, or the exact match after the
    built-in task's answer filter (`exact_match,answer`), or a GSM8K-style strict match."""
    scores = {}
    for task, metrics in result["results"].items():
        acc = next((metrics[k] for k in ("acc,none", GENERATIVE_KEY,
                                         "exact_match,strict-match", "acc")
                    if k in metrics), None)
        if acc is not None:
            scores[task] = float(acc)
    return scores


def _rendered_prompt_lm():
    from lm_eval.models.huggingface import HFLM

    class RenderedPromptLM(HFLM):
        """lm-eval's HFLM for prompts rendered by a chat template. HFLM moves a context's
        trailing whitespace into the scored continuation (right for few-shot text, where the
        space belongs to the answer's first word); a template's prompt ends with its own
        newline ("<|im_start|>assistant\n"), which is not part of the answer the model was
        trained to write. Here context and answer are tokenized apart, as in training."""

        def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
            return (self.tok_encode(context, add_special_tokens=False),
                    self.tok_encode(continuation, add_special_tokens=False))

    return RenderedPromptLM


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
