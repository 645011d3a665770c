"""Energy forecasts for sweep trials (pure).

Before a trial runs: each stage's energy is its work units (student samples, prompts, tokens,
eval examples: `trial.stage_units`) times the joules per unit that finished trials paid for that
stage. Trials that share the new trial's categorical parameters (method, loss, dtype...) are
preferred, as their per-unit cost is the relevant one; with none, all finished trials are used.
A stage whose artifact is already built costs nothing.

During a trial, from a short profile of its first steps: a stage's remaining time is
extrapolated from the step timestamps (exact, read on the worker), its power from the ledger's
energy over its window so far (a ratio, so the samplers' push lag cancels), and the fixed start-up
(model load, engine set-up) is kept apart so it is not scaled up with the steps:

    T = (t_ready − t_start) + (t_now − t_ready) / progress,   E = P_mean × T
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field


def _categorical(params: dict) -> dict:
    return {k: v for k, v in params.items() if isinstance(v, str)}


@dataclass
class Forecaster:
    finished: list[tuple[dict, dict[str, float]]] = field(default_factory=list)  # params, J/unit

    def add_finished(self, params: dict, stage_energy_j: dict[str, float],
                     stage_units: dict[str, float]) -> None:
        per_unit = {s: e / stage_units[s] for s, e in stage_energy_j.items()
                    if stage_units.get(s) and math.isfinite(e) and e > 0}
        self.finished.append((dict(params), per_unit))

    def _rates(self, params: dict, stage: str) -> list[float]:
        cat = _categorical(params)
        same = [r[stage] for p, r in self.finished
                if stage in r and all(p.get(k) == v for k, v in cat.items())]
        return same or [r[stage] for _, r in self.finished if stage in r]

    def predict(self, params: dict, stage_units: dict[str, float],
                reused_stages: Iterable[str] = ()) -> dict[str, float] | None:
        """J per stage, or None when no finished trial has measured a needed stage."""
        if not self.finished:
            return None
        reused = set(reused_stages)
        out = {}
        for stage, units in stage_units.items():
            if stage in reused or not units:
                out[stage] = 0.0
                continue
            rates = self._rates(params, stage)
            if not rates:
                if stage in ("teacher_generation", "teacher_logit_caching"):
                    out[stage] = 0.0  # never built by anyone: no trial of this method needs it
                    continue
                return None
            out[stage] = units * sum(rates) / len(rates)
        return out


def profile_stage_j(power_w: float, t_start_s: float, t_ready_s: float, t_now_s: float,
                    progress: float) -> float:
    """A running stage's whole energy from its first steps (see the module docstring)."""
    if not 0 < progress <= 1:
        raise ValueError(f"progress must be in (0, 1], got {progress}")
    ready = max(0.0, t_ready_s - t_start_s)
    return power_w * (ready + max(0.0, t_now_s - t_ready_s) / progress)


def forecast_error(predicted: float, actual: float) -> float:
    """Relative error (predicted − actual) / actual; nan when actual is 0."""
    return (predicted - actual) / actual if actual else math.nan


def admission_forecast(learned_j: float | None, prior_j: float | None, trial_cap_j: float | None,
                       total_j: float | None, n_trials: int) -> tuple[float | None, str]:
    """The forecast a trial is admitted with, and where it came from, in order of trust:

    learned     from the finished trials (per-unit costs × this trial's work units)
    prior       the space's stated `budget.prior_trial_kwh`
    trial_cap   the per-trial budget: the most a trial may spend (a conservative reservation)
    even_split  the sweep budget spread over the sweep's trials
    none        no budget at all: nothing to check, nothing reserved

    so the first trials are never admitted with a forecast of zero."""
    if learned_j is not None:
        return float(learned_j), "learned"
    if prior_j is not None:
        return float(prior_j), "prior"
    if trial_cap_j is not None:
        return float(trial_cap_j), "trial_cap"
    if total_j is not None:
        return float(total_j) / max(1, n_trials), "even_split"
    return None, "none"


def score_forecasts(forecasts: dict[str, dict], from_trial: int = 4) -> dict:
    """How good the forecasts were: per trial (in finishing order) forecast vs actual, and the
    median absolute relative error of each kind over the trials from the `from_trial`-th on
    (the first ones are forecast from little or nothing)."""
    done = sorted((rec for rec in forecasts.values() if rec.get("order") is not None),
                  key=lambda rec: rec["order"])
    out: dict = {"from_trial": from_trial, "trials": len(done)}
    for kind in ("before", "profile"):
        errors = [abs(rec[f"{kind}_error"]) for rec in done[from_trial - 1:]
                  if rec.get(f"{kind}_error") is not None
                  and math.isfinite(rec[f"{kind}_error"])]
        out[f"{kind}_median_abs_error"] = _median(errors)
        out[f"{kind}_n"] = len(errors)
    return out


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    v = sorted(values)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2
