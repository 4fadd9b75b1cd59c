"""Algorithm plug-ins (GRPO, RePO, DAPO, zero-variance substitution, prioritized rollout replay, ExGRPO) and RePO's replay
strategies, each registered by name."""

from algorithms import dapo, exgrpo, grpo, prioritized_replay, repo, zero_variance  # noqa: F401  (importing a plug-in's module registers it)
from algorithms.base import (  # noqa: F401
    Algorithm,
    available_algorithms,
    create_algorithm,
    get_algorithm_class,
    register_algorithm,
    resolve_algorithm,
)
from algorithms.replay_strategies import available_strategies, get_strategy, register_strategy  # noqa: F401
