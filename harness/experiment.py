"""Experiment matrix: one training run per (algorithm variant, model, seed), all under one budget.

MLflow layout (what reports read): a parent run tagged ``harness.role=experiment`` and
``harness.experiment=<name>``; one child run per member with ``mlflow.parentRunId``,
``harness.role=member``, ``harness.member=<algo>|<model>|<seed>``, ``algorithm``, ``model``, ``seed``,
``harness.budget_unit`` and ``harness.budget_value``.

Restartable: the same command finds the same parent (the name is a hash of the matrix unless
``--name`` is given), skips members whose run FINISHED, resumes members with a checkpoint in their
output folder (same MLflow run; a new one if the store lost it), and restarts the rest. Checkpoints are found from
the ``checkpoint-<step>`` folders, so a lost ``latest.json`` or ``mlflow.db`` never restarts a member from step 0.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.budget import estimate, parse_budget
from harness.config import HarnessConfig


@dataclass
class Member:
    model: str
    algorithm: str
    seed: int
    config: HarnessConfig
    alone: bool = False  # the matrix's only member (set by name_members): it takes tracking.run_name as it is

    @property
    def key(self) -> str:
        return f"{self.algorithm}|{self.model}|{self.seed}"

    @property
    def default_name(self) -> str:
        return f"{self.algorithm.replace(':', '-')}-{self.model.split('/')[-1]}-s{self.seed}"

    @property
    def run_name(self) -> str:
        """MLflow run name and output folder: ``tracking.run_name`` when the user set one (a one-member matrix takes it
        as it is, a larger one as a prefix of each member's ``<algo>-<model>-s<seed>``), else that default."""
        user = self.config.tracking.run_name
        if not user or user.endswith(self.default_name):  # the default, or already prefixed (the matrix writes it back)
            return user or self.default_name
        return user if self.alone else f"{user}-{self.default_name}"


def name_members(members: list[Member]) -> list[Member]:
    """Tell each member whether it is the matrix's only one (see :attr:`Member.run_name`)."""
    for m in members:
        m.alone = len(members) == 1
    return members


def matrix_name(members: list[Member], explicit: str | None) -> str:
    if explicit:
        return explicit
    from harness.secrets import mask_secrets

    # masked: a password in the tracking URI neither reaches the name nor changes it
    blob = json.dumps(
        [[m.key, mask_secrets(m.config.to_dict())] for m in members], sort_keys=True, default=str
    ).encode()
    return "matrix-" + hashlib.sha256(blob).hexdigest()[:10]


def _fmt(value: float | None, spec: str) -> str:
    return spec.format(value) if value is not None else "unknown"


def print_matrix(name: str, members: list[Member]) -> None:
    print(f"experiment matrix '{name}': {len(members)} runs")
    print(
        f"{'run':40s} {'budget':22s} {'params':>10s} {'FLOPs/step (max)':>17s} {'steps (min)':>11s} {'peak mem (est)':>14s}"
    )
    for m in members:
        e = estimate(m.config, m.model)
        print(
            f"{m.run_name:40s} {e['budget']:22s} {_fmt(e['params'], '{:10.3g}'):>10s} {_fmt(e['flops_per_step_max'], '{:17.3g}'):>17s} {_fmt(e['min_steps'], '{:11.1f}'):>11s} "
            f"{_fmt(e.get('peak_memory') and e['peak_memory'] / 1e9, '{:11.1f} GB'):>14s}"
        )
    print(
        "(upper bounds from max prompt/completion lengths; FLOPs = 2N per generated/prompt token + 6N per trained token)"
    )
    print(
        "(peak mem: training memory per member and process = weights + gradients + AdamW moments + activations of the largest "
        "micro-batch (train.max_tokens_per_microbatch) + one log-prob chunk of logits (train.logprob_chunk_size) + ~0.5 GB runtime; "
        "a vLLM engine's own weights and KV cache come on top; harness/memory.py)"
    )


class MatrixTracker:
    """Finds or creates the parent run and each member's run state in MLflow."""

    def __init__(self, tracking_uri: str, experiment: str, name: str, spec: dict[str, Any]):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
        self.name = name
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`harness.experiment` = '{name}' and tags.`harness.role` = 'experiment'",
        )
        if found:
            self.parent_id = found[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
        else:
            run = self.client.create_run(
                self.experiment_id, run_name=name, tags={"harness.role": "experiment", "harness.experiment": name}
            )
            self.parent_id = run.info.run_id
            self.client.log_text(self.parent_id, json.dumps(spec, indent=2, default=str), "matrix.json")

    def member_run(self, member: Member):
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`harness.experiment` = '{self.name}' and tags.`harness.member` = '{member.key}'",
            order_by=["attributes.start_time DESC"],
        )
        return runs[0] if runs else None

    def finish(self, status: str, summary_text: str) -> None:
        self.client.log_text(self.parent_id, summary_text, "summary.txt")
        self.client.set_terminated(self.parent_id, status=status)


def run_matrix(
    members: list[Member], *, name: str, progress: bool = True, on_parent=None
) -> list[tuple[str, str, int, dict]]:
    """Run (or continue) every member; returns (model, algorithm, seed, summary) per member.

    ``on_parent(tracking_uri, experiment, parent_run_id)`` is called once the parent run exists (the CLI
    uses it to write the report at the end, also when a member fails)."""
    from harness import checkpoint as ckpt
    from harness.tracking import resolve_tracking_uri
    from harness.trainer import Trainer

    first = members[0].config
    tracker = MatrixTracker(
        resolve_tracking_uri(first.tracking.tracking_uri),
        first.tracking.experiment_name,
        name,
        {"members": [m.key for m in members], "budget": first.train.budget},
    )
    if on_parent is not None:
        on_parent(tracker.client.tracking_uri, first.tracking.experiment_name, tracker.parent_id)
    results = []
    status = "FAILED"
    try:
        for m in members:
            cfg = m.config
            cfg.tracking.run_name = m.run_name
            cfg.train.output_dir = str(Path("runs") / name / m.run_name)
            out = Path(cfg.train.output_dir)
            prior = tracker.member_run(m)
            if prior is not None and prior.info.status == "FINISHED" and (out / "summary.json").exists():
                print(f"[{name}] {m.run_name}: finished earlier, skipped")
                results.append((m.model, m.algorithm, m.seed, json.loads((out / "summary.json").read_text())))
                continue
            resume = None
            if ckpt.list_checkpoints(
                out
            ):  # found from the folders: a lost latest.json or MLflow store never means starting over
                resume = str(out)  # the trainer takes the newest intact checkpoint (or refuses, naming the bad files)
                print(
                    f"[{name}] {m.run_name}: resuming from the newest intact checkpoint in {out}"
                    + (
                        ""
                        if prior is not None
                        else " (no MLflow run of this member in the store: the trainer continues the checkpoint's run or starts a new one)"
                    )
                )
            elif prior is not None:
                tracker.client.set_terminated(
                    prior.info.run_id, status="FAILED"
                )  # no checkpoint to continue: start over
            unit, value = parse_budget(cfg.train.budget) if cfg.train.budget else ("steps", float(cfg.train.max_steps))
            tags = {
                "harness.role": "member",
                "harness.experiment": name,
                "harness.member": m.key,
                "harness.budget_unit": unit,
                "harness.budget_value": f"{value:g}",
            }
            trainer = Trainer(cfg, resume=resume, progress=progress, tracker_tags=tags, parent_run_id=tracker.parent_id)
            results.append((m.model, m.algorithm, m.seed, trainer.fit()))
        status = "FINISHED"
    finally:
        from harness.summary import compare_to_baseline, format_summary

        tracker.finish(status, format_summary(results) + "\n" + "\n".join(compare_to_baseline(results)))
    return results
