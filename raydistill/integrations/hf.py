"""Hugging Face: a `TrainerCallback` that measures `train()` and `evaluate()` into a tracked run,
and the model card's `co2_eq_emissions` block from a run directory.

    with raydistill.track(out="runs/gkd") as run:
        trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, ...)
        EnergyCallback.attach(trainer, run, trial="gkd-a")
        trainer.train()

TRL's trainers are Trainers, so the same callback measures GKDTrainer, SFTTrainer or DPOTrainer.
`train()` is one `student_training` stage, `evaluate()` and `predict()` an `evaluation` stage
(both are inference over a data set; an evaluation during training pauses the training window,
so nothing is counted twice). No window outlives what it measures: `predict()` closes its
window (`on_predict`), an `evaluate()` after training opens no training window, and a `train()`
that raises closes its windows marked "train_error" (`attach` wraps `trainer.train`; a callback
passed as `callbacks=[...]` closes a window left open when the next `train()` begins, marked
"callback_error"; the run's finish and the process's exit close what is left). Every `logging_steps`
the energy so far and J per token so far go into the Trainer's logs, as `raydistill/...` keys,
so W&B, TensorBoard or MLflow plot them; the last training log carries the stage's figure once
the samplers have read past its end, the figure `results.parquet` will hold.

`attach` puts the callback first in the Trainer's list: reporting integrations (W&B, ...) are
callbacks too, and only those after it see the keys it adds. Passed as `callbacks=[...]`
instead, it comes after them: the figures then reach `trainer.state.log_history` and the console
but not those integrations.

On-policy trainers (TRL's `DistillationTrainer`, whose student generates its own completions
every step): `attach` wraps the trainer's `_generate` so that each generation during training is
a window of phase "rollout" inside the `student_training` window (it takes those seconds: the
update keeps the rest), carrying the prompt and completion tokens, the completions as generated.
The results table then says `rollout_j`, `rollout_tokens` and `rollout_j_per_token` of
`student_training` apart from its update (`work_j`). Other code that generates inside training
marks itself with `with cb.rollout() as r: ...; r.add_tokens(n, generated=g)`. A teacher
scoring those completions elsewhere (a server) is put in the ledger where it runs, as
`run.stage("teacher_scoring")` (examples/trl_onpolicy.py).

Tokens are counted by each rank itself, without a collective: a forward pre-hook on the model
adds the non-padding tokens (`attention_mask.sum()`, kept on the device) of every training
micro-batch (grad enabled: generation and evaluation run without), and the count is read when a
window closes or a log is written. A trainer that calls the model's backbone itself
(`DistillationTrainer` runs `model.base_model` and projects the hidden states in its loss) is
counted there: the backbone's hook counts a forward the top-level hook did not. Each rank's
window carries its own tokens and the stage is the union of the ranks' windows, so they add up.
The Trainer's `include_num_input_tokens_seen` (a gather and a host sync every micro-batch) is
left as the user set it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from raydistill.energy.lifetime import CALLBACK_ERROR, STAGE, STAGE_ERROR, TRAIN_ERROR

log = logging.getLogger(__name__)

PREFIX = "raydistill/"


class EnergyCallback(TrainerCallback):
    def __init__(self, run: Any = None, trial: str | None = None,
                 stage: str = "student_training", eval_stage: str = "evaluation",
                 count_tokens: str = "non_padding") -> None:
        """`run`: a started `raydistill.track(...)` (None: the one this process tracks).
        `count_tokens`: which tokens J/token divides by: "non_padding" (the attention mask's)
        or "all" (every input id, padding included)."""
        if count_tokens not in ("non_padding", "all"):
            raise ValueError(f"EnergyCallback count_tokens must be 'non_padding' or 'all', got "
                             f"{count_tokens!r}")
        self._run, self.trial = run, trial
        self.stage_name, self.eval_stage = stage, eval_stage
        self.count_tokens = count_tokens
        self._train = None  # the open training window, if any
        self._eval = None  # the open evaluation window, if any
        # evaluate()/predict() calls running (the wrapper counts them): their generation is
        # no training rollout, even before their evaluation window opens (first batch)
        self._evaluating = 0
        self._tokens_at_open = 0
        self._done_tokens = 0  # tokens of the training windows closed so far
        self._training = False
        self._counted = 0  # this rank's training tokens read back so far
        self._pending = None  # tokens counted on the device since, not read back yet
        self._hooked: set[int] = set()  # ids of the models the counting hook is on
        self._top_counted = False  # the model's own hook counted the forward now running
        self._world = 1  # ranks: the live J/token divides by this rank's tokens × ranks
        self.train_energy_j: float | None = None  # the stage's figure, once train() ends
        self.eval_energy_j: float | None = None

    @classmethod
    def attach(cls, trainer: Any, run: Any = None, trial: str | None = None,
               **kwargs: Any) -> EnergyCallback:
        """Make one and put it first in `trainer`'s callbacks (see the module doc)."""
        cb = cls(run, trial, **kwargs)
        trainer.callback_handler.callbacks.insert(0, cb)
        train = trainer.train

        @functools.wraps(train)
        def train_closing_on_error(*args: Any, **kw: Any) -> Any:
            # transformers calls no callback when train() raises (OOM, a bad batch, Ctrl-C)
            try:
                return train(*args, **kw)
            except BaseException:
                cb.end_windows(TRAIN_ERROR)
                raise

        trainer.train = train_closing_on_error
        for name in ("evaluate", "predict"):
            setattr(trainer, name, _closing_eval_on_error(cb, getattr(trainer, name)))
        if callable(getattr(trainer, "_generate", None)):  # TRL's on-policy trainers
            trainer._generate = _generating_as_rollout(cb, trainer._generate)
        return cb

    @contextlib.contextmanager
    def rollout(self) -> Iterator[Any]:
        """A "rollout" window of the training stage around the block while training runs (the
        block's generation is the update's input, not the update); outside training, or
        inside an evaluate()/predict() call during training, the block runs unmeasured here
        (an evaluation's generation is the evaluation's, not a rollout)."""
        if self._train is None or self._evaluating:
            yield None
            return
        with self.run.stage(self.stage_name, trial=self.trial, phase="rollout") as window:
            yield window

    @property
    def run(self) -> Any:
        if self._run is None:
            from raydistill.tracking import current_run

            self._run = current_run()
        return self._run

    # ---- the Trainer's events ----------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self._train is not None or self._eval is not None:  # an earlier train() raised
            log.warning("EnergyCallback: a window of an earlier train() was still open; closed "
                        "now, marked %r", CALLBACK_ERROR)
            self.end_windows(CALLBACK_ERROR)
        self._world = max(1, int(getattr(args, "world_size", 1) or 1))
        if model is not None:
            self._hook(model)
        self._training = True
        self._open_train(state)

    def end_eval(self, closed_by: str) -> None:
        """Close an evaluation window left open (an evaluate() or predict() that raised)."""
        if self._eval is not None:
            eval_stage, self._eval = self._eval, None
            eval_stage.close(closed_by)

    def end_windows(self, closed_by: str) -> None:
        """Close whatever window is open (training's, an evaluation's) marked `closed_by`:
        the path out of a train() that raised."""
        if self._eval is not None:
            eval_stage, self._eval = self._eval, None
            eval_stage.close(closed_by)
        self._close_train(state=None, closed_by=closed_by)
        self._training = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or not state.is_world_process_zero:
            self._close_if_done(state, logs)
            return
        final = self._close_if_done(state, logs)
        trial = self.trial or self.run.trial
        if final:
            energy = self.run.stage_energy_j(trial, self.stage_name, settle=True)
            self.train_energy_j = energy
            fields = {"train_energy_j": energy}
        elif self._train is not None:
            energy = self.run.stage_energy_j(trial, self.stage_name, settle=False)
            fields = {"energy_j": energy}
        else:
            return
        tokens = self._tokens_so_far() * self._world  # ranks train on equal shares of batches
        if tokens:
            fields["j_per_token" if not final else "train_j_per_token"] = energy / tokens
        prefixed = {PREFIX + k: v for k, v in fields.items()}
        logs.update(prefixed)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(prefixed)  # the Trainer copied logs before on_log

    def on_prediction_step(self, args, state, control, **kwargs):
        if self._eval is None:  # the first batch of an evaluate(): training pauses
            self._close_train(state)
            self._eval = self.run.stage(self.eval_stage, trial=self.trial)
            self._eval.__enter__()

    def on_predict(self, args, state, control, metrics=None, **kwargs):
        """predict() ends: its window (opened by its first batch) closes, as an evaluation."""
        self.on_evaluate(args, state, control, metrics=metrics, **kwargs)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self._eval is None:
            return
        self._eval.__exit__(None, None, None)
        self._eval = None
        if state.is_world_process_zero:
            trial = self.trial or self.run.trial
            self.eval_energy_j = self.run.stage_energy_j(trial, self.eval_stage, settle=True)
            if metrics is not None:
                metrics[PREFIX + "eval_energy_j"] = self.eval_energy_j
        if self._training:
            self._open_train(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._close_train(state)
        self._training = False

    # ---- tokens, counted on this rank without a collective ------------------------------------
    def _hook(self, model: Any) -> None:
        if id(model) in self._hooked:
            return
        model.register_forward_pre_hook(self._count, with_kwargs=True)
        model.register_forward_hook(self._top_done, always_call=True)  # also when it raises
        backbone = getattr(model, "base_model", None)
        if backbone is not None and backbone is not model and hasattr(
                backbone, "register_forward_pre_hook"):
            backbone.register_forward_pre_hook(self._count_backbone, with_kwargs=True)
        self._hooked.add(id(model))

    def _count(self, module: Any, args: tuple, kwargs: dict) -> None:
        self._top_counted = self._add_count(module, args, kwargs)

    def _top_done(self, module: Any, args: tuple, output: Any) -> None:
        self._top_counted = False

    def _count_backbone(self, module: Any, args: tuple, kwargs: dict) -> None:
        if not getattr(self, "_top_counted", False):  # a forward the model's hook missed
            self._add_count(module, args, kwargs)

    def _add_count(self, module: Any, args: tuple, kwargs: dict) -> bool:
        import torch

        if not (module.training and torch.is_grad_enabled()):  # generation, evaluation
            return False
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if self.count_tokens == "non_padding" and isinstance(mask, torch.Tensor) \
                and mask.dim() == 2:
            n = mask.sum()  # a device tensor: read back only when a window closes or logs
        elif isinstance(ids, torch.Tensor):
            n = ids.numel()
        else:  # called with something else (a loss routed through the model's forward)
            return False
        self._pending = n if self._pending is None else self._pending + n
        return True

    def _tokens(self) -> int:
        """This rank's training tokens so far (reads the device count back: one sync)."""
        if self._pending is not None:
            self._counted += int(self._pending)
            self._pending = None
        return self._counted

    # ---- windows -------------------------------------------------------------------------------
    def _open_train(self, state) -> None:
        self._train = self.run.stage(self.stage_name, trial=self.trial)
        self._train.__enter__()
        self._tokens_at_open = self._tokens()

    def _close_train(self, state, closed_by: str = STAGE) -> None:
        if self._train is None:
            return
        train, self._train = self._train, None
        train.add_tokens(self._tokens() - self._tokens_at_open)  # this rank's: its own window
        train.close(closed_by)
        self._done_tokens += train.tokens

    def _close_if_done(self, state, logs) -> bool:
        """The Trainer's last training log (the only one with train_loss, the mean over the run)
        comes after the last step: the training window closes there, so that log can carry the
        whole stage."""
        if logs is not None and "train_loss" in logs and self._train is not None:
            self._close_train(state)
            self._training = False
            return True
        return False

    def _tokens_so_far(self) -> int:
        open_part = self._tokens() - self._tokens_at_open if self._train is not None else 0
        return self._done_tokens + open_part


def _closing_eval_on_error(cb: EnergyCallback, method: Any) -> Any:
    """`trainer.evaluate` / `trainer.predict` that closes its evaluation window when it raises
    (transformers then calls neither on_evaluate nor on_predict), and marks the callback as
    evaluating while it runs (`rollout` books no generation of it)."""

    @functools.wraps(method)
    def closing(*args: Any, **kw: Any) -> Any:
        cb._evaluating += 1  # from the call on: no callback runs before its first generation
        try:
            return method(*args, **kw)
        except BaseException:
            cb.end_eval(STAGE_ERROR)
            raise
        finally:
            cb._evaluating -= 1

    return closing


def _generating_as_rollout(cb: EnergyCallback, generate: Any) -> Any:
    """TRL's `_generate(prompts)`, in a rollout window while training, its tokens counted:
    it returns (prompt_ids, completion_ids, ...), lists of token-id lists, completions the
    student wrote."""

    @functools.wraps(generate)
    def generating(*args: Any, **kw: Any) -> Any:
        with cb.rollout() as window:
            out = generate(*args, **kw)
            if window is not None:
                prompts, completions = out[0], out[1]
                generated = sum(len(c) for c in completions)
                window.add_tokens(sum(len(p) for p in prompts) + generated, generated=generated)
        return out

    return generating


def model_card_block(run_dir: str | Path, trial: str | None = None) -> dict:
    """The `co2_eq_emissions` dict `huggingface_hub.ModelCardData(co2_eq_emissions=...)` takes:
    emissions in grams CO2e of every stage of `trial` (default: the report's first Pareto
    trial), teacher side included, with the spec's fields only (`training_type` is
    "fine-tuning"; the distillation detail is in `source`)."""
    from raydistill.report.data import load_report_data
    from raydistill.report.exports import model_card_co2

    block = dict(model_card_co2(load_report_data(run_dir), trial)["co2_eq_emissions"])
    extra = {k: block.pop(k) for k in ("trial", "energy_kwh") if k in block}
    if extra:
        block["source"] = (f"{block['source']}; trial {extra.get('trial')}, "
                           f"{extra.get('energy_kwh', 0.0):.4g} kWh")
    return block
