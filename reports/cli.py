"""`harness report`: an experiment's MLflow runs -> Markdown + self-contained HTML report, figures and CSVs.

    harness report --experiment NAME [--tracking-uri URI] [--parent RUN_ID | --all-runs]
                   [--sweep RUN_ID|none] [--sweep-only] [--out DIR] ...

Wiring (harness/cli.py): ``add_report_parser(sub)`` adds the sub-command, ``cmd_report(args)`` runs it;
``report_at_end(...)`` is what `harness run` / `harness sweep` call when they finish. The report itself is
``reports.builder.generate_report`` (importable from here too, as is ``default_out_dir``). This module stays
light (no pandas, matplotlib or MLflow) because every `harness` command builds its parser: reports.builder is
imported only when a report is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.tracking import resolve_tracking_uri

REPORT_EPILOG = """examples:
  harness report --experiment harness                 # the newest `harness run` matrix of the experiment
  harness report --experiment demo --parent 3f2a...   # one matrix (parent run id)
  harness report --experiment demo --all-runs --out reports/demo-all
  harness report --tracking-uri http://mlflow:5000 --experiment demo --sweep none

Writes report.md, report.html (self-contained: figures embedded), figures/*.png|svg and tables/*.csv
to --out (default reports/<experiment>-<timestamp>/).
"""

# names defined in reports.builder that callers may import from here (loaded on first use: see __getattr__)
_FROM_BUILDER = ("generate_report", "default_out_dir")


def __getattr__(name: str):
    """``reports.cli.generate_report`` / ``default_out_dir``: reports.builder's, imported on first use."""
    if name in _FROM_BUILDER:
        from reports import builder

        return getattr(builder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def add_report_parser(subparsers) -> argparse.ArgumentParser:
    """Add `harness report` to ``subparsers`` (the object ``parser.add_subparsers()`` returned)."""
    p = subparsers.add_parser(
        "report",
        help="Write a Markdown + HTML report (figures, CSV tables) of an experiment's MLflow runs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=REPORT_EPILOG,
    )
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db).")
    p.add_argument("--experiment", default=None, help="MLflow experiment name (default: harness).")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument(
        "--parent",
        metavar="RUN_ID",
        help="Report the children of this experiment parent run (default: the newest parent).",
    )
    sel.add_argument(
        "--all-runs", action="store_true", help="Report every training run of the experiment, whatever its parent."
    )
    p.add_argument(
        "--sweep",
        default="auto",
        metavar="RUN_ID",
        help="Sweep parent run to include; 'auto' = the newest sweep of the experiment (default), "
        "'none' = no sweep section.",
    )
    p.add_argument(
        "--sweep-only",
        action="store_true",
        help="Report only the sweep (no experiment matrix sections); what `harness sweep` produces.",
    )
    p.add_argument("--out", metavar="DIR", help="Output folder (default: reports/<experiment>-<timestamp>/).")
    p.add_argument(
        "--baseline", default="grpo", help="Algorithm the deltas and overheads are relative to (default: grpo)."
    )
    p.add_argument(
        "--compute-unit",
        choices=["flops", "wall_seconds", "generated_tokens", "trained_tokens", "steps"],
        help="x axis of the accuracy-vs-compute curves (default: the runs' budget unit).",
    )
    p.add_argument(
        "--bootstrap", type=int, default=1000, metavar="N", help="Bootstrap resamples for the CIs (default: 1000)."
    )
    p.add_argument(
        "--target-accuracy",
        type=float,
        metavar="ACC",
        help="Macro accuracy (0-1) for the cost-to-target table (default: the best "
        "accuracy every compared algorithm reaches).",
    )
    p.add_argument(
        "--include-unfinished",
        action="store_true",
        help="Use FAILED/KILLED/RUNNING runs in the aggregates too (default: listed, not used).",
    )
    p.add_argument("--svg", action="store_true", help="Also write every figure as SVG (the HTML embeds the PNGs).")
    p.add_argument("--title", help="Report title.")
    return p


def cmd_report(args: argparse.Namespace) -> int:
    """Run `harness report` with the arguments ``add_report_parser`` parsed; the exit status."""
    if args.target_accuracy is not None and not 0 < args.target_accuracy <= 1:
        print(
            f"error: --target-accuracy is a macro accuracy between 0 and 1 (e.g. 0.4), got {args.target_accuracy}",
            file=sys.stderr,
        )
        return 2
    from reports.builder import generate_report

    sweep = None if str(args.sweep).lower() in ("none", "no", "off", "") else args.sweep
    out = generate_report(
        resolve_tracking_uri(args.tracking_uri),
        experiment=args.experiment or "harness",
        out_dir=args.out,
        parent_run_id=args.parent,
        all_runs=args.all_runs,
        sweep_run_id=sweep,
        baseline=args.baseline,
        compute_unit=args.compute_unit,
        n_bootstrap=args.bootstrap,
        include_unfinished=args.include_unfinished,
        svg=args.svg,
        title=args.title,
        sweep_only=args.sweep_only,
        target_accuracy=args.target_accuracy,
    )
    print(f"report: {out / 'report.html'}\n        {out / 'report.md'}")
    return 0


def report_at_end(
    tracking_uri: str | None, experiment: str, out_dir: str | Path, *, retry_hint: str, **kwargs
) -> Path | None:
    """``generate_report`` for `harness run` / `harness sweep` when they finish: prints where the report went, or a
    warning with ``retry_hint`` (the command that writes it later) - a report error never hides the run's own outcome.
    """
    try:
        from reports.builder import generate_report

        out = generate_report(tracking_uri, experiment=experiment, out_dir=out_dir, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the results are already in MLflow (and Optuna)
        print(
            f"warning: the report could not be written ({type(exc).__name__}: {exc}); run `{retry_hint}`",
            file=sys.stderr,
        )
        return None
    print(f"report: {out / 'report.html'}", flush=True)
    return out
