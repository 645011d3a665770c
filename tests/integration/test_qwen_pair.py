"""The checkpoints people distil, on the real Qwen tokenizer: an Instruct teacher with a
152,064-row output layer (as Qwen2.5-7B) teaches a base student with 151,936 rows (as
Qwen2.5-0.5B) over one 151,665-token tokenizer, in bf16, through `raydistill run`: once from a
top-k cache the HF engine writes (chunked, over the tokenizer's rows), once with the teacher
online (dense KD over the full shared vocabulary). Before issue 26 the dense run stopped on the
row mismatch, the cache could hold padded rows, bf16 ran as fp32 on CPU and the base student's
targets ended with the teacher's <|im_end|>."""

import json
from pathlib import Path

import pytest

from raydistill.cli import main
from raydistill.distill.logit_cache import read_cache

pytestmark = [pytest.mark.slow, pytest.mark.shares_ray]

TOKENIZER_ROWS = 151_665
SIZE = [
    "teacher.model=local:qwen2.5-instruct-teacher", "teacher.steps=0",
    "student.model=local:qwen2.5-base-student", "student.steps=2", "student.batch_size=4",
    "data.splits={test: 4, dev: 4, labelled: 8, train: 8}", "data.max_prompt_tokens=48",
    "data.max_response_tokens=8", "training.max_seq_len=64", "training.precision=bf16",
    "training.checkpoint_every=0", "distill.num_workers=1", "distill.zero_stage=2",
    "generation.engine=hf", "generation.max_new_tokens=8", "generation.batch_size=8",
    "evaluation.lm_eval=false", "evaluation.inference_prompts=2",
    "evaluation.inference_min_s=0.1", "sampling.source=constant:40", "sampling.hz=20",
    "sampling.push_interval_s=0.5", "sampling.idle_s=0", "baseline=false",
]


def _run(root: Path, name: str, *sets: str) -> tuple[int, Path]:
    argv = ["run", "configs/local-chat.yaml", "--artifacts", str(root / "artifacts"),
            "--out", str(root / name)]
    for s in [*SIZE, *sets]:
        argv += ["--set", s]
    return main(argv), root / name


def _train_metrics(run_dir: Path) -> dict:
    (path,) = run_dir.glob("students/*/train_metrics.json")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def root(tmp_path_factory, shared_ray):
    return tmp_path_factory.mktemp("qwen-pair")


def test_cached_top_k_over_the_tokenizers_rows(root):
    code, run_dir = _run(root, "cached", "distill.top_k=16")
    assert code == 0
    m = _train_metrics(run_dir)
    assert m["precision"] == "bf16" and m["steps_run"] == 2
    (cache,) = (root / "artifacts").glob("logit_cache/*")
    rows = read_cache(cache)
    assert rows
    top = max(int(r["indices"].max()) for r in rows.values())
    assert top < TOKENIZER_ROWS  # never one of the teacher's padded rows



def test_dense_online_kd_across_padded_output_layers(root):
    code, run_dir = _run(root, "online", "distill.top_k=0")
    assert code == 0
    m = _train_metrics(run_dir)
    assert m["precision"] == "bf16" and m["steps_run"] == 2
    assert m["final_loss"] == m["final_loss"]  # finite, not NaN
    assert m["teacher_sharding"] in ("zero3", "replicated")
