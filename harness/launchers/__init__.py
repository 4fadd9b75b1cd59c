"""Where matrix members run: the launcher registry (the only list of launcher names).

- ``local`` (default): one after another in the `harness run` process (:mod:`harness.launchers.local`).
- ``slurm``: each member a Slurm job submitted with submitit, every member logging to one MLflow tracking server
  (:mod:`harness.launchers.slurm`; README: 'Running on a cluster').

A launcher has ``check(configs)`` (before anything is written: refuse what cannot work) and
``run(jobs, tracker, progress=..., configs=...) -> (summaries by member key, failures)``, and ``processes()``: the
processes one member runs (``--dry-run``'s memory estimate per process; ``processes_source()`` says why).
"""

from __future__ import annotations

from typing import Any

from harness.launchers.local import LocalLauncher
from harness.launchers.member import MemberJob, Preempted
from harness.launchers.slurm import LaunchError, SlurmConfig, SlurmLauncher, load_slurm_config

LAUNCHERS = {"local": LocalLauncher, "slurm": SlurmLauncher}

__all__ = [
    "LAUNCHERS",
    "LaunchError",
    "LocalLauncher",
    "MemberJob",
    "Preempted",
    "SlurmConfig",
    "SlurmLauncher",
    "launcher_names",
    "load_slurm_config",
    "make_launcher",
]


def launcher_names() -> list[str]:
    return list(LAUNCHERS)


def make_launcher(name: str, slurm: SlurmConfig | None = None, *, wait: bool = True) -> Any:
    if name not in LAUNCHERS:
        from harness.schema import ConfigError

        raise ConfigError(f"--launcher: unknown launcher '{name}'; known: {', '.join(LAUNCHERS)}")
    if name == "slurm":
        return SlurmLauncher(slurm or SlurmConfig(), wait=wait)
    return LocalLauncher()
