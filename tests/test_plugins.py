"""User plug-ins: `--plugin MODULE` loads an algorithm or a replay strategy of one's own (examples/my_algorithm.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from algorithms import available_algorithms, available_strategies, resolve_algorithm
from algorithms.base import RolloutGroup
from algorithms.replay_strategies import select_indices
from harness.config import ConfigError, build_config
from harness.plugins import PLUGIN_ENV, load_plugins

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my_algorithm.py"


@pytest.fixture()
def plugin_env(monkeypatch):
    monkeypatch.delenv(PLUGIN_ENV, raising=False)


def test_unknown_algorithm_names_the_plugin_flag():
    with pytest.raises(ConfigError, match="--plugin MODULE"):
        build_config(overrides=["algorithm.name=no_such_algo"])


def test_a_missing_plugin_is_a_config_error(plugin_env):
    with pytest.raises(ConfigError, match="--plugin no_such_pkg_1234.algo: cannot import it"):
        load_plugins(["no_such_pkg_1234.algo"])
    with pytest.raises(ConfigError, match="no such file"):
        load_plugins(["missing/plugin.py"])


def test_example_registers_an_algorithm_and_a_strategy_and_records_itself_for_children(plugin_env):
    import os

    assert load_plugins([str(EXAMPLE)]) == [str(EXAMPLE)]
    assert os.environ[PLUGIN_ENV] == str(EXAMPLE)
    assert load_plugins([]) == [str(EXAMPLE)]  # a child process: from the environment, imported once
    assert "rloo" in available_algorithms() and "oldest_k" in available_strategies()
    assert select_indices("oldest_k", [0.5, 1.0, 0.0], 2, None) == [0, 1]
    cls, cfg = resolve_algorithm(
        {"name": "repo:oldest_k", "min_cache_to_replay": 2, "max_cache_size": 4, "num_replays": 2}
    )
    assert cfg.strategy == "oldest_k"

    # RLOO, hand-computed: A_i = r_i - mean of the others; rewards [1, 0, 0, 1] -> +-2/3
    cls, cfg = resolve_algorithm({"name": "rloo", "advantage_scale": 2.0})
    algo = cls(cfg, seed=0, max_completion_length=8)
    g = RolloutGroup("p", [1], [np.arange(3)] * 4, np.array([1.0, 0.0, 0.0, 1.0]), 0)
    flat = RolloutGroup("q", [1], [np.arange(3)] * 4, np.zeros(4), 0)
    batch = algo.build_batch([g, flat], step=0)
    np.testing.assert_allclose(batch.advantages, 2.0 * np.array([2, -2, -2, 2, 0, 0, 0, 0]) / 3, rtol=1e-6)
    assert batch.metrics["effective/step"] == 0.5


def test_plugin_flag_on_run_sweep_and_config_show_and_sweep_workers_load_from_the_environment(plugin_env, capsys):
    from harness.cli import build_parser, main

    parser = build_parser()
    for argv in (["run", "--algos", "rloo"], ["sweep", "space.yaml"], ["config", "show"]):
        args = parser.parse_args(argv + ["--plugin", "a.b", "--plugin", str(EXAMPLE)])
        assert args.plugins == ["a.b", str(EXAMPLE)]
    assert main(["config", "show", "--algo", "rloo", "--plugin", str(EXAMPLE)]) == 0
    assert "algorithm.advantage_scale" in capsys.readouterr().out
    import inspect

    import sweeps.worker

    assert "load_plugins_from_env()" in inspect.getsource(sweeps.worker.main)  # workers import what the parent loaded


def test_a_child_process_imports_the_plugins_recorded_in_the_environment(plugin_env):
    import os
    import subprocess
    import sys

    code = (
        "from harness.plugins import load_plugins_from_env; load_plugins_from_env(); "
        "from algorithms import available_algorithms; print('rloo' in available_algorithms())"
    )
    env = dict(os.environ, **{PLUGIN_ENV: str(EXAMPLE)})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


@pytest.mark.slow
def test_harness_run_with_the_example_plugin_trains_it(quick_model_dir, tmp_path, monkeypatch, plugin_env):
    from harness.cli import main

    monkeypatch.chdir(tmp_path)
    argv = ["run", "--plugin", str(EXAMPLE), "--algos", "rloo", "--models", str(quick_model_dir), "--config", "tiny"]
    argv += ["--steps", "3", "--no-progress", "--no-report", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    for s in [
        "train.prompts_per_step=4",
        "generation.num_generations=4",
        "generation.max_completion_length=16",
        "train.format_reward_weight=0.5",
        "eval.before_training=false",
        "eval.after_training=false",
        f"train.output_dir={tmp_path / 'runs' / '{run_name}'}",
    ]:
        argv += ["--set", s]
    assert main(argv) == 0
    (summary,) = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("summary.json")]
    assert summary["status"] == "FINISHED" and summary["steps"] == 3
    assert summary["run_name"].startswith("rloo-")
