"""EnergyCallback without a cluster: training tokens counted once whether a trainer calls the
model or its backbone (TRL's DistillationTrainer runs `model.base_model` inside a forward routed
through the model with non-tensor arguments), and TRL's `_generate` wrapped as a rollout whose
tokens are its prompts and completions, only while a training window is open."""

import contextlib

import torch
from torch import nn

from raydistill.integrations.hf import EnergyCallback, _generating_as_rollout


class Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)

    def forward(self, input_ids, attention_mask=None):
        return self.emb(input_ids)


class LM(nn.Module):
    """A causal LM's shape: `base_model` is the backbone, `forward` calls it."""

    def __init__(self) -> None:
        super().__init__()
        self.model = Backbone()

    @property
    def base_model(self) -> nn.Module:
        return self.model

    def forward(self, input_ids=None, attention_mask=None, fn=None, *args):
        if fn is not None:  # TRL's _ForwardRedirection: the loss routed through forward
            return fn(*args)
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


def batch(rows: int, cols: int, pad: int = 0):
    ids = torch.ones(rows, cols, dtype=torch.long)
    mask = torch.ones(rows, cols, dtype=torch.long)
    if pad:
        mask[0, :pad] = 0
    return ids, mask


def test_model_forward_counts_once_not_again_in_its_backbone():
    cb, lm = EnergyCallback(run=object()), LM()
    cb._hook(lm)
    lm.train()
    ids, mask = batch(2, 5, pad=2)
    lm(input_ids=ids, attention_mask=mask)
    assert cb._tokens() == 8  # non-padding, counted by the model's hook only
    with torch.no_grad():  # generation, evaluation: not training tokens
        lm(input_ids=ids, attention_mask=mask)
    assert cb._tokens() == 8


def test_backbone_called_inside_a_redirected_forward_is_counted():
    cb, lm = EnergyCallback(run=object()), LM()
    cb._hook(lm)
    lm.train()
    ids, mask = batch(3, 4)
    # as TRL routes its loss: the model's own hook sees (model, inputs, fn) and must neither
    # crash nor count
    lm(lm, {"prompt_ids": ids}, lambda: lm.base_model(input_ids=ids, attention_mask=mask))
    assert cb._tokens() == 12
    lm(input_ids=ids, attention_mask=mask)  # and a plain forward after it still counts once
    assert cb._tokens() == 24


class FakeWindow:
    def __init__(self) -> None:
        self.added: list[tuple[int, int]] = []

    def add_tokens(self, n: int, generated: int = 0) -> None:
        self.added.append((n, generated))


class FakeCallback:
    def __init__(self, training: bool) -> None:
        self.training, self.window = training, FakeWindow()

    @contextlib.contextmanager
    def rollout(self):
        yield self.window if self.training else None


def test_generate_is_a_rollout_with_its_prompt_and_completion_tokens():
    out = ([[1, 2, 3], [4, 5]], [[6, 7], [8, 9, 10, 11]], None, None, [])
    cb = FakeCallback(training=True)
    wrapped = _generating_as_rollout(cb, lambda prompts: out)
    assert wrapped(["a", "b"]) is out
    assert cb.window.added == [(5 + 6, 6)]
    idle = FakeCallback(training=False)  # outside training: no window, nothing counted
    assert _generating_as_rollout(idle, lambda prompts: out)(["a"]) is out
    assert idle.window.added == []


def test_rollout_outside_training_opens_no_window():
    cb = EnergyCallback(run=object())
    with cb.rollout() as window:
        assert window is None


def test_an_evaluation_inside_training_is_no_rollout():
    # the bug: with the training window open, an in-training evaluate()'s first generation
    # (before its evaluation window opens) was booked as a training rollout
    from raydistill.integrations.hf import _closing_eval_on_error

    opened = []

    class Run:
        @contextlib.contextmanager
        def stage(self, name, trial=None, phase="work"):
            opened.append(phase)
            yield FakeWindow()

    cb = EnergyCallback(run=Run(), trial="t")
    cb._train = object()  # training: its window is open

    def evaluate():
        with cb.rollout() as window:  # a generating evaluation (TRL's _generate)
            return window

    assert _closing_eval_on_error(cb, evaluate)() is None and opened == []
    with cb.rollout() as window:  # training again: a rollout
        assert window is not None and opened == ["rollout"]
    cb.end_eval = lambda closed_by: None

    def failing():
        raise ValueError("bad batch")

    with contextlib.suppress(ValueError):
        _closing_eval_on_error(cb, failing)()
    assert cb._evaluating == 0  # a raising evaluation leaves the flag as it was
