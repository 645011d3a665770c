"""Break-even at equal quality: the no-teacher baseline's training energy up to the dev check
at which it first reaches the distilled student's dev quality, and N* from it (pure).

The equal-steps N* compares the two students after the same number of steps, so it mostly
measures response lengths: a baseline that reaches the student's quality early would have
been stopped there. Here q* is the distilled student's final in-training dev check (exact match
on the first `n` dev rows, progress.jsonl) and E_baseline(q*) the baseline's training energy up
to its first check reaching q*: the ledger's energy between its training windows' start and
that check's time. The true crossing lies between the check before and the check at the
crossing, so E_baseline(q*) is given as the middle of those two energies with half their
distance as an independent 95% half-width, beside the baseline training's own stated error
(its meters' biases scaled to the part of the training reached).

Both dev scores are estimates on `n` rows (a binomial 95% interval of about ±0.12 at n = 64,
accuracy 0.5): where `n` is known, the interval spans every energy at which the baseline's
curve crosses the qualities that cannot be told from q* (`quality_band`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from raydistill.intervals import DISTINGUISHABLE, Figure, Ratio, figure_ratio

NEVER_REACHES = "baseline never reaches the student's quality"


def progress_lines(path: Path) -> list[dict]:
    """The dev checks of a progress.jsonl (step > 0, with a quality); [] where there is none.
    `n` is the dev rows checked (`dev_rows` in lines written before the contract named it)."""
    if not path.is_file():
        return []
    out = []
    for text in path.read_text().splitlines():
        if not text.strip():
            continue
        line = json.loads(text)
        if line.get("step", 0) > 0 and line.get("quality") is not None:
            out.append({**line, "n": line.get("n", line.get("dev_rows"))})
    return sorted(out, key=lambda x: x["step"])


def training_curve(lines: list[dict], energy_to: Callable[[float], float]) -> list[dict]:
    """Each dev check with `spent_j`, the training energy up to its time `t`."""
    return [{**line, "spent_j": float(energy_to(float(line["t"])))} for line in lines]


def quality_band(q_star: float, n: int | None) -> tuple[float, float]:
    """The dev qualities a crossing of q* cannot be told from: q* is an exact match on `n` dev
    rows and each baseline check another, so their difference has about √2 × one Wilson 95%
    half-width on each side. (q*, q*) where `n` is unknown."""
    if not n or n <= 0 or not 0.0 <= q_star <= 1.0:
        return q_star, q_star
    from raydistill.proportions import wilson

    lo, hi = wilson(q_star, n)
    root2 = 2 ** 0.5
    return max(0.0, q_star - root2 * (q_star - lo)), min(1.0, q_star + root2 * (hi - q_star))


def _first_reaching(curve: list[dict], q: float) -> int | None:
    return next((i for i, p in enumerate(curve) if p["quality"] >= q - 1e-12), None)


def energy_at_quality(curve: list[dict], q_star: float, whole: Figure,
                      n: int | None = None) -> dict:
    """E_baseline(q*) from the baseline's curve: {reached, step, steps, energy_j, error_j,
    figure} where a check reached q*; {reached: False} where none did.

    The value is the middle of the checks before and at the first crossing. Its independent
    95% half-width covers the crossing's step granularity and, with `n` (dev rows of each
    check), the sampling noise of both dev scores: every energy from the check before the first
    crossing of the band's low end to the first crossing of its high end (`quality_band`; the
    last check where the curve never reaches the high end, so that end is then a lower bound),
    on top of the baseline training's own stated error, scaled to the part reached."""
    i = _first_reaching(curve, q_star)
    if i is None:
        return {"reached": False, "step": None, "steps": None, "energy_j": None,
                "error_j": None, "figure": None}
    hi = curve[i]["spent_j"]
    lo = curve[i - 1]["spent_j"] if i else 0.0
    value = 0.5 * (lo + hi)
    q_lo, q_hi = quality_band(q_star, n)
    i_lo, i_hi = _first_reaching(curve, q_lo), _first_reaching(curve, q_hi)
    band_lo = curve[i_lo - 1]["spent_j"] if i_lo else 0.0
    band_hi = curve[i_hi]["spent_j"] if i_hi is not None else curve[-1]["spent_j"]
    half = max(0.5 * abs(hi - lo), value - band_lo, band_hi - value)
    scale = value / whole.value if whole.value > 0 else 0.0
    fig = whole.scaled(scale) + Figure.of(0.0, independent_j=half)
    return {"reached": True, "step": int(curve[i]["step"]), "steps": int(curve[i]["steps"]),
            "energy_j": fig.value, "error_j": fig.error, "figure": fig}


def equal_quality_fields(teacher: Figure, student: Figure, matched: dict, q_star: float | None,
                         q_star_n: int | None, equal_steps: Ratio | None) -> dict:
    """metrics.json's `N_star_equal_quality*` fields: N* = teacher side ÷ (E_baseline(q*) −
    E_student) with its 95% bounds, or why there is none. Where the baseline never reaches q*,
    E_baseline(q*) exceeds its whole training, so the saving exceeds the equal-steps one: N* at
    equal quality is below the equal-steps upper bound when that one is a number, else unknown."""
    out = {"N_star_equal_quality": None, "N_star_equal_quality_low": None,
           "N_star_equal_quality_high": None, "N_star_equal_quality_verdict": None,
           "N_star_equal_quality_saving_j": None, "N_star_equal_quality_saving_error_j": None,
           "q_star": q_star, "q_star_n": q_star_n,
           "baseline_step_at_q_star": matched.get("step"),
           "baseline_steps": matched.get("steps"),
           "baseline_energy_at_q_star_j": matched.get("energy_j"),
           "baseline_energy_at_q_star_error_j": matched.get("error_j")}
    if q_star is None:
        out["N_star_equal_quality_verdict"] = "no dev checks (no progress lines)"
        return out
    if not matched.get("reached"):
        out["N_star_equal_quality_verdict"] = NEVER_REACHES
        if equal_steps is not None and equal_steps.verdict == DISTINGUISHABLE:
            out["N_star_equal_quality_high"] = equal_steps.high
        return out
    if teacher.value <= 0:
        return out
    r = figure_ratio(teacher, matched["figure"] - student)
    den = r.denominator
    out.update({"N_star_equal_quality": r.value, "N_star_equal_quality_low": r.low,
                "N_star_equal_quality_high": r.high, "N_star_equal_quality_verdict": r.verdict,
                "N_star_equal_quality_saving_j": None if den is None else den.value,
                "N_star_equal_quality_saving_error_j": None if den is None else den.error})
    return out


def ledger_energy_to(state, rows: list) -> Callable[[float], float]:
    """energy_to(t): the energy of `rows` (one trial's training windows, EnergyRow) up to wall
    time t: whole rows that ended by t, and the part of each open one from its start to t on
    its device's timeline (× the row's share of the device), as bench_search `record` does."""
    def energy_to(t: float) -> float:
        total = 0.0
        for r in rows:
            if r.t_end_s <= t:
                total += r.energy_j
            elif r.t_start_s < t:
                tl = state.timeline(r.node_id, r.device_id)
                a = state.to_timeline(r.node_id, r.t_start_s, None)
                b = state.to_timeline(r.node_id, t, None)
                total += tl.between("energy", a, b) * r.share
        return total
    return energy_to


# ---- sweeps: per configuration, against the sweep's `method: none` trials -------------------

def curve_json(curve: list[dict]) -> str:
    """A trial's dev curve as the trials table stores it: [[step, steps, quality, n, J], ...]."""
    return json.dumps([[p["step"], p["steps"], p["quality"], p.get("n"), p["spent_j"]]
                       for p in curve])


def curve_of(text: object) -> list[dict]:
    """The trials table's `dev_curve` back as curve points; [] where there is none."""
    if not isinstance(text, str) or not text:
        return []
    return [{"step": s, "steps": n_steps, "quality": q, "n": n, "spent_j": j}
            for s, n_steps, q, n, j in json.loads(text)]


def sweep_equal_quality(curves: list[list[dict]], training: Figure | None,
                        side: Figure | None, baselines: list[list[tuple[list[dict], Figure]]],
                        equal_steps: Ratio | None) -> dict:
    """N* at equal quality of one sweep configuration: q* = the mean final dev check of its
    repeats (`curves`); E_baseline(q*) = for each baseline configuration (`baselines`: its
    repeats, each (dev curve, whole training Figure)), the mean over its repeats of the energy
    each spent to first reach q*, and of those the cheapest: the baseline a practitioner would
    have trained to that quality. A configuration some repeat of which never reaches q* is not
    a candidate; where none is, the verdict says the baseline never reaches it. Fields as
    `equal_quality_fields`, `n_star_equal_quality*` named for the table."""
    from raydistill.intervals import mean_of_figures

    finals = [c[-1] for c in curves if c]
    if not finals or training is None or side is None or not baselines:
        return table_fields(None)
    q_star = sum(float(p["quality"]) for p in finals) / len(finals)
    n = finals[0].get("n")
    best: dict = {"reached": False}
    for repeats in baselines:
        matched = [energy_at_quality(curve, q_star, whole, n) for curve, whole in repeats]
        if not matched or not all(m["reached"] for m in matched):
            continue
        fig = mean_of_figures([m["figure"] for m in matched])
        if not best["reached"] or fig.value < best["energy_j"]:
            best = {"reached": True, "figure": fig, "energy_j": fig.value,
                    "error_j": fig.error, "step": max(m["step"] for m in matched),
                    "steps": max(m["steps"] for m in matched)}
    return table_fields(equal_quality_fields(side, training, best, q_star, n, equal_steps))


SWEEP_COLUMNS = ("n_star_equal_quality", "n_star_equal_quality_low",
                 "n_star_equal_quality_high", "n_star_equal_quality_verdict", "q_star",
                 "baseline_energy_at_q_star_j", "baseline_energy_at_q_star_error_j")


# metrics.json's name of each: N* fields start with a capital N there
_METRICS_KEY = {c: "N" + c[1:] if c.startswith("n_star") else c for c in SWEEP_COLUMNS}


def table_fields(fields: dict | None) -> dict:
    """`equal_quality_fields` (or a run's metrics.json entry) under the trials table's names
    (SWEEP_COLUMNS); all None for none."""
    return {c: (fields or {}).get(k) for c, k in _METRICS_KEY.items()}


def dev_curves(run_dir: Path, ledger_trials: list[str], state) -> dict[str, str]:
    """{ledger trial: `curve_json`} for the trials whose student wrote dev checks
    (students/<trial>/progress.jsonl), each check with the training energy the ledger (`state`,
    a LedgerState) measured up to it."""
    out = {}
    for trial in ledger_trials:
        lines = progress_lines(Path(run_dir) / "students" / trial / "progress.jsonl")
        rows = [r for r in state.trial_rows(trial) if r.stage == "student_training"]
        if lines and rows:
            out[trial] = curve_json(training_curve(lines, ledger_energy_to(state, rows)))
    return out
