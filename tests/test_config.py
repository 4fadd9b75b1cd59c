"""Config: layering, CLI overrides, and up-front rejection of bad input naming the key."""

import pytest

from harness.config import ConfigError, build_config, parse_override


def test_paper_defaults_and_tiny_preset_layering():
    paper = build_config()
    assert (paper.train.learning_rate, paper.generation.num_generations, paper.generation.max_completion_length) == (
        1e-6,
        8,
        1024,
    )
    assert (paper.eval.temperature, paper.eval.top_p, paper.eval.top_k, paper.eval.max_new_tokens) == (
        0.2,
        0.95,
        50,
        2048,
    )
    tiny = build_config("tiny", overrides=["train.seed=7", "algorithm.name=repo:recent_k", "algorithm.num_replays=4"])
    assert tiny.data.train == "arith" and tiny.train.seed == 7 and tiny.generation.top_k == 50
    assert tiny.algorithm == {"name": "repo:recent_k", "num_replays": 4}


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.bogus=1", "unknown config key 'train.bogus'"),
        ("nosection.x=1", "unknown config section 'nosection'"),
        ("train.learning_rate=fast", "train.learning_rate: expected a number"),
        ("train.max_steps=2.5", "train.max_steps: expected an integer"),
        ("generation.num_generations=1", "generation.num_generations must be >= 2"),
        ("generation.top_p=0", "generation.top_p"),
        ("train.lr_scheduler=step", "train.lr_scheduler: expected one of"),
        ("algorithm.loss_type=sum", "algorithm.loss_type: expected one of grpo, bnpo, dr_grpo"),
        ("algorithm.epsilon=0.3", "unknown config key 'algorithm.epsilon'"),
        ("algorithm.name=ppo", "unknown algorithm 'ppo'"),
        ("algorithm.num_iterations=0", "algorithm.num_iterations must be >= 1"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(override, fragment):
    with pytest.raises(ConfigError) as e:
        build_config("tiny", overrides=[override])
    assert fragment in str(e.value)


def test_repo_cross_checks():
    with pytest.raises(ConfigError, match="min_cache_to_replay .16. > algorithm.max_cache_size .8."):
        build_config({"algorithm": {"name": "repo", "max_cache_size": 8}})
    with pytest.raises(ConfigError, match="unknown replay strategy 'topk'.*available: all, highest_k"):
        build_config({"algorithm": {"name": "repo:topk"}})
    with pytest.raises(ConfigError, match="num_replays must be in"):
        build_config({"algorithm": {"name": "repo", "num_replays": 17}})
    with pytest.raises(ConfigError, match="conflicts"):
        build_config({"algorithm": {"name": "repo:recent_k", "strategy": "highest_k"}})
    with pytest.raises(ConfigError, match="has no variants"):
        build_config({"algorithm": {"name": "grpo:fast"}})


def test_yaml_errors_name_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  learning_rate: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        build_config(str(p))
    p.write_text("train:\n  warmup_ratio: 1.5\n")
    with pytest.raises(ConfigError, match="train.warmup_ratio must be in"):
        build_config(str(p))
    with pytest.raises(ConfigError, match="not found"):
        build_config(str(tmp_path / "missing.yaml"))


def test_override_syntax():
    assert parse_override("train.max_steps=5") == {"train": {"max_steps": 5}}
    assert build_config("tiny", overrides=["train.learning_rate=1e-5"]).train.learning_rate == 1e-5
    assert parse_override("eval.benchmarks=[arith,gsm8k]") == {"eval": {"benchmarks": ["arith", "gsm8k"]}}
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.learning_rate")
