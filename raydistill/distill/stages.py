"""The stages' bodies that run as Ray tasks or Ray Train runs (the pipeline calls these)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import ray

from raydistill.config import to_dict
from raydistill.errors import ConfigError

log = logging.getLogger(__name__)


def prompt_rows(path: Path) -> list[dict]:
    """A split's conversations as Ray Data rows (messages as JSON text: one column type)."""
    from raydistill.data.splits import read_rows

    return [{"example_id": i, "id": r["id"], "messages": json.dumps(r["messages"])}
            for i, r in enumerate(read_rows(path))]


@ray.remote
def train_model_remote(model_cfg: dict, data_path: str, out: str, namespace: str, trial_id: str,
                       stage: str, seed: int, data_cfg: dict) -> dict:
    """Train (or fetch) the teacher in one measured window on the node this task runs on."""
    from raydistill.cluster.devices import worker_devices
    from raydistill.cluster.windows import StageWindow

    with StageWindow(namespace, trial_id, stage, devices=worker_devices(),
                     phase="load") as window:
        return train_lm(model_cfg, data_path, out, seed, data_cfg, window.add_tokens,
                        window.loaded)


def train_lm(model_cfg: dict, data_path: str, out: str, seed: int, data_cfg: dict,
             add_tokens=lambda n: None, loaded=lambda: None) -> dict:
    """The teacher: a tiny causal LM trained from scratch, or a pretrained one fine-tuned
    (steps > 0), on the gold rows in `data_path`; saved to `out`. Plain torch: the Ray task
    above measures it. A pretrained teacher used as it is (steps 0) is never built: the
    pipeline's artifact names the model itself (Pipeline._teacher_reference). On GPUs the
    model's fp32 master weights spread over the task's GPUs and the forward runs in bf16."""
    import contextlib

    import torch

    from raydistill.data.format import encode, response_ids
    from raydistill.data.splits import read_rows
    from raydistill.distill.batches import pad_batch
    from raydistill.distill.losses import masked_ce
    from raydistill.distill.tiny import build_tiny, make_tokenizer, n_params

    torch.set_num_threads(2)
    if model_cfg.get("model") and not model_cfg["steps"]:
        raise ConfigError(f"teacher {model_cfg['model']} with steps 0 is used where it is; "
                          "nothing to build (give teacher.steps > 0 to fine-tune it)")
    if model_cfg.get("model"):
        from raydistill.distill.teacher import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(model_cfg["model"], train=True)
    else:
        tokenizer = make_tokenizer()
        model = build_tiny(model_cfg.get("tiny", {}), len(tokenizer), seed)
    examples = []
    for r in read_rows(data_path):
        ids = response_ids(tokenizer, r["response"], data_cfg["max_response_tokens"])
        e = encode(tokenizer, r["messages"], ids, max_prompt_tokens=data_cfg["max_prompt_tokens"],
                   max_seq_len=data_cfg["max_prompt_tokens"] + data_cfg["max_response_tokens"])
        examples.append({"input_ids": e.input_ids, "prompt_len": e.prompt_len})
    if not examples:
        raise ValueError(f"no gold rows to train the teacher on in {data_path}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=model_cfg["lr"])
    gen = torch.Generator().manual_seed(seed)
    model.train()
    tokens = 0
    # inputs go where the first layer is; the loss is taken where the output layer put logits
    device = model.get_input_embeddings().weight.device
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    loaded()  # the model load and the data's tokenisation are the window's load phase
    for step in range(model_cfg["steps"]):
        pick = torch.randint(len(examples), (model_cfg["batch_size"],), generator=gen)
        batch = pad_batch([examples[i] for i in pick.tolist()], tokenizer.pad_token_id)
        with autocast:
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits
        loss = masked_ce(logits, batch["input_ids"].to(logits.device),
                         batch["mask"].to(logits.device))
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
    if model_cfg.get("model"):
        _copy_generation_config(model_cfg["model"], out)
    return {"params": n_params(model), "final_loss": loss.item(), "tokens": tokens}


def _copy_generation_config(source: str, out: str) -> None:
    """Keep the model's own stop tokens (generation_config.json) with the fetched copy."""
    import shutil

    src = Path(source).expanduser() / "generation_config.json"
    if src.is_file() and not (Path(out) / "generation_config.json").exists():
        shutil.copy(src, Path(out) / "generation_config.json")


def student_loop_config(cfg, method: str, trial_id: str, namespace: str,
                        teacher_path: Path | str,
                        data_path: Path, cache_path: Path | None, out: Path,
                        shared_vocab: bool) -> dict:
    """Everything a Ray Train worker needs, as plain data (`vocab_rows`: see `vocab_rows`)."""
    d, t, data = cfg.distill, cfg.training, cfg.data
    micro = cfg.student.batch_size // (d.num_workers * t.grad_accum)
    if micro < 1 or micro * d.num_workers * t.grad_accum != cfg.student.batch_size:
        raise ConfigError(f"student.batch_size {cfg.student.batch_size} must be a multiple of "
                          f"distill.num_workers × training.grad_accum "
                          f"({d.num_workers} × {t.grad_accum})")
    student_path = cfg.student.model or str(teacher_path)  # a tiny student: the teacher's vocab
    return {
        "namespace": namespace, "trial_id": trial_id, "stage": "student_training",
        "method": method, "loss": d.loss, "temperature": d.temperature, "alpha": d.alpha,
        "beta": d.beta, "lmbda": d.lmbda, "top_k": d.top_k, "feature_kind": d.feature_kind,
        "engine": d.engine,
        "zero_stage": d.zero_stage, "teacher_sharding": d.teacher_sharding, "seed": cfg.seed,
        "threads": 1 if d.num_workers > 1 else 2, "student": to_dict(cfg.student),
        "steps": cfg.student.steps, "lr": cfg.student.lr, "batch_size": cfg.student.batch_size,
        **{k: getattr(t, k) for k in ("precision", "grad_accum", "clip_norm", "weight_decay",
                                      "warmup_ratio", "schedule", "min_lr_ratio",
                                      "gradient_checkpointing", "max_seq_len", "chunk_tokens",
                                      "checkpoint_every")},
        "student_path": student_path, "teacher_path": str(teacher_path),
        "data_path": str(data_path), "cache_path": str(cache_path) if cache_path else "",
        "out_dir": str(out), "shared_vocab": shared_vocab,
        "vocab_rows": vocab_rows(cfg, method, teacher_path),
        "max_prompt_tokens": data.max_prompt_tokens,
        "max_response_tokens": data.max_response_tokens, "answer_pattern": data.answer_pattern,
        "max_new_tokens": cfg.generation.max_new_tokens,
    }


def check_pair(cfg, method: str, teacher_path: Path | str) -> bool:
    """Whether teacher and student share a vocabulary; refuses the methods that need one."""
    from transformers import AutoTokenizer

    from raydistill.data.format import check_vocabulary, same_vocabulary

    if not cfg.student.model:
        return True  # a tiny student is built on the teacher's tokenizer
    teacher_tok = AutoTokenizer.from_pretrained(str(teacher_path))
    student_tok = AutoTokenizer.from_pretrained(cfg.student.model)
    if method in ("logit", "feature", "onpolicy"):
        name = cfg.teacher.model or "the built-in teacher"
        check_vocabulary(teacher_tok, student_tok, name, cfg.student.model, f"{method} KD")
        return True
    return same_vocabulary(teacher_tok, student_tok)


def vocab_rows(cfg, method: str, teacher_path: Path | str) -> int:
    """How many output rows the student's losses read: its tokenizer's length, checked against
    the output rows of each model whose logits the loss reads (the student; the teacher too
    when it is run online). A tiny student is built with exactly its tokenizer's rows."""
    from transformers import AutoConfig, AutoTokenizer

    from raydistill.data.format import shared_rows
    from raydistill.distill.train import online_teacher

    tokenizer = AutoTokenizer.from_pretrained(cfg.student.model or str(teacher_path))
    models = {}
    if cfg.student.model:
        models[f"student {cfg.student.model}"] = cfg.student.model
    # the teacher's logits are read online (logit KD without a cache; on-policy's scorer)
    if (online_teacher({"method": method, "top_k": cfg.distill.top_k}) and method == "logit") \
            or method == "onpolicy":
        models[f"teacher {cfg.teacher.model or teacher_path}"] = str(teacher_path)
    rows = {name: AutoConfig.from_pretrained(path).get_text_config().vocab_size
            for name, path in models.items()}
    return shared_rows(tokenizer, rows)


def fit_student(cfg, method: str, trial_id: str, namespace: str, teacher_path: Path | str,
                data_path: Path, cache_path: Path | None, out: Path, run_dir: Path,
                use_gpu: bool, extra: dict | None = None, run_name: str | None = None) -> dict:
    """One Ray Train run of `student_loop`; rank 0 leaves train_metrics.json in `out`. A run
    of the same name in the same run directory resumes from its latest checkpoint, and Ray
    Train restarts failed workers (training.max_failures) from it too."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raydistill.distill.train import student_loop

    shared = check_pair(cfg, method, teacher_path)
    loop_cfg = {**student_loop_config(cfg, method, trial_id, namespace, teacher_path, data_path,
                                      cache_path, out, shared), **(extra or {})}
    d = cfg.distill
    trainer = TorchTrainer(
        student_loop, train_loop_config=loop_cfg,
        scaling_config=ScalingConfig(num_workers=d.num_workers, use_gpu=use_gpu,
                                     resources_per_worker=None if use_gpu else {"CPU": 1}),
        run_config=RunConfig(storage_path=str((run_dir / "ray_train").resolve()),
                             name=run_name or trial_id,
                             failure_config=FailureConfig(max_failures=cfg.training.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    trainer.fit()
    return json.loads((out / "train_metrics.json").read_text())


@ray.remote
def evaluate_remote(models: dict[str, str], test_jsonl: str, namespace: str, trial_id: str,
                    eval_cfg: dict, data_cfg: dict, lm_eval_dir: str, max_new_tokens: int,
                    dev_jsonl: str | None = None) -> dict:
    """Score each model in the `evaluation` window: exact match on the test split + lm-eval
    (`scores`), and exact match on the dev split (`dev_scores`: what the search decides on;
    no lm-eval), then measure each one's inference on a fixed prompt set in its own window
    (for EPT)."""
    import torch

    from raydistill.cluster.devices import worker_devices
    from raydistill.cluster.windows import StageWindow
    from raydistill.data.format import stop_ids
    from raydistill.data.splits import read_rows
    from raydistill.distill.evaluate import exact_match
    from raydistill.distill.teacher import devices_of, load_model_and_tokenizer

    torch.set_num_threads(2)
    rows = read_rows(test_jsonl)
    dev_rows = read_rows(dev_jsonl) if dev_jsonl else []
    devices = worker_devices()
    pattern = data_cfg["answer_pattern"]
    scores: dict[str, float] = {}
    dev_scores: dict[str, float] = {}
    loaded = {}
    with StageWindow(namespace, trial_id, "evaluation", devices=devices, phase="load") as window:
        for name, path in models.items():
            # the teacher's layers over every GPU of the task; the student (loaded after it)
            # on the first GPU with room, usually one: its probe then meters that GPU alone
            model, tokenizer = load_model_and_tokenizer(path, spread=name != "student")
            loaded[name] = (model, tokenizer, stop_ids(tokenizer, path))
        window.loaded()
        gen = {"max_new_tokens": max_new_tokens, "max_prompt_tokens": data_cfg["max_prompt_tokens"]}
        for name, (model, tokenizer, stop) in loaded.items():
            for split_rows, into in ((rows, scores), (dev_rows, dev_scores)):
                if not split_rows:
                    continue
                result = exact_match(model, tokenizer, split_rows, stop=stop, pattern=pattern,
                                     **gen)
                into.update(result.scores(name, pattern))
                # counts generated ones only
                window.add_tokens(result.generated_tokens, generated=result.generated_tokens)
            if eval_cfg["lm_eval"]:
                scores.update(_lm_eval(name, model, tokenizer, stop, rows, eval_cfg, pattern,
                                       Path(lm_eval_dir) / name, max_new_tokens))
    probe = rows[: eval_cfg["inference_prompts"]]
    tokens = {}
    for name, (model, tokenizer, stop) in loaded.items():
        tokens[name] = _steady_inference(namespace, trial_id, name, devices_of(model, devices),
                                         model, tokenizer, stop, probe, gen,
                                         eval_cfg["inference_min_s"])
    return {"scores": scores, "dev_scores": dev_scores, "inference_tokens": tokens}


def _lm_eval(name: str, model, tokenizer, stop: list[int], rows: list[dict], eval_cfg: dict,
             pattern: str, task_dir: Path, max_new_tokens: int) -> dict[str, float]:
    """lm-eval on the test split: the built-in task (generative with the answer pattern, with
    quick_acc's token budget and the model's own stop strings) and the named tasks."""
    from raydistill.distill.evaluate import (
        TASK_NAME,
        lm_eval_scores,
        stop_strings,
        write_lm_eval_task,
    )

    write_lm_eval_task(rows, tokenizer, task_dir, pattern=pattern, max_gen_toks=max_new_tokens,
                       until=stop_strings(tokenizer, stop))
    tasks = [TASK_NAME, *eval_cfg["lm_eval_tasks"]]
    return {f"{name}_{task}_acc": value for task, value in lm_eval_scores(
        model, tokenizer, task_dir, tasks, eval_cfg["limit"],
        tuple(eval_cfg["lm_eval_include"]), eval_cfg["lm_eval_chat_template"]).items()}


def _steady_inference(namespace: str, trial_id: str, name: str, devices: tuple[str, ...],
                      model, tokenizer, stop: list[int], probe: list, gen: dict,
                      min_s: float) -> int:
    """EPT of a model at inference, in steady state: one untimed warm-up pass (first-call
    allocations and caches are not inference cost), then the probe repeated inside the window
    until it has lasted min_s, long enough for the power source to see it (at 10 Hz, tens of
    samples instead of none). Returns the tokens generated inside the window."""
    from raydistill.cluster.windows import StageWindow
    from raydistill.distill.evaluate import exact_match

    exact_match(model, tokenizer, probe, stop=stop, **gen)
    generated = 0
    with StageWindow(namespace, trial_id, f"inference_{name}", devices=devices) as window:
        while True:
            generated += exact_match(model, tokenizer, probe, stop=stop,
                                     **gen).generated_tokens
            if window.duration_s >= min_s:
                break
        window.add_tokens(generated, generated=generated)  # counts generated ones only
    return generated
