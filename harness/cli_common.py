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
from harness.launchers import LaunchError
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
    password, ends the command with one line on stderr and exit code 2 instead of a traceback; cluster jobs that did
    not finish (:class:`~harness.launchers.LaunchError`) with their names and log tails, exit code 1.
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
    except LaunchError as e:  # members that did not finish on the cluster, or sbatch refusing a job
        print(f"error: {e}", file=sys.stderr)
        return 1


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


#: --slurm-* flag -> SlurmConfig field (harness.launchers.slurm)
SLURM_FLAGS = {
    "slurm_partition": "partition",
    "slurm_gpus": "gpus",
    "slurm_nodes": "nodes",
    "slurm_cpus": "cpus",
    "slurm_mem_gb": "mem_gb",
    "slurm_time_min": "time_min",
    "slurm_array_parallelism": "array_parallelism",
    "slurm_sbatch": "sbatch",
    "slurm_setup": "setup",
}


def add_launcher_flags(p: argparse.ArgumentParser, *, job: str) -> None:
    """``--launcher`` and the ``--slurm-*`` resources; ``job`` says what one Slurm job is (a member, a worker)."""
    from harness.launchers import launcher_names

    g = p.add_argument_group("where it runs (README: 'Running on a cluster')")
    g.add_argument(
        "--launcher",
        choices=launcher_names(),
        default="local",
        help=f"local (default): here; slurm: each {job} is a Slurm job (submitit), logging to one MLflow "
        "tracking server (--tracking-uri http://HOST:5000; a local sqlite file is refused). "
        "E.g. --launcher slurm --slurm-partition gpu --slurm-gpus 4",
    )
    g.add_argument(
        "--slurm-config",
        metavar="FILE",
        help="YAML of Slurm settings (the fields of harness.launchers.slurm.SlurmConfig: partition, gpus, "
        "nodes, cpus, mem_gb, time_min, array_parallelism, signal_delay_s, sbatch, setup, poll_s, folder); "
        "the --slurm-* flags override it. E.g. --slurm-config cluster.yaml",
    )
    g.add_argument("--slurm-partition", metavar="NAME", help="Partition, e.g. --slurm-partition gpu.")
    g.add_argument(
        "--slurm-gpus",
        type=_count(0),
        metavar="N",
        help=f"GPUs per {job}, one process each (DDP), e.g. --slurm-gpus 8 (default 0).",
    )
    g.add_argument(
        "--slurm-nodes",
        type=_count(1),
        metavar="N",
        help=f"Nodes per {job}; --slurm-gpus is split over them, e.g. --slurm-nodes 2 --slurm-gpus 16.",
    )
    g.add_argument(
        "--slurm-cpus",
        type=_count(1),
        metavar="N",
        help=f"CPU cores per {job} and node, e.g. --slurm-cpus 16 (default 1).",
    )
    g.add_argument(
        "--slurm-mem-gb", type=_positive_float, metavar="GB", help="Memory per node in GB, e.g. --slurm-mem-gb 64."
    )
    g.add_argument(
        "--slurm-time-min",
        type=_count(1),
        metavar="MIN",
        help=f"Time limit per {job} in minutes, e.g. --slurm-time-min 720 (default 1440); before it the job "
        "checkpoints and requeues itself.",
    )
    g.add_argument(
        "--slurm-array-parallelism",
        type=_count(1),
        metavar="N",
        help="At most N jobs of one submission run at once, e.g. --slurm-array-parallelism 4.",
    )
    g.add_argument(
        "--slurm-sbatch",
        action="append",
        metavar="OPTION",
        help="An extra #SBATCH option, repeatable; use the = form, e.g. --slurm-sbatch=--account=lab "
        "--slurm-sbatch=--exclusive.",
    )
    g.add_argument(
        "--slurm-setup",
        action="append",
        metavar="LINE",
        help="A shell line run in the job before the member starts, repeatable, e.g. "
        "--slurm-setup 'source ~/venv/bin/activate'.",
    )


def launcher_from_args(args: argparse.Namespace, *, wait: bool = True):
    """The launcher the flags ask for; ``--slurm-*`` flags without ``--launcher slurm`` are an error naming them."""
    from harness.launchers import load_slurm_config, make_launcher

    given = {dest: getattr(args, dest, None) for dest in [*SLURM_FLAGS, "slurm_config"]}
    given = {k: v for k, v in given.items() if v is not None}
    if args.launcher != "slurm":
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise ConfigError(f"{flags}: only with --launcher slurm (the launcher is {args.launcher})")
        if not wait:
            raise ConfigError(
                f"--no-wait: only with --launcher slurm (a {args.launcher} run has no jobs to leave running)"
            )
        return make_launcher(args.launcher)
    overrides = {field: given[dest] for dest, field in SLURM_FLAGS.items() if dest in given}
    return make_launcher("slurm", load_slurm_config(given.get("slurm_config"), overrides), wait=wait)
