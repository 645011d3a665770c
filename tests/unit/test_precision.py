"""Training below fp32, in one process on this CPU (it has AVX-512 bf16): the precision named is
the precision that trains, the optimizer steps fp32 master weights, the saved student is written
in the dtype it computed in, and the reload check compares like with like yet still catches a
save that missed parameters."""

import json

import pytest
import torch

from raydistill.distill import engine as eng
from raydistill.distill.student_out import (
    _check_reload,
    probe_logits,
    progress,
    progress_gathered,
    save_weights,
)
from raydistill.distill.tiny import build_tiny, make_tokenizer
from raydistill.distill.train import StudentModule, _backward, _optimizer_step

TINY = {"family": "qwen2", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 2}


def _examples(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = 6 + i % 5
        ids = torch.randint(3, 250, (length,), generator=g).tolist()
        out.append({"input_ids": ids, "prompt_len": 3})
    return out


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU behaviour")
@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_a_named_precision_trains_on_cpu_and_auto_stays_fp32(precision):
    # the old code replaced bf16/fp16 by fp32 on CPU, and metrics.json then said fp32
    assert eng.resolve_precision(precision) == precision
    assert eng.resolve_precision("auto") == "fp32"


def test_student_from_a_bf16_checkpoint_is_loaded_in_fp32(tmp_path):
    """A hub bf16 checkpoint (as Qwen2.5's) must not train pure-bf16: its weights load fp32."""
    from raydistill.distill.models import build_student_model

    tok = make_tokenizer()
    tok.save_pretrained(tmp_path)
    build_tiny(TINY, len(tok), 0).to(torch.bfloat16).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    model, _ = build_student_model({"student": {"model": str(tmp_path)},
                                    "student_path": str(tmp_path), "seed": 0})
    assert {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16),
                                                  ("fp16", torch.float16)])
def test_ddp_trains_in_low_precision_on_fp32_master_weights(precision, dtype):
    """The DDP engine's forward computes in bf16/fp16 (autocast) while its parameters and
    AdamW's state stay fp32; fp16 goes through a GradScaler; the loss goes down."""
    student = build_tiny(TINY, 259, 0)
    module = StudentModule(student, None)
    module.grad_scaler = eng.autocast_forward(module, precision, "cpu")
    assert (module.grad_scaler is not None) == (precision == "fp16")
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    cfg = {"engine": "ddp", "grad_accum": 2, "clip_norm": 1.0}
    from raydistill.distill.batches import pad_batch

    batches = [pad_batch(_examples(4, seed), 0) for seed in (1, 2)]
    losses = []
    for _ in range(8):
        for b in batches:
            logits, _ = module(b["input_ids"], b["attention_mask"])
            assert logits.dtype == dtype  # computed in the low precision
            loss = torch.nn.functional.cross_entropy(logits.float()[b["mask"]],
                                                     b["targets"][b["mask"]])
            _backward(module, loss, cfg)
            losses.append(float(loss))
        _optimizer_step(module, module, optimizer, scheduler, cfg)
    assert {p.dtype for p in module.parameters()} == {torch.float32}
    state = [s for s in optimizer.state.values() if s]
    assert state and {s["exp_avg"].dtype for s in state} == {torch.float32}
    assert {s["exp_avg_sq"].dtype for s in state} == {torch.float32}
    assert sum(losses[-2:]) < sum(losses[:2])


def _trained_like(precision: str):
    """(student, engine-like module) as each engine holds them after training: DeepSpeed a
    module cast to the compute dtype, DDP fp32 weights behind an autocast forward."""
    student = build_tiny(TINY, 259, 0)
    with torch.no_grad():  # away from the init, as a trained model is
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    module = StudentModule(student, None)
    if precision.startswith("ddp-"):
        eng.autocast_forward(module, precision.removeprefix("ddp-"), "cpu")
    else:  # what deepspeed.initialize does to the module, and _wrap after it
        buffers = eng.fp32_buffers(module)
        module.to(eng.dtype_of(precision))
        eng.restore_buffers(module, buffers)
    return student, module


@pytest.mark.parametrize("precision", ["bf16", "fp16", "ddp-bf16", "ddp-fp16", "fp32"])
def test_reload_check_passes_a_whole_low_precision_save(precision, tmp_path):
    """The old check compared a bf16 forward with a float32 reload against 1e-3 of the scale,
    so every bf16 run failed after its last step."""
    from safetensors.torch import load_file

    student, module = _trained_like(precision)
    probe = probe_logits(module, _examples(4), 0, "cpu")
    compute = torch.float32 if precision == "fp32" else \
        eng.dtype_of(precision.removeprefix("ddp-"))
    assert probe["logits"].dtype == compute  # the engine's own dtype, not a float32 copy
    saved = save_weights(student, student.state_dict(), tmp_path,
                         precision.removeprefix("ddp-"))
    assert saved == compute
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == \
        str(compute).removeprefix("torch.")
    weights = load_file(tmp_path / "model.safetensors")
    assert {v.dtype for v in weights.values()} == {compute}
    diff = _check_reload(tmp_path, probe)
    if precision in ("bf16", "fp16"):
        assert diff == 0.0  # same weights, same dtype, same kernels (RoPE's buffer kept fp32)


@pytest.mark.parametrize("precision", ["bf16", "ddp-bf16", "fp32"])
def test_reload_check_catches_a_save_that_missed_a_layer(precision, tmp_path):
    student, module = _trained_like(precision)
    probe = probe_logits(module, _examples(4), 0, "cpu")
    state = {k: v for k, v in student.state_dict().items() if ".layers.1." not in k}
    save_weights(student, state, tmp_path, precision.removeprefix("ddp-"))
    with pytest.raises(RuntimeError, match="missed parameters"):
        _check_reload(tmp_path, probe)


def test_dev_check_on_one_worker_gives_the_rank0_figure(tmp_path):
    """progress_gathered (every rank scores its slice, counts summed) gives, on one worker,
    the figure rank 0 alone gave."""
    rows = [{"messages": [{"role": "user", "content": f"{a}+{a}="}], "response": str(2 * a)}
            for a in range(12)]
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = make_tokenizer()
    student = build_tiny(TINY, len(tok), 0)
    cfg = {"dev_path": str(dev), "dev_n": 12, "max_new_tokens": 3, "max_prompt_tokens": 16,
           "engine": "ddp", "zero_stage": 0, "precision": "bf16", "steps": 4,
           "out_dir": str(tmp_path / "a")}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        progress(student, tok, cfg, 2, 1.0)
    progress_gathered(StudentModule(student, None), tok, {**cfg, "out_dir": str(tmp_path / "b")},
                      2, 1.0, 0)
    a, b = ((tmp_path / d / "progress.jsonl").read_text() for d in "ab")
    assert json.loads(a)["quality"] == json.loads(b)["quality"]
    assert json.loads(b)["quality"] is not None and json.loads(b)["dev_rows"] == 12
