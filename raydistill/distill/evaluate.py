"""Scoring teacher and student on the data's test split, and with lm-eval.

Two scores per model:
- `quick_acc`: generative exact match on the test split. Each model reads the prompt through
  its own chat template, answers greedily until its own stop tokens, and the answer (group 1 of
  `data.answer_pattern`, else the stripped text) is compared with the gold one.
- lm-eval (`lm_eval.simple_evaluate`): a local task written from the same test split
  (`raydistill_test`: loglikelihood of the gold response, `acc` = it is the greedy one), plus
  installed tasks by name (`gsm8k`, `hellaswag`, ... when their data is reachable) and task
  YAMLs from local directories. The local task holds each model's own rendered prompt, so it is
  written once per model. The task's `data_files` path is absolute, because lm-eval resolves a
  relative one against the current directory, not the YAML's.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

TASK_NAME = "raydistill_test"


def exact_match(model, tokenizer, rows: list[dict], *, max_new_tokens: int,
                max_prompt_tokens: int, stop: list[int], pattern: str = "",
                batch_size: int = 64) -> tuple[float, int]:
    """(accuracy, tokens generated) of greedy answers on rows {messages, response}: plain
    argmax decoding (`teacher.stated_generation`), nothing taken from the model's
    generation_config.json but its stop ids (`stop`), so a checkpoint's repetition penalty or
    sampling defaults do not change a score."""
    from raydistill.data.format import answer_of, prompt_ids
    from raydistill.distill.teacher import generate_ids

    model.eval()
    correct = generated = 0
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        prompts = [prompt_ids(tokenizer, r["messages"], max_prompt_tokens) for r in chunk]
        for row, (ids, done) in zip(chunk, generate_ids(model, tokenizer, prompts,
                                                        max_new_tokens, stop), strict=True):
            generated += len(ids) + int(done)
            text = tokenizer.decode(ids, skip_special_tokens=True)
            correct += int(answer_of(text, pattern) == answer_of(row["response"], pattern))
    return correct / max(1, len(rows)), generated


def write_lm_eval_task(rows: list[dict], tokenizer, out_dir: str | Path,
                       task_name: str = TASK_NAME) -> Path:
    """A loglikelihood task over the test rows, each prompt rendered with this model's
    template (BOS included as text when the template has one: lm-eval must not add another)."""
    from raydistill.data.format import render_prompt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs = out / "test.jsonl"
    with open(docs, "w") as fh:
        for r in rows:
            fh.write(json.dumps({"prompt": render_prompt(tokenizer, r["messages"]),
                                 "answer": r["response"]}) + "\n")
    spec = {
        "task": task_name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(docs.resolve())}},
        "output_type": "loglikelihood",
        "test_split": "test",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answer}}",
        "target_delimiter": "",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 2.0},
    }
    (out / f"{task_name}.yaml").write_text(
        f"# written by raydistill; run with lm_eval --include_path {out} --tasks {task_name}\n"
        + yaml.safe_dump(spec, sort_keys=False))
    return out


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
        for task, metrics in result["results"].items():
            acc = metrics.get("acc,none", metrics.get("exact_match,strict-match",
                                                      metrics.get("acc")))
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
