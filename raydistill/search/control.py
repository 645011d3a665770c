"""The sweep's control actor and budget stopper: the driver-side state trials consult.

`SweepControl` (a named actor in the sweep's namespace) holds the energy budget and the
forecaster. Before a trial spends anything it asks `admit`: the forecast of the trial (from
finished trials, teacher artifacts already built counted as free) must fit in what the budget has
left, where "spent" is read from the ledger, not from what trials claimed. `BudgetStopper` is the
Tune stopper that ends a trial passing its own budget. A refused trial ends admission (every
later one is refused at once, spending nothing); the trials already admitted run to their end.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import ray
from ray.tune.stopper import Stopper

from raydistill.search.budget import BudgetTracker
from raydistill.search.forecast import Forecaster, forecast_error

log = logging.getLogger(__name__)

CONTROL_NAME = "sweep-control"


class SweepControl:
    def __init__(self, namespace: str, total_j: float | None, trial_j: float | None,
                 history_path: str | None = None) -> None:
        from raydistill.cluster.ledger_actor import get_ledger

        self.ledger = get_ledger(namespace)
        self.budget = BudgetTracker(total_j, trial_j)
        self.forecaster = Forecaster()
        self.forecasts: dict[str, dict] = {}  # ledger trial -> {"before": J, "profile": J}
        self.consumers: dict[str, set[str]] = {}
        self.refused: list[str] = []
        self.stopped: dict[str, str] = {}
        self.history_path = Path(history_path) if history_path else None
        for rec in self._history():  # a resumed sweep learns from the trials already finished
            self.forecaster.add_finished(rec["params"], rec["stage_energy_j"], rec["units"])
            self.forecasts[rec["ledger_trial"]] = rec["forecast"]

    def _history(self) -> list[dict]:
        if self.history_path is None or not self.history_path.exists():
            return []
        out = []
        for line in self.history_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a killed driver
                log.warning("history: skipping a damaged line in %s", self.history_path)
        return out

    def spent_j(self) -> float:
        rows = ray.get(self.ledger.energy_rows.remote())
        return float(sum(r["energy_j"] for r in rows))

    def _predict(self, params: dict, units: dict, reused: list[str]) -> dict[str, float]:
        return self.forecaster.predict(params, units, set(reused)) or {}

    def admit(self, trial: str, ledger_trial: str, params: dict, units: dict,
              reused: list[str]) -> dict:
        stages = self._predict(params, units, reused)
        forecast = float(sum(stages.values())) if stages else None
        self.forecasts[ledger_trial] = {"before": forecast}
        self.budget.spent_j = self.spent_j()
        ok, reason = self.budget.admit(trial, forecast or 0.0)
        if not ok:
            self.refused.append(trial)
        return {"ok": ok, "reason": reason, "forecast_j": forecast}

    def consume(self, trial: str, artifact_keys: list[str]) -> dict[str, int]:
        for key in artifact_keys:
            self.consumers.setdefault(key, set()).add(trial)
        return {key: len(self.consumers[key]) for key in artifact_keys}

    def profile_forecast(self, ledger_trial: str, params: dict, units: dict,
                         done_j: dict[str, float], student_j: float) -> float:
        """After the first steps: finished stages as measured, student training from its own
        profile, evaluation from history (0 when no trial has finished yet)."""
        prior = self._predict(params, units, [])
        total = sum(v for s, v in done_j.items() if s not in ("student_training", "evaluation"))
        total += student_j + prior.get("evaluation", 0.0)
        self.forecasts.setdefault(ledger_trial, {})["profile"] = total
        return total

    def finished(self, trial: str, ledger_trial: str, params: dict, units: dict,
                 stage_energy_j: dict[str, float], final: dict) -> None:
        used = {s: v for s, v in stage_energy_j.items() if not s.startswith("inference_")}
        self.forecaster.add_finished(params, used, units)
        self.budget.record(ledger_trial, sum(used.values()), "finished")
        actual = sum(used.values())
        rec = self.forecasts.setdefault(ledger_trial, {})
        rec["actual"] = actual
        for key in ("before", "profile"):
            if rec.get(key) is not None:
                rec[f"{key}_error"] = forecast_error(rec[key], actual)
        if self.history_path is not None:  # appended whole, one line per finished trial
            line = json.dumps({"trial": trial, "ledger_trial": ledger_trial, "params": params,
                               "units": units, "stage_energy_j": used, "forecast": rec},
                              default=str)
            with open(self.history_path, "a") as fh:
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())

    def note_stop(self, trial: str, why: str) -> None:
        self.stopped[trial] = why

    def report(self) -> dict:
        return {"forecasts": self.forecasts, "refused": self.refused, "stopped": self.stopped,
                "consumers": {k: sorted(v) for k, v in self.consumers.items()},
                "budget": self.budget.summary()}


def start_control(namespace: str, total_j: float | None, trial_j: float | None,
                  history_path: str | None = None):
    from raydistill.cluster.runtime import on_driver_node

    actor = ray.remote(num_cpus=0)(SweepControl)
    # on the driver's node: its state (forecasts, artifact consumers) must outlive a worker node
    return actor.options(name=CONTROL_NAME, namespace=namespace, get_if_exists=False,
                         scheduling_strategy=on_driver_node()).remote(
        namespace, total_j, trial_j, history_path)


class BudgetStopper(Stopper):
    """Tune stopper: a trial past its own budget stops. A refusal does not stop the sweep's
    running trials (`stop_all` stays False): admission is closed in the control actor, so the
    trials Tune still starts are refused before they spend anything."""

    def __init__(self, namespace: str, trial_j: float | None) -> None:
        # the control actor is looked up by name, never held: Tune pickles its stopper into the
        # experiment state, and a resumed sweep runs on a new cluster with a new control actor
        self.namespace = namespace
        self.trial_j = trial_j

    def __call__(self, trial_id: str, result: dict) -> bool:
        if result.get("status") == "stopped_by_budget":
            return True  # a refused trial's only result: it is done
        spent = result.get("energy_marginal_j", 0.0)
        if self.trial_j is not None and math.isfinite(spent) and spent > self.trial_j:
            log.warning("trial %s passed its budget: %.1f J > %.1f J", trial_id, spent,
                        self.trial_j)
            control = ray.get_actor(CONTROL_NAME, namespace=self.namespace)
            ray.get(control.note_stop.remote(trial_id, "stopped_by_budget"))
            return True
        return False

    def stop_all(self) -> bool:
        return False
