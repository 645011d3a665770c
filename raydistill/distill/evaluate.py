"""Scoring teacher and student: lm-eval on a task YAML the project writes, plus a quick eval.

lm-eval runs offline on a local task (`dataset_path: json`, the eval split as JSONL). The
task's `data_files` path is written absolute, because lm-eval resolves a relative one against
the current directory, not the YAML's.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

TASK_NAME = "raydistill_addition"


def write_lm_eval_task(eval_jsonl: str | Path, out_dir: str | Path,
                       task_name: str = TASK_NAME) -> Path:
    """A loglikelihood task over {prompt, answer} rows; `acc` = the answer is the greedy one."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = {
        "task": task_name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(Path(eval_jsonl).resolve())}},
        "output_type": "loglikelihood",
        "test_split": "test",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answer}}",
        "target_delimiter": "",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }
    (out / f"{task_name}.yaml").write_text(
        f"# written by raydistill; run with lm_eval --include_path {out} --tasks {task_name}\n"
        + yaml.safe_dump(spec, sort_keys=False))
    return out


def lm_eval_scores(model, tokenizer, task_dir: Path, tasks: list[str], limit: int) -> dict:
    """lm_eval.simple_evaluate on an in-memory model; {task: acc}."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, device="cpu" if not _cuda() else "cuda",
              batch_size=64, max_length=128, add_bos_token=False)
    manager = TaskManager(include_path=str(task_dir))
    result = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit,
                             log_samples=False, verbosity="ERROR")
    scores = {}
    for task, metrics in result["results"].items():
        acc = metrics.get("acc,none", metrics.get("acc"))
        if acc is not None:
            scores[task] = float(acc)
    return scores


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]
