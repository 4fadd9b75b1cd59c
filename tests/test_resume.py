"""Resume after a hard kill: one MLflow history, verified checkpoints (manifest: sizes + sha256), fallback to the newest
intact one, checkpoints found from their folders when latest.json or mlflow.db is lost, and no run left RUNNING."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harness import checkpoint as ckpt
from harness.trainer import Trainer


def _killed_run(cfg, steps: int) -> tuple[str, Path, list]:
    """Train ``steps`` steps, saving as configured, then stop as kill -9 would: no summary, MLflow run left RUNNING."""
    tr = Trainer(cfg, progress=False)
    records = []
    for _ in range(steps):
        records.append(tr.train_step())
        if cfg.train.save_every and tr.step % cfg.train.save_every == 0:
            tr.save_checkpoint()
    tr.close()
    return tr.tracker.run_id, tr.output_dir, records


def _client(cfg) -> MlflowClient:
    return MlflowClient(cfg.tracking.tracking_uri)


def _lose_store(tmp_path: Path, cfg) -> None:
    """Delete mlflow.db; drop this process's cached connection to it (a new process, as after a kill, has none)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking._tracking_service import utils

    (tmp_path / "mlflow.db").unlink()
    engine = SqlAlchemyStore._engine_map.pop(cfg.tracking.tracking_uri, None)
    if engine is not None:
        engine.dispose()
    utils._tracking_store_registry._get_store_with_resolved_uri.cache_clear()


def _steps(cfg, run_id: str, key: str = "reward/mean") -> list[int]:
    return [m.step for m in sorted(_client(cfg).get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))]


def test_resume_after_a_kill_logs_every_step_once(make_config):
    cfg = make_config("grpo", train={"max_steps": 5, "save_every": 2})
    run_id, out, _ = _killed_run(cfg, 3)  # checkpoint at step 2, step 3 logged, then killed
    assert _steps(cfg, run_id) == [1, 2, 3]
    assert _client(cfg).get_run(run_id).info.status == "RUNNING"

    tr = Trainer(cfg, resume=str(out), progress=False)
    records = []
    tr.callbacks.append(records.append)
    assert tr.step == 2 and tr.tracker.run_id == run_id
    tr.fit()
    steps = _steps(cfg, run_id)
    assert steps == [1, 2, 3, 4, 5], steps  # one history: step 3 of the killed process is gone, not repeated
    hist = {m.step: m.value for m in _client(cfg).get_metric_history(run_id, "reward/mean")}
    assert [hist[r.step] for r in records] == pytest.approx([r.metrics["reward/mean"] for r in records])
    latest = _client(cfg).get_run(run_id)
    assert latest.info.status == "FINISHED" and latest.data.metrics["reward/mean"] == pytest.approx(
        records[-1].metrics["reward/mean"]
    )
    assert "checkpoint-2" in latest.data.tags["harness.resumed_from"]
    lines = [json.loads(x) for x in (out / "completions.jsonl").read_text().splitlines()]
    per_step = [sum(1 for x in lines if x["step"] == s) for s in range(1, 6)]
    assert len(set(per_step)) == 1, per_step  # completions.jsonl: each step's samples once


def _corrupt(folder: Path, how: str) -> str:
    """Damage a checkpoint; returns the file a message must name."""
    if how == "truncated_model":
        p = next((folder / "model").glob("*.safetensors"))
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        return f"model/{p.name}"
    if how == "missing_optimizer":
        (folder / "optimizer.safetensors").unlink()
        return "optimizer.safetensors"
    if how == "truncated_json":
        p = folder / "trainer_state.json"
        p.write_text(p.read_text()[:40])
        return "trainer_state.json"
    if how == "flipped_bytes":  # same size, different content: only the checksum sees it
        p = folder / "optimizer.safetensors"
        b = bytearray(p.read_bytes())
        for i in range(len(b) - 64, len(b) - 32):
            b[i] ^= 0xFF
        p.write_bytes(bytes(b))
        return "optimizer.safetensors"
    raise ValueError(how)


@pytest.mark.parametrize("how", ["truncated_model", "missing_optimizer", "truncated_json", "flipped_bytes"])
def test_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(make_config, capsys, how):
    cfg = make_config("grpo", train={"max_steps": 6, "save_every": 2, "keep_checkpoints": 3})
    run_id, out, _ = _killed_run(cfg, 4)  # checkpoints 2 and 4
    bad = _corrupt(out / "checkpoint-4", how)
    tr = Trainer(cfg, resume=str(out), progress=False)
    err = capsys.readouterr().err
    try:
        assert tr.step == 2 and tr.tracker.run_id == run_id
        assert "checkpoint-4" in err and bad in err and "checkpoint-2" in err
        # the damaged one is kept for inspection but out of the way (never resumed from again, never prunes new checkpoints)
        assert not (out / "checkpoint-4").exists() and (out / "damaged-checkpoint-4" / "trainer_state.json").exists()
        assert ckpt.find_checkpoint(out) == out / "checkpoint-2"
    finally:
        tr.tracker.finish("KILLED")
        tr.close()


def test_no_intact_checkpoint_refuses_and_leaves_no_run_running(make_config):
    cfg = make_config("grpo", train={"max_steps": 6, "save_every": 2, "keep_checkpoints": 3})
    run_id, out, _ = _killed_run(cfg, 4)
    _corrupt(out / "checkpoint-4", "truncated_model")
    _corrupt(out / "checkpoint-2", "missing_optimizer")
    with pytest.raises(ckpt.CheckpointError) as e:
        Trainer(cfg, resume=str(out), progress=False)
    msg = str(e.value)
    assert (
        "no intact checkpoint" in msg
        and "checkpoint-4" in msg
        and "checkpoint-2 (optimizer.safetensors: missing" in msg
    )
    assert _client(cfg).get_run(run_id).info.status == "FAILED"  # the killed run is not left RUNNING
    assert (out / "checkpoint-4").exists() and (out / "checkpoint-2").exists()  # nothing overwritten or moved
    # a damaged checkpoint named explicitly is refused too, with the file
    with pytest.raises(ckpt.CheckpointError, match=r"checkpoint-2' is damaged: optimizer.safetensors: missing"):
        Trainer(cfg, resume=str(out / "checkpoint-2"), progress=False)
    # and a new run in that folder is refused: it would overwrite them
    with pytest.raises(ckpt.CheckpointError, match="already holds checkpoints"):
        Trainer(cfg, progress=False)


def test_a_failure_during_set_up_leaves_no_run_running(make_config, monkeypatch):
    import harness.trainer as trainer_mod

    cfg = make_config("grpo")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(trainer_mod, "save_config", boom)
    with pytest.raises(OSError, match="disk full"):
        Trainer(cfg, progress=False)
    runs = _client(cfg).search_runs([_client(cfg).get_experiment_by_name("test").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_lost_latest_json_resumes_from_the_checkpoint_folders(make_config, capsys):
    cfg = make_config("grpo", train={"max_steps": 6, "save_every": 2, "keep_checkpoints": 3})
    run_id, out, _ = _killed_run(cfg, 5)
    (out / "latest.json").unlink()
    with pytest.raises(ckpt.CheckpointError, match="already holds checkpoints"):  # never a silent restart over them
        Trainer(cfg, progress=False)
    tr = Trainer(cfg, resume=str(out), progress=False)
    assert tr.step == 4 and tr.tracker.run_id == run_id
    assert "latest.json is missing" in capsys.readouterr().err
    tr.fit()
    assert _steps(cfg, run_id) == [1, 2, 3, 4, 5, 6]


def test_lost_mlflow_store_continues_in_a_new_run(make_config, tmp_path, capsys):
    cfg = make_config("grpo", train={"max_steps": 4, "save_every": 2})
    run_id, out, _ = _killed_run(cfg, 3)
    _lose_store(tmp_path, cfg)
    tr = Trainer(cfg, resume=str(out), progress=False)
    assert tr.step == 2 and tr.tracker.run_id != run_id
    err = capsys.readouterr().err
    assert run_id in err and "new run" in err
    summary = tr.fit()
    run = _client(cfg).get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["harness.continues_run"] == run_id
    assert run.data.params["algorithm.name"] == "grpo"  # the new run has the config like any run
    assert _steps(cfg, summary["run_id"]) == [3, 4]
    assert json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["mlflow_run_id"] == summary["run_id"]


def test_matrix_resumes_from_folders_when_latest_json_and_mlflow_db_are_lost(make_config, tmp_path, monkeypatch):
    from harness.experiment import Member, run_matrix

    monkeypatch.chdir(tmp_path)

    def members():
        cfg = make_config("grpo", train={"max_steps": 4, "save_every": 2})
        return [Member("quick", "grpo", cfg.train.seed, cfg)]

    first = members()[0]
    first.config.tracking.run_name = first.run_name
    first.config.train.output_dir = str(Path("runs") / "m" / first.run_name)
    run_id, out, _ = _killed_run(first.config, 3)
    (out / "latest.json").unlink()
    _lose_store(tmp_path, first.config)
    [(_, _, _, summary)] = run_matrix(members(), name="m", progress=False)
    assert summary["status"] == "FINISHED" and summary["steps"] == 4
    assert _steps(first.config, summary["run_id"]) == [3, 4]  # continued from checkpoint-2, not restarted from step 0


# -- the manifest, without a model ------------------------------------------------------------------


def _fake_checkpoint(folder: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    (folder / "model").mkdir(parents=True)
    save_file({"w": torch.arange(64, dtype=torch.float32)}, str(folder / "model" / "model.safetensors"))
    (folder / "model" / "config.json").write_text("{}")
    save_file({"0.exp_avg": torch.ones(16)}, str(folder / "optimizer.safetensors"))
    (folder / "optimizer.json").write_text(json.dumps({"param_groups": [], "scalars": {}}))
    (folder / "trainer_state.json").write_text(json.dumps({"step": 2, "num_processes": 1, "mlflow_run_id": "abc"}))
    (folder / "rank0").mkdir()
    for name in ("rng", "algorithm"):
        save_file({"x": torch.zeros(2)}, str(folder / "rank0" / f"{name}.safetensors"))
        (folder / "rank0" / f"{name}.json").write_text("{}")
    return folder


def test_manifest_catches_each_kind_of_damage(tmp_path):
    c = _fake_checkpoint(tmp_path / "checkpoint-2")
    manifest = ckpt.write_manifest(c)
    assert set(manifest["files"]) >= {
        "model/model.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
        "rank0/rng.json",
    }
    assert ckpt.verify_checkpoint(c) == []
    p = c / "model" / "model.safetensors"
    data = p.read_bytes()
    p.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert ckpt.verify_checkpoint(c) == [
        "model/model.safetensors: sha256 differs from the manifest (the file is corrupted)"
    ]
    p.write_bytes(data[:100])
    assert ckpt.verify_checkpoint(c) == [f"model/model.safetensors: 100 bytes, expected {len(data)} (truncated)"]
    p.write_bytes(data)
    (c / "rank0" / "algorithm.json").unlink()
    assert ckpt.verify_checkpoint(c) == ["rank0/algorithm.json: missing"]
    (c / "manifest.json").write_text('{"files": {"a"')
    assert ckpt.verify_checkpoint(c)[0].startswith("manifest.json: unreadable")


def test_checkpoints_without_a_manifest_get_a_structural_check(tmp_path):
    c = _fake_checkpoint(tmp_path / "checkpoint-2")
    assert ckpt.verify_checkpoint(c) == []
    p = c / "optimizer.safetensors"
    p.write_bytes(p.read_bytes()[:-8])
    (c / "rank0" / "rng.json").write_text("{")
    problems = ckpt.verify_checkpoint(c)
    assert any(x.startswith("optimizer.safetensors: truncated") for x in problems)
    assert any(x.startswith("rank0/rng.json: unreadable JSON") for x in problems)
