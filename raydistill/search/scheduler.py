"""EnergyParetoScheduler: Tune's FIFO scheduling plus early stopping of dominated trials.

A thin shell over `RungBook` (see rungs.py for the rule and its parameters): each result's
progress, dev quality (`quality`, with `quality_n` dev rows) and rung energy go to the book; a
trial the book calls beaten beyond noise at a rung is stopped. The rung energy is
`energy_rung_j`, the full view (every shared teacher artifact at its build cost, whoever built
it), with its stated error `energy_error_j` and `meter`: what a trial is compared on must not
depend on run order, so the objective's view (`energy_j`, marginal or amortized) is for the
searcher and the Pareto set, not for the rungs. Tested by driving these hooks with fake
trials, no cluster.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from raydistill.search.rungs import STOP, RungBook


class EnergyParetoScheduler(FIFOScheduler):
    def __init__(self, metric: str = "quality", energy_metric: str = "energy_rung_j",
                 progress_metric: str = "progress", rungs: Sequence[float] = (0.3, 0.6),
                 margin: float = 0.0, min_trials: int = 2, mode: str = "max",
                 min_spread: float = 0.0, confidence: float = 0.95) -> None:
        super().__init__()
        self._metric, self._mode = metric, mode
        self.energy_metric, self.progress_metric = energy_metric, progress_metric
        self.book = RungBook(rungs, margin, min_trials, (mode, "min"), min_spread=min_spread,
                             confidence=confidence)

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # metrics are set at construction; the searcher's list form is not ours

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        progress = result.get(self.progress_metric)
        if progress is None:
            return TrialScheduler.CONTINUE
        quality = float(result.get(self._metric, math.nan))
        energy = float(result.get(self.energy_metric, math.nan))
        n = result.get("quality_n")
        action = self.book.record(
            trial.trial_id, float(progress), quality, energy,
            quality_n=None if n is None or not math.isfinite(float(n)) else float(n),
            energy_error_j=float(result.get("energy_error_j") or 0.0),
            meter=str(result.get("meter") or ""),
            energy_independent_j=float(result.get("energy_independent_j") or 0.0))
        return TrialScheduler.STOP if action == STOP else TrialScheduler.CONTINUE

    def on_trial_error(self, tune_controller, trial) -> None:
        # Tune calls this before it requeues a failed trial for a retry (and for a final
        # failure, before on_trial_remove): without it the retry would skip every rung the
        # lost attempt had passed and never be judged there
        self.book.restart(trial.trial_id)

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        self.book.remove(trial.trial_id)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self.book.remove(trial.trial_id)

    def debug_string(self) -> str:
        stops = sum(1 for d in self.book.decisions if d[2] == STOP)
        return (f"EnergyParetoScheduler: rungs {self.book.rungs}, confidence "
                f"{self.book.confidence}, "
                f"{stops} stopped so far")
