"""The local launcher: members one after another in this process (the default; what `harness run` always did)."""

from __future__ import annotations

import os
from typing import Any

from harness.launchers.member import MemberJob, run_member


class LocalLauncher:
    name = "local"

    def processes(self) -> int:
        """Processes per member: this run's own (``$WORLD_SIZE`` under torchrun / accelerate launch), else 1."""
        return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))

    def processes_source(self) -> str:
        if "WORLD_SIZE" in os.environ:
            return "local launcher: $WORLD_SIZE"
        return "local launcher: one process; --processes N for torchrun/accelerate launch with N"

    def check(self, configs: list[Any]) -> None:
        """Nothing to check: every member runs here, with the stores this machine reaches."""

    def run(self, jobs: list[MemberJob], tracker: Any, *, progress: bool, configs: dict[str, Any]) -> tuple[dict, list]:
        """Train each member in turn; a member that fails stops the matrix (its exception propagates)."""
        summaries = {}
        for j in jobs:
            tracker.set_member_state(j.run_name, "running")
            try:
                summaries[j.key] = run_member(j, config=configs[j.key], progress=progress)
            except BaseException:
                tracker.set_member_state(j.run_name, "failed")
                raise
            tracker.set_member_state(j.run_name, "finished")
        return summaries, []
