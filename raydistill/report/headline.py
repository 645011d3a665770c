"""The report's answer in a few sentences (pure): what the distillation cost, the teacher
side's share, what the student kept of the teacher's quality, and whether it pays back.

- cost: every measured stage but the inference probes (as the design rules count "all measured
  energy"), teacher training (setup) and baselines included; CO2e is the electricity's, with
  embodied CO2e and water beside it, each "not estimated" where it had no inputs;
- teacher side: the rows with side == "teacher" (generation + logit caching);
- quality: a run's OM_perf (student ÷ teacher score) of its quality score per trial; a sweep's
  Pareto set with energy and quality, and its knee;
- payback: N* by the verdict of its interval (`payback.payback_frame`), for each distilled trial
  of a run, for the knee of a sweep.
"""

from __future__ import annotations

import math

import pandas as pd

from raydistill.report.data import (
    ReportData,
    baseline_ids,
    embodied_or_nan,
    om_key,
    om_perf,
    selected_on,
    water_estimated,
)
from raydistill.report.payback import figure_text, payback_frame
from raydistill.search.uncertainty import DISTINGUISHABLE, NEVER, NOT_DISTINGUISHABLE
from raydistill.units import (
    NOT_ESTIMATED,
    fmt_co2e_g,
    fmt_energy_j,
    fmt_pct,
    fmt_sig,
    fmt_water_l,
)

NO_BASELINE = "no no-teacher baseline trial: N* not computed"


def headline(data: ReportData) -> str:
    """Two to four sentences for the top of the report (plain text)."""
    main = data.results[~data.results["stage"].astype(str).str.startswith("inference_")] \
        if len(data.results) else data.results
    if not len(main):
        return f"No energy was measured in this {data.kind} directory."
    quality = _run_quality(data) if data.kind == "run" else _sweep_quality(data)
    return " ".join(s for s in (_cost(data, main), quality, _payback(data)) if s)


def _cost(data: ReportData, main: pd.DataFrame) -> str:
    total = float(main["energy_j"].sum())
    co2e = float(main["co2e_g"].sum()) if "co2e_g" in main else math.nan
    embodied = embodied_or_nan(main.get("embodied_co2e_g", pd.Series(dtype=float)))
    embodied_text = (f"embodied CO2e {fmt_co2e_g(embodied.sum())}" if embodied.notna().any()
                     else f"embodied CO2e {NOT_ESTIMATED}")
    water_text = (f"water {_water(main)}" if water_estimated(data)
                  else f"water {NOT_ESTIMATED}")
    trials = sorted(set(main["trial_id"].astype(str)) - {"setup"})
    scope = f"{len(trials)} trial{'s' if len(trials) != 1 else ''}"
    if data.kind == "run" and baseline_ids(data.metrics) & set(trials):
        scope += ", the no-teacher baseline among them"
    if (main["side"] == "setup").any():
        scope += ", plus training the teacher"
    what = "Distillation" if data.kind == "run" else "The sweep"
    sentence = (f"{what} cost {fmt_energy_j(total)} and {fmt_co2e_g(co2e)} CO2e in total "
                f"({scope}; inference probes not counted; {embodied_text}; {water_text}).")
    teacher = float(main.loc[main["side"] == "teacher", "energy_j"].sum())
    if teacher <= 0:
        return sentence + " No teacher-side work (generation, logit caching) was measured here."
    share = fmt_pct(teacher / total) if total > 0 else "–"
    return (sentence + f" The teacher side (generation + logit caching) took "
                       f"{fmt_energy_j(teacher)}, {share} of it.")


def _water(main: pd.DataFrame) -> str:
    return fmt_water_l(float(pd.to_numeric(main["water_l"], errors="coerce").sum()))


def _run_quality(data: ReportData) -> str:
    name = data.quality_name
    key = om_key(name) or name
    parts = []
    for m in data.metrics:
        tid, om = str(m["trial_id"]), om_perf(m, name)
        score = (m.get("scores") or {}).get(name)
        baseline = tid in baseline_ids(data.metrics)
        if om is not None:
            text = (f"the no-teacher baseline {tid} reached {fmt_pct(om)}" if baseline else
                    f"the student of {tid} kept {fmt_pct(om)} of the teacher's {key}")
            parts.append(text + (f" ({name} {fmt_sig(score)})" if score is not None else ""))
        elif score is not None:
            teachers = [(x.get("scores") or {}).get(f"teacher_{key}") for x in data.metrics]
            why = ("the teacher scored 0: OM_perf undefined" if 0 in teachers or 0.0 in teachers
                   else "no teacher score: OM_perf not computed")
            parts.append(f"{'the no-teacher baseline ' if baseline else 'trial '}{tid} scored "
                         f"{name} {fmt_sig(score)} ({why})")
    if not parts:
        return "No scores were recorded: what the student kept of the teacher's quality is " \
               "not known."
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def _sweep_quality(data: ReportData) -> str:
    done = data.trials[data.trials["status"] == "finished"] if len(data.trials) else data.trials
    front = done[done["trial_id"].astype(str).isin(data.pareto_ids)].sort_values("energy_j")
    if not len(front):
        return "No trial finished: there is no Pareto set."
    on = selected_on(data)
    beside = on != "test" and "quality_test" in front.columns  # test reported, never selecting
    points = "; ".join(
        f"{r['trial_id']} {fmt_energy_j(r['energy_j'])}, {fmt_sig(r['quality'])}"
        + (f" (test {fmt_sig(r['quality_test'])})" if beside and pd.notna(r["quality_test"])
           else "")
        for _, r in front.iterrows())
    knee = f"; knee {data.knee}" if data.knee is not None else ""
    split = {"dev": "dev; test beside, which selected nothing",
             "test": "test (an older sweep)"}.get(on, f"{on} (a sweep resumed across versions)")
    return f"Pareto set (energy, {data.quality_name} on {split}): {points}{knee}."


def _verdict(who: str, row: pd.Series) -> str:
    verdict = row.get("n_star_verdict")
    if verdict == DISTINGUISHABLE:
        return f"{who} pays back after N* = {figure_text(row, 'n_star')} reuses of its artifacts"
    if verdict == NEVER:
        return f"{who} never pays back on energy (its student training costs more than the " \
               "baseline's)"
    if verdict == NOT_DISTINGUISHABLE:
        return f"{who}'s N* is not distinguishable, so no payback by reuse is claimed"
    return f"{who}'s N* is not computed (a figure it needs is missing)"


def _payback(data: ReportData) -> str:
    frame = payback_frame(data)
    if frame.empty or "status" not in frame.columns:
        return ""
    done = frame[frame["status"] == "finished"]
    method = done.get("param.distill.method", pd.Series("", index=done.index))
    if not (method == "none").any():
        return f"Payback: {NO_BASELINE}."
    taught = done[(method != "none") & (pd.to_numeric(
        done.get("teacher_side_j", pd.Series(0.0, index=done.index)), errors="coerce") > 0)]
    if data.kind == "sweep":
        taught = taught[taught["trial_id"].astype(str) == str(data.knee)]
        if not len(taught):
            return f"Payback: the knee {data.knee} ran no teacher, so N* does not apply."
    if not len(taught):
        return "Payback: no trial ran a teacher, so N* does not apply."
    who = "the knee " if data.kind == "sweep" else ""
    return "Payback: " + "; ".join(_verdict(f"{who}{r['trial_id']}", r)
                                   for _, r in taught.iterrows()) + "."
