"""Prompt order for training: a resumable stream of per-epoch permutations, sharded by prompt owner.

Prompt ``i`` is owned by process ``i % num_processes`` for the whole run, so every visit of a prompt
lands on the same process. Per-prompt state kept by a plug-in (RePO's replay buffer) therefore never
has to be gathered across processes, and each process holds only its share of it.
"""

from __future__ import annotations

import math

import numpy as np


class PromptSampler:
    def __init__(
        self, num_prompts: int, prompts_per_step: int, seed: int, process_index: int = 0, num_processes: int = 1
    ):
        if num_prompts < num_processes:
            raise ValueError(f"{num_prompts} training prompts cannot be shared by {num_processes} processes")
        self.shard = np.arange(process_index, num_prompts, num_processes)
        self.prompts_per_step = prompts_per_step
        self.seed = seed
        self.process_index = process_index
        # Same steps on every process: based on the smallest shard.
        self.min_shard = num_prompts // num_processes
        self.epoch = 0
        self.position = 0
        self._order = self._permutation(0)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.min_shard / self.prompts_per_step))

    def _permutation(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, self.process_index])
        return self.shard[rng.permutation(len(self.shard))]

    def next_indices(self, count: int | None = None) -> list[int]:
        """The next ``count`` (default ``prompts_per_step``) prompt indices; an epoch's tail continues into the next
        epoch. Extra rounds of a step (an algorithm's ``select_groups`` asking for more) draw from the same stream."""
        want = self.prompts_per_step if count is None else count
        out: list[int] = []
        while len(out) < want:
            if self.position >= len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
            take = min(want - len(out), len(self._order) - self.position)
            out.extend(int(i) for i in self._order[self.position : self.position + take])
            self.position += take
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = self._permutation(self.epoch)
