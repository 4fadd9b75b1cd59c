"""`--launcher slurm` against a real Slurm cluster and a real `mlflow server` process.

The cluster: `.ci/slurm-up.sh` starts a one-node one (slurmctld + slurmd on localhost); CI runs it and sets
HARNESS_REQUIRE_SLURM=1, so these cases fail there instead of skipping. Elsewhere they skip when no cluster answers.
The refusals (a sqlite tracking URI, a server that does not answer, --slurm-* flags without --launcher slurm, bad
settings) need no cluster.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.launchers.member import PREEMPTIONS_FILE, Preempted, preemption_count, record_preemption
from harness.launchers.slurm import cluster_answers, job_states, load_slurm_config
from harness.schema import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def slurm():
    if not cluster_answers():
        if os.environ.get("HARNESS_REQUIRE_SLURM") == "1":
            pytest.fail("HARNESS_REQUIRE_SLURM=1 but no Slurm cluster answers (start one: bash .ci/slurm-up.sh)")
        pytest.skip("no Slurm cluster answers here (start a one-node one as root: bash .ci/slurm-up.sh)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server`: sqlite backend store, artifacts served by the server from a folder."""
    d = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = (d / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{d / 'mlflow.db'}",
            "--artifacts-destination",
            str(d / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=d,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (d / "server.log").read_text()[-2000:]
            time.sleep(0.5)
        else:
            raise AssertionError(
                "mlflow server did not answer /health in 120 s: " + (d / "server.log").read_text()[-2000:]
            )
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _args(model_dir, uri: str, name: str, *extra: str, algos: str = "grpo,repo:recent_k", steps: int = 2) -> list[str]:
    replay = ["--set", "algorithm.min_cache_to_replay=1"] if "repo" in algos else []
    return [
        "run",
        "--algos",
        algos,
        "--models",
        str(model_dir),
        "--config",
        "tiny",
        "--budget",
        f"steps:{steps}",
        "--no-progress",
        "--tracking-uri",
        uri,
        "--experiment",
        "slurmtest",
        "--name",
        name,
        "--set",
        "train.prompts_per_step=2",
        "--set",
        "generation.num_generations=4",
        "--set",
        "generation.max_completion_length=16",
        "--set",
        "data.train_size=8",
        "--set",
        "eval.max_examples=4",
        *replay,
        "--launcher",
        "slurm",
        *extra,
    ]


def _parent(client: MlflowClient, name: str):
    exp = client.get_experiment_by_name("slurmtest")
    runs = client.search_runs(
        [exp.experiment_id], f"tags.`harness.experiment` = '{name}' and tags.`harness.role` = 'experiment'"
    )
    assert len(runs) == 1
    return exp, runs[0]


# ------------------------------------------------------------------------------------------------
# Refused before anything is written (no cluster needed)


def test_preemptions_are_recorded_as_whole_lines(tmp_path, monkeypatch):
    """What lets `harness run` report a preemption it did not see in Slurm's states: one line per preemption."""
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    assert preemption_count(tmp_path) == 0
    record_preemption(tmp_path, Preempted(signal.SIGUSR1, 12, True))
    record_preemption(tmp_path, Preempted(signal.SIGTERM, 30, False))
    with (tmp_path / PREEMPTIONS_FILE).open("a") as f:
        f.write('{"signal": "SIGUSR2", "st')  # a line being written: not counted yet
    assert preemption_count(tmp_path) == 2
    first = json.loads((tmp_path / PREEMPTIONS_FILE).read_text().splitlines()[0])
    assert first == {"signal": "SIGUSR1", "step": 12, "job": "7", "requeue": True}


def test_slurm_refuses_a_local_sqlite_tracking_uri(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = main(["run", "--models", "tiny", "--launcher", "slurm", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "--tracking-uri sqlite:///" in err and "cannot be shared by Slurm jobs" in err and "mlflow server" in err
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "runs").exists()


def test_slurm_refuses_a_tracking_server_that_does_not_answer(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"http://user:s3cret@127.0.0.1:{_free_port()}"  # nothing listens there
    assert main(["run", "--models", "tiny", "--launcher", "slurm", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "the MLflow server does not answer" in err and "user:***@" in err and "s3cret" not in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--slurm-gpus", "2"], "--slurm-gpus: only with --launcher slurm"),
        (["--no-wait"], "--no-wait: only with --launcher slurm"),
        (["--launcher", "slurm", "--slurm-sbatch=account=lab"], "expected an sbatch option like --account=lab"),
        (
            ["--launcher", "slurm", "--slurm-gpus", "3", "--slurm-nodes", "2"],
            "slurm.gpus (3) must split evenly over slurm.nodes (2)",
        ),
    ],
)
def test_bad_launcher_flags_are_named(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--models", "tiny", "--dry-run", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_slurm_sweep_refuses_a_sqlite_storage_before_creating_it(tmp_path, monkeypatch, capsys):
    from sweeps.cli import main as sweep_main

    monkeypatch.chdir(tmp_path)
    argv = ["repo_tiny", "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--workers", "2", "--launcher", "slurm"]
    assert sweep_main(argv) == 2
    err = capsys.readouterr().err
    assert "--storage sqlite:///" in err and "cannot share a sqlite file" in err and "postgresql://" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no optuna.db, mlflow.db or runs/


def test_slurm_config_file_rejects_unknown_keys_and_flags_win(tmp_path):
    f = tmp_path / "cluster.yaml"
    f.write_text(yaml.safe_dump({"partition": "gpu", "gpus": 4, "time_min": 60, "sbatch": ["--account=lab"]}))
    cfg = load_slurm_config(str(f), {"gpus": 8})
    assert (cfg.partition, cfg.gpus, cfg.time_min, cfg.sbatch) == ("gpu", 8, 60, ["--account=lab"])
    f.write_text(yaml.safe_dump({"partiton": "gpu"}))
    with pytest.raises(ConfigError, match="partiton: unknown slurm setting; valid: array_parallelism"):
        load_slurm_config(str(f), {})
    f.write_text(yaml.safe_dump({"cpus": 0}))
    with pytest.raises(ConfigError, match=r"slurm.cpus must be >= 1"):
        load_slurm_config(str(f), {})


def test_multi_gpu_member_is_one_task_per_gpu_with_torch_distributed_variables(tmp_path):
    """What a 2-node x 4-GPU member asks Slurm for, and the torch.distributed variables each of its tasks derives (no
    GPU here: the sbatch script is generated, not run)."""
    import shutil

    from harness.launchers.slurm import distributed_env, make_executor

    env = {
        "SLURM_NTASKS": "8",
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "gpu-a",
        "SLURM_JOB_ID": "4321",
    }
    assert distributed_env(env) == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "gpu-a",
        "MASTER_PORT": "24321",
    }
    assert distributed_env({"SLURM_NTASKS": "1"}) == {}  # one process: plain single-process training
    if shutil.which("srun") is None:
        pytest.skip("submitit builds Slurm scripts only where srun is installed")
    cfg = load_slurm_config(
        None,
        {
            "gpus": 8,
            "nodes": 2,
            "cpus": 32,
            "mem_gb": 64,
            "partition": "gpu",
            "sbatch": ["--account=lab", "--exclusive"],
            "setup": ["module load cuda"],
        },
    )
    script = make_executor(cfg, tmp_path, "harness-m")._make_submission_file_text("python -m x", "uid")
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=65536MB",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lab",
        "#SBATCH --exclusive",
        "#SBATCH --signal=USR2@120",
        "module load cuda",
        "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",
    ):
        assert line in script, (line, script)
    assert "srun --unbuffered" in script


# ------------------------------------------------------------------------------------------------
# A real cluster


@pytest.mark.slow
def test_two_member_matrix_through_slurm(slurm, mlflow_server, quick_model_dir, tmp_path, monkeypatch, capsys):
    """Done-when: a 2-member matrix, each member a Slurm job, both runs in MLflow under one parent, logged through a
    real `mlflow server`; the parent tracks the members' jobs and states; the report is written from the server's
    runs."""
    monkeypatch.chdir(tmp_path)
    t0 = time.monotonic()
    assert main(_args(quick_model_dir, mlflow_server, "s2", "--report-dir", str(tmp_path / "rep"))) == 0
    out = capsys.readouterr().out
    wall = time.monotonic() - t0
    assert "submitted as Slurm job" in out and "finished" in out, out
    client = MlflowClient(mlflow_server)
    exp, parent = _parent(client, "s2")
    assert parent.info.status == "FINISHED" and parent.data.tags["harness.launcher"] == "slurm"
    kids = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(k.data.tags["algorithm"] for k in kids) == ["grpo", "repo:recent_k"]
    assert all(k.info.status == "FINISHED" and int(k.data.metrics["budget/fraction"]) == 1 for k in kids)
    jobs = {k: v for k, v in parent.data.tags.items() if k.startswith("harness.job.")}
    assert len(jobs) == 2 and {k.data.tags["harness.slurm_job_id"] for k in kids} == set(jobs.values())
    assert all(parent.data.tags[f"harness.state.{k.info.run_name}"] == "finished" for k in kids)
    assert set(job_states(list(jobs.values())).values()) == {"COMPLETED"}  # they really were Slurm jobs
    assert parent.data.metrics["members/finished"] == 2
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "repo:recent_k" in md and "grpo" in md
    print(f"2-member matrix through Slurm: {wall:.1f} s")


@pytest.mark.slow
def test_scancelled_member_resumes_from_its_checkpoint_in_the_same_run(
    slurm, mlflow_server, quick_model_dir, tmp_path, monkeypatch, capsys
):
    """A member killed with scancel writes a checkpoint (SIGTERM -> after the current step); re-running the same
    command resubmits it, and it resumes from that checkpoint into the same MLflow run."""
    monkeypatch.chdir(tmp_path)
    args = _args(quick_model_dir, mlflow_server, "s3", "--no-report", algos="grpo", steps=40)
    assert main([*args, "--no-wait"]) == 0
    assert "harness status s3" in capsys.readouterr().out
    client = MlflowClient(mlflow_server)
    _, parent = _parent(client, "s3")
    (job,) = [v for k, v in parent.data.tags.items() if k.startswith("harness.job.")]
    out_dir = tmp_path / "runs" / "s3" / f"grpo-{Path(quick_model_dir).name}-s42"
    exp = client.get_experiment_by_name("slurmtest")
    member = "tags.`harness.experiment` = 's3' and tags.`harness.role` = 'member'"
    deadline = time.monotonic() + 300
    run = None
    while time.monotonic() < deadline:  # wait until it has trained two steps
        runs = client.search_runs([exp.experiment_id], member)
        if runs and len(client.get_metric_history(runs[0].info.run_id, "budget/fraction")) >= 2:
            run = runs[0]
            break
        time.sleep(1)
    assert run is not None, f"the member never trained 2 steps; job {job}: {job_states([job])}"
    subprocess.run(["scancel", job], check=True)
    while job_states([job]).get(job) not in (None, "CANCELLED", "FAILED", "COMPLETED") and time.monotonic() < deadline:
        time.sleep(0.5)
    ckpts = sorted(out_dir.glob("checkpoint-*"))
    assert ckpts, f"no checkpoint written on SIGTERM: {sorted(p.name for p in out_dir.iterdir())}"
    stopped_at = int(ckpts[-1].name.split("-")[1])
    assert 2 <= stopped_at < 40
    killed = client.get_run(run.info.run_id)
    assert killed.info.status == "KILLED" and killed.data.tags["harness.preempted"] == f"SIGTERM at step {stopped_at}"
    assert main(["status", "s3", "--tracking-uri", mlflow_server, "--experiment", "slurmtest"]) == 0
    assert "preempted" in capsys.readouterr().out

    assert main(args) == 0  # the same command again: resubmitted, resumed
    out = capsys.readouterr().out
    assert "submitted as Slurm job" in out
    _, parent = _parent(client, "s3")
    (new_job,) = [v for k, v in parent.data.tags.items() if k.startswith("harness.job.")]
    assert new_job != job
    runs = client.search_runs([exp.experiment_id], member)
    assert len(runs) == 1 and runs[0].info.run_id == run.info.run_id  # the same MLflow run
    final = runs[0]
    assert final.info.status == "FINISHED"
    assert final.data.tags["harness.resumed_from"] == f"checkpoint-{stopped_at} (step {stopped_at})"
    assert json.loads((out_dir / "summary.json").read_text())["steps"] == 40
    log = (tmp_path / "runs" / "s3" / "slurm" / f"{new_job}_0_log.out").read_text()
    assert "resuming from the newest intact checkpoint" in log


def _wait_for_steps(client: MlflowClient, name: str, n: int, deadline: float):
    """The matrix's one member run once it has logged ``n`` steps."""
    while time.monotonic() < deadline:
        exp = client.get_experiment_by_name("slurmtest")  # None until the matrix has started
        runs = exp and client.search_runs(
            [exp.experiment_id], f"tags.`harness.experiment` = '{name}' and tags.`harness.role` = 'member'"
        )
        if runs and len(client.get_metric_history(runs[0].info.run_id, "budget/fraction")) >= n:
            return runs[0]
        time.sleep(1)
    raise AssertionError(f"the member of {name} never logged {n} steps")


@pytest.mark.slow
def test_usr1_checkpoints_and_requeues_the_job_which_resumes(slurm, mlflow_server, quick_model_dir, tmp_path):
    """SIGUSR1 (what Slurm sends before the time limit, `--signal`): the member checkpoints after the current step, the
    job requeues itself, and the requeued job resumes from that checkpoint into the same MLflow run, while the waiting
    `harness run` shows the member preempted and then finished."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # a slow poll, so the watcher usually misses the requeued job's few seconds in PENDING (as happened in CI) and must
    # learn of the preemption from the member's record
    (tmp_path / "slurm.yaml").write_text("poll_s: 8\n")
    args = _args(
        quick_model_dir,
        mlflow_server,
        "s4",
        "--no-report",
        "--slurm-config",
        str(tmp_path / "slurm.yaml"),
        algos="grpo",
        steps=40,
    )
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", *args], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        client = MlflowClient(mlflow_server)
        run = _wait_for_steps(client, "s4", 2, time.monotonic() + 300)
        job = run.data.tags["harness.slurm_job_id"]
        subprocess.run(["scancel", "--signal=USR1", job], check=True)
        deadline = time.monotonic() + 120
        while job_states([job]).get(job) != "PENDING" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert job_states([job]).get(job) == "PENDING", job_states([job])  # requeued by the job itself
        # Slurm holds a requeued job back for ~2 min (BeginTime); an administrator's nudge, to keep the test short
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
        rc = proc.wait(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    out = (tmp_path / "run.log").read_text()
    assert rc == 0, out[-3000:]
    assert f"(job {job}): preempted" in out and f"(job {job}): finished" in out
    final = client.get_run(run.info.run_id)  # the same run, finished after the requeue
    assert final.info.status == "FINISHED" and final.data.tags["harness.preempted"].startswith("SIGUSR1 at step ")
    stopped_at = int(final.data.tags["harness.preempted"].rsplit(" ", 1)[1])
    assert final.data.tags["harness.resumed_from"] == f"checkpoint-{stopped_at} (step {stopped_at})"
    job_log = (tmp_path / "runs" / "s4" / "slurm" / f"{job}_0_log.out").read_text()
    assert f"job {job} requeued" in job_log and "resuming from the newest intact checkpoint" in job_log
    member_dir = next((tmp_path / "runs" / "s4").glob("grpo-*"))
    summary = json.loads((member_dir / "summary.json").read_text())
    assert summary["steps"] == 40 and summary["status"] == "FINISHED"
    (event,) = [json.loads(line) for line in (member_dir / PREEMPTIONS_FILE).read_text().splitlines()]
    assert event == {"signal": "SIGUSR1", "step": stopped_at, "job": job, "requeue": True}


@pytest.mark.slow
def test_two_worker_sweep_through_slurm(slurm, mlflow_server, quick_model_dir, tmp_path):
    """`harness sweep --launcher slurm --workers 2`: two Slurm jobs share one PostgreSQL study (CI starts it)."""
    url = os.environ.get("HARNESS_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("HARNESS_REQUIRE_POSTGRES") == "1":
            pytest.fail("HARNESS_REQUIRE_POSTGRES=1 but HARNESS_TEST_POSTGRES_URL is not set")
        pytest.skip("no PostgreSQL server (set HARNESS_TEST_POSTGRES_URL=postgresql://user:pw@host/db)")
    import optuna
    from optuna.trial import TrialState

    study_name = f"slurm-{os.getpid()}-{time.time_ns()}"
    space = tmp_path / "space.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "base": {
                    "model": {"name": str(quick_model_dir)},
                    "algorithm": {"name": "repo"},
                    "data": {"train_size": 16},
                    "train": {
                        "max_steps": 2,
                        "prompts_per_step": 2,
                        "log_completions_every": 0,
                        "format_reward_weight": 0.5,
                    },
                    "generation": {"num_generations": 4, "max_completion_length": 12},
                    "eval": {"max_examples": 4},
                },
                "objective": {"metric": "eval/macro_accuracy", "direction": "maximize"},
                "sampler": {"type": "random", "seed": 0},
                "pruner": {"type": "none"},
                "params": {"train.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}},
            }
        )
    )
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweeps.cli",
            str(space),
            "--study-name",
            study_name,
            "--trials",
            "4",
            "--workers",
            "2",
            "--config",
            "tiny",
            "--storage",
            url,
            "--tracking-uri",
            mlflow_server,
            "--experiment",
            "slurmsweep",
            "--output-dir",
            str(tmp_path / "runs"),
            "--no-report",
            "--launcher",
            "slurm",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert res.stdout.count("submitted as Slurm job") == 2
    study = optuna.load_study(study_name=study_name, storage=url)
    assert len(study.trials) == 4 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len({t.user_attrs["worker_pid"] for t in study.trials}) == 2  # both worker jobs took trials
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("slurmsweep")
    assert len(client.search_runs([exp.experiment_id], "tags.`harness.role` = 'trial'")) == 4
    assert "harness:harness@" not in res.stdout  # the storage password is never printed
    optuna.delete_study(study_name=study_name, storage=url)
