"""The Slurm launcher: each matrix member (or sweep worker) is a Slurm job, submitted with submitit.

Resources come from :class:`SlurmConfig` (a YAML file, ``--slurm-config``, under the ``--slurm-*`` flags). A job
runs ``srun`` with one task per GPU (at least one per node); each task is one process of the member, and the
torch.distributed variables torchrun would set (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) are derived from Slurm's, so accelerate runs DDP across the job's GPUs and nodes
(:func:`distributed_env`). Signals from Slurm reach every rank directly (no launcher process in between).

Transport: submitit writes each job's payload (the function to call and its arguments, here the member's
:class:`~harness.launchers.member.MemberJob` as a plain mapping) as a pickle in the job folder, and the job's result
back as a pickle; that is submitit's own transport, not a file of ours. Nothing secret is in it: a password in the
tracking URI is masked and the job completes it from ``$MLFLOW_TRACKING_URI``, which sbatch passes on from the
submitting environment (as it passes ``PYTHONPATH``, ``HARNESS_CACHE``, ...).

Job states come from ``squeue --states=all`` (clusters keep finished jobs there for ``MinJobAge``); a job Slurm no
longer knows is judged by what it left: its ``summary.json`` and MLflow run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import yaml

from harness.launchers.member import MemberJob, run_member
from harness.schema import ConfigError, check_bounds, coerce
from harness.schema import config_field as _f
from harness.secrets import has_secret, mask_uri, without_credentials


class LaunchError(RuntimeError):
    """Slurm refused a submission, or members failed; the message names them and where their logs are."""


@dataclass
class SlurmConfig:
    partition: str | None = _f(None, "Partition (sbatch --partition); None = the cluster's default.")
    gpus: int = _f(0, "GPUs per job (a matrix member or a sweep worker); one process per GPU, DDP across them.", ge=0)
    nodes: int = _f(1, "Nodes per job; GPUs are split evenly over them (multi-node DDP).", ge=1)
    cpus: int = _f(1, "CPU cores per job and node, shared by its processes (OMP_NUM_THREADS is set from it).", ge=1)
    mem_gb: float | None = _f(None, "Memory per node in GB (sbatch --mem); None = the partition's default.", gt=0)
    time_min: int = _f(
        1440,
        "Time limit per job in minutes (sbatch --time). Before it, the job gets SIGUSR2, "
        "checkpoints and requeues itself.",
        ge=1,
    )
    array_parallelism: int | None = _f(
        None, "At most this many members of one submission run at once (a job array's %N); None = no limit.", ge=1
    )
    signal_delay_s: int = _f(
        120,
        "Seconds before the time limit at which Slurm sends SIGUSR2 (checkpoint and requeue; sbatch --signal).",
        ge=1,
    )
    sbatch: list[str] = _f([], "Extra #SBATCH options, e.g. ['--account=lab', '--qos=high', '--exclusive'].")
    setup: list[str] = _f(
        [], "Shell lines run in the job before srun, e.g. ['module load cuda', 'source ~/venv/bin/activate']."
    )
    poll_s: float = _f(2.0, "Seconds between two looks at the jobs' states while `harness run` waits.", gt=0)
    folder: str | None = _f(
        None,
        "submitit's job folder (sbatch scripts, logs, payloads); on a file system every "
        "node sees. None = runs/<matrix>/slurm (or the sweep's output folder /slurm).",
    )


def job_processes(cfg: SlurmConfig) -> int:
    """Processes of one job: one task per GPU, at least one per node (what :func:`make_executor` asks srun for)."""
    return max(1, cfg.gpus // cfg.nodes) * cfg.nodes


def load_slurm_config(path: str | None, overrides: dict[str, Any]) -> SlurmConfig:
    """Defaults <- the YAML file (its keys are :class:`SlurmConfig`'s fields; unknown ones rejected) <- flags."""
    cfg = SlurmConfig()
    names = {f.name: f for f in fields(cfg)}
    hints = {f.name: f.type for f in fields(cfg)}
    layers: list[tuple[str, dict[str, Any]]] = []
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--slurm-config: no such file '{path}'")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"--slurm-config {path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"--slurm-config {path}: expected a mapping of slurm settings")
        layers.append((f"{path}: slurm", data))
    layers.append(("flag", {k: v for k, v in overrides.items() if v is not None}))
    import typing

    resolved = typing.get_type_hints(SlurmConfig)
    for source, data in layers:
        for key, value in data.items():
            if key not in names:
                raise ConfigError(f"{source}.{key}: unknown slurm setting; valid: {', '.join(sorted(names))}")
            setattr(cfg, key, coerce(value, resolved.get(key, hints[key]), f"{source}.{key}"))
    check_bounds(cfg, "slurm")
    for line in cfg.sbatch:
        if not line.startswith("--") or len(line) < 3:
            raise ConfigError(
                f"slurm.sbatch / --slurm-sbatch: expected an sbatch option like --account=lab, got {line!r}"
            )
    if cfg.gpus and cfg.gpus % cfg.nodes:
        raise ConfigError(f"slurm.gpus ({cfg.gpus}) must split evenly over slurm.nodes ({cfg.nodes})")
    return cfg


def check_cluster() -> None:
    """A Slurm cluster answers here (``sinfo``), else a :class:`ConfigError` that says what is missing."""
    for tool in ("sbatch", "squeue", "srun"):
        if shutil.which(tool) is None:
            raise ConfigError(f"--launcher slurm: `{tool}` is not on PATH (no Slurm client on this machine)")
    try:
        res = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConfigError(f"--launcher slurm: the Slurm controller does not answer (sinfo: {e})") from None
    if res.returncode != 0:
        raise ConfigError(f"--launcher slurm: the Slurm controller does not answer (sinfo: {res.stderr.strip()})")


def cluster_answers() -> bool:
    try:
        check_cluster()
        return True
    except ConfigError:
        return False


def check_tracking_uri(uri: str, *, timeout: float = 15.0) -> list[str]:
    """Refuse a tracking URI the jobs cannot share or that does not answer; returns warnings.

    A local sqlite file (or a plain path) would be one store per machine, or a file several machines write over a
    network file system, which sqlite does not support: refused. An ``http(s)://`` MLflow server must answer
    ``/health`` and a database URL must accept a connection, within ``timeout`` seconds."""
    shown = mask_uri(uri)
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme in ("", "file", "sqlite"):
        raise ConfigError(
            f"--tracking-uri {shown}: a local {'sqlite file' if scheme == 'sqlite' else 'path'} cannot be shared by "
            "Slurm jobs on other machines; start an MLflow tracking server every node can reach and pass its URL, "
            "e.g. `mlflow server --backend-store-uri sqlite:///mlflow.db --artifacts-destination /shared/mlartifacts "
            "--host 0.0.0.0 --port 5000` and --tracking-uri http://HOST:5000 (README: 'Running on a cluster')"
        )
    warnings = []
    if scheme in ("http", "https"):
        _check_http(uri, shown, timeout)
        host = uri.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1].split(":")[0]
        if host in ("127.0.0.1", "localhost", "::1", "[::1]"):
            warnings.append(
                f"--tracking-uri {shown}: jobs on other nodes cannot reach {host}; this works on a one-node "
                "cluster only (give the server's host name or address)"
            )
    elif scheme.split("+")[0] in ("postgresql", "mysql", "mssql"):
        _check_database(uri, shown, timeout)
    return warnings


def _check_http(uri: str, shown: str, timeout: float) -> None:
    import base64
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(uri)
    url = without_credentials(uri).rstrip("/") + "/health"
    req = urllib.request.Request(url)
    if parts.username:
        token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            if r.status != 200:
                raise ConfigError(f"--tracking-uri {shown}: the MLflow server answered /health with {r.status}")
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConfigError(
            f"--tracking-uri {shown}: the MLflow server does not answer ({reason}); start it first "
            "(README: 'Running on a cluster')"
        ) from None


def _check_database(uri: str, shown: str, timeout: float) -> None:
    box: dict[str, Any] = {}

    def probe() -> None:
        try:
            import sqlalchemy

            with sqlalchemy.create_engine(uri).connect():
                box["ok"] = True
        except Exception as e:  # noqa: BLE001 - reported below, with the password masked
            box["error"] = mask_uri(str(e).splitlines()[0] if str(e) else type(e).__name__)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    if "ok" not in box:
        why = box.get("error") or f"no answer within {timeout:.0f} s"
        raise ConfigError(f"--tracking-uri {shown}: the database does not accept a connection ({why})")


def export_secret(uri: str | None, variable: str) -> None:
    """A URI with a password reaches the jobs through the environment sbatch passes on, never through a file."""
    if uri and has_secret(uri):
        os.environ[variable] = uri


# ------------------------------------------------------------------------------------------------
# Inside a job


def distributed_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The torch.distributed variables of this Slurm task (what torchrun would set), or {} for a one-task job."""
    env = os.environ if environ is None else environ
    ntasks = int(env.get("SLURM_NTASKS", "1"))
    if ntasks <= 1:
        return {}
    nodes = env.get("SLURM_JOB_NODELIST", "localhost")
    try:
        first = subprocess.run(
            ["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, timeout=30
        ).stdout.split()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        first = nodes.split(",")[0]
    job = int(env.get("SLURM_ARRAY_JOB_ID") or env.get("SLURM_JOB_ID", "0")) + int(env.get("SLURM_ARRAY_TASK_ID", "0"))
    return {
        "RANK": env.get("SLURM_PROCID", "0"),
        "WORLD_SIZE": str(ntasks),
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": str(ntasks // int(env.get("SLURM_JOB_NUM_NODES", "1") or 1)),
        "MASTER_ADDR": first,
        "MASTER_PORT": str(20000 + job % 20000),
    }


def member_entry(job: dict[str, Any]) -> dict[str, Any]:
    """What a member's Slurm job runs (through submitit), in each of its tasks."""
    os.environ.update(distributed_env())
    return run_member(MemberJob.from_dict(job), progress=False)


# ------------------------------------------------------------------------------------------------
# Submitting and watching

ACTIVE = {
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
    "RESV_DEL_HOLD",
}


def make_executor(cfg: SlurmConfig, folder: Path, job_name: str) -> Any:
    import submitit

    tasks = max(1, cfg.gpus // cfg.nodes)
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": cfg.time_min,
        "nodes": cfg.nodes,
        "ntasks_per_node": tasks,
        "cpus_per_task": max(1, cfg.cpus // tasks),
        "signal_delay_s": cfg.signal_delay_s,
        "stderr_to_stdout": True,
        "setup": ["export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}", *cfg.setup],
    }
    if cfg.partition:
        params["partition"] = cfg.partition
    if cfg.gpus:
        params["gpus_per_node"] = cfg.gpus // cfg.nodes
    if cfg.mem_gb:
        params["mem"] = f"{int(cfg.mem_gb * 1024)}MB"
    if cfg.array_parallelism:
        params["array_parallelism"] = cfg.array_parallelism
    extra: dict[str, Any] = {}
    for line in cfg.sbatch:
        key, _, value = line[2:].partition("=")
        extra[key.replace("-", "_")] = value if value else True
    if extra:
        params["additional_parameters"] = extra
    ex = submitit.SlurmExecutor(folder=str(folder))
    ex.update_parameters(**params)
    return ex


def submit(cfg: SlurmConfig, folder: Path, job_name: str, fn: Callable[..., Any], payloads: list[Any]) -> list[str]:
    """Submit ``fn(payload)`` for each payload (one job array when several); returns the job ids."""
    ex = make_executor(cfg, folder, job_name)
    try:
        if len(payloads) == 1:
            return [ex.submit(fn, payloads[0]).job_id]
        with ex.batch():
            jobs = [ex.submit(fn, p) for p in payloads]
        return [j.job_id for j in jobs]
    except Exception as e:  # submitit raises its own errors with sbatch's message
        raise LaunchError(f"sbatch refused the submission: {e}") from None


def job_states(job_ids: list[str]) -> dict[str, str]:
    """Slurm's state of each job it still knows (``squeue --states=all``); unknown ids are left out."""
    ids = [j for j in job_ids if j]
    if not ids:
        return {}
    try:
        res = subprocess.run(
            ["squeue", "-h", "-r", "--states=all", "-o", "%i|%T", "-j", ",".join(ids)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    out = {}
    for line in res.stdout.splitlines():
        jid, _, state = line.strip().partition("|")
        out[jid] = state.split()[0] if state else "UNKNOWN"
    return out


def cancel(job_ids: list[str]) -> None:
    ids = [j for j in job_ids if j]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=60)


def log_path(folder: Path, job_id: str) -> Path:
    return folder / f"{job_id}_0_log.out"


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"(no log at {path})"


def member_state(slurm_state: str | None, summary_status: str | None, run_status: str | None, preempted: bool) -> str:
    """queued / running / finished / failed / preempted / cancelled, from what Slurm, the member's summary.json and its
    MLflow run say (Slurm first while it knows the job)."""
    if slurm_state in ("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"):
        return "preempted" if preempted else "queued"
    if slurm_state in ACTIVE:
        return "running"
    if slurm_state == "PREEMPTED":
        return "preempted"
    if summary_status == "FINISHED" and slurm_state in (None, "COMPLETED"):
        return "finished"
    if slurm_state == "CANCELLED" or (slurm_state is None and run_status == "KILLED"):
        return "preempted" if preempted else "cancelled"
    if slurm_state is None and summary_status is None and run_status in (None, "RUNNING"):
        return "lost"
    return "failed"


def print_flush(*a: Any) -> None:
    print(*a, flush=True, file=sys.stdout)


def wait_for(job_ids: list[str], *, poll_s: float, on_change: Callable[[dict[str, str]], bool]) -> None:
    """Poll until ``on_change(states)`` returns True (it is called after every poll)."""
    while True:
        if on_change(job_ids and job_states(job_ids)):
            return
        time.sleep(poll_s)


# ------------------------------------------------------------------------------------------------
# The matrix on Slurm

TERMINAL = {"finished", "failed", "cancelled", "lost"}


class SlurmLauncher:
    """Each member a Slurm job; waits for them with a progress bar (or returns at once with ``wait=False``)."""

    name = "slurm"

    def __init__(self, cfg: SlurmConfig, *, wait: bool = True):
        self.cfg = cfg
        self.wait = wait

    def check(self, configs: list[Any]) -> None:
        """Before anything is written: a cluster answers, and every member's tracking store is one all jobs share."""
        from harness.tracking import resolve_tracking_uri

        for uri in sorted({resolve_tracking_uri(c.tracking.tracking_uri) for c in configs if c.tracking.enabled}):
            for w in check_tracking_uri(uri):
                print(f"warning: {w}", file=sys.stderr, flush=True)
            export_secret(uri, "MLFLOW_TRACKING_URI")
        check_cluster()

    def processes(self) -> int:
        """Processes per member: one per GPU of the job (:func:`job_processes`)."""
        return job_processes(self.cfg)

    def processes_source(self) -> str:
        return f"--launcher slurm: {self.cfg.gpus} GPU(s) over {self.cfg.nodes} node(s), one process per GPU"

    def folder(self, matrix: str) -> Path:
        return Path(self.cfg.folder or Path("runs") / matrix / "slurm").resolve()

    def run(
        self, jobs: list[MemberJob], tracker: Any, *, progress: bool, configs: dict[str, Any]
    ) -> tuple[dict, list] | None:
        """Submit the members that are not queued or running already, then wait; returns (summaries by member key,
        failures as text), or None without waiting."""
        from harness.io import atomic_write_json
        from harness.secrets import mask_secrets

        folder = self.folder(tracker.name)
        known = tracker.member_jobs()
        states = job_states(list(known.values()))
        ids: dict[str, str] = {}
        todo = []
        for j in jobs:
            jid = known.get(j.run_name)
            if jid and states.get(jid) in ACTIVE:
                ids[j.run_name] = jid
                print_flush(f"[{tracker.name}] {j.run_name}: job {jid} is {states[jid].lower()}: waiting for it")
            else:
                j.preemptible = True
                todo.append(j)
        if todo:
            new = submit(
                self.cfg, folder, f"harness-{tracker.name}", member_entry, [mask_secrets(j.to_dict()) for j in todo]
            )
            for j, jid in zip(todo, new):
                ids[j.run_name] = jid
                tracker.set_member_state(j.run_name, "queued", jid)
                print_flush(
                    f"[{tracker.name}] {j.run_name}: submitted as Slurm job {jid} (log {log_path(folder, jid)})"
                )
        atomic_write_json(folder / "jobs.json", {"matrix": tracker.name, "jobs": ids})
        if not self.wait:
            print_flush(
                f"[{tracker.name}] not waiting: `harness status {tracker.name}` shows the members; re-run the "
                "same command to wait for them (it resubmits only members that ended without finishing)"
            )
            return None
        return self._wait(jobs, ids, tracker, folder, progress)

    def _wait(
        self, jobs: list[MemberJob], ids: dict[str, str], tracker: Any, folder: Path, progress: bool
    ) -> tuple[dict, list]:
        import json

        from tqdm.auto import tqdm

        from harness.launchers.member import preemption_count

        last: dict[str, str] = {}
        seen_running: set[str] = set()
        preemptions = {j.run_name: preemption_count(j.output_dir) for j in jobs}  # those from earlier submissions
        bar = tqdm(
            total=len(jobs), desc=f"{tracker.name} members", unit="member", disable=not progress, dynamic_ncols=True
        )

        def look(states: dict[str, str]) -> bool:
            for j in jobs:
                s = states.get(ids[j.run_name])
                summary = j.output_dir / "summary.json"
                status = json.loads(summary.read_text()).get("status") if summary.exists() else None
                if s == "RUNNING":
                    seen_running.add(j.run_name)
                requeued = j.run_name in seen_running and s in ("PENDING", "REQUEUED")
                state = member_state(s, status, None, requeued)
                if s is None and status != "FINISHED":
                    state = "lost"
                n = preemption_count(j.output_dir)
                if n > preemptions[j.run_name] and last.get(j.run_name) != "preempted" and state != "preempted":
                    # the job was requeued and restarted between two polls: report the preemption all the same
                    bar.write(f"[{tracker.name}] {j.run_name} (job {ids[j.run_name]}): preempted")
                    tracker.set_member_state(j.run_name, "preempted", ids[j.run_name])
                    last[j.run_name] = "preempted"
                preemptions[j.run_name] = n
                if last.get(j.run_name) != state:
                    last[j.run_name] = state
                    tracker.set_member_state(j.run_name, state, ids[j.run_name])
                    bar.write(f"[{tracker.name}] {j.run_name} (job {ids[j.run_name]}): {state}")
            done = sum(st in TERMINAL for st in last.values())
            bar.update(done - bar.n)
            counts = {st: sum(v == st for v in last.values()) for st in sorted(set(last.values()))}
            bar.set_postfix(counts)
            tracker.log_member_counts(counts)
            return done == len(jobs)

        try:
            wait_for(list(ids.values()), poll_s=self.cfg.poll_s, on_change=look)
        except KeyboardInterrupt:
            bar.close()
            print_flush(
                f"[{tracker.name}] stopped waiting; the jobs go on (`harness status {tracker.name}`, "
                f"`scancel {' '.join(ids.values())}` to stop them)"
            )
            raise
        bar.close()
        summaries, failures = {}, []
        for j in jobs:
            if last[j.run_name] == "finished":
                summaries[j.key] = json.loads((j.output_dir / "summary.json").read_text())
            else:
                log = log_path(folder, ids[j.run_name])
                failures.append(
                    f"{j.run_name}: {last[j.run_name]} (Slurm job {ids[j.run_name]}, log {log}); "
                    f"last lines:\n{tail(log)}"
                )
        return summaries, failures


def matrix_status(tracking_uri: str, experiment: str, matrix: str) -> list[dict[str, Any]] | None:
    """Each member of a matrix: its Slurm job, state, MLflow run status and step; None when no such matrix exists."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    parents = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`harness.experiment` = '{matrix}' and tags.`harness.role` = 'experiment'",
    )
    if not parents:
        return None
    tags = parents[0].data.tags
    jobs = {k[len("harness.job.") :]: v for k, v in tags.items() if k.startswith("harness.job.")}
    recorded = {k[len("harness.state.") :]: v for k, v in tags.items() if k.startswith("harness.state.")}
    members = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`harness.experiment` = '{matrix}' and tags.`harness.role` = 'member'",
        order_by=["attributes.start_time DESC"],
    )
    runs: dict[str, Any] = {}
    for r in members:
        runs.setdefault(r.info.run_name, r)
    states = job_states(list(jobs.values()))
    rows = []
    for name in sorted(set(jobs) | set(recorded) | set(runs)):
        run = runs.get(name)
        jid = jobs.get(name)
        s = states.get(jid) if jid else None
        run_status = run.info.status if run else None
        summary_status = "FINISHED" if run_status == "FINISHED" else None
        preempted = bool(run and run.data.tags.get("harness.preempted"))
        state = member_state(s, summary_status, run_status, preempted) if jid else recorded.get(name, "-")
        rows.append(
            {
                "member": name,
                "job": jid or "-",
                "state": state,
                "slurm": s or "-",
                "mlflow": run_status or "-",
                "step": _last_step(client, run) if run else 0,
            }
        )
    return rows


def _last_step(client: Any, run: Any) -> int:
    try:
        hist = client.get_metric_history(run.info.run_id, "budget/fraction")
        return max((m.step for m in hist), default=0)
    except Exception:  # noqa: BLE001
        return 0
