"""Engine/trainer agreement: the weight-sync probe, log-prob gap metrics and truncated importance sampling.

* **Sync check.** After every weight sync an engine scores a fixed probe sequence (prompt log-probs at
  temperature 1, no top-k/top-p) and the trainer scores the same sequence with its own model. The mean
  absolute difference must stay under a tolerance, else :class:`WeightSyncError` is raised at once: a
  missed parameter, a wrong name mapping or stale weights give differences of order 0.1-1, numerical
  noise gives ~1e-6 (float32) to a few 1e-2 (bfloat16).
* **Gap metrics.** :func:`logprob_gap_metrics` compares the behaviour log-probs an engine returned with
  the trainer's log-probs of the same tokens (the trainer's first forward pass of the step).
* **Truncated IS (TIS).** The engine samples from pi_engine while the loss assumes the trainer's pi.
  :func:`truncated_is_weights` gives the per-token correction ``min(pi_trainer / pi_engine, cap)``
  (detached), as TRL (``vllm_importance_sampling_correction``) and verl (``rollout_is``) offer. Off by
  default; see README "Rollout engines".
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from harness.rollout import eos_ids

PROBE_TEXT = "Probe: 12 + 35 = 47, so the answer is \\boxed{47}. The quick brown fox jumps over the lazy dog."


class EngineError(RuntimeError):
    """A rollout engine failed (start-up, health, request or weight push); the message says what and where."""


class WeightSyncError(EngineError):
    """After a weight sync the engine's log-probs disagree with the trainer's beyond the tolerance."""


def make_probe(tokenizer, vocab_size: int | None = None, length: int = 48, seed: int = 1234) -> list[int]:
    """A fixed probe: a short text (real token statistics) followed by seeded random ids (wide embedding coverage)."""
    ids = [int(i) for i in tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]][: length // 2]
    vocab = min(int(vocab_size or len(tokenizer)), len(tokenizer))
    rng = np.random.default_rng(seed)
    ids += [int(i) for i in rng.integers(0, vocab, size=length - len(ids))]
    return ids


@torch.no_grad()
def trainer_probe_logprobs(model: torch.nn.Module, probe: list[int]) -> np.ndarray:
    """log softmax(logits)[next token] for probe[1:], computed by the training model (temperature 1)."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        ids = torch.as_tensor([probe], dtype=torch.long, device=device)
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
        lp = torch.log_softmax(logits, dim=-1).gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1)
        return lp.cpu().numpy().astype(np.float64)
    finally:
        model.train(was_training)


def default_tolerance(engine_dtype: str, trainer_dtype: str) -> float:
    return 1e-3 if engine_dtype == "float32" and trainer_dtype == "float32" else 0.1


def compare_probe(engine_lp: np.ndarray, trainer_lp: np.ndarray) -> dict[str, float]:
    if engine_lp.shape != trainer_lp.shape:
        raise WeightSyncError(f"probe length mismatch: engine {engine_lp.shape} vs trainer {trainer_lp.shape}")
    diff = np.abs(np.asarray(engine_lp, np.float64) - np.asarray(trainer_lp, np.float64))
    return {"engine/sync_probe_mean_abs": float(diff.mean()), "engine/sync_probe_max_abs": float(diff.max())}


def check_sync(
    engine_lp: np.ndarray, trainer_lp: np.ndarray, tolerance: float, *, engine: str, version: int
) -> dict[str, float]:
    """Raise :class:`WeightSyncError` when the mean absolute probe difference exceeds ``tolerance``."""
    stats = compare_probe(engine_lp, trainer_lp)
    if not np.isfinite(stats["engine/sync_probe_mean_abs"]) or stats["engine/sync_probe_mean_abs"] > tolerance:
        raise WeightSyncError(
            f"{engine}: weights at policy version {version} do not match the trainer's: mean |engine - trainer| "
            f"log-prob on the probe = {stats['engine/sync_probe_mean_abs']:.4g} "
            f"(max {stats['engine/sync_probe_max_abs']:.4g}) > tolerance {tolerance:.3g}. "
            "The engine would sample from a different (stale or wrongly loaded) policy; stopping. Raise "
            "generation.sync_check_tolerance only if this is dtype noise (bf16 engines differ by a few 1e-2)."
        )
    return stats


DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def dtype_name(dtype: torch.dtype) -> str:
    """Engine dtype name of a torch dtype (float32 for any other)."""
    return DTYPES.get(dtype, "float32")


class SyncCheckedEngine:
    """Shared part of the engines that hold their own copy of the weights (``vllm``, ``vllm-server``): the
    dtypes, tolerance, eos ids and probe set up from the training model, and the probe check after every weight
    sync. A subclass sets ``name`` and ``options`` (:class:`harness.engines.options.EngineOptions`) and
    implements :meth:`_probe_engine`."""

    name: str
    options: Any

    def _init_sync_check(self, model: torch.nn.Module, tokenizer, batch_size: int) -> None:
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.version = 0
        self.last_sync_metrics: dict[str, float] = {}
        self.trainer_dtype = dtype_name(next(model.parameters()).dtype)
        self.engine_dtype = self.options.dtype or self.trainer_dtype
        self.tolerance = self.options.sync_check_tolerance or default_tolerance(self.engine_dtype, self.trainer_dtype)
        self.eos_ids = eos_ids(model, tokenizer)
        self.probe = make_probe(tokenizer, getattr(model.config, "vocab_size", None))

    def _probe_engine(self) -> np.ndarray:
        """The engine's log-probs of ``self.probe[1:]`` (temperature 1, no truncation)."""
        raise NotImplementedError

    def _finish_sync(self, model: torch.nn.Module, version: int, metrics: dict[str, float], t0: float) -> None:
        """Run the probe check (when ``options.sync_check``; raises :class:`WeightSyncError`) and keep the metrics
        of this sync, started at ``t0`` (``time.perf_counter()``), as ``last_sync_metrics``."""
        if self.options.sync_check:
            t1 = time.perf_counter()
            engine_lp = self._probe_engine()
            trainer_lp = trainer_probe_logprobs(model, self.probe)
            metrics.update(check_sync(engine_lp, trainer_lp, self.tolerance, engine=self.name, version=version))
            metrics["engine/sync_check_s"] = time.perf_counter() - t1
        metrics["engine/sync_total_s"] = time.perf_counter() - t0
        self.last_sync_metrics = metrics

    def probe_gap(self, model: torch.nn.Module) -> dict[str, float]:
        """Probe comparison without raising (for benchmarks and diagnostics)."""
        return compare_probe(self._probe_engine(), trainer_probe_logprobs(model, self.probe))


def logprob_gap_metrics(trainer_lp: list[np.ndarray], engine_lp: list[np.ndarray | None]) -> dict[str, float]:
    """Engine-trainer log-prob gap over the tokens of a step (rows with no engine log-probs are skipped).

    Both sides must be log-probs of the same tokens under the same temperature. With top-k/top-p the
    engine's behaviour log-probs are renormalised over the kept tokens, so the gap also contains that
    truncation (it is the real behaviour/target mismatch that TIS corrects).
    """
    t = [np.asarray(a, np.float64) for a, b in zip(trainer_lp, engine_lp) if b is not None and len(a)]
    e = [np.asarray(b, np.float64)[: len(a)] for a, b in zip(trainer_lp, engine_lp) if b is not None and len(a)]
    if not t:
        return {}
    tt, ee = np.concatenate(t), np.concatenate(e)
    d = ee - tt
    return {
        "engine/logprob_gap_mean_abs": float(np.abs(d).mean()),
        "engine/logprob_gap_max_abs": float(np.abs(d).max()),
        "engine/logprob_gap_mean": float(d.mean()),  # > 0: the engine is more confident than the trainer
        "engine/prob_gap_mean_abs": float(np.abs(np.exp(ee) - np.exp(tt)).mean()),
        "engine/kl_k3": float(
            np.mean(np.exp(-d) - 1 + d)
        ),  # k3 estimate of KL(engine || trainer) on the sampled tokens
    }


def truncated_is_weights(
    trainer_lp: torch.Tensor, engine_lp: torch.Tensor, mask: torch.Tensor, cap: float = 2.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token TIS weights ``min(exp(trainer - engine), cap)`` (no gradient), zero outside ``mask``.

    ``trainer_lp`` are the trainer's log-probs of the sampled tokens before the update (the step's
    "old" log-probs), ``engine_lp`` the engine's behaviour log-probs; both [B, T]. Multiply the
    per-token policy loss by the weights (see README "Rollout engines" for the wiring).
    """
    with torch.no_grad():
        log_ratio = (trainer_lp.float() - engine_lp.float()).clamp(max=20.0)
        raw = torch.exp(log_ratio)
        w = raw.clamp(max=cap) * mask
        m = mask.bool()
        n = max(int(m.sum()), 1)
        stats = {
            "tis/weight_mean": float(w[m].sum() / n) if m.any() else 1.0,
            "tis/raw_ratio_max": float(raw[m].max()) if m.any() else 1.0,
            "tis/truncated_frac": float((raw[m] > cap).float().mean()) if m.any() else 0.0,
        }
    return w.detach(), stats
