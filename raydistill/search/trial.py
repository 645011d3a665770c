"""One sweep trial as a Ray Tune function trainable: the pipeline's stages, reported as they go.

The trial runs in a Tune actor and drives the same `Pipeline` a single run uses: teacher
artifacts (shared by every trial through the content-addressed store: built by the first trial
that needs one, reused by the rest), then a Ray Train student run in a background thread while
this thread reads the student's progress file and the ledger and reports to Tune
`{progress, quality, quality_n, energy_j, energy_rung_j, energy_error_j, meter, forecast_j}`,
so the scheduler and the budget stopper see dev quality and energy after every step they care
about; the final report's `quality` is the dev score and `quality_test` the test one. A trial
that Tune stops is killed with its Ray Train run; its windows stay in the ledger and its energy
is counted as waste.

Every attempt of a trial gets its own ledger trial id `<tune trial id>~<attempt>`, so a trial
retried after a lost node or a resumed sweep never has two attempts' energy added together.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import ray

from raydistill.distill.pipeline import training_check  # the dev split, never test
from raydistill.io import inside

log = logging.getLogger(__name__)

POLL_S = 2.0
TEACHER_STAGES = ("teacher_generation", "teacher_logit_caching", "teacher_scoring")


@dataclass(frozen=True)
class TrialContext:
    """Plain data the driver hands every trial (pickled into the trainable)."""

    space_path: str
    run_dir: str
    namespace: str
    artifacts: str
    quality_key: str  # e.g. student_quick_acc
    energy_view: str  # full | amortized | marginal
    progress_points: int = 10  # progress reports during student training


class LedgerClient:
    """What `Pipeline` needs of a session, from inside a trial: the namespace and the rows."""

    def __init__(self, namespace: str) -> None:
        from raydistill.cluster.ledger_actor import get_ledger

        self.namespace = namespace
        self.ledger = get_ledger(namespace)

    def energy_rows(self) -> list[dict]:
        return ray.get(self.ledger.energy_rows.remote())

    def trial_rows(self, ledger_trial: str) -> list[dict]:
        """The trial's own rows: a per-trial query, not a recomputation of the whole sweep."""
        return ray.get(self.ledger.trial_rows.remote(ledger_trial))

    def trial_energy(self, ledger_trial: str) -> dict[str, float]:
        return ray.get(self.ledger.trial_energy.remote([ledger_trial]))[ledger_trial]


def stage_units(cfg) -> dict[str, float]:
    """Work units per stage, the forecast's unit of proportionality."""
    from raydistill.data.splits import planned_count

    train, test = planned_count(cfg.data, "train"), planned_count(cfg.data, "test")
    return {
        "teacher_generation": train * cfg.generation.max_new_tokens,
        "teacher_logit_caching": train,
        "student_training": float(cfg.student.steps * cfg.student.batch_size),
        "evaluation": float(min(cfg.evaluation.limit or test, test)),
        # on-policy: the teacher scores every step's batch (rolled out or not), a recurring bill
        "teacher_scoring": float(cfg.student.steps * cfg.student.batch_size)
        if cfg.distill.method == "onpolicy" else 0.0,
    }


def energy_views(own: dict[str, float], reused_cost: dict[str, float],
                 consumers: dict[str, int], built: set[str]) -> dict[str, float]:
    """The trial's energy three ways (J). `own`: this attempt's stages from the ledger;
    `reused_cost`: build cost of each teacher artifact it reused, by kind; `consumers`: trials
    that used each artifact so far; `built`: artifact kinds this attempt built itself.

    marginal: what running it added (its own windows); full: as if it had built every teacher
    artifact it used; amortized: teacher artifacts split over the trials that used them."""
    stage_of = {"synthetic_data": "teacher_generation", "logit_cache": "teacher_logit_caching"}
    marginal = sum(v for s, v in own.items() if not s.startswith("inference_"))
    full = marginal + sum(reused_cost.values())
    artifact_cost = {k: own.get(stage_of[k], 0.0) for k in built} | reused_cost
    student_side = marginal - sum(own.get(stage_of[k], 0.0) for k in built)
    amortized = student_side + sum(c / max(1, consumers.get(k, 1))
                                   for k, c in artifact_cost.items())
    return {"marginal": marginal, "full": full, "amortized": amortized}


def rung_error(rows: list[dict], reused: dict[str, dict]) -> tuple[float, str, float]:
    """(stated error in J, meter, its independent part in J) of the full view's energy: the
    trial's own ledger rows (inference probes left out, as in its energy) plus each reused
    artifact at its build cost. A reused artifact's error is its builder's `stated_error_j`
    where the manifest has it, else the trial's own worst relative error times its cost. The
    meter names every node:device:method that measured the trial's rows (sorted): equal meters
    share a bias. The independent part is what of each row's stated error is not its meter's
    bias (energy.meters: window edges, held power, unmeasured bounds), in quadrature."""
    from raydistill.energy.meters import split_error

    own = [r for r in rows if not str(r.get("stage", "")).startswith("inference_")]
    error = sum(float(r.get("stated_error_j") or 0.0) for r in own)
    relative = max((float(r.get("stated_error_j") or 0.0) / float(r["energy_j"])
                    for r in own if float(r.get("energy_j") or 0.0) > 0), default=0.0)
    independent_sq = sum(split_error(r)[2] ** 2 for r in own)
    for built_by in reused.values():
        cost = float(built_by.get("energy_j") or 0.0)
        stated = built_by.get("stated_error_j")
        error += float(stated) if stated is not None else relative * cost
    meter = ",".join(sorted({f"{r.get('node_id')}:{r.get('device_id')}:{r.get('method')}"
                             for r in own}))
    return error, meter, math.sqrt(independent_sq)


def trial_metrics(progress: float, quality: float | None, views: dict[str, float],
                  energy_view: str, forecast_j: float | None, ledger_trial: str,
                  extra: dict | None = None, quality_n: float | None = None,
                  energy_error_j: float = 0.0, meter: str = "",
                  energy_independent_j: float = 0.0) -> dict:
    """One report to Tune: what the schedulers, the searcher and the stopper read.
    `quality` is a dev score (`quality_n` dev rows); `energy_j` is the objective's view (the
    searcher's and the Pareto set's); `energy_rung_j` is the full view the rungs compare, so
    who built a shared teacher artifact does not decide who is stopped, with its stated error
    `energy_error_j` and `meter`. `quality_per_kj` is the scalarised objective of the ASHA
    baseline (NaN until quality and energy are both measured)."""
    q = math.nan if quality is None else float(quality)
    energy = views[energy_view]
    return {"progress": progress, "quality": q,
            "quality_n": math.nan if quality_n is None else float(quality_n),
            "energy_j": energy, "energy_rung_j": views["full"],
            "energy_error_j": float(energy_error_j), "meter": meter,
            "energy_independent_j": float(energy_independent_j),
            "quality_per_kj": q / (energy / 1e3) if energy > 0 else math.nan,
            "energy_marginal_j": views["marginal"], "energy_full_j": views["full"],
            "energy_amortized_j": views["amortized"], "forecast_j": forecast_j,
            "ledger_trial": ledger_trial, "status": "running", **(extra or {})}


def final_metrics(result: dict, quality_key: str) -> dict:
    """The final report's scores from `Pipeline.evaluate`'s result: dev decides (`quality`,
    `quality_n`: what the searcher and the Pareto set read), test is reported beside
    (`quality_test`, `score.<k>`); dev scores as `dev_score.<k>`."""
    dev, test = result.get("dev_scores") or {}, result.get("scores") or {}
    if quality_key not in dev:
        raise KeyError(f"objective.quality {quality_key!r} not among the dev scores "
                       f"{sorted(dev)}: Pipeline.evaluate must score the dev split")
    rows = dev.get("quick_acc_rows")
    return {"quality": float(dev[quality_key]),
            "quality_n": math.nan if rows is None else float(rows),
            "quality_test": float(test[quality_key]) if quality_key in test else math.nan,
            **{f"score.{k}": v for k, v in test.items()},
            **{f"dev_score.{k}": v for k, v in dev.items()}}


def reports_during_training(progress: float) -> bool:
    """Whether a progress line is reported to Tune while the student trains. Progress 1 is kept
    for the final report, after evaluation: a scheduler with max_t = 1 (ASHA) stops a trial
    when it sees progress 1, which must not happen before the trial is evaluated."""
    return 0 < progress < 1


def run_trial(params: dict, ctx: TrialContext) -> None:
    """The Tune function trainable (wrapped by the driver with its context)."""
    from ray import tune

    from raydistill.distill.pipeline import Pipeline
    from raydistill.local_models import resolve_models
    from raydistill.search.space import load_space

    trial = tune.get_context().get_trial_id() or "trial"
    ledger_trial = f"{trial}~{uuid.uuid4().hex[:6]}"
    space = load_space(ctx.space_path)
    cfg = resolve_models(space.config_for(params), Path(ctx.artifacts))
    # A failed student is retried by Tune, not restarted inside Ray Train: the retry is a new
    # ledger attempt, so the lost one's energy is kept apart as waste (it resumes from the last
    # checkpoint the lost attempt reported, through the shared Ray Train run name below).
    cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, max_failures=0))
    run_dir = Path(ctx.run_dir)
    client = LedgerClient(ctx.namespace)
    control = ray.get_actor("sweep-control", namespace=ctx.namespace)
    pipe = Pipeline(cfg, run_dir, client, Path(ctx.artifacts), progress=log.info)
    method = cfg.distill.method
    units = stage_units(cfg)

    reused = sorted(pipe.planned_reuse(method))
    admitted = ray.get(control.admit.remote(trial, ledger_trial, params, units, reused))
    if not admitted["ok"]:
        log.warning("trial %s not started: %s", trial, admitted["reason"])
        zero = {"marginal": 0.0, "full": 0.0, "amortized": 0.0}
        tune.report(trial_metrics(0.0, None, zero, ctx.energy_view, admitted["forecast_j"],
                                  ledger_trial, {"status": "stopped_by_budget",
                                                 "reason": admitted["reason"]}))
        return
    forecast = admitted["forecast_j"]
    source = {"forecast_source": admitted["forecast_source"]}

    def report(progress: float, quality: float | None, extra: dict | None = None,
               quality_n: float | None = None) -> dict:
        own = client.trial_energy(ledger_trial)
        views = energy_views(own, reused_cost, consumers, built)
        error_j, meter, independent_j = rung_error(client.trial_rows(ledger_trial), reused_by)
        metrics = trial_metrics(progress, quality, views, ctx.energy_view, forecast,
                                ledger_trial, {**source, **(extra or {})}, quality_n,
                                error_j, meter, independent_j)
        tune.report(metrics)
        return metrics

    data = pipe.data()
    teacher = pipe.teacher_model(data)
    reused_cost: dict[str, float] = {}
    reused_by: dict[str, dict] = {}  # kind -> the reused artifact's manifest `built_by`
    built: set[str] = set()
    consumers: dict[str, int] = {}
    # the teacher stages run in a thread while this one reports the trial's live energy
    # (progress 0), so its cap and the sweep budget are checked while the teacher works; the
    # choice of what the student trains on is the pipeline's, as in `raydistill run`
    artifacts, data_path, cache = _while_reporting(
        lambda: pipe.student_inputs(teacher, data, ledger_trial, method),
        lambda: report(0.0, None), "teacher-side")
    for kind, art in artifacts.items():
        if art.reused:
            reused_cost[kind] = float(art.built_by.get("energy_j") or 0.0)
            reused_by[kind] = dict(art.built_by)
        else:
            built.add(kind)
    consumers = ray.get(control.consume.remote(
        trial, [f"{k}:{a.key}" for k, a in artifacts.items()]))
    consumers = {k.split(":")[0]: n for k, n in consumers.items()}
    report(0.0, None)

    out = inside(run_dir, f"students/{ledger_trial}")
    every = max(1, cfg.student.steps // ctx.progress_points)
    extra = training_check(data, every)
    done: dict = {}

    def train() -> None:
        try:
            # the Ray Train run is named by the Tune trial, so a retried trial resumes from the
            # last checkpoint of the attempt before it (its waste is the steps since then)
            done["metrics"] = pipe.student(ledger_trial, method, teacher, data_path, cache,
                                           extra, run_name=f"student-{trial}")[1]
        except BaseException as exc:  # re-raised in the trial's own thread below
            done["error"] = exc

    worker = threading.Thread(target=train, name="student-training", daemon=True)
    worker.start()
    seen, t_ready, profiled = 0, None, False
    while worker.is_alive():
        worker.join(POLL_S)
        lines = _progress_lines(out / "progress.jsonl")
        for line in lines[seen:]:
            p = line["step"] / line["steps"]
            if p == 0:
                t_ready = line["t"]
                continue
            if not profiled and p >= 0.1 and t_ready is not None:
                profiled = True
                forecast = _profile(client, control, ledger_trial, params, units, t_ready,
                                    line["t"], p)
            if reports_during_training(p):
                # `n`: the dev rows the check scored (without it the rungs stop nobody)
                report(p, line["quality"], quality_n=line.get("n", line.get("dev_rows")))
        seen = len(lines)
    if "error" in done:
        raise done["error"]
    result = pipe.evaluate(ledger_trial, {"student": out}, data)
    scores = final_metrics(result, ctx.quality_key)
    final = report(1.0, scores["quality"], {"status": "finished", **scores},
                   quality_n=scores["quality_n"])
    ray.get(control.finished.remote(trial, ledger_trial, params, units,
                                    client.trial_energy(ledger_trial), final))


def _while_reporting(work, report, name: str):
    """Run `work()` in a thread, calling `report()` every POLL_S until it ends; its result, or
    its exception re-raised here. A trial Tune stops ends inside `report` (Tune kills the
    actor), taking the thread with it."""
    done: dict = {}

    def target() -> None:
        try:
            done["value"] = work()
        except BaseException as exc:  # re-raised in the trial's own thread below
            done["error"] = exc

    worker = threading.Thread(target=target, name=name, daemon=True)
    worker.start()
    while True:
        worker.join(POLL_S)
        if not worker.is_alive():
            break
        report()
    if "error" in done:
        raise done["error"]
    return done["value"]


def _profile(client: LedgerClient, control, ledger_trial: str, params: dict, units: dict,
             t_ready: float, t_now: float, progress: float) -> float | None:
    """The trial's forecast from its first steps (see search.forecast)."""
    projected = running_profile(client.trial_rows(ledger_trial), t_ready, t_now, progress)
    if projected is None:
        return None
    done, running_j = projected
    return ray.get(control.profile_forecast.remote(ledger_trial, params, units, done, running_j))


# Stages that run for as long as the student trains: an on-policy trial's teacher pool scores
# every step, so its bill grows with the training's and is projected with it
RUNNING_STAGES = ("student_training", "teacher_scoring")


def running_profile(rows: list[dict], t_ready: float, t_now: float,
                    progress: float) -> tuple[dict[str, float], float] | None:
    """({stage: J so far} of the stages that are done, the running stages' whole energy
    projected from their power so far) or None before the student has a window. The running
    stages are `RUNNING_STAGES` (student training, and an on-policy trial's teacher_scoring)."""
    from raydistill.search.forecast import profile_stage_j

    running = [r for r in rows if r["stage"] in RUNNING_STAGES]
    if not any(r["stage"] == "student_training" for r in running):
        return None
    t_start = min(r["t_start_s"] for r in running)
    span = max(r["t_end_s"] for r in running) - t_start
    if span <= 0:
        return None
    power = sum(r["energy_j"] for r in running) / span
    done: dict[str, float] = {}
    for r in rows:
        if r["stage"] not in RUNNING_STAGES:
            done[r["stage"]] = done.get(r["stage"], 0.0) + r["energy_j"]
    return done, profile_stage_j(power, t_start, t_ready, t_now, progress)


def _progress_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            break
    return out

