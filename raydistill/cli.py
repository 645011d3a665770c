"""The command line: the only place that prints.

    raydistill measure [--source SPEC] [--hz N] [--out DIR] [--address ADDR] -- COMMAND ...
    raydistill measure --stage NAME --run DIR [--trial T] [--tokens N] -- COMMAND ...
    raydistill ledger DIR [--csv]
    raydistill run CONFIG [--out DIR] [--set k=v ...] [--address ADDR] [--report]
    raydistill sweep SPACE [--out DIR] [--budget-kwh X] [--resume] [--report]
    raydistill report DIR

Bad input exits with code 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from raydistill.console import quiet
from raydistill.energy.sources import SPEC_FORMS
from raydistill.errors import ConfigError, RayDistillError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raydistill", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging, and Ray's, DeepSpeed's and lm-eval's output on the "
                        "terminal (by default it goes to RUN_DIR/logs/console.log)")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("measure", help="run any command inside one measured window")
    m.add_argument("--source", default="auto",
                   help=SPEC_FORMS.replace(", ", " | "))
    m.add_argument("--hz", type=float, default=10.0, help="samples per second (default 10)")
    m.add_argument("--out", default=None, help="run directory (default runs/measure-<time>)")
    m.add_argument("--address", default=None, help="Ray address ('auto' joins a running cluster)")
    m.add_argument("--idle-s", type=float, default=1.0, help="idle baseline length (s)")
    m.add_argument("--stage", default=None,
                   help="measure the command as this stage of --run (e.g. teacher_generation)")
    m.add_argument("--run", dest="run_dir", default=None,
                   help="with --stage: the run directory to append the stage to (made if new)")
    m.add_argument("--trial", default=None,
                   help="with --stage: the trial the stage belongs to (default: the run's)")
    m.add_argument("--tokens", type=int, default=None,
                   help="with --stage: tokens the command processed (or let it write them to "
                        "$RAYDISTILL_TOKENS_FILE as 'TOKENS [GENERATED]')")
    m.add_argument("--generated-tokens", type=int, default=0,
                   help="with --stage: of --tokens, those the model generated")
    m.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")

    r = sub.add_parser("run", help="run one distillation experiment, every stage measured")
    r.add_argument("config", help="experiment YAML (see configs/)")
    r.add_argument("--out", default=None, help="run directory (default runs/<name>-<time>)")
    r.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a config value, e.g. student.lr=3e-4")
    r.add_argument("--address", default=None, help="Ray address ('auto' joins a running cluster)")
    r.add_argument("--artifacts", default=None,
                   help="teacher artifact cache (default: artifacts/ beside the run directory)")
    r.add_argument("--dry-run", action="store_true",
                   help="resolve the config, check tokenizers, print a per-GPU memory estimate")
    r.add_argument("--report", action="store_true",
                   help="write RUN_DIR/report/report.html at the end and print its path")

    sw = sub.add_parser("sweep", help="search distillation settings for energy and quality")
    sw.add_argument("space", help="search space YAML (see search_spaces/)")
    sw.add_argument("--out", default=None, help="sweep directory (default runs/sweep-<time>)")
    sw.add_argument("--budget-kwh", type=float, default=None,
                    help="stop the sweep when the next trial's forecast would not fit")
    sw.add_argument("--trial-budget-kwh", type=float, default=None,
                    help="stop any trial that spends more than this")
    sw.add_argument("--address", default=None, help="Ray address ('auto' joins a running cluster)")
    sw.add_argument("--resume", action="store_true", help="resume the sweep in --out")
    sw.add_argument("--dry-run", action="store_true",
                    help="print the trials and their forecast energy; run nothing")
    sw.add_argument("--report", action="store_true",
                    help="write SWEEP_DIR/report/report.html at the end and print its path")

    rep = sub.add_parser("report", help="report.html, figures and exports of a run or sweep")
    rep.add_argument("run_dir")
    rep.add_argument("--out", default=None, help="output directory (default RUN_DIR/report)")

    led = sub.add_parser("ledger", help="print the stage × device energy table of a run directory")
    led.add_argument("run_dir")
    led.add_argument("--csv", action="store_true", help="CSV instead of a table")
    led.add_argument("--max-gap-s", type=float, default=2.0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )
    try:
        if args.command == "measure":
            return _measure(args)
        if args.command == "ledger":
            return _ledger(args)
        if args.command == "run":
            return _run(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "report":
            from raydistill.report.html import write_report

            print(write_report(args.run_dir, args.out))
            return 0
    except ConfigError as exc:
        print(f"raydistill: error: {exc}", file=sys.stderr)
        return 2
    except RayDistillError as exc:
        from raydistill.console import log_of

        where = log_of(exc)
        print(f"raydistill: {exc}" + (f" (the libraries' output: {where})" if where else ""),
              file=sys.stderr)
        return 1
    return 2


def _measure(args: argparse.Namespace) -> int:
    from raydistill.config import SamplingConfig
    from raydistill.measure import measure_command

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise ConfigError("measure needs a command after --, e.g. raydistill measure -- sleep 5")
    cfg = SamplingConfig(source=args.source, hz=args.hz, idle_s=args.idle_s)
    if args.stage is not None or args.run_dir is not None:
        from raydistill.measure import measure_stage

        if args.stage is None or args.run_dir is None or args.out is not None:
            raise ConfigError("measure: --stage and --run go together (and without --out), "
                              "e.g. raydistill measure --stage teacher_generation --run "
                              "runs/x -- python gen.py")
        staged = measure_stage(cmd, cfg, Path(args.run_dir), args.stage, trial=args.trial,
                               tokens=args.tokens, generated_tokens=args.generated_tokens,
                               address=args.address)
        print(staged.summary())
        return staged.returncode
    out = Path(args.out or f"runs/measure-{time.strftime('%Y%m%d-%H%M%S')}")
    result = measure_command(cmd, cfg, out, address=args.address)
    print(result.summary())
    return result.returncode


def _run(args: argparse.Namespace) -> int:
    from raydistill.config import load_experiment
    from raydistill.run import run_experiment, summary

    cfg = load_experiment(args.config, args.overrides)
    if args.dry_run:
        from raydistill.local_models import resolve_models
        from raydistill.plan import dry_run

        root = Path(args.artifacts) if args.artifacts else Path("artifacts")
        text, fits = dry_run(resolve_models(cfg, root))
        print(text)
        return 0 if fits else 3
    out = Path(args.out or f"runs/{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    with quiet(args.verbose) as console:
        result = run_experiment(cfg, out, address=args.address,
                                artifacts=Path(args.artifacts) if args.artifacts else None,
                                progress=console.say, on_run_dir=_keep_logs(console))
        console.show(summary(result))
        _finish(console, result.run_dir, args.report)
    return 0


def _keep_logs(console):
    """Once the run directory exists, the libraries' output moves into RUN/logs/."""
    return lambda run_dir: console.keep_log_in(Path(run_dir) / "logs")


def _finish(console, run_dir: Path, report: bool) -> None:
    """Where the rest is: the libraries' log and, with --report, the picture."""
    if console.log_path is not None:
        console.say(f"Ray's, DeepSpeed's and lm-eval's output: {console.log_path} "
                    "(its start; the latest, past 8 MiB, in console.log.tail; --verbose shows "
                    "it here)")
    if report:
        from raydistill.report.html import write_report

        console.say(f"report: {write_report(run_dir)}")


def _sweep(args: argparse.Namespace) -> int:
    from raydistill.search.sweep import dry_run, forecast_table, run_sweep

    if args.dry_run:
        print(forecast_table(dry_run(args.space, args.out)))
        return 0
    if args.resume and not args.out:
        raise ConfigError("--resume needs --out: the sweep directory to resume")
    out = Path(args.out or f"runs/sweep-{time.strftime('%Y%m%d-%H%M%S')}")
    from raydistill.units import display_frame

    with quiet(args.verbose) as console:
        summary = run_sweep(args.space, out, budget_kwh=args.budget_kwh,
                            trial_budget_kwh=args.trial_budget_kwh, address=args.address,
                            resume=args.resume, progress=console.say,
                            on_run_dir=_keep_logs(console))
        cols = [c for c in ("trial_id", "status", "quality", "quality_test", "energy_j",
                            "energy_marginal_j",
                            "energy_amortized_j", "forecast_j", "forecast_profile_error",
                            "wasted_j") if c in summary["trials_table"].columns]
        console.show(display_frame(summary["trials_table"][cols]).to_string(index=False))
        console.show(f"Pareto set (selected on {summary.get('pareto_selected_on', 'dev')}, "
                     f"test beside): {', '.join(summary['pareto_trials']) or 'empty'}; "
                     f"hypervolume {summary['hypervolume']:.4g} (reference quality 0, energy "
                     f"{summary['reference'][1]:,.0f} J); knee {summary['knee_trial']}; wasted "
                     f"{summary['wasted_j']:,.1f} J; sweep dir {summary['run_dir']}")
        _finish(console, Path(summary["run_dir"]), args.report)
    return 0


def _ledger(args: argparse.Namespace) -> int:
    from raydistill.results import (
        energy_frame,
        error_notes,
        format_table,
        load_ledger,
        stage_device_table,
    )

    run_dir = Path(args.run_dir)
    if not (run_dir / "ledger").is_dir():
        raise ConfigError(f"{run_dir} is not a run directory (no ledger/ inside)")
    state, damage = load_ledger(run_dir, args.max_gap_s)
    for d in damage:
        print(f"warning: ledger damage kept to its valid prefix: {d}", file=sys.stderr)
    frame = energy_frame(state.energy_rows())
    table = stage_device_table(frame)
    print(table.to_csv(index=False) if args.csv else format_table(table))
    if not args.csv:  # where each stated error comes from, so a cited figure can cite it too
        for note in error_notes(frame):
            print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
