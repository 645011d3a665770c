"""Logit caching as a Ray Train job over a ZeRO-3-sharded teacher (a teacher larger than one
GPU): every worker holds 1/world of the teacher's weights, reads its share of the synthetic
rows and writes its own cache shard. Forward passes under ZeRO-3 are collective (each layer's
weights are gathered from all ranks), so every rank runs the same number of batches: a rank
whose share is shorter repeats a row and drops the result. Log-softmax, top-k and the tail
mass are computed on the device (`teacher.cache_batch`), generation.cache_chunk_tokens response
positions at a time; the output layer's weight is gathered once per batch (so the collectives
stay in step whatever each rank's chunk count), and only top-k leaves the device.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def cache_loop(cfg: dict[str, Any]) -> None:
    """Ray Train worker entry point: this rank's cache shard, in a measured window."""
    import deepspeed
    import pyarrow as pa
    import ray.train
    import torch
    from transformers import AutoTokenizer

    from raydistill.cluster.devices import worker_devices
    from raydistill.cluster.windows import StageWindow
    from raydistill.distill.engine import load_sharded_teacher, resolve_precision
    from raydistill.distill.examples import read_synthetic
    from raydistill.distill.logit_cache import write_shard
    from raydistill.distill.teacher import cache_batch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg["threads"])
    with StageWindow(cfg["namespace"], cfg["trial_id"], "teacher_logit_caching",
                     devices=worker_devices(), phase="load") as window:
        deepspeed.init_distributed("nccl" if torch.cuda.is_available() else "gloo")
        teacher, _ = load_sharded_teacher(cfg["teacher_path"], resolve_precision("auto"))
        tokenizer = AutoTokenizer.from_pretrained(cfg["teacher_path"])
        rows = read_synthetic(cfg["synthetic_path"], rank, world)
        batches = math.ceil(math.ceil(cfg["n_rows"] / world) / cfg["batch_size"])
        window.loaded()
        tables = []
        for b in range(batches):
            chunk = rows[b * cfg["batch_size"]:(b + 1) * cfg["batch_size"]]
            real = len(chunk)
            # cache_batch's forwards are as many as ceil(rows / rows per forward): every rank
            # pads its batch to the longest rank's with a repeated row (results dropped), so
            # all run the same collective forwards
            chunk = chunk + rows[:1] * (_longest(real) - real)
            batch = {k: [r[k] for r in chunk] for k in ("example_id", "messages",
                                                       "completion_ids", "finished")}
            table, tokens = cache_batch(teacher, tokenizer, batch, cfg["top_k"],
                                        cfg["temperature"], cfg["dtype"],
                                        cfg["max_prompt_tokens"], cfg["max_seq_len"],
                                        cfg["chunk_tokens"])
            if real:
                tables.append(table.slice(0, real))
                window.add_tokens(tokens - _pad_tokens(tokenizer, rows[0], len(chunk) - real,
                                                       cfg))
        if tables:
            write_shard(pa.concat_tables(tables), Path(cfg["out_dir"]) / f"part-{rank}.parquet")


def _longest(n: int) -> int:
    """The largest of every rank's n (a collective)."""
    import torch
    import torch.distributed as dist

    t = torch.tensor([n], device="cuda" if torch.cuda.is_available() else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _pad_tokens(tokenizer, row: dict, pads: int, cfg: dict[str, Any]) -> int:
    """Tokens the teacher read for `pads` repeats of `row` (padding: not this rank's work)."""
    from raydistill.distill.teacher import teacher_examples

    if not pads:
        return 0
    one = {k: [row[k]] for k in ("messages", "completion_ids", "finished")}
    example = teacher_examples(tokenizer, one, cfg["max_prompt_tokens"], cfg["max_seq_len"])[0]
    return pads * len(example.input_ids)


def build_sharded_cache(cfg, synthetic_path: Path, teacher_path: Path, out: Path, run_dir: Path,
                        namespace: str, trial_id: str, use_gpu: bool) -> None:
    """One Ray Train run of `cache_loop` over generation.num_actors workers."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raydistill.distill.examples import read_synthetic

    g, d = cfg.generation, cfg.distill
    workers = max(1, g.num_actors)
    loop = {"namespace": namespace, "trial_id": trial_id, "teacher_path": str(teacher_path),
            "synthetic_path": str(synthetic_path), "n_rows": len(read_synthetic(synthetic_path)),
            "batch_size": g.batch_size, "top_k": d.top_k, "temperature": d.temperature,
            "dtype": d.cache_dtype, "max_prompt_tokens": cfg.data.max_prompt_tokens,
            "max_seq_len": cfg.training.max_seq_len, "out_dir": str(out),
            "chunk_tokens": g.cache_chunk_tokens,
            "threads": 1 if workers > 1 else 2}
    TorchTrainer(cache_loop, train_loop_config=loop,
                 scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                              resources_per_worker=None if use_gpu
                                              else {"CPU": 1}),
                 run_config=RunConfig(storage_path=str((run_dir / "ray_train").resolve()),
                                      name=f"cache-{trial_id}")).fit()
