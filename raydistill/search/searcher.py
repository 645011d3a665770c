"""Tune searchers for a search space: Optuna samplers behind Ray's OptunaSearch, told the truth.

Ray's OptunaSearch tells Optuna a trial COMPLETE with whatever its last result held. A trial the
energy–Pareto scheduler (or ASHA, or the budget stopper) ends early last reported a partial
quality and a partial energy, so the sampler learned cheap, poor points that were never
measured. `TruthfulOptunaSearch` tells such a trial PRUNED: only a trial that reported
`status: finished` with finite objectives is a point of the front. It also never runs one
configuration of a finite space twice (see `suggest`), and `ObjectiveRepeater` repeats a
configuration for both objectives (Ray's `Repeater` takes one scalar metric).

    algorithm   sampler                                   sized to the sweep
    nsga2       optuna NSGAIISampler                      population (see nsga2_population)
    motpe       optuna TPESampler, multi-objective        start-up trials (see startup_trials)
    tpe         alias of motpe
    gp          optuna GPSampler (needs torch and scipy)  start-up trials
    random      optuna RandomSampler                      -
    grid        None: Tune's own grid                     -
"""

from __future__ import annotations

import itertools
import logging
import math
import numbers
import random
import threading
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler
from optuna.trial import TrialState
from ray.tune.search import Repeater, Searcher
from ray.tune.search.optuna import OptunaSearch

from raydistill.errors import ConfigError

log = logging.getLogger(__name__)

METRICS = ["quality", "energy_j"]  # the keys `search.trial.trial_metrics` reports
MODES = ["max", "min"]
FINISHED = "finished"  # the status of a trial's final, evaluated report
ALIASES = {"tpe": "motpe"}  # the name the first searcher shipped under

# NSGA-II's generation and the model-based samplers' start-up: a third of the sweep, at least 4.
# Optuna's defaults (a population of 50, 10 start-up trials) exceed the 8–16 trial sweeps this
# project runs, which made every searcher a random search. On bench/bench_search.py's recorded
# 12-configuration grid, NSGA-II with populations 2, 3, 4, 6, 12 spent 0.60, 0.60, 0.55, 0.56,
# 0.57 of the grid's energy (60 seeds): 4 is the best, and about three generations fit a sweep.
MIN_GENERATION = 4
GENERATION_FRACTION = 3

REDRAWS = 4  # proposals asked again before a finite space's duplicate gives way to a random one
MAX_ENUMERATED = 100_000  # configurations listed to find the unseen ones (a larger space: none)


def canonical(algorithm: str) -> str:
    """The sampler a `search.algorithm` name stands for (`tpe` is the old name of `motpe`)."""
    return ALIASES.get(algorithm, algorithm)


def nsga2_population(num_samples: int, population: int | None = None) -> int:
    """NSGA-II's generation size: `search.population` when given, else a third of the sweep
    (at least MIN_GENERATION), so a sweep of n trials breeds about three generations."""
    if population is not None:
        return population
    return max(MIN_GENERATION, num_samples // GENERATION_FRACTION)


def startup_trials(num_samples: int) -> int:
    """Random trials before MO-TPE or GP fit a model: the same third of the sweep."""
    return max(MIN_GENERATION, num_samples // GENERATION_FRACTION)


class NSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II, picklable: Tune pickles the searcher, sampler included, at every
    experiment checkpoint, and Optuna 5's GA samplers hold a threading.Lock (a TypeError that
    Tune does not catch, ending the sweep). The lock is dropped and made anew. The class keeps
    Optuna's name: GA samplers key their generations in the study by class name."""

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def _gp_sampler(seed: int, num_samples: int) -> BaseSampler:
    gp = getattr(optuna.samplers, "GPSampler", None)
    if gp is None:
        raise ConfigError(f"search.algorithm gp needs optuna.samplers.GPSampler (optuna >= 3.6; "
                          f"installed {optuna.__version__}); valid: {', '.join(_valid())}")
    try:  # GPSampler imports these only when it first fits, i.e. mid-sweep
        import scipy  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"search.algorithm gp needs torch and scipy ({exc}); pip install "
                          f"torch scipy, or use one of: {', '.join(_valid())}") from None
    return gp(seed=seed, n_startup_trials=startup_trials(num_samples))


def make_sampler(algorithm: str, seed: int, num_samples: int,
                 population: int | None = None) -> BaseSampler:
    """The seeded Optuna sampler behind `algorithm` (any name but grid; `tpe` as `motpe`)."""
    name = canonical(algorithm)
    if name == "nsga2":
        return NSGAIISampler(
            seed=seed, population_size=nsga2_population(num_samples, population))
    if name == "motpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(num_samples))
    if name == "gp":
        return _gp_sampler(seed, num_samples)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"search.algorithm {algorithm!r}; valid: {', '.join(_valid())}")


def _valid() -> tuple[str, ...]:
    from raydistill.search.space import ALGORITHMS

    return ALGORITHMS


def make_searcher(space, seed: int) -> Searcher | None:
    """Tune's searcher for `space` (a `SearchSpace`); None for a grid, which Tune enumerates."""
    s = space.search
    if s.algorithm == "grid":
        return None
    sampler = make_sampler(s.algorithm, seed, s.num_samples, s.population)
    return TruthfulOptunaSearch(metric=list(METRICS), mode=list(MODES), sampler=sampler,
                                seed=seed)


def outcome(result: dict | None, error: bool, metrics: list[str]
            ) -> tuple[TrialState, list[float] | None]:
    """What Optuna is told of a trial Tune ended: FAIL for an error; COMPLETE with the
    objectives only for a finished trial that measured them all; PRUNED for anything else (a
    trial stopped by a scheduler or the budget last reported partial figures)."""
    if error:
        return TrialState.FAIL, None
    if not result or result.get("status") != FINISHED:
        return TrialState.PRUNED, None
    values = [result.get(m) for m in metrics]
    if not all(_finite(v) for v in values):
        return TrialState.PRUNED, None
    return TrialState.COMPLETE, [float(v) for v in values]


def _finite(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


class TruthfulOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna only measured outcomes (see `outcome`) and does not run a
    configuration of a finite space twice."""

    def __init__(self, *args: Any, seed: int | None = None, **kwargs: Any) -> None:
        # OptunaSearch ignores `seed` beside a sampler; it seeds the duplicate fallback here
        super().__init__(*args, **kwargs)
        self._rng = random.Random(seed)
        self._keys: dict[str, tuple] = {}  # Tune trial id -> its configuration's key
        self._seen: dict[tuple, int] = {}  # configuration key -> the Optuna trial that ran it

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Nothing: Optuna takes no intermediate values for several objectives, and a partial
        result must never stand in for the trial's outcome."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials:
            log.warning("trial %s completed twice; the first outcome stands", trial_id)
            return
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:  # Tune ends a trial this searcher never proposed
            log.warning("trial %s was not proposed by this searcher; not told", trial_id)
            return
        state, values = outcome(result, error, _as_list(self.metric))
        self._ot_study.tell(ot_trial, values, state=state)
        self._completed_trials.add(trial_id)

    def suggest(self, trial_id: str) -> dict | None:
        """Optuna's proposal, unless that configuration has run (or is running): a finite space
        (this project's categorical sweeps) would pay for it again to learn nothing. Such a
        proposal is told FAIL, which every sampler ignores, and Optuna is asked again; after
        REDRAWS repeats, an unseen configuration is drawn at random. When every configuration
        has run, the duplicate runs."""
        if trial_id in self._ot_trials or not isinstance(self._space, dict):
            return super().suggest(trial_id)  # Tune asking again, or a define-by-run space
        config = super().suggest(trial_id)
        for attempt in range(REDRAWS + 1):
            key = self._key(trial_id)
            if key not in self._seen:
                break
            unseen = None if attempt < REDRAWS else self._unseen()
            if attempt == REDRAWS and unseen is None:
                break  # nothing left unseen (or too many to list): run it again
            self._discard(trial_id, self._seen[key])
            if unseen is not None:
                self._ot_study.enqueue_trial(unseen)
            config = super().suggest(trial_id)
        self._seen.setdefault(self._key(trial_id), self._ot_trials[trial_id].number)
        return config

    def _key(self, trial_id: str) -> tuple:
        params = self._ot_trials[trial_id].params
        return tuple((name, repr(params[name])) for name in sorted(params))

    def _discard(self, trial_id: str, original: int) -> None:
        ot_trial = self._ot_trials.pop(trial_id)
        ot_trial.set_user_attr("duplicate_of", original)
        self._ot_study.tell(ot_trial, state=TrialState.FAIL)

    def _unseen(self) -> dict | None:
        """A random configuration not yet run, for a finite space small enough to list."""
        names = sorted(self._space)
        choices = [_choices(self._space[n]) for n in names]
        if any(c is None for c in choices) or math.prod(map(len, choices)) > MAX_ENUMERATED:
            return None
        unseen = [combo for combo in itertools.product(*choices)
                  if tuple(zip(names, map(repr, combo), strict=True)) not in self._seen]
        return dict(zip(names, self._rng.choice(unseen), strict=True)) if unseen else None


def _choices(dist: BaseDistribution) -> list | None:
    """Every value a distribution takes, or None for a continuous one."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution) and not dist.log:
        return list(range(dist.low, dist.high + 1, dist.step))
    if isinstance(dist, FloatDistribution) and dist.step is not None:
        n = round((dist.high - dist.low) / dist.step)
        return [dist.low + i * dist.step for i in range(n + 1)]
    return None


class ObjectiveRepeater(Repeater):
    """Tune's Repeater for a searcher of several objectives: Ray's reads `result[metric]` with
    the metric list as a key (a TypeError) and keeps one averaged scalar. Here the searcher is
    told each objective's mean over the repeats when every repeat finished; a configuration
    with a repeat stopped early is told as stopped (its mean would mix in a truncated run), one
    whose repeats all failed as an error. Failed repeats beside finished ones are left out."""

    def __init__(self, searcher: Searcher, repeat: int = 1, set_index: bool = True) -> None:
        super().__init__(searcher, repeat=repeat, set_index=set_index)
        self._outcomes: dict[str, list[tuple[TrialState, list[float] | None]]] = {}

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False, **kwargs: Any) -> None:
        group = self._trial_id_to_group.get(trial_id)
        if group is None:
            log.warning("trial %s is in no repeat group; not told", trial_id)
            return
        metrics = _as_list(self.searcher.metric)
        told = self._outcomes.setdefault(group.primary_trial_id, [])
        told.append(outcome(result, error, metrics))
        group.report(trial_id, 0.0)  # the group only counts reports; outcomes are kept here
        if group.finished_reporting():
            merged, failed = _merge(told, metrics)
            self.searcher.on_trial_complete(group.primary_trial_id, result=merged, error=failed)


def _merge(outcomes: list[tuple[TrialState, list[float] | None]], metrics: list[str]
           ) -> tuple[dict | None, bool]:
    """One configuration's result from its repeats' outcomes, and whether it is an error."""
    ran = [(state, values) for state, values in outcomes if state != TrialState.FAIL]
    if not ran:
        return None, True
    if any(state != TrialState.COMPLETE or values is None for state, values in ran):
        return {"status": "stopped"}, False
    means = _means([values for _, values in ran if values is not None])
    return {"status": FINISHED, **dict(zip(metrics, means, strict=True))}, False


def _as_list(metric: str | list[str]) -> list[str]:
    return list(metric) if isinstance(metric, list) else [metric]


def _means(rows: list[list[float]]) -> list[float]:
    return [math.fsum(col) / len(col) for col in zip(*rows, strict=True)]


def repeat(searcher: Searcher, repeats: int) -> Searcher:
    """`searcher` running each configuration `repeats` times (itself when once)."""
    return searcher if repeats == 1 else ObjectiveRepeater(searcher, repeat=repeats)


__all__ = ["ObjectiveRepeater", "TruthfulOptunaSearch", "make_sampler", "make_searcher",
           "nsga2_population", "outcome", "repeat", "startup_trials"]
