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

What this does not cover: both dev checks are estimates on `n` rows (a binomial 95% interval
of about ±0.12 at n = 64, accuracy 0.5), and q* is taken as measured.
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


def energy_at_quality(curve: list[dict], q_star: float, whole: Figure) -> dict:
    """E_baseline(q*) from the baseline's curve: {reached, step, steps, energy_j, error_j,
    figure} where a check reached q*; {reached: False} where none did."""
    for i, point in enumerate(curve):
        if point["quality"] >= q_star - 1e-12:
            hi = point["spent_j"]
            lo = curve[i - 1]["spent_j"] if i else 0.0
            value = 0.5 * (lo + hi)
            scale = value / whole.value if whole.value > 0 else 0.0
            fig = whole.scaled(scale) + Figure.of(0.0, independent_j=0.5 * abs(hi - lo))
            return {"reached": True, "step": int(point["step"]), "steps": int(point["steps"]),
                    "energy_j": fig.value, "error_j": fig.error, "figure": fig}
    return {"reached": False, "step": None, "steps": None, "energy_j": None, "error_j": None,
            "figure": None}


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
                        side: Figure | None, baselines: list[tuple[list[dict], Figure]],
                        equal_steps: Ratio | None) -> dict:
    """N* at equal quality of one sweep configuration: q* = the mean final dev check of its
    repeats (`curves`), E_baseline(q*) = the mean over the sweep's `method: none` trials
    (taken as repeats of one baseline, as the equal-steps N* takes them) of the energy each
    spent to first reach q*, each with its own training figure (`baselines`: (curve, whole
    training Figure)). Where any baseline never reaches q*, its mean is not known: the verdict
    says so. Fields as `equal_quality_fields`, `n_star_equal_quality*` named for the table."""
    finals = [c[-1] for c in curves if c]
    if not finals or training is None or side is None or not baselines:
        return _sweep_fields(None)
    q_star = sum(float(p["quality"]) for p in finals) / len(finals)
    matched = [energy_at_quality(curve, q_star, whole) for curve, whole in baselines]
    if all(m["reached"] for m in matched):
        from raydistill.intervals import mean_of_figures

        fig = mean_of_figures([m["figure"] for m in matched])
        merged = {"reached": True, "figure": fig, "energy_j": fig.value, "error_j": fig.error,
                  "step": max(m["step"] for m in matched),
                  "steps": max(m["steps"] for m in matched)}
    else:
        merged = {"reached": False}
    fields = equal_quality_fields(side, training, merged, q_star, finals[0].get("n"),
                                  equal_steps)
    return _sweep_fields(fields)


SWEEP_COLUMNS = ("n_star_equal_quality", "n_star_equal_quality_low",
                 "n_star_equal_quality_high", "n_star_equal_quality_verdict", "q_star",
                 "baseline_energy_at_q_star_j", "baseline_energy_at_q_star_error_j")


def _sweep_fields(fields: dict | None) -> dict:
    if fields is None:
        return dict.fromkeys(SWEEP_COLUMNS)
    return {"n_star_equal_quality": fields["N_star_equal_quality"],
            "n_star_equal_quality_low": fields["N_star_equal_quality_low"],
            "n_star_equal_quality_high": fields["N_star_equal_quality_high"],
            "n_star_equal_quality_verdict": fields["N_star_equal_quality_verdict"],
            "q_star": fields["q_star"],
            "baseline_energy_at_q_star_j": fields["baseline_energy_at_q_star_j"],
            "baseline_energy_at_q_star_error_j": fields["baseline_energy_at_q_star_error_j"]}


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
