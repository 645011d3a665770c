"""Batches and the recipe's pure pieces: the loss reads exactly the response positions, the
teacher's targets land on the student's positions whatever the two templates are, and the LR
schedule warms up and decays as configured."""

import math
from itertools import pairwise

import pytest
import torch

from raydistill.distill.batches import align, cached_topk, pad_batch, teacher_index
from raydistill.distill.engine import lr_factor, student_ds_config


def ex(prompt: list[int], response: list[int], t_prompt: list[int] | None = None) -> dict:
    e = {"input_ids": [*prompt, *response], "prompt_len": len(prompt)}
    if t_prompt is not None:
        e.update(teacher_input_ids=[*t_prompt, *response], teacher_prompt_len=len(t_prompt))
    return e


def test_mask_covers_the_positions_that_predict_the_response_and_its_eos():
    b = pad_batch([ex([5, 6, 7], [8, 9, 2]), ex([5], [4, 2])], pad_id=0)
    assert b["mask"].tolist() == [[False, False, True, True, True, False],
                                  [True, True, False, False, False, False]]
    picked = b["targets"][b["mask"]].tolist()
    assert picked == [8, 9, 2, 4, 2]  # every response token and EOS, nothing of the prompt
    assert b["attention_mask"].sum().item() == 6 + 3


def test_cached_topk_sits_at_the_response_positions():
    e = ex([5, 6, 7], [8, 2])
    e.update(logprobs=torch.tensor([[-0.1, -2.0], [-0.2, -3.0]]),
             indices=torch.tensor([[8, 3], [2, 4]]), tail=torch.tensor([-5.0, -6.0]))
    top = cached_topk([e], width=5)
    assert top.indices[0, 2].tolist() == [8, 3] and top.indices[0, 3].tolist() == [2, 4]
    assert top.logprobs[0, :2].max() < -1e3  # no mass where the loss does not read


def test_teacher_positions_map_onto_the_students_when_templates_differ():
    a = ex([1, 2], [7, 8, 2], t_prompt=[9, 9, 9, 9])  # the teacher's template is longer
    b = ex([1, 2, 3], [6, 2], t_prompt=[9, 9])
    width = 5
    index = teacher_index([a, b], width)
    tb = pad_batch([a, b], 0, "teacher_input_ids", "teacher_prompt_len")
    sb = pad_batch([a, b], 0)
    # a tensor whose value at each teacher position is the token that position predicts
    t_targets = tb["targets"].float().unsqueeze(-1)
    moved = align(t_targets, index, width).squeeze(-1)
    assert torch.equal(moved[sb["mask"]], sb["targets"][sb["mask"]].float())
    same = [ex([1, 2], [7, 2], t_prompt=[3, 4])]
    assert teacher_index(same, 4) is None  # one template: positions already agree


def test_lr_warms_up_then_decays_to_the_floor():
    total, warm = 100, 0.1
    lrs = [lr_factor(s, total, warm, "cosine", 0.1) for s in range(total)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(x >= y - 1e-12 for x, y in pairwise(lrs[10:]))
    assert lrs[-1] == pytest.approx(0.1, abs=0.01)
    assert lr_factor(50, total, 0.0, "constant", 0.1) == 1.0
    assert lr_factor(100, total, 0.0, "linear", 0.0) == pytest.approx(0.0)
    assert math.isclose(lr_factor(55, total, 0.1, "cosine", 0.0), 0.5, abs_tol=1e-9)


@pytest.mark.parametrize(("precision", "section"), [("bf16", "bf16"), ("fp16", "fp16"),
                                                    ("fp32", None)])
def test_precision_goes_through_deepspeeds_own_sections(precision, section):
    cfg = {"grad_accum": 4, "zero_stage": 3, "clip_norm": 1.0}
    ds = student_ds_config(cfg, micro_batch=2, precision=precision)
    assert ds["gradient_accumulation_steps"] == 4 and ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_clipping"] == 1.0 and ds["zero_optimization"]["stage"] == 3
    for s in ("bf16", "fp16"):
        assert (s in ds) == (s == section)
