"""N* and the deployer's break-even per configuration: the table and the sentences (pure).

The rows of `payback_frame` are what the headline and the report's table show; `payback_rules`
are the sentences `rules.design_rules` states, each only where its interval supports it.
"""

from __future__ import annotations

import math

import pandas as pd

from raydistill.equal_quality import SWEEP_COLUMNS, table_fields
from raydistill.report.data import ReportData, baseline_ids
from raydistill.search.derived import (
    DERIVED_COLUMNS,
    break_even_ratio,
    configuration_keys,
    derived_figures,
    error_figures,
    matching_baselines,
    n_star_of,
    repeats_interval,
)
from raydistill.search.tables import teacher_figures
from raydistill.search.uncertainty import (
    DISTINGUISHABLE,
    NEVER,
    Interval,
    Ratio,
    fmt_interval,
    fmt_ratio,
)


def run_trials(data: ReportData) -> pd.DataFrame:
    """A run directory's trials as a sweep's trials table has them (teacher side, student
    training, evaluation, inference EPT, each with its stated error), from its results: the
    `<name>-baseline` trial is the no-teacher baseline (`raydistill run` names it so). Quality
    is the run's `data.quality_name` score (`data.quality_key`)."""
    method = str(data.config.get("distill", {}).get("method", "distilled"))
    r = data.results
    baselines = baseline_ids(data.metrics)
    rows = []
    for m in data.metrics:
        tid = m["trial_id"]
        mine = r[(r["trial_id"] == tid) & ~r["stage"].str.startswith("inference_")]
        own = mine.groupby("stage")["energy_j"].sum().to_dict()
        full = float(sum(own.values()))
        rows.append({"trial_id": tid, "status": "finished", "param.trial": tid,
                     "quality": (m.get("scores") or {}).get(data.quality_name, math.nan),
                     "param.distill.method": "none" if tid in baselines else method,
                     **teacher_figures(r, tid, full, own, {}, 0.0),
                     **error_figures(r, tid, own, {}, 0.0, {}, [])})
    return pd.DataFrame(rows)


def payback_frame(data: ReportData) -> pd.DataFrame:
    """The trials with N* and break-even tokens of their configuration (DERIVED_COLUMNS),
    computed afresh from the figures and errors the table holds."""
    trials = run_trials(data) if data.kind == "run" else data.trials
    if trials.empty or "status" not in trials.columns:
        return trials
    kept = trials.drop(columns=[c for c in DERIVED_COLUMNS if c in trials.columns])
    return kept.join(derived_figures(kept))


def figure_text(row: pd.Series | dict, prefix: str) -> str:
    """'12.5 (8.33–25)', 'not distinguishable', 'never' or '–' (no such figure)."""
    verdict = row.get(f"{prefix}_verdict")
    if not isinstance(verdict, str):
        return "–"
    if verdict != DISTINGUISHABLE:
        return verdict
    return fmt_ratio(Ratio(verdict, row[prefix], row[f"{prefix}_low"], row[f"{prefix}_high"]))


def payback_rules(data: ReportData) -> list[str]:
    """N* and break-even statements, one configuration at a time (its finished repeats)."""
    frame = payback_frame(data)
    if frame.empty or "teacher_side_j" not in frame.columns:
        return []
    done = frame[frame["status"] == "finished"]
    base = done[done.get("param.distill.method", pd.Series("", index=done.index)) == "none"]
    params = [c for c in done.columns if c.startswith("param.") and c != "param.trial"]
    rules = []
    for _, group in done.groupby(configuration_keys(done), sort=False):
        label = _label(group, params if data.kind == "sweep" else [])
        if not group.index.isin(base.index).any():
            rules.extend(_n_star_rule(label, group, base))
            rules.extend(_equal_quality_rule(label, _equal_quality_fields(data, group)))
        rules.extend(_break_even_rule(label, group))
    return rules


def _equal_quality_fields(data: ReportData, group: pd.DataFrame) -> dict:
    """N* at equal quality of a configuration: the sweep table's columns, or a run's
    metrics.json fields (`N_star_equal_quality*`) under the same names."""
    if data.kind == "sweep":
        row = group.iloc[0]
        return {k: row.get(k) for k in SWEEP_COLUMNS}
    ids = set(group["trial_id"])
    return table_fields(next((m for m in data.metrics if m.get("trial_id") in ids), None))


def _equal_quality_rule(label: str, f: dict) -> list[str]:
    """N* against the baseline's energy to reach this student's dev quality (not its steps)."""
    verdict, q = f.get("n_star_equal_quality_verdict"), f.get("q_star")
    if not isinstance(verdict, str) or q is None or q != q:
        return []
    where = f"dev quality {q:.3f}"
    if verdict == DISTINGUISHABLE:
        ratio = fmt_ratio(Ratio(verdict, f["n_star_equal_quality"],
                                f["n_star_equal_quality_low"], f["n_star_equal_quality_high"]))
        matched = fmt_interval(Interval(f["baseline_energy_at_q_star_j"],
                                        f["baseline_energy_at_q_star_error_j"]))
        return [f"{label} At equal quality ({where}, which the baseline reached after "
                f"{matched} of training) the teacher side pays back after N* = {ratio} reuses "
                f"(95%)."]
    if verdict == NEVER:
        return [f"{label} At equal quality ({where}) distillation never breaks even: the "
                f"baseline reaches that quality for less training energy than the distilled "
                f"student spent."]
    return [f"{label} N* at equal quality ({where}): {verdict}."]


def _label(group: pd.DataFrame, params: list[str]) -> str:
    ids = ", ".join(str(t) for t in group["trial_id"])
    first = group.iloc[0]
    setting = ", ".join(f"{c[6:]}={first[c]}" for c in params)
    repeats = f", {len(group)} repeats" if len(group) > 1 else ""
    return f"[{ids}{': ' + setting if setting else ''}{repeats}]"


def _n_star_rule(label: str, group: pd.DataFrame, base: pd.DataFrame) -> list[str]:
    """N* (equal steps) of one configuration in a sentence with its 95% intervals."""
    side = repeats_interval(group, "teacher_side_j", "teacher_side_error_j")
    ratio = n_star_of(group, matching_baselines(group, base))
    if ratio is None or side is None or ratio.denominator is None:
        return []
    saved = ratio.denominator  # one meter's common bias cancelled where the table says so
    if ratio.known:
        once = (" One run of each: their spread over repeats is not in this interval "
                "(search.repeats >= 2 measures it)." if len(group) < 2 else "")
        return [f"{label} Caching and generating with the teacher pays back after N* = "
                f"{fmt_ratio(ratio)} reuses of its artifacts (95%; teacher side "
                f"{fmt_interval(side)}; student training {fmt_interval(saved)} cheaper than the "
                f"no-teacher baseline at equal steps).{once}"]
    if ratio.verdict == NEVER:
        dearer = Interval(-saved.value, saved.error)
        return [f"{label} Distillation never breaks even on energy against the no-teacher "
                f"baseline: its student training cost {fmt_interval(dearer)} more; its gain is "
                f"quality: {pd.to_numeric(group['quality'], errors='coerce').mean():.3f}."]
    return [f"{label} N* is not distinguishable: the student training saved "
            f"{fmt_interval(saved)} against the no-teacher baseline, an interval that includes "
            f"0; no payback by reuse is claimed."]


def _break_even_rule(label: str, group: pd.DataFrame) -> list[str]:
    bill = repeats_interval(group, "bill_j", "bill_error_j")
    teacher = repeats_interval(group, "ept_teacher_j_per_token", "ept_teacher_error_j_per_token")
    student = repeats_interval(group, "ept_student_j_per_token", "ept_student_error_j_per_token")
    ratio = break_even_ratio(bill, teacher, student)
    if ratio is None or bill is None or teacher is None or student is None:
        return []
    epts = (f"EPT teacher {fmt_interval(teacher, 'J/token')}, student "
            f"{fmt_interval(student, 'J/token')}, steady state")
    if ratio.known:
        return [f"{label} Serving the student instead of the teacher pays back the whole "
                f"distillation bill B = {fmt_interval(bill)} after tokens* = {fmt_ratio(ratio)} "
                f"inference tokens ({epts})."]
    if ratio.verdict == NEVER:
        return [f"{label} The student costs more per inference token than the teacher ({epts}):"
                f" serving it instead never pays back the bill of {fmt_interval(bill)}."]
    return [f"{label} Break-even tokens* are not distinguishable: the student's J per token is "
            f"within error of the teacher's ({epts})."]


