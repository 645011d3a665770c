"""The design rules a report states, computed from its data with their intervals (pure).

The rules carry each figure's error (its stated measurement error and, over repeats, their
spread) and are made only where the interval supports them: N* and the deployer's break-even
tokens* when distinguishable (`payback.py`), one stage or engine below another when intervals
do not overlap.
`definitions` says what each derived figure is, for the report to print beside them.
"""

from __future__ import annotations

import itertools

import pandas as pd

from raydistill.energy.accuracy import CLASSES
from raydistill.report.data import ReportData
from raydistill.report.payback import payback_rules
from raydistill.search.derived import (
    matching_baselines,
    n_star_of,
    repeats_interval,
    rows_error_j,
)
from raydistill.search.uncertainty import (
    Interval,
    distinguishable,
    fmt_interval,
    fmt_ratio,
)


def _policy_rules(trials: pd.DataFrame) -> list[str]:
    """Where a sweep has on-policy trials (a recurring teacher, no N*): which method reached a
    dev quality on the least energy (report/policy_rules.py)."""
    from raydistill.report.policy_rules import policy_rules, runs_from_trials

    method = trials.get("param.distill.method") if len(trials) else None
    if method is None or not (method == "onpolicy").any():
        return []
    return policy_rules(runs_from_trials(trials))


def design_rules(data: ReportData) -> list[str]:
    """Statements computed from the data, each with the numbers behind it and their errors; a
    statement whose interval does not support it is not made (see `definitions`)."""
    rules: list[str] = []
    r = data.results
    main = r[~r["stage"].str.startswith("inference_")]
    if len(main):
        total = main["energy_j"].sum()
        rules.extend(_stage_rules(main))
        rules.extend(_load_rule(main, total))
        rules.extend(_onpolicy_rules(main))
    rules.extend(payback_rules(data))
    rules.extend(_policy_rules(data.trials))
    done = data.trials[data.trials["status"] == "finished"]
    front = done[done["trial_id"].isin(data.pareto_ids)].sort_values("energy_j")
    params = [c for c in data.trials.columns if c.startswith("param.")]
    for _, row in front.iterrows():
        setting = ", ".join(f"{c[6:]}={row[c]}" for c in params) or "its settings"
        rules.append(f"Under an energy budget of {row['energy_j']:,.1f} J the best trial is "
                     f"{row['trial_id']} ({setting}) at quality {row['quality']:.3f}.")
    rules.extend(engine_rules(done))
    wasted = data.trials.get("wasted_j")
    if wasted is not None and wasted.sum() > 0:
        rules.append(f"Stopped, failed and retried attempts wasted {wasted.sum():,.1f} J "
                     f"({wasted.sum() / max(main['energy_j'].sum(), 1e-12):.0%} of the sweep).")
    return rules


def _interval(rows: pd.DataFrame, value: str = "energy_j") -> Interval:
    """The sum of `rows[value]` with its stated error (errors of a sum add)."""
    return Interval(float(rows[value].sum()), rows_error_j(rows, value))


def _stage_rules(main: pd.DataFrame) -> list[str]:
    """The largest stage (named only when its interval is clear of the next one's) and the
    teacher side's share, each with its stated error."""
    stages = {s: _interval(g) for s, g in main.groupby("stage", sort=False)}
    total = main["energy_j"].sum()
    ranked = sorted(stages.items(), key=lambda kv: -kv[1].value)
    top, first = ranked[0]
    share = first.value / total if total else 0.0
    if len(ranked) == 1 or distinguishable(first, ranked[1][1]):
        rules = [f"The largest stage is {top}: {fmt_interval(first)} (stated) of {total:,.1f} J "
                 f"({share:.0%})."]
    else:
        tied = [s for s, iv in ranked if iv.overlaps(first)]
        rules = [f"The largest stages, {', '.join(tied)}, are not distinguishable within their "
                 f"stated errors ({'; '.join(f'{s} {fmt_interval(stages[s])}' for s in tied)})."]
    teacher = _interval(main[main["side"] == "teacher"])
    setup = _interval(main[main["side"] == "setup"])
    named = "generation + logit caching" + (
        " + on-policy scoring" if (main["stage"] == "teacher_scoring").any() else "")
    rules.append(f"Teacher-side work ({named}) took {fmt_interval(teacher)} "
                 f"({teacher.value / total:.0%} of all measured energy); training the teacher "
                 f"(setup) took {fmt_interval(setup)} more ({setup.value / total:.0%}).")
    return rules


def _load_rule(main: pd.DataFrame, total: float) -> list[str]:
    """How much went to loading models, which per-token figures leave out (results from before
    phases have no load_j)."""
    if "load_j" not in main.columns or not main["load_j"].sum() > 0:
        return []
    load = _interval(main, "load_j")
    top = main.loc[main["load_j"].idxmax()]
    return [f"Loading models took {fmt_interval(load)} ({load.value / total:.0%} of all "
            f"measured energy), most of it in {top['stage']} of {top['trial_id']} "
            f"({top['load_j']:,.1f} J of its {top['energy_j']:,.1f} J); J/token figures are "
            f"steady state and leave it out."]


def _onpolicy_rules(main: pd.DataFrame) -> list[str]:
    """Per on-policy trial: the teacher's recurring scoring bill (busy and idle apart) against
    the student's steady training, and the rollouts' J per generated token (results from
    before the rollout and idle phases have neither)."""
    rules = []
    for trial, g in main[main["stage"] == "teacher_scoring"].groupby("trial_id", sort=False):
        student = main[(main["trial_id"] == trial) & (main["stage"] == "student_training")]
        scoring = _interval(g)
        parts = [f"{c[:-2]} {g[c].sum():,.1f} J" for c in ("work_j", "idle_j", "load_j")
                 if c in g.columns]
        text = (f"On-policy teacher scoring in {trial} took {fmt_interval(scoring)} "
                f"({', '.join(parts).replace('work', 'busy')}; idle is its devices held "
                f"between requests). It recurs every step and leaves nothing to reuse: no N* "
                f"(see energy to quality).")
        if "rollout_j" in student.columns and student["rollout_tokens"].sum() > 0:
            roll = _interval(student, "rollout_j")
            n = int(student["rollout_tokens"].sum())
            text += (f" The student's rollouts took {fmt_interval(roll)} for {n:,} generated "
                     f"tokens ({roll.value / n * 1e3:,.3g} mJ/token), apart from its update.")
        rules.append(text)
    return rules


def engine_rules(done: pd.DataFrame) -> list[str]:
    """What the teacher's inference engine did to the teacher side, per engine the sweep tried:
    means over its finished trials with their errors (stated, and the spread over the engine's
    trials); J per generated token is steady state, measured. One engine is said to use less
    energy per generated token than another only when their intervals do not overlap."""
    col = "param.generation.engine"
    if col not in done.columns or "teacher_side_j" not in done:
        return []
    taught = done[done["teacher_side_j"] > 0]  # the no-teacher baselines ran no engine
    if taught[col].nunique() < 2:
        return []
    base = done[done.get("param.distill.method", pd.Series("", index=done.index)) == "none"]
    parts, ept = [], {}
    for engine, g in taught.groupby(col):
        side = repeats_interval(g, "teacher_side_j", "teacher_side_error_j")
        per_token = repeats_interval(g, "teacher_j_per_generated_token",
                                     "teacher_error_j_per_generated_token")
        ratio = n_star_of(g, matching_baselines(g, base)) if len(base) else None
        n_text = ("no N*: no baseline trial" if ratio is None else f"N* {fmt_ratio(ratio)}")
        ept_text = "no J per generated token" if per_token is None else \
            f"{fmt_interval(per_token, 'J')} per generated token"
        if per_token is not None:
            ept[str(engine)] = per_token
        parts.append(f"{engine}: teacher side {fmt_interval(side)} "
                     f"({pd.to_numeric(g['teacher_share'], errors='coerce').mean():.0%} of the "
                     f"trial), {ept_text}, {n_text}")
    rules = ["Teacher engine (means over the finished trials a teacher taught): "
             + "; ".join(parts) + "."]
    return rules + _engine_comparisons(ept)


def _engine_comparisons(ept: dict[str, Interval]) -> list[str]:
    """'A uses less energy per generated token than B' for each pair whose intervals do not
    overlap; nothing for a pair they cannot tell apart."""
    out = []
    for (a, ia), (b, ib) in itertools.combinations(sorted(ept.items(), key=lambda kv: kv[1].value),
                                                   2):
        if distinguishable(ia, ib):
            out.append(f"Teacher engine {a} uses less energy per generated token than {b}: "
                       f"{fmt_interval(ia, 'J')} against {fmt_interval(ib, 'J')}.")
    return out


def definitions() -> list[tuple[str, str]]:
    """The derived figures and their uncertainty, as the report defines them."""
    stated = "; ".join(f"{c.name} ±{c.relative:.0%} "
                       f"({'judgement' if c.judgement else 'sourced'}: {c.source})"
                       for c in CLASSES.values() if c.relative > 0)
    return [
        ("N*", "N* = T ÷ (E_train,baseline − E_train,distilled): how many times the teacher's "
               "artifacts (generation + logit caching, energy T) must be reused before the "
               "student training each reuse saves against the no-teacher baseline (the "
               "finished distill.method: none trials trained like it, their repeats averaged) "
               "has paid for them. Given as N* (low–high), a 95% interval: where the table "
               "carries meters, by first-order propagation in log space with each meter's bias "
               "shared (it cancels in the difference, and in the ratio where T was measured by "
               "the same sensor; a model's bias is kept per stage), else from the ends of the "
               "intervals of T and of the difference; 'not distinguishable' when the "
               "difference's interval includes 0; 'never' when distilled training is clearly "
               "dearer. At equal steps the baseline trained as many steps; at equal quality "
               "its energy up to the dev check at which it first reaches the distilled "
               "student's dev quality (the cheapest baseline configuration that does), with "
               "the dev checks' sampling noise in the interval."),
        ("tokens*", "tokens* = B ÷ (EPT_teacher − EPT_student), B = teacher side + student "
                    "training + evaluation: the inference tokens served by the student instead "
                    "of the teacher that pay back the whole distillation bill. EPT is the "
                    "steady-state energy per token of the inference probes: work-phase J ÷ "
                    "tokens of each trial's inference_teacher / inference_student window, run "
                    "after an untimed warm-up pass (per trial, as the probe ran in it). Same "
                    "interval logic as N*; 'never' when the student is clearly costlier per "
                    "token."),
        ("stated error", f"Each device's energy in each window carries its own error, stated "
                         f"from how it was measured, on what, and for how long: {stated}. A "
                         f"window shorter than a few of its sensor's refresh periods adds 2 × "
                         f"period ÷ (coverage × length); a row mixing methods takes the worst; "
                         f"unmeasured time adds its bound (its device's peak power); a stage "
                         f"sums its devices' errors, and errors of a sum add. Conservative, "
                         f"documented assumptions (raydistill/energy/accuracy.py), not measured"
                         f" by this run."),
        ("repeats", "With search.repeats ≥ 2 the trials with identical parameters are repeats: "
                    "a figure is their mean, and its error the stated error and the 95% "
                    "t-interval of the mean over the repeats (Student's t for their count), in "
                    "quadrature; a single run's spread is unknown, not zero."),
        ("rules", "Every interval is a stated 95% interval. Figures from the same meter (node, "
                  "device and error class) share its bias: it cancels in a difference of two "
                  "of them and in their ratio; different meters' biases and the independent "
                  "parts (short-window edges, unmeasured bounds) add in quadrature "
                  "(raydistill/intervals.py). Results from before meters were recorded add "
                  "their stated errors linearly. A rule is stated only when its interval "
                  "supports it: a payback when distinguishable, one stage or engine below "
                  "another when their intervals do not overlap."),
        ("N* (equal quality)", "raydistill run: T ÷ (E_baseline(q*) − E_train,distilled), q* "
                               "the distilled student's final in-training dev check and "
                               "E_baseline(q*) the baseline's training energy up to its first "
                               "dev check reaching q* (raydistill/equal_quality.py); the "
                               "equal-steps N* stays beside it."),
    ]
