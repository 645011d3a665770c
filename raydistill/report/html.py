"""`raydistill report DIR`: report.html (one self-contained file), figures, tables, exports.

The page and tables.md open with the answer (`headline`). Tables are computed as numbers
(`_metrics_table`, `_stage_table`: NaN where a figure is missing or was not estimated, never
0) and turned into strings only to be shown (`units.display_frame`: three significant figures,
units by size, unit suffixes out of the headers). The exports keep full precision.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from pathlib import Path

import pandas as pd

from raydistill.io import atomic_write, atomic_write_text
from raydistill.report.data import (
    ReportData,
    embodied_or_nan,
    load_report_data,
    om_key,
    om_perf,
    selected_on,
    water_estimated,
)
from raydistill.report.exports import emissions_frame, model_card_yaml
from raydistill.report.figures import FIGURES
from raydistill.report.headline import headline
from raydistill.report.payback import figure_text, payback_frame
from raydistill.report.rules import definitions, design_rules
from raydistill.units import (
    Formatter,
    display_frame,
    fmt_co2e_g,
    fmt_count,
    fmt_duration_s,
    fmt_energy_j,
    fmt_j_per_token,
    fmt_pct,
    fmt_sig,
    fmt_text,
    fmt_water_l,
    or_not_estimated,
)

log = logging.getLogger(__name__)

CAPTIONS = {
    "energy_by_stage": "Energy by stage per trial; teacher-side stages hatched.",
    "pareto": "Energy–quality frontier of finished trials (in a sweep: the dev score that "
              "selects the set; test scores are in the trials table); dominated trials grey.",
    "power": "Power over time per node and device; stage windows shaded.",
    "cumulative": "Best quality so far against the energy the sweep had spent.",
}


def _methods(data: ReportData) -> str:
    methods = sorted(set("+".join(data.results["energy_method"].astype(str)).split("+")))
    co2 = sorted(set(data.results.get("co2e_method", pd.Series(dtype=str)).astype(str)))
    fp = data.config.get("footprint", {})
    return (f"energy method(s): {', '.join(methods)}; CO2e intensity: {', '.join(co2)}; "
            f"region {fp.get('region', 'WORLD')}, PUE {fp.get('pue', 1.0)}")


def _metrics_table(data: ReportData) -> pd.DataFrame:
    """Per trial: footprint (water and embodied CO2e NaN where not estimated) and, for a run,
    its seed metrics; OM_perf is that of the run's quality score."""
    r = data.results[~data.results["stage"].str.startswith("inference_")]
    per = r.groupby("trial_id").agg(energy_j=("energy_j", "sum"), co2e_g=("co2e_g", "sum"),
                                    water_l=("water_l", "sum"),
                                    embodied_co2e_g=("embodied_co2e_g", "sum")).reset_index()
    if not water_estimated(data):
        per["water_l"] = float("nan")
    per["embodied_co2e_g"] = embodied_or_nan(per["embodied_co2e_g"])
    per["embodied_share"] = per["embodied_co2e_g"] / (per["co2e_g"] + per["embodied_co2e_g"]
                                                      ).where(lambda s: s > 0)
    if data.metrics:
        m = pd.DataFrame([{"trial_id": x["trial_id"], "E_run_j": x["E_run_j"],
                           "EPT_student_j_per_token": x.get("EPT_inference_student"),
                           "OM_perf": om_perf(x, data.quality_name),
                           "Eff_overall": x.get("Eff_overall"),
                           "teacher_share": x.get("teacher_share")}
                          for x in data.metrics])
        per = per.merge(m, on="trial_id", how="left").merge(_payback(data), on="trial_id",
                                                            how="left")
    return per


def _metrics_display(data: ReportData, metrics: pd.DataFrame) -> pd.DataFrame:
    om = om_key(data.quality_name) or data.quality_name
    spec: dict[str, tuple[str, Formatter]] = {
        "co2e_g": ("CO2e", fmt_co2e_g), "water_l": ("water", or_not_estimated(fmt_water_l)),
        "embodied_co2e_g": ("embodied CO2e", or_not_estimated(fmt_co2e_g)),
        "embodied_share": ("embodied share", or_not_estimated(fmt_pct)),
        "E_run_j": ("E_run", fmt_energy_j), "EPT_student_j_per_token": ("EPT student",
                                                                        fmt_j_per_token),
        "OM_perf": (f"OM_perf ({om})", fmt_sig), "teacher_share": ("teacher share", fmt_pct),
        "N_star": ("N*", fmt_text), "tokens_star": ("tokens*", fmt_text)}
    return display_frame(metrics, spec)


def _payback(data: ReportData) -> pd.DataFrame:
    """N* and break-even tokens with their intervals (see the definitions), not the bare
    ratio of two noisy figures."""
    frame = payback_frame(data)
    return pd.DataFrame({"trial_id": frame["trial_id"],
                         "N_star": [figure_text(r, "n_star") for _, r in frame.iterrows()],
                         "tokens_star": [figure_text(r, "break_even_tokens")
                                         for _, r in frame.iterrows()]})


STAGE_COLUMNS = ("trial_id", "stage", "side", "energy_j", "load_j", "work_j", "rollout_j",
                 "idle_j", "duration_s", "load_s", "idle_s", "tokens", "j_per_token",
                 "j_per_token_incl_load",
                 "generated_tokens", "j_per_generated_token", "rollout_tokens",
                 "rollout_j_per_token", "energy_method", "co2e_g", "water_l")
ROLLOUT_COLUMNS = ("rollout_j", "rollout_tokens", "rollout_j_per_token")
# a scoring pool's devices held between requests: energy_j = load_j + work_j + idle_j there
IDLE_COLUMNS = ("idle_j", "idle_s")


def _stage_table(results: pd.DataFrame, water_known: bool = True) -> pd.DataFrame:
    """The stages as the report shows them; generated tokens only where a stage has some
    (blank elsewhere, as J per generated token is); water NaN where it was not estimated.
    Results from before phases or generated tokens lack some columns: they are left out."""
    shown = results[[c for c in STAGE_COLUMNS if c in results.columns]].copy()
    if not (shown.get("rollout_j", pd.Series(dtype=float)) > 0).any():  # no on-policy rollouts
        shown = shown.drop(columns=[c for c in ROLLOUT_COLUMNS if c in shown.columns])
    if not (shown.get("idle_j", pd.Series(dtype=float)) > 0).any():  # no held, idle devices
        shown = shown.drop(columns=[c for c in IDLE_COLUMNS if c in shown.columns])
    if "generated_tokens" in shown.columns:
        shown["generated_tokens"] = shown["generated_tokens"].where(
            shown["generated_tokens"] > 0).astype(float)  # NaN: shown as the others are
    if not water_known and "water_l" in shown.columns:
        shown["water_l"] = float("nan")
    return shown


STAGE_DISPLAY: dict[str, tuple[str, Formatter]] = {
    "load_j": ("load_energy", fmt_energy_j), "work_j": ("work_energy", fmt_energy_j),
    "rollout_j": ("rollout_energy", fmt_energy_j), "rollout_tokens": ("rollout_tokens", fmt_count),
    "idle_j": ("idle_energy", fmt_energy_j), "idle_s": ("idle_time", fmt_duration_s),
    "duration_s": ("duration", fmt_duration_s), "load_s": ("load_time", fmt_duration_s),
    "tokens": ("tokens", fmt_count), "generated_tokens": ("generated_tokens", fmt_count),
    "water_l": ("water", or_not_estimated(fmt_water_l))}


def _trials_display(data: ReportData) -> pd.DataFrame:
    name = "" if data.quality_name in ("", "quality") else f" ({data.quality_name})"
    if data.kind != "sweep":
        return display_frame(data.trials, {"quality": (f"quality{name}", fmt_sig)})
    on = selected_on(data)
    return display_frame(data.trials, {"quality": (f"{on} quality{name}", fmt_sig),
                                       "quality_test": (f"test quality{name}", fmt_sig)})


def _selection_note(data: ReportData) -> str:
    if data.kind != "sweep":
        return ""
    on = selected_on(data)
    beside = "; test scores are reported beside it and never select" if on == "dev" else (
        " (a sweep recorded before dev selected: its front is optimistically biased)")
    return f"The Pareto set was selected on {on} scores{beside}."


def _md(frame: pd.DataFrame) -> str:
    """A display frame as a Markdown table, its strings as they are (no re-parsing)."""
    return frame.to_markdown(index=False, disable_numparse=True)


def _png(fig) -> tuple[str, bytes, bytes]:
    png, svg = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    fig.savefig(svg, format="svg")
    return base64.b64encode(png.getvalue()).decode(), png.getvalue(), svg.getvalue()


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    import matplotlib.pyplot as plt

    data = load_report_data(run_dir)
    out = Path(out_dir) if out_dir else data.run_dir / "report"
    (out / "figures").mkdir(parents=True, exist_ok=True)
    sections, numbers = [], {}
    for name, make in FIGURES.items():
        fig, plotted = make(data)
        b64, png, svg = _png(fig)
        plt.close(fig)
        atomic_write(out / "figures" / f"{name}.png", lambda p, b=png: Path(p).write_bytes(b))
        atomic_write(out / "figures" / f"{name}.svg", lambda p, b=svg: Path(p).write_bytes(b))
        numbers[name] = plotted
        sections.append(f'<figure id="fig-{name}"><img alt="{name}" '
                        f'src="data:image/png;base64,{b64}"><figcaption>'
                        f"{html.escape(CAPTIONS[name])} <em>{html.escape(_methods(data))}</em>"
                        "</figcaption></figure>")
    answer = headline(data)
    metrics = _metrics_display(data, _metrics_table(data))
    rules = design_rules(data)
    stages = display_frame(_stage_table(data.results, water_estimated(data)), STAGE_DISPLAY)
    trials = _trials_display(data)
    tables_md = (f"# raydistill report: {data.run_dir.name}\n\n{answer}\n\n"
                 "## Seed metrics and footprint\n\n" + _md(metrics)
                 + "\n\n## Stages\n\n" + _md(stages)
                 + "\n\n## Trials\n\n" + _selection_note(data) + "\n\n" + _md(trials)
                 + "\n\n"
                 + "## Design rules (computed)\n\n" + "\n".join(f"- {r}" for r in rules) + "\n"
                 + "\n## Definitions\n\n"
                 + "\n".join(f"- **{term}**: {text}" for term, text in definitions()) + "\n")
    body = "\n".join([
        f"<h1>raydistill report: {html.escape(data.run_dir.name)}</h1>",
        f"<p class=headline>{html.escape(answer)}</p>",
        f"<p class=meta>{html.escape(_methods(data))}. {data.kind} directory with "
        f"{len(data.trials)} trial(s); Pareto set {', '.join(data.pareto_ids) or 'empty'}; "
        f"hypervolume {data.hypervolume:.4g}; knee {data.knee}. "
        f"{html.escape(_selection_note(data))}</p>",
        "<h2>Design rules (computed from this data)</h2><ul>"
        + "".join(f"<li>{html.escape(r)}</li>" for r in rules) + "</ul>",
        "<h2>Definitions</h2><dl>" + "".join(
            f"<dt>{html.escape(term)}</dt><dd>{html.escape(text)}</dd>"
            for term, text in definitions()) + "</dl>",
        "<h2>Seed metrics and footprint</h2>" + metrics.to_html(index=False),
        "<h2>Figures</h2>", *sections,
        "<h2>Stages</h2>" + stages.to_html(index=False),
        "<h2>Trials</h2>" + f"<p>{html.escape(_selection_note(data))}</p>"
        + trials.to_html(index=False),
    ])
    page = ("<!doctype html><html><head><meta charset=utf-8><title>raydistill report</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}img{max-width:100%}"
            "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;"
            "padding:2px 6px}.meta{color:#555}.headline{font-size:1.15em;line-height:1.45}"
            "</style></head><body>" + body + "</body></html>")
    atomic_write_text(out / "report.html", page)
    atomic_write_text(out / "tables.md", tables_md)
    atomic_write(out / "emissions.csv", lambda p: emissions_frame(data).to_csv(p, index=False))
    atomic_write_text(out / "model_card_co2.yaml", model_card_yaml(data))
    atomic_write_text(out / "figures.json", json.dumps(
        {k: v.to_dict(orient="list") for k, v in numbers.items() if k != "power"},
        default=str))
    log.info("report written to %s", out)
    return out / "report.html"
