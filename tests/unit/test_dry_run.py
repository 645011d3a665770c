"""`raydistill run CONFIG --dry-run`: the resolved plan, the tokenizer check and the per-GPU
memory estimate, from model directories holding only a config.json (as a hub snapshot of the
architecture would), without running anything."""

import json

import pytest

from raydistill.cli import main

# The published architectures (config.json fields) of the Llama config's two models.
from tests.unit.test_memory_estimate import LLAMA_31_8B as LLAMA_8B
from tests.unit.test_memory_estimate import LLAMA_32_1B as LLAMA_1B


@pytest.fixture
def arch_dirs(tmp_path):
    dirs = {}
    for name, cfg in (("teacher", LLAMA_8B), ("student", LLAMA_1B)):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(cfg))
        dirs[name] = d
    return dirs


def dry(arch_dirs, capsys, *sets):
    argv = ["run", "configs/llama-3.1-8b-to-3.2-1b.yaml", "--dry-run",
            "--set", f"teacher.model={arch_dirs['teacher']}",
            "--set", f"student.model={arch_dirs['student']}"]
    argv += [a for s in sets for a in ("--set", s)]
    code = main(argv)
    return code, capsys.readouterr().out


def test_the_llama_config_fits_with_the_teacher_sharded_eight_ways(arch_dirs, capsys):
    code, out = dry(arch_dirs, capsys)
    assert code == 0, out
    assert "8 training worker(s), deepspeed ZeRO-3" in out
    assert "tokenizers: not checked here" in out  # the directories hold no tokenizer
    assert "training worker (x8 GPUs)" in out and "teacher weights" in out
    assert "does NOT fit" not in out


def test_a_teacher_copy_per_gpu_does_not_fit_and_the_advice_says_why(arch_dirs, capsys):
    code, out = dry(arch_dirs, capsys, "distill.online_teacher=replicated",
                    "distill.zero_stage=0", "training.gradient_checkpointing=false",
                    "student.batch_size=64", "training.grad_accum=1",
                    "training.max_seq_len=2048")
    assert code == 3
    assert "does NOT fit" in out and "largest line is" in out


def test_hub_models_not_in_the_cache_are_said_so_not_guessed(capsys):
    # neither in the hub cache nor in raydistill's table of published architectures
    code = main(["run", "configs/qwen2.5-1.5b-to-0.5b.yaml", "--dry-run",
                 "--set", "student.model=someone/Unpublished-0.5B"])
    out = capsys.readouterr().out
    assert code == 0
    assert "is not in the local hub cache" in out and "memory estimate: skipped" in out
