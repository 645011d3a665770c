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
