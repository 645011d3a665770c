"""Search efficiency: energy spent until the found Pareto set reaches 95% of the hypervolume of
an exhaustive grid over the same space, for (a) NSGA-II + our energy–Pareto scheduler,
(b) random search, (c) ASHA on a scalarised metric; as ratios to the grid's energy.

Two steps. `--record` runs the grid for real (`bench/search_grid.yaml`, every trial to the end,
quality measured at every 10% of student training) and stores each trial's curve: quality and
the energy the ledger had measured for the trial at each progress point (teacher artifacts at
full cost, so a configuration's bill does not depend on the order it ran in). The default run
then REPLAYS the strategies over those recorded curves: a strategy that stops a trial at a rung
pays the energy recorded up to that rung; one that runs it pays all of it. Each strategy runs
over `--seeds` seeds; mean and worst are printed. The figures are replayed from measured curves.

    python bench/bench_search.py [--record] [--seeds 30]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np

from raydistill.pareto import hypervolume_2d
from raydistill.search.rungs import STOP, RungBook

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "search_grid.json"
RUNGS = (0.3, 0.6)  # the shipped spaces' rungs; other placements are printed as a check
MIN_SPREAD = 0.05  # the scheduler's default (see raydistill/search/rungs.py)


def record(out: Path) -> None:
    import pandas as pd

    from raydistill.results import load_ledger
    from raydistill.search.sweep import run_sweep

    run_sweep(HERE / "search_grid.yaml", out)
    trials = pd.read_parquet(out / "trials.parquet")
    state, _ = load_ledger(out)
    rows = state.energy_rows()
    grid = []
    for _, t in trials.iterrows():
        mine = [r for r in rows if r.trial_id == t["ledger_trial"]]
        reused = t["energy_full_j"] - t["energy_marginal_j"]
        lines = [json.loads(x) for x in (out / "students" / t["ledger_trial"] /
                                         "progress.jsonl").read_text().splitlines()]
        curve = []
        for line in lines:
            if line["step"] == 0:
                continue
            spent = reused + sum(
                r.energy_j if r.t_end_s <= line["t"] else
                state.curve(r.node_id, r.device_id).between(r.t_start_s, line["t"]) * r.share
                for r in mine if r.t_start_s <= line["t"] and r.stage != "evaluation")
            curve.append([line["step"] / line["steps"], line["quality"], spent])
        params = {c[len("param."):]: t[c] for c in trials.columns if c.startswith("param.")}
        grid.append({"params": params, "curve": curve, "quality": float(t["quality"]),
                     "energy_j": float(t["energy_full_j"])})
    DATA.parent.mkdir(exist_ok=True)
    DATA.write_text(json.dumps({"source": str(out), "trials": grid}, indent=1, default=str))


def energy_at(trial: dict, progress: float) -> float:
    for p, _, e in trial["curve"]:
        if p >= progress - 1e-9:
            return e
    return trial["energy_j"]


def hv(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    return hypervolume_2d(points, ref, ("max", "min")) if points else 0.0


def run_strategy(order: list[int], grid: list[dict], stopper, target: float,
                 ref: tuple[float, float]) -> float:
    """Energy spent, trial after trial in `order`, until the found front reaches `target`."""
    spent, found = 0.0, []
    for i in order:
        trial = grid[i]
        stopped_at = stopper(i, trial) if stopper else None
        if stopped_at is None:
            spent += trial["energy_j"]
            found.append((trial["quality"], trial["energy_j"]))
        else:
            spent += energy_at(trial, stopped_at)
        if hv(found, ref) >= target:
            return spent
    return spent  # never reached: the whole order's energy


def pareto_stopper(margin: float = 0.05, min_trials: int = 2, min_spread: float = MIN_SPREAD,
                   rungs: tuple[float, ...] = RUNGS):
    book = RungBook(rungs, margin=margin, min_trials=min_trials, min_spread=min_spread)

    def stop(i: int, trial: dict) -> float | None:
        for p, q, e in trial["curve"]:
            if book.record(str(i), p, q, e) == STOP:
                return p
        return None

    return stop


def asha_stopper(grid: list[dict], eta: int = 2, rungs: tuple[float, ...] = RUNGS):
    """Asynchronous successive halving on quality − λ·energy (λ: one grid-mean trial's energy
    costs as much as 0.1 quality): continue at a rung only in the top 1/eta so far."""
    lam = 0.1 / float(np.mean([t["energy_j"] for t in grid]))
    seen: dict[float, list[float]] = {r: [] for r in rungs}

    def stop(i: int, trial: dict) -> float | None:
        for rung in rungs:
            point = next(((p, q, e) for p, q, e in trial["curve"] if p >= rung - 1e-9), None)
            if point is None:
                continue
            score = point[1] - lam * point[2]
            seen[rung].append(score)
            cut = sorted(seen[rung], reverse=True)[: max(1, len(seen[rung]) // eta)]
            if score < cut[-1]:
                return point[0]
        return None

    return stop


def nsga2_order(grid: list[dict], seed: int, **stopper_kw) -> tuple[list[int], object]:
    """NSGA-II proposals over the grid's categorical space, told the replayed outcomes."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = sorted(grid[0]["params"])
    index = {tuple(str(t["params"][n]) for n in names): i for i, t in enumerate(grid)}
    choices = {n: sorted({str(t["params"][n]) for t in grid}) for n in names}
    sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=4)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    stopper = pareto_stopper(**stopper_kw)
    order: list[int] = []
    outcomes: dict[int, float | None] = {}
    while len(order) < len(grid):
        trial = study.ask({n: optuna.distributions.CategoricalDistribution(c)
                           for n, c in choices.items()})
        i = index[tuple(trial.params[n] for n in names)]
        if i in outcomes:  # already run: tell the same result, propose again
            study.tell(trial, [grid[i]["quality"], grid[i]["energy_j"]])
            if len(study.trials) > 20 * len(grid):
                break
            continue
        outcomes[i] = stopper(i, grid[i])
        order.append(i)
        if outcomes[i] is None:
            study.tell(trial, [grid[i]["quality"], grid[i]["energy_j"]])
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    rest = [i for i in range(len(grid)) if i not in outcomes]
    return order + rest, outcomes


def replay(grid: list[dict], seeds: int, target: float, ref: tuple[float, float],
           rungs: tuple[float, ...] = RUNGS, min_spread: float = MIN_SPREAD
           ) -> dict[str, list[float]]:
    """Energy each strategy spent to reach `target`, one figure per seed."""
    out: dict[str, list[float]] = {"nsga2+pareto": [], "random": [], "asha": []}
    for seed in range(seeds):
        order, outcomes = nsga2_order(grid, seed, rungs=rungs, min_spread=min_spread)
        out["nsga2+pareto"].append(run_strategy(
            order, grid, lambda i, t, o=outcomes: o.get(i), target, ref))
        rnd = list(range(len(grid)))
        random.Random(seed).shuffle(rnd)
        out["random"].append(run_strategy(rnd, grid, None, target, ref))
        out["asha"].append(run_strategy(rnd, grid, asha_stopper(grid, rungs=rungs), target,
                                        ref))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--record", action="store_true", help="run the grid for real first")
    ap.add_argument("--out", default="runs/search-grid")
    ap.add_argument("--seeds", type=int, default=30)
    args = ap.parse_args()
    if args.record or not DATA.exists():
        record(Path(args.out))
    grid = json.loads(DATA.read_text())["trials"]
    grid = [t for t in grid if t["curve"] and t["quality"] == t["quality"]]
    ref = (0.0, 1.1 * max(t["energy_j"] for t in grid))
    full_hv = hv([(t["quality"], t["energy_j"]) for t in grid], ref)
    target = 0.95 * full_hv
    grid_j = sum(t["energy_j"] for t in grid)
    results = replay(grid, args.seeds, target, ref)
    print(f"grid: {len(grid)} configurations, {grid_j:,.0f} J in all (measured); hypervolume "
          f"{full_hv:.4g}, target 95% = {target:.4g}; strategies replayed over the recorded "
          f"curves, {args.seeds} seeds")
    print(f"{'strategy':<14} {'mean J':>10} {'mean / grid':>12} {'worst / grid':>13}")
    for name, spent in results.items():
        arr = np.array(spent)
        print(f"{name:<14} {arr.mean():>10,.0f} {arr.mean() / grid_j:>12.2f} "
              f"{arr.max() / grid_j:>13.2f}")
    print("target for nsga2+pareto: mean / grid <= 0.5 and below random and asha")
    print("check: other rung placements, and the rule without min_spread (mean / grid)")
    print(f"{'rungs':<16} {'nsga2+pareto':>12} {'min_spread 0':>13} {'asha':>6}")
    for rungs in ((0.25, 0.5, 0.75), (0.5, 0.8), tuple(i / 10 for i in range(1, 10))):
        ours = replay(grid, args.seeds, target, ref, rungs)
        plain = replay(grid, args.seeds, target, ref, rungs, min_spread=0.0)["nsga2+pareto"]
        label = ",".join(f"{r:g}" for r in rungs) if len(rungs) < 5 else "every 0.1"
        print(f"{label:<16} {np.mean(ours['nsga2+pareto']) / grid_j:>12.2f} "
              f"{np.mean(plain) / grid_j:>13.2f} {np.mean(ours['asha']) / grid_j:>6.2f}")


if __name__ == "__main__":
    main()
