"""The report's figures (matplotlib, Agg). Each returns the figure and the numbers it plotted,
so tests can hold the picture to the results table."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from raydistill.report.data import ReportData, power_series, selected_on, stage_spans
from raydistill.units import ENERGY_UNITS, fmt_energy_j, unit_for

# One colour per stage, the same in every report, in pipeline order (the bars stack so);
# teacher-side stages are also hatched. A stage not named here takes the next OTHER_COLOURS.
STAGE_COLOURS = {"teacher_training": "#7570b3", "teacher_generation": "#d95f02",
                 "teacher_logit_caching": "#e6ab02", "student_training": "#1b9e77",
                 "evaluation": "#e7298a"}
OTHER_COLOURS = ("#66a61e", "#a6761d", "#1f78b4", "#666666", "#b2df8a", "#fb9a99")
SIDE_LABELS = {"teacher": "teacher side", "setup": "setup: the teacher's training",
               "student": "student side", "evaluation": "evaluation"}


def stage_colours(stages: list[str]) -> dict[str, str]:
    """A distinct colour for each stage: its own where known, else the next unused one."""
    spare = iter(c for c in OTHER_COLOURS if c not in STAGE_COLOURS.values())
    return {s: STAGE_COLOURS.get(s) or next(spare, "#999999") for s in stages}


def energy_scale(max_j: float) -> tuple[float, str]:
    """(divisor, unit) for an energy axis whose largest value is `max_j` J (units.py's rule)."""
    return unit_for(max_j if max_j == max_j else 0.0, ENERGY_UNITS)


def energy_by_stage(data: ReportData):
    """Stacked bars: energy per stage for every trial, one colour per stage, teacher-side
    stages hatched; the axis in J, kJ or MJ by the tallest bar. The returned table is in J."""
    r = data.results[~data.results["stage"].str.startswith("inference_")]
    table = r.pivot_table(index="trial_id", columns="stage", values="energy_j", aggfunc="sum",
                          fill_value=0.0)
    order = [s for s in STAGE_COLOURS if s in table.columns]  # pipeline order, then others
    table = table[order + [s for s in table.columns if s not in order]]
    side = r.drop_duplicates("stage").set_index("stage")["side"]
    colours = stage_colours([str(s) for s in table.columns])
    factor, unit = energy_scale(float(table.sum(axis=1).max()) if len(table) else 0.0)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    bottom = pd.Series(0.0, index=table.index)
    for stage in table.columns:
        teacher = side.get(stage) == "teacher"
        label = f"{stage} ({SIDE_LABELS.get(side.get(stage, ''), side.get(stage))})"
        ax.bar(table.index, table[stage] / factor, bottom=bottom / factor, label=label,
               color=colours[str(stage)], hatch="//" if teacher else None, edgecolor="white",
               alpha=0.9)
        bottom += table[stage]
    ax.set_ylabel(f"energy ({unit})")
    ax.set_title("Energy by stage per trial (hatched: teacher side)")
    handles, labels = ax.get_legend_handles_labels()  # top of the stack first
    ax.legend(handles[::-1], labels[::-1], fontsize=7, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), title="stage (side)", title_fontsize=7)
    ax.tick_params(axis="x", rotation=30, labelsize=7)
    fig.tight_layout()
    return fig, table


def pareto_frontier(data: ReportData):
    done = data.trials[data.trials["status"] == "finished"]
    other = data.trials[data.trials["status"] != "finished"]
    on = done[done["trial_id"].isin(data.pareto_ids)].sort_values("energy_j")
    off = done[~done["trial_id"].isin(data.pareto_ids)]
    factor, unit = energy_scale(float(data.trials["energy_j"].max()) if len(data.trials)
                                else 0.0)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(off["energy_j"] / factor, off["quality"], color="#bbbbbb", label="dominated")
    if len(other):
        ax.scatter(other["energy_j"] / factor, [0.0] * len(other), marker="x", color="#bbbbbb",
                   label="stopped / failed (energy spent)")
    ax.step(on["energy_j"] / factor, on["quality"], where="post", color="#1b9e77")
    ax.scatter(on["energy_j"] / factor, on["quality"], color="#1b9e77", zorder=3,
               label="Pareto set")
    if data.knee is not None:
        k = done[done["trial_id"] == data.knee]
        ax.scatter(k["energy_j"] / factor, k["quality"], s=160, facecolors="none",
                   edgecolors="black", label=f"knee {data.knee}")
    ax.set_xlabel(f"energy ({unit})")
    ax.set_ylabel(f"{selected_on(data)} quality ({data.quality_name})")
    ax.set_title(f"Energy–quality frontier; hypervolume {data.hypervolume:.4g} "
                 f"(ref. quality {data.reference[0]:g}, energy {fmt_energy_j(data.reference[1])})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig, on[["trial_id", "energy_j", "quality"]]


def power_over_time(data: ReportData):
    series = power_series(data.run_dir)
    spans = stage_spans(data.results)
    fig, ax = plt.subplots(figsize=(10, 4))
    for i, (_, s) in enumerate(spans.drop_duplicates(["trial_id", "stage"]).iterrows()):
        ax.axvspan(s["start_s"], s["end_s"], color=plt.cm.Pastel1(i % 9), alpha=0.5)
        ax.text(s["start_s"], 0.98, s["stage"].replace("_", "\n"), fontsize=5, va="top",
                transform=ax.get_xaxis_transform())
    for (node, device), g in series.groupby(["node_id", "device_id"]):
        ax.plot(g["t_s"], g["power_w"], label=f"{node} {device}", linewidth=1)
    ax.set_xlabel("time since first sample (s)")
    ax.set_ylabel("power (W)")
    ax.set_title("Power per node and device, stage windows shaded")
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig, series


def quality_vs_cumulative_energy(data: ReportData):
    t = data.trials.copy()
    order = "t_end_s" if "t_end_s" in t.columns else None
    if order:
        t = t.sort_values(order)
    if "wasted_j" in t.columns:  # a sweep: waste includes what unfinished trials spent
        own = t["energy_marginal_j"].where(t["status"] == "finished", 0.0).fillna(0.0)
        spent = own + t["wasted_j"].fillna(0.0)
    else:
        spent = t["energy_j"]
    t["cumulative_j"] = spent.cumsum()
    t["best_quality"] = t["quality"].fillna(-1.0).cummax().where(lambda s: s >= 0)
    factor, unit = energy_scale(float(t["cumulative_j"].max()) if len(t) else 0.0)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(t["cumulative_j"] / factor, t["best_quality"], drawstyle="steps-post",
            label="best so far")
    ax.scatter(t["cumulative_j"] / factor, t["quality"], color="#999999", label="each trial")
    ax.set_xlabel(f"cumulative sweep energy ({unit})")
    ax.set_ylabel("quality")
    ax.set_title("How the search spent its energy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig, t[["trial_id", "cumulative_j", "quality", "best_quality"]]


FIGURES = {"energy_by_stage": energy_by_stage, "pareto": pareto_frontier,
           "power": power_over_time, "cumulative": quality_vs_cumulative_energy}
