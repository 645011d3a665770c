"""Off-policy, on-policy or no teacher: which reached a dev quality on the least energy (pure).

N* amortises a teacher paid once over the students that reuse its artifacts. An on-policy
teacher (`teacher_scoring`) scores the student's own completions every step: nothing is reused,
so the comparison that matters is the energy each method spent to reach a stated dev quality,
teacher side included:

    E(q) = teacher artifacts (in full: this run's bill, never shared out)
           + teacher_scoring × s + student training up to the first dev check reaching q

where the training part and its 95% interval are `equal_quality.energy_at_quality` (the crossing
between two checks, the dev score's binomial noise over its `n` rows, the meters' biases) and s
is the share of the training that part is: the teacher scores every step, so its bill up to the
crossing is the same share of its whole (rollouts are in the training's figure already).
A configuration is the parameters its method uses (`used_params`: beta and lambda only where
the method reads them), so trials that differ only in a setting their method ignores are
repeats of one configuration, not configurations of their own. Repeats of one configuration
are averaged (`mean_of_figures`: a meter's bias does not shrink, their spread is added); a
configuration some repeat of which never reaches q does not count as reaching it. Each method
is represented by its cheapest configuration; where that is the least of several, the rule says
so and how many repeats it rests on (the least of noisy figures is biased low). The rule names
the cheapest method only where its interval lies below every other's; otherwise it says which
cannot be told apart.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from raydistill.equal_quality import curve_of, energy_at_quality, quality_band
from raydistill.intervals import Figure, fmt_interval, mean_of_figures

POLICY_METHODS = ("none", "sft", "logit", "onpolicy")


@dataclass(frozen=True)
class PolicyRun:
    """One trial: its dev curve (checks with step, steps, quality, n and `spent_j`, the training
    energy up to the check), its whole student training (rollouts included), the teacher's
    artifacts it paid for, and its teacher_scoring over the whole training."""

    trial_id: str
    method: str
    curve: list[dict]
    training: Figure
    teacher_once: Figure = field(default_factory=lambda: Figure.of(0.0))
    teacher_recurring: Figure = field(default_factory=lambda: Figure.of(0.0))
    configuration: str = ""  # runs with the same method and configuration are repeats


def energy_to_quality(run: PolicyRun, q: float) -> Figure | None:
    """E(q) of one run (module doc), or None where its training never reached q."""
    n = run.curve[-1].get("n") if run.curve else None
    matched = energy_at_quality(run.curve, q, run.training, n)
    if not matched["reached"]:
        return None
    trained = matched["figure"]
    share = min(1.0, trained.value / run.training.value) if run.training.value > 0 else 1.0
    return run.teacher_once + run.teacher_recurring.scaled(share) + trained


def common_quality(runs: Sequence[PolicyRun]) -> float | None:
    """The best dev quality every method reached: over the methods present, the lowest of
    each method's highest check. None without a dev check."""
    best: dict[str, float] = {}
    for r in runs:
        if r.curve:
            top = max(float(p["quality"]) for p in r.curve)
            best[r.method] = max(best.get(r.method, top), top)
    return min(best.values()) if best else None


def configuration_energies(runs: Sequence[PolicyRun],
                           q: float) -> dict[tuple[str, str], Figure | None]:
    """(method, configuration) -> E(q), the mean over its repeats, or None where some repeat
    never reached q."""
    groups: dict[tuple[str, str], list[PolicyRun]] = {}
    for r in runs:
        groups.setdefault((r.method, r.configuration or r.trial_id), []).append(r)
    out: dict[tuple[str, str], Figure | None] = {}
    for key, repeats in groups.items():
        figures = [energy_to_quality(r, q) for r in repeats]
        # a repeat that never got there: the configuration does not reach q
        out[key] = None if any(f is None for f in figures) else mean_of_figures(
            [f for f in figures if f is not None])
    return out


def method_energies(runs: Sequence[PolicyRun], q: float) -> dict[str, tuple[str, Figure] | None]:
    """method -> (its cheapest configuration, E(q) there), or None where none reached q."""
    out: dict[str, tuple[str, Figure] | None] = {}
    for (method, config), fig in configuration_energies(runs, q).items():
        out.setdefault(method, None)
        if fig is not None and (out[method] is None or fig.value < out[method][1].value):
            out[method] = (config, fig)
    return out


def policy_rules(runs: Sequence[PolicyRun], q: float | None = None) -> list[str]:
    """The sentences: E(q) of each method with its interval and which used the least, where
    the intervals say so. `q` default: `common_quality`."""
    q = common_quality(runs) if q is None else q
    if q is None:
        return []
    energies = method_energies(runs, q)
    reached = {m: v for m, v in energies.items() if v is not None}
    reaching = Counter(m for (m, _), f in configuration_energies(runs, q).items()
                       if f is not None)
    n = next((r.curve[-1].get("n") for r in runs if r.curve), None)
    lo, hi = quality_band(q, n)
    band = f" (a dev score on {n} rows: {lo:.3f}-{hi:.3f} cannot be told from it)" if n else ""
    rules = []
    for m in _ordered(set(energies) - set(reached)):
        rules.append(f"{m} never reached dev quality {q:.3f} in its training.")
    if not reached:
        return rules
    ranked = sorted(reached.items(), key=lambda kv: kv[1][1].value)
    parts = "; ".join(f"{m}{_config(c, f, reaching[m])} {fmt_interval(f.interval())}"
                      for m, (c, f) in ranked)
    head = (f"Energy to reach dev quality {q:.3f}{band}, teacher side included (its artifacts "
            f"in full, teacher_scoring up to the crossing): {parts}.")
    best, (_, best_fig) = ranked[0]
    tied = [m for m, (_, f) in ranked[1:] if f.interval().overlaps(best_fig.interval())]
    if len(ranked) == 1:
        verdict = f" Only {best} reached it."
    elif not tied:
        verdict = (f" {best} reached it on the least energy: its interval lies below every "
                   "other method's.")
    else:
        verdict = (f" {best} used the least, but not distinguishably from "
                   f"{', '.join(tied)} (their intervals overlap).")
    return [*rules, head + verdict]


def _ordered(methods: set[str]) -> list[str]:
    return sorted(methods, key=lambda m: (POLICY_METHODS.index(m)
                                          if m in POLICY_METHODS else len(POLICY_METHODS), m))


def _config(config: str, fig: Figure, configurations: int = 1) -> str:
    """The configuration, and where it is the least of several, that it was picked as such and
    on how many repeats (a single run's figure picked as a minimum is biased low)."""
    notes = [config] if config else []
    if configurations > 1:
        runs = "a single run" if fig.repeats <= 1 else f"mean of {fig.repeats} repeats"
        notes.append(f"the least of {configurations} configurations that reached it, {runs}")
    return f" [{'; '.join(notes)}]" if notes else ""


# Settings only some methods read: a trial's configuration leaves out the ones its method
# ignores (policy.yaml varies them for every method; the space format has no conditions).
ONPOLICY_PARAMS = ("distill.lmbda",)
JSD_PARAMS = ("distill.beta",)  # on-policy's generalized JSD, and logit KD with loss jsd


def used_params(method: str, row: pd.Series, params: Sequence[str]) -> list[str]:
    """The `param.*` columns of `params` this trial's method reads (beta for logit only where
    the table says its loss is jsd: a sweep varying beta for logit KD varies distill.loss)."""
    jsd = method == "onpolicy" or (method in ("logit", "feature", "relational")
                                   and row.get("param.distill.loss") == "jsd")
    return [c for c in params
            if not (c[6:] in ONPOLICY_PARAMS and method != "onpolicy")
            and not (c[6:] in JSD_PARAMS and not jsd)]


# ---- from a sweep's trials table ---------------------------------------------------------------


def _figure(row: pd.Series, prefix: str) -> Figure:
    """`<prefix>_j` with its meters where the table has them, else its stated error."""
    from raydistill.search.derived import repeats_figure

    fig = repeats_figure(row.to_frame().T, prefix)
    if fig is not None:
        return fig
    err = row.get(f"{prefix}_error_j")
    return Figure.of(float(row.get(f"{prefix}_j", 0.0) or 0.0),
                     independent_j=float(err) if pd.notna(err) else 0.0)


def runs_from_trials(trials: pd.DataFrame) -> list[PolicyRun]:
    """PolicyRuns of the finished trials of a sweep whose method is one of POLICY_METHODS.
    teacher_scoring's part of the teacher side: its `teacher_scoring_j` column where the table
    has one; else all of an onpolicy trial's teacher side (scaled to the share reached, the
    conservative reading for the others: their artifacts are counted in full)."""
    if "param.distill.method" not in trials.columns:
        return []
    done = trials[(trials.get("status", "finished") == "finished")
                  & trials["param.distill.method"].isin(POLICY_METHODS)]
    # a run's trials carry their id as `param.trial`: not a setting (report.rules.run_trials)
    params = sorted(c for c in done.columns if c.startswith("param.")
                    and c not in ("param.trial", "param.distill.method"))
    runs = []
    for _, row in done.iterrows():
        side = _figure(row, "teacher_side")
        if "teacher_scoring_j" in row.index and pd.notna(row["teacher_scoring_j"]):
            share = float(row["teacher_scoring_j"]) / side.value if side.value > 0 else 0.0
            # scoring's own stated error where the table has it, not a share of the artifacts'
            err = row.get("teacher_scoring_error_j")
            recurring = Figure.of(float(row["teacher_scoring_j"]), independent_j=float(err)) \
                if err is not None and pd.notna(err) else side.scaled(share)
        else:
            share = 1.0 if row["param.distill.method"] == "onpolicy" else 0.0
            recurring = side.scaled(share)
        method = str(row["param.distill.method"])
        runs.append(PolicyRun(str(row["trial_id"]), method,
                              curve_of(row.get("dev_curve")), _figure(row, "student_training"),
                              side.scaled(1.0 - share), recurring,
                              ", ".join(f"{c[6:]}={row[c]}"
                                        for c in used_params(method, row, params))))
    return runs
