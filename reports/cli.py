"""`harness report`: an experiment's MLflow runs -> Markdown + self-contained HTML report, figures and CSVs.

    harness report --experiment NAME [--tracking-uri URI] [--parent RUN_ID | --all-runs] [--sweep RUN_ID|none] [--out DIR]

Wiring (harness/cli.py): ``add_report_parser(sub)`` adds the sub-command, ``cmd_report(args)`` runs it;
``generate_report(tracking_uri, experiment=..., out_dir=..., parent_run_id=..., sweep_run_id=...)``
is the function `harness run` / `harness sweep` call at the end.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import re
import sys
from pathlib import Path

REPORT_EPILOG = """examples:
  harness report --experiment harness                 # the newest `harness run` matrix of the experiment
  harness report --experiment demo --parent 3f2a...   # one matrix (parent run id)
  harness report --experiment demo --all-runs --out reports/demo-all
  harness report --tracking-uri http://mlflow:5000 --experiment demo --sweep none

Writes report.md, report.html (self-contained: figures embedded), figures/*.png|svg and tables/*.csv
to --out (default reports/<experiment>-<timestamp>/).
"""


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
        help="Sweep parent run to include; 'auto' = the newest sweep of the experiment (default), 'none' = no sweep section.",
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
    if args.target_accuracy is not None and not 0 < args.target_accuracy <= 1:
        print(
            f"error: --target-accuracy is a macro accuracy between 0 and 1 (e.g. 0.4), got {args.target_accuracy}",
            file=sys.stderr,
        )
        return 2
    from harness.tracking import resolve_tracking_uri

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
    """:func:`generate_report` for `harness run` / `harness sweep` when they finish: prints where the report went, or a
    warning with ``retry_hint`` (the command that writes it later) - a report error never hides the run's own outcome."""
    try:
        out = generate_report(tracking_uri, experiment=experiment, out_dir=out_dir, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the results are already in MLflow (and Optuna)
        print(
            f"warning: the report could not be written ({type(exc).__name__}: {exc}); run `{retry_hint}`",
            file=sys.stderr,
        )
        return None
    print(f"report: {out / 'report.html'}", flush=True)
    return out


def default_out_dir(experiment: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("reports") / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', experiment).strip('-') or 'experiment'}-{stamp}"


def generate_report(
    tracking_uri: str | None = None, experiment: str = "harness", out_dir: str | Path | None = None, **kwargs
) -> Path:
    """Write the report of ``experiment`` (at ``tracking_uri``) to ``out_dir`` and return that folder.

    Keyword arguments (all optional):

    * ``parent_run_id``: report that experiment parent's children (what `harness run` passes); default:
      the newest parent run (``harness.role=experiment``) of the experiment.
    * ``all_runs=True``: every training run of the experiment instead.
    * ``sweep_run_id``: a sweep parent run id (what `harness sweep` passes), ``"auto"`` (default: the
      newest sweep of the experiment, if any) or None (no sweep section).
    * ``sweep_only=True``: only the sweep, no experiment-matrix sections (for `harness sweep`).
    * ``baseline="grpo"``, ``compute_unit`` (flops, wall_seconds, generated_tokens, trained_tokens, steps;
      default: the runs' budget unit), ``n_bootstrap=1000``, ``include_unfinished=False``, ``svg=False``, ``title``.

    ``out_dir`` defaults to ``reports/<experiment>-<timestamp>/`` (relative to the working directory);
    it receives report.md, report.html (figures inlined as data URIs), figures/*.png and tables/*.csv.
    """
    from reports.builder import generate_report as build

    return build(tracking_uri, experiment, out_dir, **kwargs)
