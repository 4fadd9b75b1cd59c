"""`harness sweep --launcher slurm --workers N`: the N sweep workers as Slurm jobs sharing one RDB storage.

Each job runs :func:`worker_entry`, which is ``python -m sweeps.worker`` in a Slurm job: it takes the storage URL
from ``$HARNESS_SWEEP_STORAGE`` (exported before sbatch, so a password never reaches a file) and writes its host and
pid to ``<output>/<study>/logs/worker-<i>.json``. The submitting process watches the jobs like the local pool watches
its processes: a job that ends without completing (cancelled, failed, killed at the time limit) has its running
trials failed (:func:`sweeps.study.fail_trials_of_dead_worker`, by that host and pid) and, while trials are left, is
replaced by a new job; trials' heartbeats catch the rest, as for workers on other machines.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, Callable

from harness.io import atomic_write_json
from harness.launchers.slurm import ACTIVE, SlurmConfig, cancel, job_states, log_path, submit, tail
from sweeps.study import counted_trials, fail_trials_of_dead_worker
from sweeps.worker import run_worker


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def worker_entry(payload: dict[str, Any]) -> int:
    """One sweep worker in a Slurm job; returns the number of trials it ran."""
    log_dir = Path(payload["log_dir"])
    atomic_write_json(
        log_dir / f"worker-{payload['worker_index']}.json",
        {"pid": os.getpid(), "host": socket.gethostname(), "job": os.environ.get("SLURM_JOB_ID")},
    )
    signal.signal(signal.SIGTERM, _raise_interrupt)  # scancel / preemption: the running trial FAILs, its run closed
    return run_worker(
        os.environ["HARNESS_SWEEP_STORAGE"],
        payload["study"],
        output_root=payload["output_dir"],
        worker_index=payload["worker_index"],
        heartbeat_interval=payload["heartbeat_interval"],
        grace_period=payload["grace_period"],
        deadline=payload["deadline"],
        log=lambda m: print(m, flush=True),
    )


def run_slurm_pool(
    study: Any,
    spec: dict[str, Any],
    storage_url: str,
    args: Any,
    deadline: float | None,
    cfg: SlurmConfig,
    progress: Callable[[], None],
) -> bool:
    """Submit ``args.workers`` worker jobs and watch them (replacing dead ones); returns False if interrupted."""
    os.environ["HARNESS_SWEEP_STORAGE"] = storage_url  # sbatch passes the environment on: no password in a file
    root = Path(args.output_dir).resolve() / study.study_name
    log_dir = root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(cfg.folder).resolve() if cfg.folder else root / "slurm"
    max_restarts = args.workers if args.max_restarts is None else args.max_restarts
    jobs: dict[str, int] = {}  # job id -> worker index
    next_index = 0

    def start(n: int) -> None:
        nonlocal next_index
        payloads = []
        for _ in range(n):
            payloads.append(
                {
                    "study": study.study_name,
                    "output_dir": str(Path(args.output_dir).resolve()),
                    "log_dir": str(log_dir),
                    "worker_index": next_index,
                    "heartbeat_interval": args.heartbeat_interval,
                    "grace_period": args.grace_period,
                    "deadline": deadline,
                }
            )
            next_index += 1
        for p, jid in zip(payloads, submit(cfg, folder, f"sweep-{study.study_name}", worker_entry, payloads)):
            jobs[jid] = p["worker_index"]
            print(
                f"[sweep] worker {p['worker_index']} submitted as Slurm job {jid} (log {log_path(folder, jid)})",
                flush=True,
            )

    start(args.workers)
    restarts = 0
    try:
        while jobs:
            time.sleep(cfg.poll_s)
            states = job_states(list(jobs))
            for jid, i in list(jobs.items()):
                state = states.get(jid)
                if state in ACTIVE:
                    continue
                del jobs[jid]
                if state == "COMPLETED":
                    print(f"[sweep] worker {i} (job {jid}) finished", flush=True)
                    continue
                reason = f"worker {i} (Slurm job {jid}) ended {state or 'unseen by Slurm'}"
                failed = _fail_trials(study, log_dir / f"worker-{i}.json", reason, spec.get("tracking_uri"))
                print(
                    f"[sweep] {reason}; its running trial(s) {failed or 'none'} marked FAIL. Last log lines:\n"
                    f"{tail(log_path(folder, jid))}",
                    flush=True,
                )
                budget_left = len(counted_trials(study)) < int(spec["trials"])
                if budget_left and restarts < max_restarts and (deadline is None or time.time() < deadline):
                    restarts += 1
                    start(1)
            progress()
    except KeyboardInterrupt:
        print("[sweep] interrupted: cancelling the worker jobs (their running trials are marked FAIL)", flush=True)
        cancel(list(jobs))
        for jid, i in jobs.items():
            _fail_trials(
                study,
                log_dir / f"worker-{i}.json",
                f"worker {i} (Slurm job {jid}) cancelled: sweep interrupted",
                spec.get("tracking_uri"),
            )
        return False
    progress()
    return True


def _fail_trials(study: Any, record: Path, reason: str, tracking_uri: str | None) -> list[int]:
    try:
        who = json.loads(record.read_text())
    except (OSError, ValueError):
        return []  # the job never started its worker: it ran no trial
    return fail_trials_of_dead_worker(study, who["pid"], reason, tracking_uri, host=who["host"])


def check_storage(storage_url: str) -> None:
    """Slurm workers on several machines need a server database, not a file."""
    from harness.schema import ConfigError
    from sweeps.study import redact_url, sqlite_file

    if sqlite_file(storage_url) is not None or storage_url.startswith("sqlite"):
        raise ConfigError(
            f"--storage {redact_url(storage_url)}: Slurm workers on other machines cannot share a sqlite "
            "file; use a database server every node reaches, e.g. --storage "
            "postgresql://user@db-host/optuna (README: 'Running on a cluster')"
        )
