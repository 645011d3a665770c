"""The stages' bodies that run as Ray tasks or Ray Train runs (the pipeline calls these)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from raydistill.config import TaskConfig, to_dict

log = logging.getLogger(__name__)


def _write_pairs(rows: list[dict], directory: Path) -> Path:
    """Rows {prompt, answer} as a Parquet dir of {example_id, prompt, completion}."""
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.table({"example_id": list(range(len(rows))),
                      "prompt": [r["prompt"] for r in rows],
                      "completion": [r["answer"] for r in rows]})
    pq.write_table(table, directory / "part-0.parquet")
    return directory


def write_task_data(task: TaskConfig, out: Path) -> dict[str, Path]:
    from raydistill.distill.tiny import split_task, write_jsonl

    split = split_task(task.digits, task.n_eval, task.n_labelled, task.n_prompts, task.seed)
    return {
        "eval": write_jsonl(split["eval"], out / "eval.jsonl"),
        "prompts": write_jsonl(split["prompts"], out / "prompts.jsonl"),
        "labelled_teacher": _write_pairs(split["teacher"], out / "teacher_gold"),
        "labelled_student": _write_pairs(split["labelled"], out / "student_gold"),
    }


def prompt_rows(path: Path) -> list[dict]:
    from raydistill.distill.evaluate import read_jsonl

    return [{"example_id": i, "prompt": r["prompt"]} for i, r in enumerate(read_jsonl(path))]


@ray.remote
def train_model_remote(model_cfg: dict, data_path: str, out: str, namespace: str, trial_id: str,
                       stage: str, seed: int) -> dict:
    """Train (or fetch) the teacher in one measured window on the node this task runs on."""
    from raydistill.cluster.windows import StageWindow, worker_devices

    with StageWindow(namespace, trial_id, stage, devices=worker_devices()) as window:
        return train_lm(model_cfg, data_path, out, seed, window.add_tokens)


def train_lm(model_cfg: dict, data_path: str, out: str, seed: int,
             add_tokens=lambda n: None) -> dict:
    """Supervised training of a tiny causal LM on {prompt, completion} pairs (or fetching a
    pretrained one), saved to `out`. Plain torch: the Ray task above measures it."""
    import torch

    from raydistill.distill.examples import read_pairs, tokenize_pair
    from raydistill.distill.tiny import build_tiny, make_tokenizer, n_params
    from raydistill.distill.train import masked_ce, pad_batch

    torch.set_num_threads(2)
    if model_cfg.get("model"):  # a pretrained teacher: nothing to train, just fetch it
        from raydistill.distill.teacher import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(model_cfg["model"])
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        return {"params": n_params(model), "pretrained": model_cfg["model"]}
    tokenizer = make_tokenizer()
    model = build_tiny(model_cfg.get("tiny", {}), len(tokenizer), seed)
    examples = [tokenize_pair(tokenizer, r["prompt"], r["completion"])
                for r in read_pairs(data_path)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=model_cfg["lr"])
    gen = torch.Generator().manual_seed(seed)
    model.train()
    tokens = 0
    for step in range(model_cfg["steps"]):
        pick = torch.randint(len(examples), (model_cfg["batch_size"],), generator=gen)
        batch = pad_batch([examples[i] for i in pick.tolist()], tokenizer.pad_token_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = masked_ce(logits, batch["input_ids"], batch["mask"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = int(batch["attention_mask"].sum())
        tokens += n
        add_tokens(n)
        if step % max(1, model_cfg["steps"] // 5) == 0:
            log.info("teacher step %d/%d loss %.4f", step, model_cfg["steps"], loss.item())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"params": n_params(model), "final_loss": loss.item(), "tokens": tokens}


def fit_student(cfg, method: str, trial_id: str, namespace: str, teacher_path: Path,
                data_path: Path, cache_path: Path | None, out: Path, run_dir: Path,
                use_gpu: bool, progress: dict | None = None) -> dict:
    """One Ray Train run of `student_loop`; rank 0 leaves train_metrics.json in `out`."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raydistill.distill.train import student_loop

    d = cfg.distill
    loop_cfg = {
        "namespace": namespace, "trial_id": trial_id, "stage": "student_training",
        "method": method, "loss": d.loss, "temperature": d.temperature, "alpha": d.alpha,
        "beta": d.beta, "top_k": d.top_k, "feature_kind": d.feature_kind, "engine": d.engine,
        "zero_stage": d.zero_stage, "seed": cfg.seed, "threads": 1 if d.num_workers > 1 else 2,
        "student": to_dict(cfg.student), "steps": cfg.student.steps, "lr": cfg.student.lr,
        "batch_size": cfg.student.batch_size, "tokenizer_path": str(teacher_path),
        "teacher_path": str(teacher_path), "data_path": str(data_path),
        "cache_path": str(cache_path) if cache_path else "", "out_dir": str(out),
        "max_new_tokens": cfg.generation.max_new_tokens, **(progress or {}),
    }
    trainer = TorchTrainer(
        student_loop, train_loop_config=loop_cfg,
        scaling_config=ScalingConfig(num_workers=d.num_workers, use_gpu=use_gpu,
                                     resources_per_worker=None if use_gpu else {"CPU": 1}),
        run_config=RunConfig(storage_path=str((run_dir / "ray_train").resolve()),
                             name=f"{trial_id}-{int(time.time())}"),
    )
    trainer.fit()
    return json.loads((out / "train_metrics.json").read_text())


@ray.remote
def evaluate_remote(models: dict[str, str], eval_jsonl: str, namespace: str, trial_id: str,
                    eval_cfg: dict, lm_eval_dir: str, max_new_tokens: int) -> dict:
    """Score each model (quick eval + lm-eval) in the `evaluation` window, then measure each
    one's inference on a fixed prompt set in its own window (for energy per token)."""
    import torch

    from raydistill.cluster.windows import StageWindow, worker_devices
    from raydistill.distill.evaluate import lm_eval_scores, read_jsonl, write_lm_eval_task
    from raydistill.distill.teacher import load_model_and_tokenizer
    from raydistill.distill.tiny import greedy_accuracy

    torch.set_num_threads(2)
    rows = read_jsonl(eval_jsonl)
    devices = worker_devices()
    scores: dict[str, float] = {}
    with StageWindow(namespace, trial_id, "evaluation", devices=devices) as window:
        loaded = {name: load_model_and_tokenizer(path) for name, path in models.items()}
        task_dir = write_lm_eval_task(eval_jsonl, lm_eval_dir)
        for name, (model, tokenizer) in loaded.items():
            acc, generated = greedy_accuracy(model, tokenizer, rows, max_new_tokens)
            scores[f"{name}_quick_acc"] = acc
            window.add_tokens(generated)
            if eval_cfg["lm_eval"]:
                tasks = ["raydistill_addition", *eval_cfg["lm_eval_tasks"]]
                for task, value in lm_eval_scores(model, tokenizer, task_dir, tasks,
                                                  eval_cfg["limit"]).items():
                    scores[f"{name}_{task}_acc"] = value
    probe = rows[: eval_cfg["inference_prompts"]]
    tokens = {}
    for name, (model, tokenizer) in loaded.items():
        tokens[name] = _steady_inference(namespace, trial_id, name, devices, model, tokenizer,
                                         probe, max_new_tokens, eval_cfg["inference_min_s"])
    return {"scores": scores, "inference_tokens": tokens}


def _steady_inference(namespace: str, trial_id: str, name: str, devices: tuple[str, ...],
                      model, tokenizer, probe: list, max_new_tokens: int, min_s: float) -> int:
    """EPT of a model at inference, in steady state: one untimed warm-up pass (first-call
    allocations and caches are not inference cost), then the probe repeated inside the window
    until it has lasted min_s, long enough for the power source to see it (at 10 Hz, tens of
    samples instead of none). Returns the tokens generated inside the window."""
    from raydistill.cluster.windows import StageWindow
    from raydistill.distill.tiny import greedy_accuracy

    greedy_accuracy(model, tokenizer, probe, max_new_tokens)
    generated = 0
    with StageWindow(namespace, trial_id, f"inference_{name}", devices=devices) as window:
        while True:
            _, n = greedy_accuracy(model, tokenizer, probe, max_new_tokens)
            generated += n
            if window.duration_s >= min_s:
                break
        window.add_tokens(generated)
    return generated
