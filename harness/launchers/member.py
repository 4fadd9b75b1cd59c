"""One matrix member, wherever it runs: in the `harness run` process (local) or in a Slurm job.

:class:`MemberJob` is what a launcher hands over: the member's resolved config and where it goes (matrix, run name,
output folder, MLflow parent run). :func:`run_member` decides, when the member starts, whether it resumes (a
``checkpoint-<step>`` folder in its output folder: the trainer takes the newest intact one, into the same MLflow run)
or starts over, and trains it. Deciding at start, not at submission, is what lets a Slurm job that was requeued after a
preemption continue from the checkpoint its first run wrote.

:class:`PreemptionGuard` (Slurm jobs): SIGTERM (``scancel``, or a preemption) and SIGUSR1/SIGUSR2 (the warning Slurm
sends ``signal_delay_s`` before the time limit, ``#SBATCH --signal``) only set a flag; after the step in progress the
trainer writes a checkpoint and the member stops (:class:`Preempted`). On SIGUSR1/SIGUSR2 the job then requeues itself
(``scontrol requeue``); on SIGTERM it does not, because Slurm sends SIGTERM both to a job it preempts (and requeues
itself when the partition's PreemptMode is REQUEUE) and to a job a user cancels (which must stay cancelled). Either way
the next run of the same ``harness run`` command resubmits a member that did not finish, and it resumes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Signals that stop a member at the next step boundary, and whether the job requeues itself afterwards.
PREEMPT_SIGNALS = {signal.SIGTERM: False, signal.SIGUSR1: True, signal.SIGUSR2: True}


class Preempted(RuntimeError):
    """The member stopped on a signal after writing a checkpoint (see :class:`PreemptionGuard`)."""

    def __init__(self, signum: int, step: int, requeue: bool):
        self.signum, self.step, self.requeue = signum, step, requeue
        super().__init__(
            f"stopped by {signal.Signals(signum).name} after step {step} (checkpoint written)"
            + ("; job requeued" if requeue else "")
        )


@dataclass
class MemberJob:
    """Everything a member needs to run, as plain values (a Slurm job receives it as a mapping)."""

    matrix: str  # the matrix name (harness.experiment.matrix_name)
    key: str  # algo|model|seed
    run_name: str
    model: str
    algorithm: str
    seed: int
    # the resolved config; a password in the tracking URI masked (completed from the environment)
    config: dict[str, Any]
    # the member's MLflow tags (harness.role, harness.member, budget)
    tags: dict[str, str] = field(default_factory=dict)
    parent_run_id: str | None = None
    preemptible: bool = False  # install the PreemptionGuard (Slurm jobs)

    @property
    def output_dir(self) -> Path:
        return Path(self.config["train"]["output_dir"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MemberJob":
        return cls(**data)


def _prior_run(job: MemberJob, tracking_uri: str):
    """The member's newest MLflow run in this matrix, or None."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(job.config["tracking"]["experiment_name"])
    if exp is None:
        return client, None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`harness.experiment` = '{job.matrix}' and tags.`harness.member` = '{job.key}'",
        order_by=["attributes.start_time DESC"],
    )
    return client, (runs[0] if runs else None)


def run_member(job: MemberJob, *, config: Any = None, progress: bool = True) -> dict[str, Any]:
    """Train one member (resuming from its newest checkpoint when its output folder holds one); returns the summary.

    ``config``: the member's :class:`~harness.config.HarnessConfig` when the caller has it (the local launcher);
    otherwise it is rebuilt from ``job.config``."""
    from harness import checkpoint as ckpt
    from harness.config import config_from_dict
    from harness.tracking import resolve_tracking_uri
    from harness.trainer import Trainer

    cfg = config if config is not None else config_from_dict(job.config)
    out = Path(cfg.train.output_dir)
    main = os.environ.get("RANK", "0") == "0"
    resume = None
    # found from the folders: a lost latest.json or MLflow store never means starting over
    if ckpt.list_checkpoints(out):
        resume = str(out)  # the trainer takes the newest intact checkpoint (or refuses, naming the bad files)
        if main:
            print(f"[{job.matrix}] {job.run_name}: resuming from the newest intact checkpoint in {out}", flush=True)
    elif main and cfg.tracking.enabled:
        client, prior = _prior_run(job, resolve_tracking_uri(cfg.tracking.tracking_uri))
        if prior is not None and prior.info.status != "FINISHED":
            client.set_terminated(prior.info.run_id, status="FAILED")  # no checkpoint to continue: start over
    tags = dict(job.tags)
    if os.environ.get("SLURM_JOB_ID"):
        tags["harness.slurm_job_id"] = _slurm_job_id()
    trainer = Trainer(cfg, resume=resume, progress=progress, tracker_tags=tags, parent_run_id=job.parent_run_id)
    if not job.preemptible:
        return trainer.fit()
    guard = PreemptionGuard()
    with guard:
        trainer.callbacks.append(lambda record: guard.check(trainer))
        try:
            return trainer.fit()
        except Preempted as e:
            if trainer.is_main:
                _mark_preempted(trainer, e)
                record_preemption(out, e)
                if e.requeue:
                    _requeue()
            raise


class PreemptionGuard:
    """Turns the signals of :data:`PREEMPT_SIGNALS` into a checkpoint and a :class:`Preempted` at the next step end.

    With several processes (DDP) every rank gets the signal from Slurm, but perhaps not during the same step: the ranks
    agree after each step (an all-reduce of one number), so they all save at the same step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "PreemptionGuard":
        for s in PREEMPT_SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None or PREEMPT_SIGNALS[signum]:  # a requeue request wins over a plain stop
            self.signum = signum
        print(
            f"[preemption] {signal.Signals(signum).name} received: checkpoint after the current step, then stop",
            file=sys.stderr,
            flush=True,
        )

    def _agreed(self, trainer: Any) -> int:
        """0: go on; else the signal number to stop for (the same on every rank)."""
        code = self.signum or 0
        if trainer.accelerator.num_processes > 1:
            import torch
            import torch.distributed as dist

            box = torch.tensor([code], dtype=torch.int64, device=trainer.accelerator.device)
            dist.all_reduce(box, op=dist.ReduceOp.MAX)
            code = int(box.item())
        return code

    def check(self, trainer: Any) -> None:
        signum = self._agreed(trainer)
        if signum:
            trainer.save_checkpoint()
            raise Preempted(signum, trainer.step, PREEMPT_SIGNALS[signal.Signals(signum)])


def _slurm_job_id() -> str:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "")


def _mark_preempted(trainer: Any, e: Preempted) -> None:
    """The member's run: KILLED (the trainer set FAILED), tagged with the signal and the step it stopped at."""
    tracker = trainer.tracker
    if tracker is None or not tracker.enabled:
        return
    try:
        tracker.set_tags({"harness.preempted": f"{signal.Signals(e.signum).name} at step {e.step}"})
        tracker.finish("KILLED")
    except Exception as err:  # noqa: BLE001 - the checkpoint is what matters; the status is cosmetic
        print(f"warning: could not mark run {tracker.run_id} preempted: {err}", file=sys.stderr, flush=True)


#: One line per preemption of a member, in its output folder: what `harness run` reads to report a preemption even
#: when the requeued job was pending for less than one poll (the Slurm state alone can miss it).
PREEMPTIONS_FILE = "preemptions.jsonl"


def record_preemption(out: Path, e: Preempted) -> None:
    """Append ``{"signal", "step", "job", "requeue"}`` to the member's :data:`PREEMPTIONS_FILE` (whole lines: a reader
    sees all of a line or none of it)."""
    import json

    line = {"signal": signal.Signals(e.signum).name, "step": e.step, "job": _slurm_job_id(), "requeue": e.requeue}
    with (out / PREEMPTIONS_FILE).open("a") as f:
        f.write(json.dumps(line) + "\n")


def preemption_count(out: Path) -> int:
    """How many preemptions :func:`record_preemption` has recorded in ``out`` (0 without the file)."""
    try:
        return sum(1 for line in (out / PREEMPTIONS_FILE).read_text().splitlines() if line.endswith("}"))
    except OSError:
        return 0


def _requeue() -> None:
    job = _slurm_job_id()
    if not job:
        return
    res = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    if res.returncode == 0:
        print(f"[preemption] job {job} requeued: it resumes from the checkpoint", file=sys.stderr, flush=True)
    else:
        print(
            f"warning: scontrol requeue {job} failed ({res.stderr.strip()}): re-run `harness run` to resubmit",
            file=sys.stderr,
            flush=True,
        )
