"""Search spaces: a YAML file → a validated `SearchSpace` (pure: yaml + raydistill.config).

    # raydistill sweep search_spaces/smoke.yaml --out runs/smoke
    base: ../configs/tiny.yaml          # experiment config, relative to this file
    set: {student.steps: 300}           # fixed overrides (dotted config keys)
    params:                             # dotted config key -> one distribution
      distill.method: {choice: [sft, logit]}
      distill.temperature: {uniform: [0.5, 4.0]}
      student.lr: {loguniform: [1.0e-4, 1.0e-2]}
      distill.top_k: {grid: [16, 64]}
      student.steps: {int: [200, 1000]}
    search: {algorithm: nsga2, num_samples: 8, max_concurrent: 1, seed: 0, repeats: 1}
    objective: {quality: student_quick_acc, energy: full}
    scheduler: {kind: pareto, rungs: [0.3, 0.6], confidence: 0.95, min_trials: 2}
    budget: {total_kwh: null, trial_kwh: null, prior_trial_kwh: null}

Every parameter name and value is checked against the experiment config before anything runs:
each choice/grid value and both ends of a range must build a valid `ExperimentConfig`.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raydistill.config import ExperimentConfig, apply_overrides, from_dict, load_yaml
from raydistill.errors import ConfigError

KINDS = ("choice", "grid", "uniform", "loguniform", "int")
ALGORITHMS = ("nsga2", "motpe", "tpe", "gp", "random", "grid")  # tpe: motpe's old name
ENERGY_VIEWS = ("full", "amortized", "marginal")
SCHEDULERS = ("pareto", "fifo", "asha")
TOP_KEYS = ("base", "set", "params", "search", "objective", "scheduler", "budget")


@dataclass(frozen=True)
class ParamSpec:
    name: str  # dotted config key
    kind: str  # one of KINDS
    values: tuple = ()  # choice / grid
    low: float = 0.0  # uniform / loguniform / int
    high: float = 0.0

    @property
    def discrete(self) -> bool:
        return self.kind in ("choice", "grid")


@dataclass(frozen=True)
class SearchSettings:
    algorithm: str = "nsga2"
    num_samples: int = 8
    max_concurrent: int = 1
    seed: int = 0
    population: int | None = None  # NSGA-II generation size; None: sized to the sweep
    repeats: int = 1  # runs of each configuration, so figures carry their spread


@dataclass(frozen=True)
class Objective:
    quality: str = "student_quick_acc"  # a score key of the dev split (dev_quality_keys)
    energy: str = "full"  # which energy view the search minimises


@dataclass(frozen=True)
class SchedulerSettings:
    kind: str = "pareto"
    rungs: tuple[float, ...] = (0.3, 0.6)  # fractions of student training
    # family-wise confidence of a stop: a trial is stopped only when another beats it beyond
    # the dev score's binomial noise and the energies' stated errors (see rungs.py)
    confidence: float = 0.95
    min_trials: int = 2  # others needed at a rung before anyone is stopped there
    margin: float = 0.0  # extra relative head start on top of the noise (old spaces set it)
    min_spread: float = 0.0  # extra head start in quality units on top of the noise


@dataclass(frozen=True)
class Budget:
    total_kwh: float | None = None
    trial_kwh: float | None = None
    prior_trial_kwh: float | None = None  # stated forecast for a trial before any has finished


@dataclass(frozen=True)
class SearchSpace:
    path: Path
    base_path: Path
    fixed: dict = field(default_factory=dict)
    params: tuple[ParamSpec, ...] = ()
    search: SearchSettings = SearchSettings()
    objective: Objective = Objective()
    scheduler: SchedulerSettings = SchedulerSettings()
    budget: Budget = Budget()

    def config_for(self, params: dict[str, Any]) -> ExperimentConfig:
        """The experiment one trial runs: base, then `set`, then the trial's parameters."""
        data = load_yaml(self.base_path)
        items = {**self.fixed, **params}
        sets = [f"{k}={_yaml_scalar(v)}" for k, v in items.items()]
        return from_dict(ExperimentConfig, apply_overrides(data, sets))


def _yaml_scalar(v: Any) -> str:
    if hasattr(v, "item"):  # numpy scalars from Tune/pandas
        v = v.item()
    if isinstance(v, str):
        return repr(v) if v.lower() in ("true", "false", "null", "yes", "no", "") else v
    if v is None:
        return "null"
    return str(v).lower() if isinstance(v, bool) else repr(v)


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def _section(cls: type, value: Any, where: str):
    data = _mapping(value, where)
    valid = [f for f in cls.__dataclass_fields__]
    for key in data:
        if key not in valid:
            raise ConfigError(f"{where}.{key}: unknown key; valid: {', '.join(valid)}")
    try:
        if cls is SchedulerSettings and "rungs" in data:
            data = {**data, "rungs": tuple(float(r) for r in data["rungs"])}
        return cls(**data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _param(name: str, spec: Any) -> ParamSpec:
    where = f"params.{name}"
    spec = _mapping(spec, where)
    if len(spec) != 1:
        raise ConfigError(f"{where}: give exactly one distribution; valid: {', '.join(KINDS)}")
    ((kind, arg),) = spec.items()
    if kind not in KINDS:
        raise ConfigError(f"{where}: unknown distribution {kind!r}; valid: {', '.join(KINDS)}")
    if not isinstance(arg, list) or not arg:
        raise ConfigError(f"{where}.{kind} takes a non-empty list")
    if kind in ("choice", "grid"):
        return ParamSpec(name, kind, values=tuple(arg))
    if len(arg) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                for x in arg):
        raise ConfigError(f"{where}.{kind} takes [low, high] numbers, got {arg}")
    low, high = float(arg[0]), float(arg[1])
    if not low < high:
        raise ConfigError(f"{where}.{kind}: low {low} must be < high {high}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}.loguniform: low must be > 0, got {low}")
    if kind == "int" and not (low.is_integer() and high.is_integer()):
        raise ConfigError(f"{where}.int: bounds must be integers, got {arg}")
    return ParamSpec(name, kind, low=low, high=high)


def load_space(path: str | Path) -> SearchSpace:
    p = Path(path)
    data = load_yaml(p)
    for key in data:
        if key not in TOP_KEYS:
            raise ConfigError(f"{p}: unknown key {key!r}; valid: {', '.join(TOP_KEYS)}")
    if not isinstance(data.get("base"), str):
        raise ConfigError(f"{p}: base must name an experiment config (relative to {p.parent})")
    base = (p.parent / data["base"]).resolve()
    fixed = _mapping(data.get("set"), "set")
    params = tuple(_param(str(n), s) for n, s in _mapping(data.get("params"), "params").items())
    space = SearchSpace(
        path=p, base_path=base, fixed=fixed, params=params,
        search=_section(SearchSettings, data.get("search"), "search"),
        objective=_section(Objective, data.get("objective"), "objective"),
        scheduler=_section(SchedulerSettings, data.get("scheduler"), "scheduler"),
        budget=_section(Budget, data.get("budget"), "budget"))
    _check(space)
    return space


def _check(space: SearchSpace) -> None:
    s, o, sch, b = space.search, space.objective, space.scheduler, space.budget
    if s.algorithm not in ALGORITHMS:
        raise ConfigError(f"search.algorithm {s.algorithm!r}; valid: {', '.join(ALGORITHMS)}")
    if not (isinstance(s.num_samples, int) and s.num_samples >= 1):
        raise ConfigError(f"search.num_samples must be an integer >= 1, got {s.num_samples}")
    if not (isinstance(s.max_concurrent, int) and s.max_concurrent >= 1):
        raise ConfigError(f"search.max_concurrent must be >= 1, got {s.max_concurrent}")
    if o.energy not in ENERGY_VIEWS:
        raise ConfigError(f"objective.energy {o.energy!r}; valid: {', '.join(ENERGY_VIEWS)}")
    if sch.kind not in SCHEDULERS:
        raise ConfigError(f"scheduler.kind {sch.kind!r}; valid: {', '.join(SCHEDULERS)}")
    if not all(0 < r < 1 for r in sch.rungs) or list(sch.rungs) != sorted(sch.rungs):
        raise ConfigError(f"scheduler.rungs must rise strictly inside (0, 1), got {sch.rungs}")
    if not (isinstance(sch.margin, (int, float)) and sch.margin >= 0):
        raise ConfigError(f"scheduler.margin must be >= 0, got {sch.margin}")
    if not (isinstance(sch.min_spread, (int, float)) and sch.min_spread >= 0):
        raise ConfigError(f"scheduler.min_spread must be >= 0, got {sch.min_spread}")
    if not (isinstance(sch.confidence, (int, float)) and 0.5 < sch.confidence < 1):
        raise ConfigError(f"scheduler.confidence must lie in (0.5, 1), e.g. 0.95, "
                          f"got {sch.confidence}")
    if s.population is not None and not (isinstance(s.population, int) and s.population >= 2):
        raise ConfigError(f"search.population must be an integer >= 2, got {s.population}")
    if not (isinstance(s.repeats, int) and s.repeats >= 1):
        raise ConfigError(f"search.repeats must be an integer >= 1, got {s.repeats}")
    for name, v in (("budget.total_kwh", b.total_kwh), ("budget.trial_kwh", b.trial_kwh),
                    ("budget.prior_trial_kwh", b.prior_trial_kwh)):
        if v is not None and not (isinstance(v, (int, float)) and v > 0):
            raise ConfigError(f"{name} must be > 0, got {v}")
    if s.algorithm == "grid":
        grid_points(space)  # raises on a continuous parameter
    base = space.config_for({})  # base + set must be valid
    valid = dev_quality_keys(base)
    if o.quality not in valid:
        # dev decides: the searcher, the rungs and the Pareto set read the dev score, and dev
        # is scored by exact match only (lm-eval runs on test, reported beside)
        raise ConfigError(f"objective.quality {o.quality!r} is not scored on dev; "
                          f"valid: {', '.join(valid)}")
    for p in space.params:
        for value in p.values if p.discrete else (_num(p, p.low), _num(p, p.high)):
            try:
                space.config_for({p.name: value})
            except ConfigError as exc:
                raise ConfigError(f"params.{p.name}: value {value!r} rejected: {exc}") from None


def dev_quality_keys(cfg: ExperimentConfig, model: str = "student") -> tuple[str, ...]:
    """The dev scores `objective.quality` may name for `model`: exact match. (Dev also carries
    the share of outputs the answer pattern could not extract, but a sweep maximises quality
    and its rungs compare the in-training exact match: a failure rate is no objective.)"""
    del cfg  # every data set is scored by exact match on dev
    return (f"{model}_quick_acc",)


def _num(p: ParamSpec, v: float) -> float | int:
    return int(v) if p.kind == "int" else v


def sample_points(space: SearchSpace, n: int, seed: int | None = None) -> list[dict]:
    """`n` points drawn at random from the space (seeded): what a random search runs, and what
    NSGA-II's first generation and TPE's start-up trials look like."""
    rng = random.Random(space.search.seed if seed is None else seed)

    def draw(p: ParamSpec) -> Any:
        if p.discrete:
            return rng.choice(p.values)
        if p.kind == "int":
            return rng.randint(int(p.low), int(p.high))
        if p.kind == "loguniform":
            return math.exp(rng.uniform(math.log(p.low), math.log(p.high)))
        return rng.uniform(p.low, p.high)

    return [{p.name: draw(p) for p in space.params} for _ in range(n)]


def grid_points(space: SearchSpace) -> list[dict]:
    """Every combination of the discrete parameters (a grid cannot hold a range)."""
    for p in space.params:
        if not p.discrete:
            raise ConfigError(f"params.{p.name}: a grid needs choice or grid values, "
                              f"not {p.kind}")
    names = [p.name for p in space.params]
    return [dict(zip(names, combo, strict=True))
            for combo in itertools.product(*(p.values for p in space.params))]
