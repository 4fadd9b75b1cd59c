"""The training reward of each sample, from the verifier's verdict and the format check (``reward.kind``).

``verifier`` is the paper's reward (accuracy, plus ``train.format_reward_weight`` x format). The two controls of
Shao et al., 2025 (*Spurious Rewards: Rethinking Training Signals in RLVR*, arXiv 2506.10947) train any algorithm on
a signal that carries no information about correctness: ``random`` (1 with probability ``reward.random_p``) and
``format_only`` (1 when the completion boxes an answer). A gain that survives them is not the verifier's doing.

Random rewards are deterministic: drawn from ``(train.seed, process, step, rollout round)``, so a resumed run draws
the same rewards, and two algorithms with the same seed see the same draws for the same step and round.
"""

from __future__ import annotations

import numpy as np


def training_rewards(
    kind: str,
    accuracy: np.ndarray,
    format_ok: np.ndarray,
    *,
    format_weight: float,
    random_p: float,
    key: tuple[int, ...],
) -> np.ndarray:
    """[n] float64 rewards of ``n`` samples; ``key`` seeds the random control (seed, process, step, round)."""
    if kind == "verifier":
        return accuracy + format_weight * format_ok
    if kind == "format_only":
        return np.asarray(format_ok, dtype=np.float64).copy()
    if kind == "random":
        draws = np.random.default_rng(list(key)).random(len(accuracy))
        return (draws < random_p).astype(np.float64)
    raise ValueError(f"reward.kind: expected one of verifier, random, format_only, got {kind!r}")
