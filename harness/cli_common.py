"""What the command lines share: the config, data and report flags, and how a command's errors end the process.

Used by ``harness`` (harness/cli.py) and ``python -m sweeps.cli`` (sweeps/cli.py, also ``harness sweep``).
It imports no command module (sweeps, reports), so any of them can use it. Each command keeps its own
help texts: a sweep's ``--set`` applies to every trial, a run's to every member.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from benchmarks.datasets import DatasetError
from harness.checkpoint import CheckpointError
from harness.config import ConfigError
from harness.plugins import load_plugins
from harness.secrets import SecretMissingError


def add_config_flags(
    p: argparse.ArgumentParser, *, config_help: str, set_help: str, tracking_uri_help: str, experiment_help: str
) -> None:
    """``--config``, ``--set`` (repeatable, into ``args.overrides``), ``--tracking-uri`` and ``--experiment``."""
    p.add_argument("--config", help=config_help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help=set_help)
    p.add_argument("--tracking-uri", help=tracking_uri_help)
    p.add_argument("--experiment", help=experiment_help)


def add_plugin_flag(p: argparse.ArgumentParser) -> None:
    """``--plugin MODULE`` (repeatable, into ``args.plugins``): :func:`run_command` imports each before the command."""
    p.add_argument(
        "--plugin",
        dest="plugins",
        action="append",
        default=[],
        metavar="MODULE",
        help="Import a module of your own first (a module name on PYTHONPATH, or a .py file) so that the algorithms "
        "and replay strategies it registers can be named; repeatable. Child processes import it too. "
        "Example: examples/my_algorithm.py.",
    )


def add_data_dir_flag(p: argparse.ArgumentParser, *, data_dir_help: str) -> None:
    """``--data-dir``: :func:`run_command` exports it as $HARNESS_DATA_DIR before the command runs."""
    p.add_argument("--data-dir", help=data_dir_help)


def add_report_flags(p: argparse.ArgumentParser, *, report_dir_help: str, no_report_help: str) -> None:
    """``--report-dir DIR`` and ``--no-report``: where the report written at the end goes, or none."""
    p.add_argument("--report-dir", metavar="DIR", help=report_dir_help)
    p.add_argument("--no-report", action="store_true", help=no_report_help)


def run_command(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a parsed command line; returns its exit code.

    ``--plugin`` modules (and those a parent process recorded in $HARNESS_PLUGINS) are imported first.
    ``--data-dir`` becomes $HARNESS_DATA_DIR (read by every loader, the trainer's and evaluation's alike, and
    inherited by sweep workers). A bad config, data set or checkpoint, or a tracking URI saved without its
    password, ends the command with one line on stderr and exit code 2 instead of a traceback.
    """
    if getattr(args, "data_dir", None):  # not every command has the flag
        os.environ["HARNESS_DATA_DIR"] = args.data_dir
    try:
        load_plugins(getattr(args, "plugins", None) or [])  # before any config names what they register
        return command(args)
    except DatasetError as e:
        print(f"data error: {e}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (CheckpointError, SecretMissingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
