"""Experiment matrix: one training run per (algorithm variant, model, seed), all under one budget.

MLflow layout (what reports read): a parent run tagged ``harness.role=experiment`` and
``harness.experiment=<name>``; one child run per member with ``mlflow.parentRunId``,
``harness.role=member``, ``harness.member=<algo>|<model>|<seed>``, ``algorithm``, ``model``, ``seed``,
``harness.budget_unit`` and ``harness.budget_value``.

Restartable: the same command finds the same parent (the name is a hash of the matrix unless
``--name`` is given), skips members whose run FINISHED, resumes members with a checkpoint in their
output folder (same MLflow run; a new one if the store lost it), and restarts the rest. Checkpoints are found from
the ``checkpoint-<step>`` folders, so a lost ``latest.json`` or ``mlflow.db`` never restarts a member from step 0.

Where members run is the launcher's business (:mod:`harness.launchers`: here, one after another, or as Slurm jobs);
the parent run records each member's state (``harness.state.<member>``) and job (``harness.job.<member>``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager
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


def print_matrix(
    name: str,
    members: list[Member],
    *,
    processes: int = 1,
    processes_from: str = "",
    gpu_memory: float | None = None,
) -> None:
    """The matrix with its compute estimates, then each member's memory per process (:func:`memory_lines`) at
    ``processes`` processes per member (``processes_from`` says where that count came from) and, with
    ``gpu_memory`` (bytes), whether it fits the GPU."""
    print(f"experiment matrix '{name}': {len(members)} runs")
    print(
        f"{'run':40s} {'budget':22s} {'params':>10s} {'FLOPs/step (max)':>17s} {'steps (min)':>11s} {'peak mem (est)':>14s}"
    )
    for m in members:
        e = estimate(m.config, m.model, processes=processes, gpu_memory=gpu_memory)
        print(
            f"{m.run_name:40s} {e['budget']:22s} {_fmt(e['params'], '{:10.3g}'):>10s} {_fmt(e['flops_per_step_max'], '{:17.3g}'):>17s} {_fmt(e['min_steps'], '{:11.1f}'):>11s} "
            f"{_fmt(e.get('peak_memory') and e['peak_memory'] / 1e9, '{:11.1f} GB'):>14s}"
        )
    print(
        "(upper bounds from max prompt/completion lengths; FLOPs = 2N per generated/prompt token + 6N per trained token)"
    )
    print(
        f"(peak mem: per process of a member running {processes} process{'es' if processes > 1 else ''}"
        f"{f' ({processes_from})' if processes_from else ''}, with its train.sharding; the parts below; harness/memory.py)"
    )
    groups: dict[tuple[str, ...], list[str]] = {}
    for m in members:  # members with the same memory (seeds, often algorithms) share one table
        groups.setdefault(tuple(memory_lines(m.config, m.model, processes, gpu_memory)), []).append(m.run_name)
    for lines, runs in groups.items():
        if lines:
            print(f"\nmemory per process, {', '.join(runs)}:")
            print("\n".join(lines))


#: The rows of the per-process memory table: (label, key of the estimate).
_MEMORY_ROWS = (
    ("weights", "weights"),
    ("gradients", "gradients"),
    ("AdamW state", "optimizer"),
    ("DDP gradient buckets", "ddp_buckets"),
    ("reference model (KL)", "reference"),
    ("FSDP gathered units", "gathered"),
    ("activations", "activations"),
    ("logits", "logits"),
    ("runtime base", "base"),
    ("vLLM engine (colocated)", "engine"),
    ("= training peak", "training"),
    ("rollout: FSDP gathers", "sampling_gathered"),
    ("= rollout-phase peak", "sampling"),
    ("PEAK per process", "total"),
    ("host memory (offloaded)", "host"),
)


def memory_lines(cfg: HarnessConfig, model: str, processes: int, gpu_memory: float | None) -> list[str]:
    """A member's estimated memory per process in GB, DDP vs FSDP at ``processes`` (:func:`harness.memory.alternatives`;
    ``*`` marks the member's own train.sharding), with a fits / does NOT fit line per column given ``gpu_memory``."""
    from harness.memory import alternatives, estimate_for_config, model_arch, sharding_of

    arch = model_arch(model)
    if arch is None:
        return []
    own = sharding_of(cfg, processes)
    replay = estimate(cfg, model)["replay_rows"]
    cols = alternatives(own)
    ests = [estimate_for_config(cfg, arch, replay_rows=replay, sharding=s, gpu_memory=gpu_memory) for s in cols]
    own_index = next(
        (i for i, s in enumerate(cols) if (s.fsdp, s.cpu_offload) == (own.fsdp, own.fsdp and own.cpu_offload)), 0
    )
    heads = [s.label + ("*" if i == own_index and len(cols) > 1 else "") for i, s in enumerate(cols)]
    width = max(16, *(len(h) + 2 for h in heads))
    m = cfg.model
    setting = (
        f"model.dtype {m.dtype}, gradient checkpointing {'on' if m.gradient_checkpointing else 'off'}, "
        f"engine {cfg.generation.engine}"
    )
    digits = 1 if max(e["total"] for e in ests) >= 10e9 else 2
    out = [f"  GB, {processes} process{'es' if processes > 1 else ''}; {setting}"]
    out.append(f"  {'':26s}" + "".join(f"{h:>{width}s}" for h in heads))
    for label, key in _MEMORY_ROWS:
        values = [e[key] for e in ests]
        if key in ("reference", "engine", "host", "sampling_gathered", "ddp_buckets", "gathered") and not any(values):
            continue
        out.append(f"  {label:26s}" + "".join(f"{v / 1e9:>{width}.{digits}f}" for v in values))
    if gpu_memory:
        verdicts = [
            f"fits ({e['total'] / gpu_memory:.0%})" if e["total"] <= gpu_memory else "does NOT fit" for e in ests
        ]
        out.append(f"  {f'vs a {gpu_memory / 1e9:g} GB GPU':26s}" + "".join(f"{v:>{width}s}" for v in verdicts))
    if len(cols) == 1 and own.mode == "fsdp":
        out.append("  (one process: nothing to shard, train.sharding=fsdp trains unsharded; see --processes)")
    if any(e["engine_unknown"] for e in ests):
        out.append(
            "  (the colocated vLLM engine reserves a fraction of the GPU, generation.vllm_gpu_memory_utilization or 0.3:"
            " not counted; give --gpu-memory-gb)"
        )
    if cfg.generation.engine == "vllm-server":
        out.append("  (the vllm-server engine runs on its own GPUs: not counted here)")
    return out


def _sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI, else None."""
    return Path(tracking_uri[len("sqlite:///") :]) if tracking_uri.startswith("sqlite:///") else None


@contextmanager
def _sqlite_lock(tracking_uri: str):
    """An exclusive lock beside a sqlite store (nothing for other stores): processes started together (torchrun)
    otherwise race to create its tables, and MLflow's migration fails in all but one."""
    path = _sqlite_path(tracking_uri)
    if path is None:
        yield
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class MatrixTracker:
    """Finds or creates the parent run and each member's run state in MLflow."""

    def __init__(self, tracking_uri: str, experiment: str, name: str, spec: dict[str, Any]):
        self.name = name
        if os.environ.get("RANK", "0") != "0":  # under torchrun: the main process creates the store and the parent
            self._attach(tracking_uri, experiment)
            return
        with _sqlite_lock(tracking_uri):
            self._connect(tracking_uri, experiment, create=True)
            found = self._find_parent()
            if found:
                self.parent_id = found
                self.client.update_run(self.parent_id, status="RUNNING")
            else:
                run = self.client.create_run(
                    self.experiment_id, run_name=name, tags={"harness.role": "experiment", "harness.experiment": name}
                )
                self.parent_id = run.info.run_id
                self.client.log_text(self.parent_id, json.dumps(spec, indent=2, default=str), "matrix.json")

    def _connect(self, tracking_uri: str, experiment: str, create: bool) -> bool:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None and not create:
            return False
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
        return True

    def _find_parent(self) -> str | None:
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`harness.experiment` = '{self.name}' and tags.`harness.role` = 'experiment'",
        )
        return found[0].info.run_id if found else None

    def _attach(self, tracking_uri: str, experiment: str, timeout_s: float = 600.0) -> None:
        """A non-main process of a torchrun launch: wait for the main process's parent run (never create one, and
        never touch a sqlite store while the main process creates its tables)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with _sqlite_lock(tracking_uri):
                if (not _sqlite_path(tracking_uri) or _sqlite_path(tracking_uri).exists()) and self._connect(
                    tracking_uri, experiment, create=False
                ):
                    found = self._find_parent()
                    if found:
                        self.parent_id = found
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"process RANK={os.environ.get('RANK')}: the main process created no parent run for matrix "
                    f"'{self.name}' in experiment '{experiment}' within {timeout_s:.0f} s"
                )
            time.sleep(0.5)

    def member_run(self, member: Member):
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`harness.experiment` = '{self.name}' and tags.`harness.member` = '{member.key}'",
            order_by=["attributes.start_time DESC"],
        )
        return runs[0] if runs else None

    def set_member_state(self, run_name: str, state: str, job_id: str | None = None) -> None:
        """Tags of the parent run: ``harness.state.<member>`` (queued, running, finished, failed, preempted, cancelled)
        and, for a launcher with jobs, ``harness.job.<member>`` (the job id)."""
        self.client.set_tag(self.parent_id, f"harness.state.{run_name}", state)
        if job_id:
            self.client.set_tag(self.parent_id, f"harness.job.{run_name}", job_id)

    def member_jobs(self) -> dict[str, str]:
        """The job id recorded for each member (run name) by an earlier submission of this matrix."""
        tags = self.client.get_run(self.parent_id).data.tags
        return {k[len("harness.job.") :]: v for k, v in tags.items() if k.startswith("harness.job.")}

    def log_member_counts(self, counts: dict[str, int]) -> None:
        """``members/<state>`` metrics of the parent run, a new point whenever the counts change."""
        if counts != getattr(self, "_counts", None):
            self._counts = dict(counts)
            self._count_step = getattr(self, "_count_step", -1) + 1
            import time

            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            states = ("queued", "running", "finished", "failed", "preempted", "cancelled", "lost")
            self.client.log_batch(
                self.parent_id,
                metrics=[Metric(f"members/{s}", counts.get(s, 0), now, self._count_step) for s in states],
            )

    def finish(self, status: str, summary_text: str) -> None:
        self.client.log_text(self.parent_id, summary_text, "summary.txt")
        self.client.set_terminated(self.parent_id, status=status)


def run_matrix(
    members: list[Member], *, name: str, progress: bool = True, on_parent=None, launcher=None
) -> list[tuple[str, str, int, dict]] | None:
    """Run (or continue) every member; returns (model, algorithm, seed, summary) per member, or None when the launcher
    submitted the members without waiting for them (the parent run then stays RUNNING).

    ``launcher``: where members run (:mod:`harness.launchers`; default local, one after another in this process). Each
    member resumes from its newest checkpoint when its output folder holds one (decided when it starts).
    ``on_parent(tracking_uri, experiment, parent_run_id)`` is called once the parent run exists (the CLI
    uses it to write the report at the end, also when a member fails)."""
    from harness.launchers import LaunchError, LocalLauncher, MemberJob
    from harness.tracking import resolve_tracking_uri

    launcher = launcher or LocalLauncher()
    first = members[0].config
    tracker = MatrixTracker(
        resolve_tracking_uri(first.tracking.tracking_uri),
        first.tracking.experiment_name,
        name,
        {"members": [m.key for m in members], "budget": first.train.budget},
    )
    tracker.client.set_tag(tracker.parent_id, "harness.launcher", launcher.name)
    if on_parent is not None:
        on_parent(tracker.client.tracking_uri, first.tracking.experiment_name, tracker.parent_id)
    done: dict[str, dict] = {}
    status: str | None = "FAILED"
    failures: list[str] = []
    try:
        jobs, configs = [], {}
        for m in members:
            cfg = m.config
            cfg.tracking.run_name = m.run_name
            cfg.train.output_dir = str(Path("runs") / name / m.run_name)
            out = Path(cfg.train.output_dir)
            prior = tracker.member_run(m)
            if prior is not None and prior.info.status == "FINISHED" and (out / "summary.json").exists():
                print(f"[{name}] {m.run_name}: finished earlier, skipped")
                tracker.set_member_state(m.run_name, "finished")
                done[m.key] = json.loads((out / "summary.json").read_text())
                continue
            unit, value = parse_budget(cfg.train.budget) if cfg.train.budget else ("steps", float(cfg.train.max_steps))
            tags = {
                "harness.role": "member",
                "harness.experiment": name,
                "harness.member": m.key,
                "harness.budget_unit": unit,
                "harness.budget_value": f"{value:g}",
            }
            jobs.append(
                MemberJob(
                    matrix=name,
                    key=m.key,
                    run_name=m.run_name,
                    model=m.model,
                    algorithm=m.algorithm,
                    seed=m.seed,
                    config=cfg.to_dict(),
                    tags=tags,
                    parent_run_id=tracker.parent_id,
                )
            )
            configs[m.key] = cfg
        if jobs:
            outcome = launcher.run(jobs, tracker, progress=progress, configs=configs)
            if outcome is None:  # submitted without waiting
                status = None
                return None
            summaries, failures = outcome
            done.update(summaries)
        if failures:
            raise LaunchError(
                f"{len(failures)} of {len(members)} members did not finish (re-run the same command to resubmit "
                "them; they resume from their checkpoints):\n" + "\n".join(failures)
            )
        status = "FINISHED"
    finally:
        from harness.summary import compare_to_baseline, format_summary

        results = [(m.model, m.algorithm, m.seed, done[m.key]) for m in members if m.key in done]
        if status is not None:
            tracker.finish(status, format_summary(results) + "\n" + "\n".join(compare_to_baseline(results)))
    return results
