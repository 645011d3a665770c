"""Tables from ledger rows: the stage × device energy table and per-stage totals (pure)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from raydistill.energy.accuracy import stated_error_j
from raydistill.energy.ledger import EnergyRow, LedgerState
from raydistill.energy.log import read_log
from raydistill.energy.meters import has_meters, meter_columns, parts_of
from raydistill.energy.samples import PHASES, ROLLOUT, WORK

ENERGY_COLUMNS = [f for f in EnergyRow.__dataclass_fields__]


def energy_frame(rows: Iterable[EnergyRow | dict]) -> pd.DataFrame:
    records = [r if isinstance(r, dict) else r.__dict__ for r in rows]
    df = pd.DataFrame.from_records(records, columns=ENERGY_COLUMNS)
    df["phase"] = df["phase"].fillna(WORK)  # rows from before phases: all of it was work
    # rows from before generated tokens were counted: none of their tokens is known generated
    df["generated_tokens"] = df["generated_tokens"].fillna(0).astype("int64")
    df["device_model"] = df["device_model"].fillna("")
    # rows from before each row stated its own error: their method's rule
    df["stated_error_j"] = error_column(df)
    df["closed_by"] = df["closed_by"].fillna("")  # rows from before closings were marked
    return df


def error_column(frame: pd.DataFrame, value: str = "energy_j") -> pd.Series:
    """The stated error (J) of each row's `value`, where the rows carry `stated_error_j` (their
    device's class at their window length, see energy.accuracy.row_error_j); rows or tables
    without it (old run directories) take their method's rule (`stated_error_j`). For another
    column than energy_j (work_j: one phase of it) the relative part scales with the value and
    the unmeasured bound is kept whole, as the method rule does."""
    if not len(frame):
        return pd.Series([], dtype="float64", index=frame.index)
    col = value if value in frame.columns else "energy_j"
    method_col = next((c for c in ("energy_method", "method") if c in frame.columns), None)
    methods = frame[method_col] if method_col else pd.Series([None] * len(frame), frame.index)
    bound = pd.to_numeric(frame.get("unmeasured_max_j", pd.Series(0.0, frame.index)),
                          errors="coerce").fillna(0.0).clip(lower=0.0)
    amount = pd.to_numeric(frame[col], errors="coerce").fillna(0.0)
    rule = pd.Series([stated_error_j(e, m, b) for e, m, b in zip(amount, methods, bound,
                                                                   strict=True)], frame.index)
    if "stated_error_j" not in frame.columns:
        return rule
    own = pd.to_numeric(frame["stated_error_j"], errors="coerce")
    if col != "energy_j":
        energy = pd.to_numeric(frame["energy_j"], errors="coerce").abs()
        scale = (amount.abs() / energy.where(energy > 0)).fillna(1.0)
        own = (own - bound).clip(lower=0.0) * scale + bound
    return own.where(own.notna(), rule)


def stage_device_table(df: pd.DataFrame) -> pd.DataFrame:
    """Energy per trial × stage × node × device, with the method that produced each figure."""
    if df.empty:
        return df
    keys = ["trial_id", "stage", "node_id", "device_id"]
    g = df.groupby(keys, sort=False)
    out = g.agg(
        energy_j=("energy_j", "sum"),
        above_idle_j=("above_idle_j", "sum"),
        duration_s=("duration_s", "sum"),
        tokens=("tokens", "sum"),
        generated_tokens=("generated_tokens", "sum"),
        method=("method", lambda s: "+".join(sorted(set("+".join(s).split("+"))))),
        shared=("shared", "any"),
        gap_s=("gap_s", "sum"),
        unmeasured_s=("unmeasured_s", "sum"),
        interpolated=("interpolated", "any"),
        samples=("n_samples", "sum"),
        stated_error_j=("stated_error_j", "sum"),
    ).reset_index()
    out["node_id"] = out["node_id"].str[:12]
    return out


STAGE_KEYS = ["trial_id", "stage"]


def stage_totals(df: pd.DataFrame) -> pd.DataFrame:
    """Energy per trial × stage over all nodes, devices and both phases; windows of a stage on
    several nodes overlap in time, so the stage's duration is the span from first start to last
    end.

    `load_j` / `work_j` split `energy_j` (their sum, exactly) into model load and steady state,
    and `load_s` / `work_s` are the spans of each phase's windows (on several nodes the phases
    may overlap, so their sum can exceed `duration_s`). `j_per_token` is steady state (work_j
    per token); `j_per_token_incl_load` charges the load to the tokens as well.

    `generated_tokens` is the part of `tokens` the model generated (decode). Where a stage has
    some, `prompt_tokens` = tokens − generated_tokens (what it read), `j_per_generated_token` =
    work_j / generated_tokens (steady state: the figure cited for generation) and
    `generated_tokens_per_s` = generated_tokens / work_s; all three are NaN for a stage that
    generated nothing (training: its tokens are neither prompt nor generated).

    `rollout_j` / `rollout_s`: an on-policy student's generation inside student_training
    (windows of phase "rollout"), apart from the update (`work_j`); their generated tokens are
    `rollout_tokens` (not in `tokens`) and `rollout_j_per_token` = rollout_j / rollout_tokens.
    """
    if df.empty:
        return df
    if "phase" not in df.columns:
        df = df.assign(phase=WORK)
    if "generated_tokens" not in df.columns:  # rows from before generated tokens were counted
        df = df.assign(generated_tokens=0)
    # A row's own duration is measured on its node's monotonic clock (NTP cannot step it); the
    # stage's span is taken from the earliest start to the latest (start + duration).
    df = df.assign(_end_s=df["t_start_s"] + df["duration_s"], stated_error_j=error_column(df))
    g = df.groupby(STAGE_KEYS, sort=False)
    out = g.agg(
        energy_j=("energy_j", "sum"),
        above_idle_j=("above_idle_j", "sum"),
        t_start_s=("t_start_s", "min"),
        t_end_s=("t_end_s", "max"),
        _end_s=("_end_s", "max"),
        nodes=("node_id", "nunique"),
        devices=("device_id", "nunique"),
        method=("method", lambda s: "+".join(sorted(set("+".join(s).split("+"))))),
        gap_s=("gap_s", "sum"),
        # Seconds × devices no sample measured (not in energy_j), and a bound on their energy.
        unmeasured_s=("unmeasured_s", "sum"),
        unmeasured_max_j=("unmeasured_max_j", "sum"),
        interpolated=("interpolated", "any"),  # some window too short to be measured
        # each row's own stated error (its device's class, unmeasured bound included), summed:
        # a stage of counters and one estimate is not stated at the estimate's class for all
        stated_error_j=("stated_error_j", "sum"),
    ).reset_index()
    out = _token_columns(out, df.drop_duplicates("window_id"))
    out["duration_s"] = out.pop("_end_s") - out["t_start_s"]
    for phase in PHASES:
        out[f"{phase}_j"], out[f"{phase}_s"] = _phase_totals(df, out, phase)
    # The sum of the phases, so that load_j + work_j + rollout_j + idle_j == energy_j exactly;
    # a stage with only load and work sums the same rows in the same order as before, so its
    # figure is unchanged.
    out["energy_j"] = out["load_j"] + out["work_j"] + out["rollout_j"] + out["idle_j"]
    # J per token the student generated in its rollouts, apart from the update (work_j)
    out["rollout_j_per_token"] = out["rollout_j"] / out["rollout_tokens"].where(
        out["rollout_tokens"] > 0)
    out["mean_power_w"] = out["energy_j"] / out["duration_s"].where(out["duration_s"] > 0)
    per_token = out["tokens"].where(out["tokens"] > 0)
    out["j_per_token"] = out["work_j"] / per_token
    out["j_per_token_incl_load"] = out["energy_j"] / per_token
    out["tokens_per_s"] = out["tokens"] / out["work_s"].where(out["work_s"] > 0)  # steady state
    return _generated_columns(out)


def _token_columns(out: pd.DataFrame, windows: pd.DataFrame) -> pd.DataFrame:
    """tokens and generated_tokens of each trial × stage, one count per window, rollout
    windows apart: their generated tokens are `rollout_tokens`, never the training tokens the
    update's J/token divides by."""
    rollout = windows["phase"] == ROLLOUT
    counts = windows[~rollout].groupby(STAGE_KEYS, sort=False)[
        ["tokens", "generated_tokens"]].sum().reset_index()
    out = out.merge(counts, on=STAGE_KEYS, how="left")
    rolled = windows[rollout].groupby(STAGE_KEYS, sort=False)["generated_tokens"].sum()
    keys = list(zip(out["trial_id"], out["stage"], strict=True))
    out["rollout_tokens"] = [int(rolled.get(k, 0)) for k in keys]
    for col in ("tokens", "generated_tokens"):  # a stage of rollout windows only has none
        out[col] = out[col].fillna(0).astype(int)
    return out


def _generated_columns(out: pd.DataFrame) -> pd.DataFrame:
    """prompt_tokens, j_per_generated_token, generated_tokens_per_s (see `stage_totals`): NaN
    where a stage generated nothing."""
    generated = out["generated_tokens"].where(out["generated_tokens"] > 0)
    out["prompt_tokens"] = out["tokens"] - generated
    out["j_per_generated_token"] = out["work_j"] / generated  # steady state
    out["generated_tokens_per_s"] = generated / out["work_s"].where(out["work_s"] > 0)
    return out


def _phase_totals(df: pd.DataFrame, out: pd.DataFrame, phase: str) -> tuple[list, list]:
    """(joules, span seconds) of one phase's rows for each trial × stage of `out` (0 where the
    stage has no window of that phase)."""
    mine = df[df["phase"] == phase]
    g = mine.groupby(STAGE_KEYS, sort=False).agg(
        j=("energy_j", "sum"), a=("t_start_s", "min"), b=("_end_s", "max"))
    keys = list(zip(out["trial_id"], out["stage"], strict=True))
    j = [float(g.at[k, "j"]) if k in g.index else 0.0 for k in keys]
    s = [float(g.at[k, "b"] - g.at[k, "a"]) if k in g.index else 0.0 for k in keys]
    return j, s


def load_ledger(run_dir: str | Path, max_gap_s: float = 2.0) -> tuple[LedgerState, list[str]]:
    """Rebuild a run's ledger state from its log on disk (no Ray needed)."""
    state = LedgerState(max_gap_s=max_gap_s)
    result = read_log(Path(run_dir) / "ledger")
    for kind, payload in result.records:
        state.apply(kind, payload)
    return state, [str(d) for d in result.damage]


def error_notes(frame: pd.DataFrame) -> list[str]:
    """One line per stated-error class the rows of `frame` use, with its source (or that it is
    a judgement), for a listing of stated errors to cite them."""
    from raydistill.energy.accuracy import error_class, methods_of

    seen: dict[str, str] = {}
    kinds = frame.get("device_kind", pd.Series("", frame.index))
    models = frame.get("device_model", pd.Series("", frame.index)).fillna("")
    for method, kind, model in zip(frame.get("method", []), kinds, models, strict=False):
        for m in methods_of(method):
            c = error_class(m, str(kind), str(model))
            seen.setdefault(c.name, f"stated error {c.name} ±{c.relative:.0%}"
                            f"{' (+ short-window term)' if c.refresh_s else ''}: {c.source}")
    return list(seen.values())


def format_table(df: pd.DataFrame, floats: str = "{:,.2f}") -> str:
    if df.empty:
        return "(no windows)"
    shown = df.copy()
    for col in shown.columns:
        if pd.api.types.is_float_dtype(shown[col]):
            shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else floats.format(v))
    return shown.to_string(index=False)


# ---- the results table and the seed metrics --------------------------------------------------

# The teacher's side: artifacts built once and reusable (synthetic data, a logit cache), which
# N* amortises, and an on-policy teacher scoring the student's completions every step, a bill
# that recurs with every use: a trial that has it gets no N* (`seed_metrics`).
REUSABLE_TEACHER_STAGES = ("teacher_generation", "teacher_logit_caching")
RECURRING_TEACHER_STAGES = ("teacher_scoring",)
TEACHER_STAGES = REUSABLE_TEACHER_STAGES + RECURRING_TEACHER_STAGES


def side_of(stage: str) -> str:
    if stage == "teacher_training":
        return "setup"
    if stage in TEACHER_STAGES or stage == "inference_teacher":
        return "teacher"
    if stage == "evaluation":
        return "evaluation"
    return "student"


def results_table(rows: Iterable[EnergyRow | dict], footprint_inputs=None) -> pd.DataFrame:
    """One row per trial × stage: energy, duration, tokens, method, nodes, footprint."""
    from raydistill.energy.footprint import FootprintInputs, compute_footprint

    frame = energy_frame(rows)
    totals = stage_totals(frame)
    if totals.empty:
        return totals
    totals = totals.rename(columns={"method": "energy_method"})
    totals["side"] = totals["stage"].map(side_of)
    # which meters measured each figure and how much of its stated error is their common bias
    # (energy.meters): N* differences of one meter's figures cancel it
    totals = totals.merge(meter_columns(frame, STAGE_KEYS), on=STAGE_KEYS, how="left")
    # GPU-hours over both phases: a stage's load and work windows follow one another
    gpu = frame[frame["device_kind"] == "gpu"]
    gpu_s = gpu.groupby(["trial_id", "stage"])["duration_s"].sum() if len(gpu) else None
    inputs = footprint_inputs or FootprintInputs()
    co2e, water, embodied, how = [], [], [], []
    for r in totals.itertuples():
        hours = float(gpu_s.get((r.trial_id, r.stage), 0.0)) / 3600 if gpu_s is not None else 0.0
        fp = compute_footprint(r.energy_j, inputs, gpu_hours=hours,
                               intervals=[(r.t_start_s, r.t_end_s, r.energy_j)])
        co2e.append(fp.co2e_g)
        water.append(fp.water_l)
        embodied.append(fp.embodied_co2e_g)
        how.append(fp.method["co2e"])
    totals["co2e_g"], totals["water_l"] = co2e, water
    totals["embodied_co2e_g"], totals["co2e_method"] = embodied, how
    return totals


def _stage_values(table: pd.DataFrame, trial_id: str) -> tuple[dict, dict, dict]:
    """(energy_j, steady-state work_j, tokens) per stage of a trial; tables from before phases
    have no work_j: all of their energy was work."""
    mine = table[table["trial_id"] == trial_id].set_index("stage")
    work = mine["work_j"] if "work_j" in mine.columns else mine["energy_j"]
    return mine["energy_j"].to_dict(), work.to_dict(), mine["tokens"].to_dict()


def seed_metrics(table: pd.DataFrame, trial_id: str, scores: dict,
                 baseline_trial: str | None = None, teacher_trial: str | None = None,
                 teacher_scores: dict | None = None) -> dict:
    """E_run, EPT per stage and for inference, OM_perf, Eff_overall, teacher share, N*.

    EPT (J per token) is steady state: a stage's work-phase energy ÷ its tokens, so loading a
    model is not charged to each token (`EPT_incl_load_j_per_token` keeps that figure). E_run,
    the teacher side and N* count all of a stage's energy, load included, once.
    OM_perf = student score ÷ teacher score; Eff_overall = OM_perf(quick acc) × EPT_teacher ÷
    EPT_student on the same fixed inference prompts (the teacher's taken from `teacher_trial`
    when this trial did not run it); N* = E_teacher_side ÷ (E_baseline_training −
    E_distilled_training), with bounds from each figure's stated error: `N_star_verdict` says
    "distinguishable" (N_star and its bounds given), "never" (the distilled training clearly
    costs more) or "not distinguishable" (the saving's interval spans zero; no number).
    """
    energy, work, tokens = _stage_values(table, trial_id)
    e_run = float(sum(v for s, v in energy.items() if not s.startswith("inference_")))
    teacher_side = float(sum(energy.get(s, 0.0) for s in TEACHER_STAGES))
    ept = {s: work[s] / tokens[s] for s in energy if tokens.get(s)}
    ept_incl_load = {s: energy[s] / tokens[s] for s in energy if tokens.get(s)}
    teacher_scores = teacher_scores or scores
    om = {}
    for key, value in scores.items():
        # a quality ratio only: an extraction failure rate is not a score to be matched
        if key.startswith("student_") and not key.endswith("_extract_fail_rate"):
            ref = teacher_scores.get("teacher_" + key[len("student_"):])
            if ref:
                om[key[len("student_"):]] = value / ref
    ept_t = ept.get("inference_teacher")
    if ept_t is None and teacher_trial is not None:
        _, t_work, t_tokens = _stage_values(table, teacher_trial)
        if t_tokens.get("inference_teacher"):
            ept_t = t_work["inference_teacher"] / t_tokens["inference_teacher"]
    ept_s = ept.get("inference_student")
    eff = om["quick_acc"] * ept_t / ept_s if "quick_acc" in om and ept_t and ept_s else None
    recurring_j = float(sum(energy.get(s, 0.0) for s in RECURRING_TEACHER_STAGES))
    # N* amortises a teacher paid once; an on-policy teacher is paid again by every run, so
    # there is nothing to amortise (report.policy_rules compares energy to a quality instead)
    amortisable = baseline_trial is not None and not recurring_j > 0
    n_star = _n_star(table, trial_id, baseline_trial) if amortisable else None
    return {"trial_id": trial_id, "E_run_j": e_run, "teacher_side_j": teacher_side,
            "teacher_share": teacher_side / e_run if e_run else None,
            "teacher_recurring_j": recurring_j, "EPT_j_per_token": ept,
            "EPT_incl_load_j_per_token": ept_incl_load, "EPT_inference_teacher": ept_t,
            "EPT_inference_student": ept_s,
            "OM_perf": om, "Eff_overall": eff, "scores": scores,
            "N_star": n_star.value if n_star is not None else None,
            "N_star_low": n_star.low if n_star is not None else None,
            "N_star_high": n_star.high if n_star is not None else None,
            "N_star_verdict": n_star.verdict if n_star is not None else None,
            # the saving N* divides by (baseline − distilled training, J) and its 95% error
            **_saving_fields("N_star", n_star),
            "baseline_trial": baseline_trial}


# On-policy teacher work is redone every step and leaves no artifact: N* has nothing to divide
NO_AMORTISATION = "no amortisation: see energy to quality"


def onpolicy_metrics(table: pd.DataFrame, trial_id: str, steps: int) -> dict:
    """An on-policy trial's recurring teacher bill and its rollouts, from the results table:
    teacher_scoring split into load / busy (work) / idle (its devices held between requests),
    J per training step, the teacher's share of each step (scoring ÷ scoring + the student's
    training, load excluded on both sides), and the student's rollouts (J per generated token)
    apart from the update (J per trained token). N* is not given (`NO_AMORTISATION`)."""
    mine = table[table["trial_id"] == trial_id].set_index("stage")

    def get(stage: str, col: str) -> float:
        if stage not in mine.index or col not in mine.columns:
            return 0.0
        value = mine.at[stage, col]
        return 0.0 if pd.isna(value) else float(value)

    scoring = get("teacher_scoring", "energy_j")
    scoring_steady = scoring - get("teacher_scoring", "load_j")
    student_steady = get("student_training", "work_j") + get("student_training", "rollout_j")
    per_step = steps if steps > 0 else None
    rollout_tokens = get("student_training", "rollout_tokens")
    tokens = get("student_training", "tokens")
    both = scoring_steady + student_steady
    return {
        "teacher_scoring_j": scoring, "teacher_scoring_load_j": get("teacher_scoring", "load_j"),
        "teacher_scoring_busy_j": get("teacher_scoring", "work_j"),
        "teacher_scoring_idle_j": get("teacher_scoring", "idle_j"),
        "teacher_scoring_j_per_step": scoring_steady / per_step if per_step else None,
        "student_j_per_step": student_steady / per_step if per_step else None,
        "teacher_step_share": scoring_steady / both if both > 0 else None,
        "rollout_j": get("student_training", "rollout_j"), "rollout_tokens": int(rollout_tokens),
        "rollout_j_per_token": get("student_training", "rollout_j") / rollout_tokens
        if rollout_tokens else None,
        "update_j_per_token": get("student_training", "work_j") / tokens if tokens else None,
        "N_star": None, "N_star_low": None, "N_star_high": None,
        "N_star_verdict": NO_AMORTISATION, "N_star_saving_j": None,
        "N_star_saving_error_j": None}


def _saving_fields(prefix: str, ratio) -> dict:
    den = getattr(ratio, "denominator", None)
    return {f"{prefix}_saving_j": None if den is None else den.value,
            f"{prefix}_saving_error_j": None if den is None else den.error}


def _stage_interval(table: pd.DataFrame, trial_id: str, stages: tuple[str, ...]):
    """A trial's energy over `stages` with its stated error: the stages' summed per-row errors
    where the table has them, else their method's rule (see `error_column`)."""
    from raydistill.intervals import Interval

    mine = table[(table["trial_id"] == trial_id) & table["stage"].isin(stages)]
    return Interval(float(mine["energy_j"].sum()), float(error_column(mine).sum()))


def stage_figure(table: pd.DataFrame, trial_id: str, stages: tuple[str, ...],
                 value: str = "energy_j"):
    """A trial's `value` over `stages` as an intervals.Figure: each stage's bias per meter
    (scaled to `value` where it is a part of energy_j, e.g. work_j) and its independent part;
    None for a table without the meter columns (an old run directory)."""
    from raydistill.intervals import Figure, figure_sum

    if not has_meters(table):
        return None
    mine = table[(table["trial_id"] == trial_id) & table["stage"].isin(stages)]
    figures = []
    for r in mine.to_dict("records"):
        energy = float(r["energy_j"])
        amount = float(r.get(value, energy)) if pd.notna(r.get(value, energy)) else energy
        scale = abs(amount / energy) if energy else 1.0
        indep = float(r["independent_j"]) if pd.notna(r["independent_j"]) else 0.0
        figures.append(Figure.of(amount, {k: b * scale for k, b in
                                          parts_of(r["bias_parts"]).items()}, indep * scale))
    return figure_sum(figures)


def _n_star(table: pd.DataFrame, trial_id: str, baseline_trial: str):
    """N* = teacher side ÷ (baseline training − distilled training), with its 95% bounds: a
    number only where the saving's interval is clear of zero. One meter's common bias cancels
    in the saving and in the ratio (intervals.figure_ratio); a table without meters falls back
    to the stated errors added linearly."""
    from raydistill.intervals import difference, figure_ratio, ratio_bounds

    teacher = stage_figure(table, trial_id, tuple(TEACHER_STAGES))
    if teacher is not None:
        base = stage_figure(table, baseline_trial, ("student_training",))
        own = stage_figure(table, trial_id, ("student_training",))
        return figure_ratio(teacher, base - own)
    teacher = _stage_interval(table, trial_id, tuple(TEACHER_STAGES))
    saved = difference(_stage_interval(table, baseline_trial, ("student_training",)),
                       _stage_interval(table, trial_id, ("student_training",)))
    return ratio_bounds(teacher, saved)
