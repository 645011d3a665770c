"""The sweep's control actor and budget stopper: the driver-side state trials consult.

`SweepControl` (a named actor in the sweep's namespace) holds the energy budget and the
forecaster. Before a trial spends anything it asks `admit`: the forecast of the trial (from
finished trials, teacher artifacts already built counted as free; before any has finished, a
stated prior, the trial cap or an even split of the budget: `forecast.admission_forecast`) must
fit in what the budget has left after the running trials' reservations, where "spent" and each
running trial's use are read from the ledger, not from what trials claimed. A refused trial ends
admission (every later one is refused at once, spending nothing); the trials already admitted
run on. `BudgetStopper` is the Tune stopper that ends a trial passing its own budget, and every
running trial once the sweep's budget is spent (they are marked, their energy kept as waste).
`ReleaseCallback` frees a trial's reservation when Tune ends it, however it ended.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import ray
from ray.tune import Callback
from ray.tune.stopper import Stopper

from raydistill.search.budget import BudgetTracker
from raydistill.search.forecast import Forecaster, admission_forecast, forecast_error

log = logging.getLogger(__name__)

CONTROL_NAME = "sweep-control"
SPENT_TTL_S = 2.0  # how stale the sweep's spent figure may be when the stopper asks


class SweepControl:
    def __init__(self, namespace: str, total_j: float | None, trial_j: float | None,
                 history_path: str | None = None, prior_trial_j: float | None = None,
                 n_trials: int = 1) -> None:
        from raydistill.cluster.ledger_actor import get_ledger

        self.ledger = get_ledger(namespace)
        self.budget = BudgetTracker(total_j, trial_j)
        self.prior_trial_j, self.n_trials = prior_trial_j, n_trials
        self.ledger_of: dict[str, str] = {}  # Tune trial -> its running ledger attempt
        self.n_finished = 0
        self._spent_at = -math.inf
        self.forecaster = Forecaster()
        # ledger trial -> its forecasts ("before", "source", "profile"), what admission saw
        # ("spent_at_admission_j", "reserved_at_admission_j", "admitted") and, once finished,
        # "actual", the errors and its finishing "order"
        self.forecasts: dict[str, dict] = {}
        self.consumers: dict[str, set[str]] = {}
        self.refused: list[str] = []
        self.stopped: dict[str, str] = {}
        self.history_path = Path(history_path) if history_path else None
        for rec in self._history():  # a resumed sweep learns from the trials already finished
            self.forecaster.add_finished(rec["params"], rec["stage_energy_j"], rec["units"])
            self.forecasts[rec["ledger_trial"]] = rec["forecast"]
            self.n_finished = max(self.n_finished, rec["forecast"].get("order") or 0)

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
        """Everything the sweep's ledger holds (setup, every trial, waste)."""
        rows = ray.get(self.ledger.energy_rows.remote())
        self._spent_at = time.monotonic()
        return float(sum(r["energy_j"] for r in rows))

    def _running_use_j(self) -> dict[str, float]:
        """What each running (reserved) trial has used so far, by per-trial ledger queries."""
        ids = {t: self.ledger_of[t] for t in self.budget.reserved if t in self.ledger_of}
        if not ids:
            return {}
        used = ray.get(self.ledger.trial_energy.remote(list(ids.values())))
        return {t: sum(used.get(lt, {}).values()) for t, lt in ids.items()}

    def _predict(self, params: dict, units: dict, reused: list[str]) -> dict[str, float]:
        return self.forecaster.predict(params, units, set(reused)) or {}

    def admit(self, trial: str, ledger_trial: str, params: dict, units: dict,
              reused: list[str]) -> dict:
        stages = self._predict(params, units, reused)
        forecast, source = admission_forecast(
            float(sum(stages.values())) if stages else None, self.prior_trial_j,
            self.budget.trial_j, self.budget.total_j, self.n_trials)
        self.budget.spent_j = self.spent_j()
        used = self._running_use_j()
        rec = self.forecasts[ledger_trial] = {
            "before": forecast, "source": source, "trial": trial,
            "spent_at_admission_j": self.budget.spent_j,
            "reserved_at_admission_j": self.budget.reserved_j(used)}
        ok, reason = self.budget.admit(trial, forecast or 0.0, used)
        rec["admitted"] = ok
        if ok:
            self.ledger_of[trial] = ledger_trial
        else:
            self.refused.append(trial)
        return {"ok": ok, "reason": reason, "forecast_j": forecast, "forecast_source": source}

    def over_budget(self) -> bool:
        """Whether the sweep budget is spent (re-read from the ledger at most every
        SPENT_TTL_S): if so, admission closes and the stopper ends the running trials."""
        if self.budget.total_j is None:
            return False
        if time.monotonic() - self._spent_at > SPENT_TTL_S:
            self.budget.spent_j = self.spent_j()
        if self.budget.exhausted:
            self.budget.close(f"the sweep budget was spent ({self.budget.spent_j:,.1f} J of "
                              f"{self.budget.total_j:,.1f} J)")
            return True
        return False

    def release(self, trial: str) -> None:
        """A trial ended (finished, stopped or failed): its reservation is freed."""
        self.budget.release(trial)
        self.ledger_of.pop(trial, None)

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
        rec = self.forecasts.setdefault(ledger_trial, {})
        rec["profile"] = total
        if rec.get("trial") is not None:  # what the trial holds back from others from now on
            self.budget.reserve(rec["trial"], total)
        return total

    def finished(self, trial: str, ledger_trial: str, params: dict, units: dict,
                 stage_energy_j: dict[str, float], final: dict) -> None:
        used = {s: v for s, v in stage_energy_j.items() if not s.startswith("inference_")}
        self.forecaster.add_finished(params, used, units)
        self.budget.record(ledger_trial, sum(used.values()), "finished")
        actual = sum(used.values())
        rec = self.forecasts.setdefault(ledger_trial, {})
        rec["actual"] = actual
        self.n_finished += 1
        rec["order"] = self.n_finished  # finishing order: the forecast score starts at the 4th
        self.release(trial)
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
                  history_path: str | None = None, prior_trial_j: float | None = None,
                  n_trials: int = 1):
    from raydistill.cluster.environment import on_driver_node

    actor = ray.remote(num_cpus=0)(SweepControl)
    # on the driver's node: its state (forecasts, artifact consumers) must outlive a worker node
    return actor.options(name=CONTROL_NAME, namespace=namespace, get_if_exists=False,
                         scheduling_strategy=on_driver_node()).remote(
        namespace, total_j, trial_j, history_path, prior_trial_j, n_trials)


class BudgetStopper(Stopper):
    """Tune stopper: a trial past its own budget stops, and so does every running trial once the
    sweep's budget is spent (the control actor then closes admission too). A refusal alone does
    not stop the running trials (`stop_all` stays False): they were admitted with reservations
    for what they need, and the trials Tune still starts are refused before they spend."""

    def __init__(self, namespace: str, trial_j: float | None,
                 total_j: float | None = None) -> None:
        # the control actor is looked up by name, never held: Tune pickles its stopper into the
        # experiment state, and a resumed sweep runs on a new cluster with a new control actor
        self.namespace = namespace
        self.trial_j = trial_j
        self.total_j = total_j

    def _control(self):
        return ray.get_actor(CONTROL_NAME, namespace=self.namespace)

    def __call__(self, trial_id: str, result: dict) -> bool:
        status = result.get("status")
        if status == "stopped_by_budget":
            return True  # a refused trial's only result: it is done
        if status == "finished":
            return False  # its last result: nothing left to stop
        spent = result.get("energy_marginal_j", 0.0)
        if self.trial_j is not None and math.isfinite(spent) and spent > self.trial_j:
            log.warning("trial %s passed its budget: %.1f J > %.1f J", trial_id, spent,
                        self.trial_j)
            ray.get(self._control().note_stop.remote(trial_id, "stopped_by_budget"))
            return True
        if self.total_j is not None:
            control = self._control()
            if ray.get(control.over_budget.remote()):
                log.warning("the sweep budget is spent: stopping trial %s", trial_id)
                ray.get(control.note_stop.remote(trial_id, "stopped_by_budget"))
                return True
        return False

    def stop_all(self) -> bool:
        return False


class ReleaseCallback(Callback):
    """Frees a trial's budget reservation whenever Tune ends it: finished, stopped by the
    scheduler or the budget, or failed (a retry is admitted again, as a new attempt)."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    def _release(self, trial) -> None:
        try:
            control = ray.get_actor(CONTROL_NAME, namespace=self.namespace)
            ray.get(control.release.remote(trial.trial_id))
        except ValueError:  # the control actor is gone: the sweep is ending
            log.debug("no control actor to release %s", trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._release(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._release(trial)


_PROGRESS_SINK: list = [None]


def say_to(say) -> None:
    """Where a ProgressCallback restored from tuner.pkl (a resumed sweep) prints its lines."""
    _PROGRESS_SINK[0] = say


class ProgressCallback(Callback):
    """One line per trial as the sweep goes: started (with its settings), then how it ended
    (finished, stopped by the scheduler or the budget, failed), with its quality and energy."""

    def __init__(self, say) -> None:
        self.say = say
        self.started: dict[str, float] = {}

    # Tune pickles its callbacks into tuner.pkl (for --resume); `say` writes to a terminal
    # stream, which does not pickle, so the pickled copy drops it and a restored callback
    # speaks through whatever `say_to` the resuming process set.
    def __getstate__(self) -> dict:
        return {**self.__dict__, "say": None}

    def _say(self, message: str) -> None:
        (self.say or _PROGRESS_SINK[0] or log.info)(message)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        import time

        self.started[trial.trial_id] = time.time()
        settings = ", ".join(f"{k}={v}" for k, v in sorted((trial.config or {}).items()))
        self._say(f"trial {trial.trial_id} started ({len(trials)} so far): {settings}")

    def _ended(self, trial, how: str) -> None:
        import time

        from raydistill.units import fmt_duration_s, fmt_energy_j

        last = trial.last_result or {}
        name = last.get("trial_id") or trial.trial_id
        status = how if how == "failed" else last.get("status", how)
        if status == "running":  # its last report was mid-training: the scheduler ended it
            status = "stopped by the scheduler"
        quality = last.get("quality")
        q = "no quality" if quality is None or quality != quality else \
            f"dev quality {quality:.3f}"
        test = last.get("quality_test")
        if test is not None and test == test:
            q += f" (test {test:.3f})"
        took = time.time() - self.started.get(trial.trial_id, time.time())
        self._say(f"trial {name}: {status} after {fmt_duration_s(took)}, {q}, "
                 f"{fmt_energy_j(last.get('energy_j', 0.0))}")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._ended(trial, "ended")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ended(trial, "failed")
