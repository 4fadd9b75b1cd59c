"""Training-phase seconds of one step with ``train.share_prompts`` on vs off, same batch, same run.

One rollout of the preset's step (e.g. SmolLM2's 4 prompts x 8 completions), every row given a non-zero advantage so
all of them train; then ``train_on`` (behaviour log-probs, forward, loss, backward, optimizer step) from the same
weights and optimizer state, alternating the two settings for ``--rounds`` rounds. The last line reads
``training time ratio shared/repeated: X.XX`` (median over rounds).

    python bench/bench_share_prompts.py --model smollm2-135m-gguf --rounds 3
    python bench/bench_share_prompts.py                     # the tiny model (prompts ~20 tokens: little to share)
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="registry name or folder (its preset applies: smollm2-cpu, tiny)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds, each setting once per round")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from harness.config import build_config
    from harness.trainer import Trainer, row_engine_logprobs

    preset = "smollm2-cpu" if "smollm2" in args.model else "tiny"
    cfg = build_config(
        preset,
        {
            "model": {"name": args.model},
            "train": {"max_steps": 1, "output_dir": "/tmp/bench-share-prompts/{run_name}"},
            "eval": {"before_training": False, "after_training": False},
            "tracking": {"enabled": False},
        },
    )
    tr = Trainer(cfg, progress=False)
    try:
        groups, _ = tr.rollout(tr.sampler.next_indices())
        batch = tr.algorithm.build_batch(groups, 0)
        batch.advantages = np.random.default_rng(0).normal(size=len(batch)).astype(np.float32)  # every row trains
        engine_lp = row_engine_logprobs(batch, groups)
        model = tr.accelerator.unwrap_model(tr.model)
        params, opt = copy.deepcopy(model.state_dict()), copy.deepcopy(tr.optimizer.state_dict())
        prompt_tokens = sum(len(p) for p in batch.prompt_ids)
        distinct = {tuple(p) for p in batch.prompt_ids}
        completion_tokens = sum(len(c) for c in batch.completion_ids)
        print(
            f"model {args.model} (preset {preset}), threads {args.threads}: {len(batch)} rows, {len(distinct)} distinct "
            f"prompts; prompt tokens {prompt_tokens} repeated vs {sum(len(p) for p in distinct)} shared, completion "
            f"tokens {completion_tokens}"
        )
        times: dict[bool, list[float]] = {False: [], True: []}
        for r in range(args.rounds + 1):  # round 0 warms both paths up, untimed
            for share in (False, True) if r % 2 == 0 else (True, False):
                model.load_state_dict(params)
                tr.optimizer.load_state_dict(copy.deepcopy(opt))
                tr.cfg.train.share_prompts = share
                t0 = time.perf_counter()
                metrics, _ = tr.train_on(batch, engine_lp)
                dt = time.perf_counter() - t0
                if r:
                    times[share].append(dt)
                print(
                    f"round {r}{' (warm-up)' if not r else ''}: share_prompts={share} {dt:.2f} s, loss {metrics['loss/policy']:.6f}"
                )
        shared, repeated = statistics.median(times[True]), statistics.median(times[False])
        print(f"median: repeated {repeated:.2f} s, shared {shared:.2f} s; load average {os.getloadavg()[0]:.1f}")
        print(f"training time ratio shared/repeated: {shared / repeated:.2f}")
    finally:
        tr.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
