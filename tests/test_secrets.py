"""Secrets: a password in a tracking URI is masked in everything written or printed (config.yaml, trainer_state.json,
MLflow params/tags/artifacts, reports, the sweep's study), while the real URI is still used to connect; and the
vllm-server API refuses POSTs without the shared token when one is set."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from harness.secrets import SecretMissingError, is_masked, mask_secrets, mask_uri, unmask_uri, without_credentials


@pytest.mark.parametrize(
    "uri, masked",
    [
        ("http://user:s3cret@mlflow.example:5000", "http://user:***@mlflow.example:5000"),
        ("https://user:s3cret@mlflow.example/path?x=1", "https://user:***@mlflow.example/path?x=1"),
        (
            "postgresql+psycopg://harness:s3cret@127.0.0.1:5432/mlflow",
            "postgresql+psycopg://harness:***@127.0.0.1:5432/mlflow",
        ),
        ("mysql://u:p%40ss@db/x?charset=utf8", "mysql://u:***@db/x?charset=utf8"),
        (
            "postgresql://harness@db/mlflow?password=s3cret&sslmode=require",
            "postgresql://harness@db/mlflow?password=***&sslmode=require",
        ),
        ("https://store.example/bucket?sig=abc123&se=2030", "https://store.example/bucket?sig=***&se=2030"),
        ("sqlite:////abs/path/mlflow.db", "sqlite:////abs/path/mlflow.db"),
        ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("http://host:8080/a@b", "http://host:8080/a@b"),
        ("file:///tmp/mlruns", "file:///tmp/mlruns"),
        ("connecting to postgresql://a:b@h/db failed", "connecting to postgresql://a:***@h/db failed"),
        (None, None),
        ("", ""),
    ],
)
def test_mask_uri(uri, masked):
    assert mask_uri(uri) == masked
    if masked and masked != uri:
        assert is_masked(masked) and mask_uri(masked) == masked  # idempotent


def test_mask_secrets_and_links():
    cfg = {
        "tracking": {"tracking_uri": "http://u:pw@h:5000", "experiment_name": "x"},
        "list": ["http://a:b@c", 3],
        "n": 1,
    }
    assert mask_secrets(cfg) == {
        "tracking": {"tracking_uri": "http://u:***@h:5000", "experiment_name": "x"},
        "list": ["http://a:***@c", 3],
        "n": 1,
    }
    assert cfg["tracking"]["tracking_uri"] == "http://u:pw@h:5000"  # a copy
    assert without_credentials("https://u:pw@mlflow.example/") == "https://mlflow.example/"


def test_masked_uri_is_completed_from_the_environment(monkeypatch):
    from harness.tracking import resolve_tracking_uri

    real = "http://user:s3cret@mlflow.example:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", real)
    assert resolve_tracking_uri(mask_uri(real)) == real
    assert resolve_tracking_uri(None) == real
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:other@elsewhere:5000")
    with pytest.raises(
        SecretMissingError,
        match=r"http://user:\*\*\*@mlflow.example:5000 was saved without its password.*MLFLOW_TRACKING_URI",
    ):
        resolve_tracking_uri(mask_uri(real))
    assert unmask_uri("sqlite:///x.db", []) == "sqlite:///x.db"


def test_save_config_and_params_hold_no_password(tmp_path):
    from mlflow.tracking import MlflowClient

    from harness.config import build_config, save_config
    from harness.tracking import Tracker

    cfg = build_config("tiny", {"tracking": {"tracking_uri": "http://user:s3cret@mlflow.example:5000"}})
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert (
        "s3cret" not in text
        and yaml.safe_load(text)["tracking"]["tracking_uri"] == "http://user:***@mlflow.example:5000"
    )
    assert cfg.tracking.tracking_uri == "http://user:s3cret@mlflow.example:5000"  # the config itself keeps the real one
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tr = Tracker(enabled=True, tracking_uri=uri, experiment="t", run_name="r")
    tr.log_params(cfg.to_dict())
    tr.set_tags({"where": "http://user:s3cret@mlflow.example:5000"})
    run = MlflowClient(uri).get_run(tr.run_id)
    assert run.data.params["tracking.tracking_uri"] == "http://user:***@mlflow.example:5000" and run.data.tags[
        "where"
    ].endswith(":***@mlflow.example:5000")
    tr.finish()


def _files_holding(root: Path, needles: list[str]) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            hits += [f"{p.relative_to(root)}: {n!r}" for n in needles if n.encode() in data]
    return hits


def test_trainer_files_hold_no_password(make_config, tmp_path):
    """Tracking off, so nothing connects: what the trainer itself writes (config.yaml, every checkpoint's trainer_state.json,
    summary, completions) holds the URI masked."""
    from harness.trainer import Trainer

    cfg = make_config(
        "grpo",
        train={"max_steps": 2, "save_every": 1},
        tracking={"enabled": False, "tracking_uri": "http://user:s3cret@127.0.0.1:9"},
    )
    tr = Trainer(cfg, progress=False)
    tr.fit()
    assert _files_holding(tr.output_dir, ["s3cret"]) == []
    state = json.loads((tr.output_dir / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["config"]["tracking"]["tracking_uri"] == "http://user:***@127.0.0.1:9"


# -- end to end on an MLflow store that really has a password: PostgreSQL ---------------------------------


def _postgres_url() -> str:
    url = os.environ.get("HARNESS_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("HARNESS_REQUIRE_POSTGRES") == "1":
            pytest.fail("HARNESS_REQUIRE_POSTGRES=1 but HARNESS_TEST_POSTGRES_URL is not set")
        pytest.skip("no PostgreSQL server (set HARNESS_TEST_POSTGRES_URL=postgresql://user:pw@host/db)")
    return url


def test_no_password_anywhere_after_a_run_a_resume_and_a_sweep_on_postgresql(
    quick_model_dir, tmp_path, monkeypatch, capsys
):
    """`harness run` (with its report), `harness run --resume` and `harness sweep` against an MLflow store on PostgreSQL whose
    URI holds the password; then every file they wrote (outputs, artifacts, reports, the Optuna study) and every row of the
    MLflow tables is searched for it."""
    import sqlalchemy as sa
    from mlflow.tracking import MlflowClient

    from harness.cli import main
    from sweeps.cli import main as sweep_main

    base = _postgres_url()
    parts = urllib.parse.urlsplit(base)
    user, pw = parts.username or "", urllib.parse.unquote(parts.password or "")
    assert pw, "HARNESS_TEST_POSTGRES_URL needs a password for this test"
    needles = [f":{pw}@", f":{urllib.parse.quote(pw, safe='')}@", f"password={pw}"]
    if pw != user and len(pw) >= 4:  # a password that is not also the user name can be searched for on its own
        needles.append(pw)
    schema = f"secrets_{os.getpid()}_{time.time_ns()}"
    engine = sa.create_engine(base)
    with engine.begin() as c:
        c.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    uri = (
        base + ("&" if parts.query else "?") + f"options=-csearch_path%3D{schema}"
    )  # MLflow's tables in a schema of their own
    monkeypatch.chdir(tmp_path)  # MLflow's artifacts (./mlruns), the runs and the reports all land here
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        common = [
            "--models",
            str(quick_model_dir),
            "--config",
            "tiny",
            "--no-progress",
            "--experiment",
            "sec",
            "--set",
            "train.prompts_per_step=2",
            "--set",
            "generation.num_generations=4",
            "--set",
            "generation.max_completion_length=12",
            "--set",
            "data.train_size=8",
            "--set",
            "eval.max_examples=4",
            "--set",
            "eval.before_training=false",
        ]
        assert (
            main(
                [
                    "run",
                    "--algos",
                    "grpo",
                    "--budget",
                    "steps:2",
                    "--tracking-uri",
                    uri,
                    "--name",
                    "sec",
                    "--report-dir",
                    "rep",
                    *common,
                ]
            )
            == 0
        )
        out_dir = next((tmp_path / "runs" / "sec").iterdir())
        saved = json.loads((out_dir / "checkpoint-2" / "trainer_state.json").read_text())["config"]["tracking"][
            "tracking_uri"
        ]
        assert is_masked(saved)
        # --resume reads the config saved with the checkpoint: its masked URI is completed from the environment
        # (mlflow.set_tracking_uri exported the real one into this process's environment: a new process has none)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert main(["run", "--resume", str(out_dir), "--no-progress"]) == 2
        assert "saved without its password" in capsys.readouterr().err
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        assert main(["run", "--resume", str(out_dir), "--no-progress"]) == 0
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the sweep gets it from --tracking-uri alone
        space = tmp_path / "space.yaml"
        space.write_text(
            yaml.safe_dump(
                {
                    "base": {
                        "model": {"name": str(quick_model_dir)},
                        "algorithm": {"name": "grpo"},
                        "data": {"train_size": 8},
                        "train": {"max_steps": 1, "prompts_per_step": 2},
                        "generation": {"num_generations": 4, "max_completion_length": 12},
                        "eval": {"every_steps": 0, "max_examples": 4, "before_training": False},
                    },
                    "objective": {"metric": "reward/mean", "direction": "maximize"},
                    "sampler": {"type": "random", "seed": 0},
                    "pruner": {"type": "none"},
                    "params": {"train.learning_rate": {"type": "float", "low": 1e-6, "high": 1e-5, "log": True}},
                }
            )
        )
        assert (
            sweep_main(
                [
                    str(space),
                    "--study-name",
                    "sec",
                    "--trials",
                    "1",
                    "--workers",
                    "0",
                    "--no-progress",
                    "--config",
                    "tiny",
                    "--storage",
                    f"sqlite:///{tmp_path / 'optuna.db'}",
                    "--tracking-uri",
                    uri,
                    "--experiment",
                    "sec",
                    "--output-dir",
                    str(tmp_path / "sweep-runs"),
                    "--no-report",
                ]
            )
            == 0
        )
        printed = capsys.readouterr()

        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("sec").experiment_id])
        assert {r.data.tags.get("harness.role") for r in runs} >= {"experiment", "member", "sweep", "trial"}
        member = next(r for r in runs if r.data.tags.get("harness.role") == "member")
        assert member.info.status == "FINISHED" and member.data.params["tracking.tracking_uri"] == mask_uri(uri)
        assert (tmp_path / "rep" / "report.md").exists() and (tmp_path / "mlruns").exists()
        assert _files_holding(tmp_path, needles) == []
        assert not [n for n in needles if n in printed.out + printed.err]
        with engine.connect() as c:
            tables = [
                t
                for (t,) in c.execute(
                    sa.text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"), {"s": schema}
                )
            ]
            assert "params" in tables
            rows = [row for t in tables for (row,) in c.execute(sa.text(f'SELECT t::text FROM "{schema}"."{t}" t'))]
        assert rows and not [r for r in rows if any(n in r for n in needles)]
    finally:
        engine.dispose()
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        cached = SqlAlchemyStore._engine_map.pop(uri, None)
        if cached is not None:
            cached.dispose()
        with sa.create_engine(base).begin() as c:
            c.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))


# -- the vllm-server token ---------------------------------------------------------------------------------


class _FakeRunner:
    def __init__(self):
        self.loaded = 0

    def load_weights(self, weights):
        self.loaded += 1
        return 0.0

    def probe_logprobs(self, probe):
        import numpy as np

        return np.zeros(len(probe))


def _post(url: str, path: str, body: bytes = b"{}", token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/octet-stream"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url + path, data=body, method="POST", headers=headers), timeout=10
        ) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture()
def token_server():
    """The server's HTTP layer with a stand-in for vLLM, token "tok-123" required."""
    from http.server import ThreadingHTTPServer

    from harness.engines.server import _make_handler, _ServerState

    state = _ServerState()
    state.runner, state.status = _FakeRunner(), "ready"
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state, "tok-123"))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    httpd.shutdown()


def test_server_refuses_pushes_and_shutdown_without_the_token(token_server):
    import torch
    from safetensors.torch import save as st_save

    url, state = token_server
    blob = st_save({"w": torch.zeros(1 << 16)})  # a real push body: the 401 arrives intact, not as a reset
    for token in (None, "wrong", "tok-1234"):
        assert _post(url, "/weights?version=3&first=1&final=1", blob, token)[0] == 401
        code, body = _post(url, "/shutdown", b"{}", token)
        assert code == 401 and "HARNESS_SERVE_TOKEN" in body["error"]
        assert _post(url, "/probe", json.dumps({"probe": [1, 2]}).encode(), token)[0] == 401
    assert state.runner.loaded == 0 and state.version == 0 and not state.stop.is_set()
    with urllib.request.urlopen(url + "/health", timeout=10) as r:  # health stays open
        assert json.loads(r.read())["status"] == "ready"
    assert _post(url, "/weights?version=3&first=1&final=1", blob, "tok-123") == (
        200,
        {"version": 3, "load_s": 0.0, "tensors": 1},
    )
    assert _post(url, "/shutdown", b"{}", "tok-123")[0] == 200 and state.stop.is_set()


def test_server_without_a_token_stays_open(monkeypatch):
    """No HARNESS_SERVE_TOKEN: the API is as before (loopback only by default)."""
    from http.server import ThreadingHTTPServer

    from harness.engines.server import _make_handler, _ServerState

    state = _ServerState()
    state.runner, state.status = _FakeRunner(), "ready"
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state, None))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        assert _post(f"http://127.0.0.1:{httpd.server_address[1]}", "/shutdown")[0] == 200
    finally:
        httpd.shutdown()


def test_real_server_started_by_the_engine_needs_its_token(quick_model_dir, monkeypatch):
    """The engine starts `harness serve` with a token and sends it; another process without it can neither push nor stop."""
    from harness.engines.vllm_local import vllm_importable

    ok, why = vllm_importable()
    if not ok:
        if os.environ.get("HARNESS_REQUIRE_VLLM") == "1":
            pytest.fail(f"HARNESS_REQUIRE_VLLM=1 but {why}")
        pytest.skip(why)
    from harness.engines import create_engine
    from harness.models import encode_prompt, load_model, load_tokenizer
    from harness.rollout import SamplingParams

    monkeypatch.setenv("HARNESS_SERVE_TOKEN", "shared-tok-9")
    tok = load_tokenizer(str(quick_model_dir))
    model = load_model(str(quick_model_dir), "float32").eval()
    eng = create_engine("vllm-server", model=model, tokenizer=tok, kv_cache_gb=0.0625)
    try:
        assert eng.token == "shared-tok-9"
        assert _post(eng.url, "/shutdown")[0] == 401
        assert _post(eng.url, "/shutdown", token="guess")[0] == 401
        out = eng.generate([encode_prompt(tok, "1+1", 64)[0]], SamplingParams(n=2, temperature=1.0, max_new_tokens=4))
        assert len(out[0]) == 2  # the engine's own requests carry the token
        eng.sync_weights(model, 1)
        assert eng.health()["version"] == 1
    finally:
        eng.close()
    assert eng.proc.poll() is not None  # its authorised /shutdown (or the fallback signal) stopped it
