"""A step's metrics: pooled over micro-batches (:class:`MetricSums`) and combined over processes (:func:`reduce_metrics`).

One rule says how a metric combines (:func:`metric_kind`): names ending ``/max`` or ``/min`` keep the extreme; counts
are summed (the trainer's ``tokens/*``, ``flops/*`` and group counts, and the names an algorithm declares in its
``summed_metrics``); everything else is a mean (over micro-batches: numerator / denominator, so they pool by token or
row count; over processes: the mean of the processes that logged it).
"""

from __future__ import annotations

from typing import Iterable

import torch

#: The trainer's own counts (prefixes): summed over processes.
SUMMED_PREFIXES = ("tokens/", "flops/")
#: The trainer's own counts (exact names): the step's groups generated, trained on and dropped (``select_groups``).
SUMMED_NAMES = ("groups/generated", "groups/kept", "groups/dropped")


def metric_kind(name: str, summed: Iterable[str] = ()) -> str:
    """``max``, ``min``, ``sum`` or ``mean``: how ``name`` combines (``summed``: exact names of an algorithm's counts)."""
    if name.endswith("/max"):
        return "max"
    if name.endswith("/min"):
        return "min"
    if name.startswith(SUMMED_PREFIXES) or name in SUMMED_NAMES or name in summed:
        return "sum"
    return "mean"


class MetricSums:
    """Pools ``name -> (numerator, denominator)`` metrics of every micro-batch and iteration of a step."""

    def __init__(self) -> None:
        self._sums: dict[str, list[float]] = {}

    def add(self, metrics: dict[str, tuple[float | torch.Tensor, float | torch.Tensor]]) -> None:
        for k, (num, den) in metrics.items():
            kind = metric_kind(k)
            s = self._sums.setdefault(k, [0.0, 0.0] if kind not in ("max", "min") else [float(num), float("nan")])
            if kind == "max":
                s[0] = max(s[0], float(num))
            elif kind == "min":
                s[0] = min(s[0], float(num))
            else:
                s[0] += float(num)
                s[1] += float(den)

    def denominator(self, name: str) -> float:
        return self._sums[name][1] if name in self._sums else 0.0

    def values(self, *, per_iteration: tuple[str, ...] = (), iterations: int = 1) -> dict[str, float]:
        """Each metric's pooled value: the extreme for ``*/max``/``*/min``, numerator / denominator otherwise (0 without
        a denominator); names starting with ``per_iteration`` are already normalised per iteration and are averaged
        over ``iterations``."""
        out = {}
        for k, (num, den) in self._sums.items():
            if metric_kind(k) in ("max", "min"):
                out[k] = num
            elif per_iteration and k.startswith(per_iteration):
                out[k] = num / iterations
            else:
                out[k] = num / den if den else 0.0
        return out


def reduce_metrics(
    metrics: dict[str, float], device: torch.device | str = "cpu", summed: Iterable[str] = ()
) -> dict[str, float]:
    """One step's metrics combined over all processes (torch.distributed initialised), by :func:`metric_kind`.

    Processes may log different names in a step (RePO's ``ratio/off_*`` only where replayed rows carried
    gradient, gap metrics only where an engine returned log-probs), so the names are agreed first: a fixed
    positional all-reduce over different key lists would mix up values or hang.
    """
    import torch.distributed as dist

    summed = tuple(summed)
    world = dist.get_world_size()
    gathered: list[list[str] | None] = [None] * world
    dist.all_gather_object(gathered, sorted(metrics))
    keys = sorted(set().union(*gathered))
    kinds = [metric_kind(k, summed) for k in keys]
    fill = {"max": float("-inf"), "min": float("inf"), "sum": 0.0, "mean": 0.0}
    vals = torch.tensor(
        [float(metrics.get(k, fill[kd])) for k, kd in zip(keys, kinds)], dtype=torch.float64, device=device
    )
    present = torch.tensor([1.0 if k in metrics else 0.0 for k in keys], dtype=torch.float64, device=device)
    both = torch.cat([vals, present])  # values and presence counts in one SUM
    dist.all_reduce(both, op=dist.ReduceOp.SUM)
    sums, present = both[: len(keys)], both[len(keys) :]
    maxed, mined = vals.clone(), vals.clone()
    if "max" in kinds:
        dist.all_reduce(maxed, op=dist.ReduceOp.MAX)
    if "min" in kinds:
        dist.all_reduce(mined, op=dist.ReduceOp.MIN)
    pick = {
        "max": lambda i: maxed[i],
        "min": lambda i: mined[i],
        "sum": lambda i: sums[i],
        "mean": lambda i: sums[i] / max(float(present[i]), 1.0),
    }
    return {k: float(pick[kd](i)) for i, (k, kd) in enumerate(zip(keys, kinds))}
