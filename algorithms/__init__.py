"""Algorithm plug-ins (GRPO, RePO) and RePO's replay strategies, each registered by name."""

from algorithms.base import (  # noqa: F401
    Algorithm,
    available_algorithms,
    create_algorithm,
    get_algorithm_class,
    register_algorithm,
    resolve_algorithm,
)
from algorithms import grpo  # noqa: F401  (registers "grpo")
from algorithms.replay_strategies import get_strategy, register_strategy, available_strategies  # noqa: F401,E402
from algorithms import repo  # noqa: F401,E402  (registers "repo")
