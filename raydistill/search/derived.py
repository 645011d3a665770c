"""The figures derived from a sweep's trials, with their uncertainty (pure: pandas only).

Every figure carries its error (J, or J per token) beside it: the stated error of the
measurement (raydistill.energy.accuracy, from each row's method) and, where a configuration ran
several times (`search.repeats`), the spread over its repeats. From them, per configuration:
N* = teacher side ÷ (baseline training − distilled training), and the deployer's break-even
tokens* = bill ÷ (EPT_teacher − EPT_student), each a number only where its interval supports
one (raydistill.search.uncertainty).
"""

from __future__ import annotations

import json

import pandas as pd

from raydistill.energy.accuracy import UNKNOWN_RELATIVE_ERROR, relative_error
from raydistill.energy.meters import has_meters, parts_of
from raydistill.equal_quality import SWEEP_COLUMNS, curve_of, sweep_equal_quality
from raydistill.intervals import (
    Figure,
    Interval,
    Ratio,
    difference,
    figure_ratio,
    figure_sum,
    mean_of_figures,
    mean_of_repeats,
    ratio_bounds,
)
from raydistill.results import NO_AMORTISATION, TEACHER_STAGES, error_column, stage_figure

STAGE_OF = {"synthetic_data": "teacher_generation", "logit_cache": "teacher_logit_caching"}


def _method_column(table: pd.DataFrame) -> str | None:
    """The results table calls it energy_method, a ledger's rows method; a table with neither
    gets the unknown (worst) stated error."""
    return next((c for c in ("energy_method", "method") if c in table.columns), None)


def _rows(table: pd.DataFrame, attempt: str | None, stage: str) -> pd.DataFrame:
    if not len(table) or attempt is None:
        return table.iloc[0:0]
    return table[(table["trial_id"] == attempt) & (table["stage"] == stage)]


def rows_error_j(rows: pd.DataFrame, value: str = "energy_j") -> float:
    """Stated error (J) of the sum of `rows[value]` (errors add: one meter's bias): each row's
    own `stated_error_j` where the table has it (the sum over its devices), else its method's
    rule (tables from before rows stated their errors)."""
    if not len(rows):
        return 0.0
    return float(error_column(rows, value).sum())


def _rows_relative_error(rows: pd.DataFrame) -> float:
    """The worst stated relative error among rows: stated_error_j ÷ energy_j where the table
    has it, else the method's rule (UNKNOWN where there are no rows or no method)."""
    method = _method_column(rows)
    if not len(rows) or (method is None and "stated_error_j" not in rows.columns):
        return UNKNOWN_RELATIVE_ERROR
    energy = pd.to_numeric(rows["energy_j"], errors="coerce").abs()
    own = error_column(rows) / energy.where(energy > 0)
    rule = [relative_error(m) for m in rows[method]] if method else [UNKNOWN_RELATIVE_ERROR] * len(
        rows)
    return max(float(o) if pd.notna(o) else r for o, r in zip(own, rule, strict=True))


def per_token(table: pd.DataFrame, attempt: str | None, stage: str,
              tokens: str = "tokens") -> tuple[float | None, float | None]:
    """(J per token, its stated error) of a stage, steady state: work-phase energy ÷ tokens
    (`tokens` or `generated_tokens`); (None, None) where it counted none."""
    rows = _rows(table, attempt, stage)
    count = float(rows[tokens].sum()) if tokens in rows.columns else 0.0
    if count <= 0:
        return None, None
    work = "work_j" if "work_j" in rows.columns else "energy_j"
    return float(rows[work].sum()) / count, rows_error_j(rows, work) / count


def error_figures(table: pd.DataFrame, attempt: str | None, own: dict[str, float],
                  kept: dict[str, float], reused_j: float, artifacts: dict[str, dict],
                  reused_keys: list[str]) -> dict:
    """A trial's stated errors, its evaluation and its bill B = teacher side + student training
    + evaluation, and the steady-state J per token of its inference probes (teacher, student).

    Teacher side: its own teacher stages, the artifacts its lost attempts built (their
    builders' rows) and what it reused (at its builders' worst relative error; the unknown one
    where the builders' rows are not in this ledger)."""
    own_err = sum(rows_error_j(_rows(table, attempt, s)) for s in TEACHER_STAGES if s in own)
    kept_err = sum(rows_error_j(_rows(table, artifacts[k].get("trial_id"),
                                       STAGE_OF.get(k.split(":")[0], ""))) for k in kept)
    builders = [_rows(table, artifacts[k].get("trial_id"), STAGE_OF.get(k.split(":")[0], ""))
                for k in reused_keys]
    found = [b for b in builders if len(b)]
    reused_rel = max((_rows_relative_error(b) for b in found), default=UNKNOWN_RELATIVE_ERROR)
    side = sum(own.get(s, 0.0) for s in TEACHER_STAGES) + sum(kept.values()) + reused_j
    side_err = own_err + kept_err + reused_rel * reused_j
    training = own.get("student_training", 0.0)
    training_err = rows_error_j(_rows(table, attempt, "student_training"))
    evaluation = own.get("evaluation", 0.0)
    evaluation_err = rows_error_j(_rows(table, attempt, "evaluation"))
    ept_t, ept_t_err = per_token(table, attempt, "inference_teacher")
    ept_s, ept_s_err = per_token(table, attempt, "inference_student")
    _, gen_err = per_token(table, attempt, "teacher_generation", "generated_tokens")
    return {**_meter_figures(table, attempt, kept, reused_j, artifacts, reused_keys),
            "teacher_side_error_j": side_err, "student_training_error_j": training_err,
            "teacher_scoring_error_j": rows_error_j(_rows(table, attempt, "teacher_scoring")),
            "evaluation_j": evaluation, "evaluation_error_j": evaluation_err,
            "bill_j": side + training + evaluation,
            "bill_error_j": side_err + training_err + evaluation_err,
            "ept_teacher_j_per_token": ept_t, "ept_teacher_error_j_per_token": ept_t_err,
            "ept_student_j_per_token": ept_s, "ept_student_error_j_per_token": ept_s_err,
            "teacher_error_j_per_generated_token": gen_err}


def _figure_columns(prefix: str, fig: Figure) -> dict:
    return {f"{prefix}_bias_parts": json.dumps(fig.biases),
            f"{prefix}_independent_j": fig.independent_j}


def _meter_figures(table: pd.DataFrame, attempt: str | None, kept: dict[str, float],
                   reused_j: float, artifacts: dict[str, dict], reused_keys: list[str]) -> dict:
    """The teacher side's and the student training's error by meter (`<figure>_bias_parts`,
    JSON {meter: J}, and `<figure>_independent_j`), so that N* cancels one meter's common bias
    (raydistill.intervals); {} for a results table without meters (old runs: N* falls back to
    the stated errors added linearly). Reused artifacts carry their builders' meters, scaled to
    the energy reused; builders not in this ledger: the unknown class, independent."""
    if not len(table) or attempt is None or not has_meters(table):
        return {}
    parts = [stage_figure(table, attempt, TEACHER_STAGES)]
    parts += [stage_figure(table, artifacts[k].get("trial_id"),
                           (STAGE_OF.get(k.split(":")[0], ""),)) for k in kept]
    builders = figure_sum([stage_figure(table, artifacts[k].get("trial_id"),
                                        (STAGE_OF.get(k.split(":")[0], ""),))
                           for k in reused_keys])
    if reused_j > 0 and builders.value > 0:
        parts.append(builders.scaled(reused_j / builders.value))
    elif reused_j > 0:
        parts.append(Figure.of(reused_j, independent_j=UNKNOWN_RELATIVE_ERROR * reused_j))
    return {**_figure_columns("teacher_side", figure_sum(parts)),
            **_figure_columns("student_training",
                              stage_figure(table, attempt, ("student_training",)))}


def repeats_figure(trials: pd.DataFrame, prefix: str) -> Figure | None:
    """The mean over `trials` (repeats) of `<prefix>_j` as a Figure with its meters, or None
    where the table has no meter columns for it (then `repeats_interval` is the figure)."""
    value, parts, indep = f"{prefix}_j", f"{prefix}_bias_parts", f"{prefix}_independent_j"
    if not len(trials) or any(c not in trials.columns for c in (value, parts, indep)):
        return None
    rows = trials[[value, parts, indep]]
    if rows[value].isna().any() or rows[indep].isna().any():
        return None
    return mean_of_figures([Figure.of(float(v), parts_of(p), float(i))
                            for v, p, i in rows.itertuples(index=False)])


def _onpolicy(group: pd.DataFrame) -> bool:
    """The configuration's teacher scores every step (method onpolicy): not amortisable."""
    method = group.get("param.distill.method")
    return method is not None and bool((method == "onpolicy").any())


def n_star_of(group: pd.DataFrame, baselines: pd.DataFrame) -> Ratio | None:
    """N* of a configuration (its finished repeats) against the mean of the baseline trials:
    by meter where both tables carry them (one meter's bias cancels), else from the stated
    errors (`n_star_ratio`). On-policy teacher work recurs every step and is never reused:
    no N* (`results.NO_AMORTISATION`; the comparison is the energy to reach a quality)."""
    if _onpolicy(group):
        return Ratio(NO_AMORTISATION, None, None, None)
    side, training = (repeats_figure(group, "teacher_side"),
                      repeats_figure(group, "student_training"))
    base = repeats_figure(baselines, "student_training")
    if side is not None and training is not None and base is not None:
        return None if side.value <= 0 else figure_ratio(side, base - training)
    return n_star_ratio(repeats_interval(group, "teacher_side_j", "teacher_side_error_j"),
                        repeats_interval(group, "student_training_j",
                                         "student_training_error_j"),
                        repeats_interval(baselines, "student_training_j",
                                         "student_training_error_j"))


# Columns `derived_figures` adds: per configuration (its finished repeats), value and bounds
# only where the figure is distinguishable; the verdict says why not otherwise.
DERIVED_COLUMNS = ("repeats", "n_star", "n_star_low", "n_star_high", "n_star_verdict",
                   "break_even_tokens", "break_even_tokens_low", "break_even_tokens_high",
                   "break_even_tokens_verdict", *SWEEP_COLUMNS)


def configuration_keys(trials: pd.DataFrame) -> pd.Series:
    """One key per configuration: trials with identical `param.*` values are repeats of it
    (`search.repeats`). Without parameters every trial is its own configuration."""
    params = sorted(c for c in trials.columns if c.startswith("param."))
    if not params:
        return trials["trial_id"].astype(str)
    return pd.Series([repr(tuple(str(v) for v in row))
                      for row in trials[params].itertuples(index=False)], index=trials.index)


def repeats_interval(trials: pd.DataFrame, value: str, error: str) -> Interval | None:
    """The mean of `value` over `trials` (repeats) with its error: each trial's stated error
    from `error` (UNKNOWN_RELATIVE_ERROR × value where the table has no such column: a table
    from before errors were stated) and the spread over them. None where no trial has it."""
    if value not in trials.columns:
        return None
    values = pd.to_numeric(trials[value], errors="coerce")
    if error in trials.columns:
        errors = pd.to_numeric(trials[error], errors="coerce")
    else:
        errors = UNKNOWN_RELATIVE_ERROR * values.abs()
    ok = values.notna() & errors.notna()
    if not ok.any():
        return None
    return mean_of_repeats(values[ok].tolist(), errors[ok].tolist())


def n_star_ratio(teacher_side: Interval | None, training: Interval | None,
                 baseline_training: Interval | None) -> Ratio | None:
    """N* = teacher side ÷ (baseline's student training − this student training), with the
    interval logic of `ratio_bounds`; None where a figure is missing or no teacher ran."""
    if teacher_side is None or training is None or baseline_training is None \
            or teacher_side.value <= 0:
        return None
    return ratio_bounds(teacher_side, difference(baseline_training, training))


def break_even_ratio(bill: Interval | None, ept_teacher: Interval | None,
                     ept_student: Interval | None) -> Ratio | None:
    """tokens* = B ÷ (EPT_teacher − EPT_student): inference tokens served by the student
    instead of the teacher that pay back the distillation bill; None where a figure is
    missing."""
    if bill is None or ept_teacher is None or ept_student is None:
        return None
    return ratio_bounds(bill, difference(ept_teacher, ept_student))


def _ratio_fields(prefix: str, r: Ratio | None) -> dict:
    if r is None:
        return {prefix: None, f"{prefix}_low": None, f"{prefix}_high": None,
                f"{prefix}_verdict": None}
    return {prefix: r.value, f"{prefix}_low": r.low, f"{prefix}_high": r.high,
            f"{prefix}_verdict": r.verdict}


def _baseline_mask(trials: pd.DataFrame) -> pd.Series:
    method = trials.get("param.distill.method")
    if method is None:
        return pd.Series(False, index=trials.index)
    return method == "none"


# Parameters of the teacher side: a baseline (no teacher) is the same training without them.
_TEACHER_SIDE = ("param.distill.", "param.generation.", "param.teacher.")


def matching_baselines(group: pd.DataFrame, baselines: pd.DataFrame) -> pd.DataFrame:
    """The `method: none` trials trained like `group` (the same value of every parameter that is
    not the teacher side's: steps, learning rate, batch...): the equal-steps comparison. A sweep
    whose baselines differ in steps must not average them into one."""
    # a run's trials carry their id as `param.trial` (report.payback.run_trials): not a setting
    own = [c for c in group.columns if c.startswith("param.") and c != "param.trial"
           and not c.startswith(_TEACHER_SIDE) and c in baselines.columns]
    if not len(baselines) or not own:
        return baselines
    first = group.iloc[0]
    same = pd.Series(True, index=baselines.index)
    for c in own:
        same &= baselines[c].astype(str) == str(first[c])
    return baselines[same]


def configuration_figures(group: pd.DataFrame, baselines: pd.DataFrame,
                          is_baseline: bool) -> dict:
    """N* and the break-even tokens of one configuration, from its finished repeats: N* at
    equal steps against the baselines trained like it, at equal quality against the cheapest
    baseline configuration that reaches its dev quality."""
    # an on-policy teacher is paid again by every run: nothing to amortise, so no N* of either
    # kind (report.policy_rules compares the energy to reach a dev quality instead)
    none = is_baseline or _onpolicy(group)
    n_star = None if is_baseline else n_star_of(group, matching_baselines(group, baselines))
    equal = dict.fromkeys(SWEEP_COLUMNS) if none else _equal_quality(group, baselines, n_star)
    tokens = break_even_ratio(
        repeats_interval(group, "bill_j", "bill_error_j"),
        repeats_interval(group, "ept_teacher_j_per_token", "ept_teacher_error_j_per_token"),
        repeats_interval(group, "ept_student_j_per_token", "ept_student_error_j_per_token"))
    return {**_ratio_fields("n_star", n_star), **_ratio_fields("break_even_tokens", tokens),
            **equal}


def _equal_quality(group: pd.DataFrame, baselines: pd.DataFrame, equal_steps: Ratio | None
                   ) -> dict:
    """N* at equal quality (raydistill.equal_quality) from the trials' `dev_curve` column: the
    baselines' training energy up to the dev check that first reaches this configuration's
    final dev check; empty where the table has no curves or meters (older sweeps)."""
    if "dev_curve" not in group.columns or not len(baselines):
        return dict.fromkeys(SWEEP_COLUMNS)
    curves = [curve_of(c) for c in group["dev_curve"]]
    configurations = []
    for _, same in baselines.groupby(configuration_keys(baselines), sort=False):
        bases = [(curve_of(row["dev_curve"]), repeats_figure(same.loc[[i]], "student_training"))
                 for i, row in same.iterrows()]
        if any(fig is None or not curve for curve, fig in bases):
            return dict.fromkeys(SWEEP_COLUMNS)
        configurations.append(bases)
    return sweep_equal_quality(curves, repeats_figure(group, "student_training"),
                               repeats_figure(group, "teacher_side"), configurations,
                               equal_steps)


def derived_figures(trials: pd.DataFrame) -> pd.DataFrame:
    """DERIVED_COLUMNS for every trial: the figures of its configuration over its finished
    repeats (None for a trial that did not finish). N* is measured against the mean of the
    sweep's finished `distill.method: none` trials, their spread included."""
    keys = configuration_keys(trials)
    finished = trials["status"] == "finished"
    base = _baseline_mask(trials)
    baselines = trials[finished & base]
    figures = {key: configuration_figures(g, baselines, bool(base[g.index].all()))
               for key, g in trials[finished].groupby(keys[finished], sort=False)}
    empty = {**_ratio_fields("n_star", None), **_ratio_fields("break_even_tokens", None),
             **dict.fromkeys(SWEEP_COLUMNS)}
    counts = keys[finished].value_counts()
    rows = [{"repeats": int(counts.get(k, 0)), **(figures.get(k, empty) if done else empty)}
            for k, done in zip(keys, finished, strict=True)]
    # object columns: None (no figure) stays None instead of becoming NaN
    out = pd.DataFrame(rows, index=trials.index, columns=list(DERIVED_COLUMNS), dtype=object)
    return out.astype({"repeats": "int64"})


def n_star_column(trials: pd.DataFrame) -> pd.Series:
    """N* per trial (its configuration's): a number only where distinguishable, else None
    (`derived_figures` says why: `n_star_verdict`)."""
    return derived_figures(trials)["n_star"]
