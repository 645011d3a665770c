"""Hugging Face: a `TrainerCallback` that measures `train()` and `evaluate()` into a tracked run,
and the model card's `co2_eq_emissions` block from a run directory.

    with raydistill.track(out="runs/gkd") as run:
        trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, ...)
        EnergyCallback.attach(trainer, run, trial="gkd-a")
        trainer.train()

TRL's trainers are Trainers, so the same callback measures GKDTrainer, SFTTrainer or DPOTrainer.
`train()` is one `student_training` stage, `evaluate()` an `evaluation` stage (an evaluation
during training pauses the training window, so nothing is counted twice). Every `logging_steps`
the energy so far and J per token so far go into the Trainer's logs, as `raydistill/...` keys,
so W&B, TensorBoard or MLflow plot them; the last training log carries the stage's figure once
the samplers have read past its end, the figure `results.parquet` will hold.

`attach` puts the callback first in the Trainer's list: reporting integrations (W&B, ...) are
callbacks too, and only those after it see the keys it adds. Passed as `callbacks=[...]`
instead, it comes after them: the figures then reach `trainer.state.log_history` and the console
but not those integrations.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

log = logging.getLogger(__name__)

PREFIX = "raydistill/"


class EnergyCallback(TrainerCallback):
    def __init__(self, run: Any = None, trial: str | None = None,
                 stage: str = "student_training", eval_stage: str = "evaluation",
                 count_tokens: str = "non_padding") -> None:
        """`run`: a started `raydistill.track(...)` (None: the one this process tracks).
        `count_tokens`: how the Trainer counts the tokens J/token divides by ("non_padding" or
        "all"); it is switched on when the Trainer's own setting is "no"."""
        self._run, self.trial = run, trial
        self.stage_name, self.eval_stage = stage, eval_stage
        self.count_tokens = count_tokens
        self._train = None  # the open training window, if any
        self._eval = None  # the open evaluation window, if any
        self._tokens_at_open = 0
        self._done_tokens = 0  # tokens of the training windows closed so far
        self._training = False
        self.train_energy_j: float | None = None  # the stage's figure, once train() ends
        self.eval_energy_j: float | None = None

    @classmethod
    def attach(cls, trainer: Any, run: Any = None, trial: str | None = None,
               **kwargs: Any) -> EnergyCallback:
        """Make one and put it first in `trainer`'s callbacks (see the module doc)."""
        cb = cls(run, trial, **kwargs)
        cb.on_init_end(trainer.args, trainer.state, trainer.control)
        trainer.callback_handler.callbacks.insert(0, cb)
        return cb

    @property
    def run(self) -> Any:
        if self._run is None:
            from raydistill.tracking import current_run

            self._run = current_run()
        return self._run

    # ---- the Trainer's events ----------------------------------------------------------------
    def on_init_end(self, args, state, control, **kwargs):
        if args.include_num_input_tokens_seen in ("no", False):
            # J per token needs the tokens: the Trainer counts them when asked to
            args.include_num_input_tokens_seen = self.count_tokens
            log.info("EnergyCallback: counting %s input tokens for J/token", self.count_tokens)

    def on_train_begin(self, args, state, control, **kwargs):
        self._training = True
        self._open_train(state)

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
        tokens = self._tokens_so_far(state)
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

    # ---- windows -------------------------------------------------------------------------------
    def _open_train(self, state) -> None:
        self._train = self.run.stage(self.stage_name, trial=self.trial)
        self._train.__enter__()
        self._tokens_at_open = int(state.num_input_tokens_seen or 0)

    def _close_train(self, state) -> None:
        if self._train is None:
            return
        if state.is_world_process_zero:  # the count is every rank's: charged to one window
            self._train.add_tokens(int(state.num_input_tokens_seen or 0) - self._tokens_at_open)
        self._train.__exit__(None, None, None)
        self._done_tokens += self._train.tokens
        self._train = None

    def _close_if_done(self, state, logs) -> bool:
        """The Trainer's last training log (the only one with train_loss, the mean over the run)
        comes after the last step: the training window closes there, so that log can carry the
        whole stage."""
        if logs is not None and "train_loss" in logs and self._train is not None:
            self._close_train(state)
            self._training = False
            return True
        return False

    def _tokens_so_far(self, state) -> int:
        open_part = 0
        if self._train is not None:
            open_part = int(state.num_input_tokens_seen or 0) - self._tokens_at_open
        return self._done_tokens + open_part


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
