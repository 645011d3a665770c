"""Compare two run or sweep directories side by side: energy per stage and quality.

    python analysis/compare_runs.py runs/a runs/b [--png compare.png]
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from raydistill.errors import ConfigError
from raydistill.report.data import load_report_data


def stage_table(a, b) -> pd.DataFrame:
    def per_stage(d):
        r = d.results[~d.results["stage"].str.startswith("inference_")]
        return r.groupby("stage")["energy_j"].sum()

    out = pd.DataFrame({f"a: {a.run_dir.name}": per_stage(a),
                        f"b: {b.run_dir.name}": per_stage(b)}).fillna(0.0)
    out["b/a"] = out.iloc[:, 1] / out.iloc[:, 0].where(out.iloc[:, 0] > 0)
    out.loc["total"] = [out.iloc[:, 0].sum(), out.iloc[:, 1].sum(),
                        out.iloc[:, 1].sum() / max(out.iloc[:, 0].sum(), 1e-12)]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--png", default=None)
    args = ap.parse_args(argv)
    try:
        a, b = load_report_data(args.a), load_report_data(args.b)
    except ConfigError as exc:
        print(f"compare_runs: error: {exc}", file=sys.stderr)
        return 2
    table = stage_table(a, b)
    print("energy per stage (J):")
    print(table.to_string(float_format=lambda v: f"{v:,.2f}"))
    for d in (a, b):
        best = d.trials.sort_values("quality", ascending=False).head(1)
        print(f"{d.run_dir.name}: best quality {best['quality'].iloc[0]:.3f} "
              f"({best['trial_id'].iloc[0]}), Pareto set {', '.join(d.pareto_ids)}")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        ax = table.drop(index="total").iloc[:, :2].plot.bar(figsize=(8, 4))
        ax.set_ylabel("energy (J)")
        ax.figure.tight_layout()
        ax.figure.savefig(args.png)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
