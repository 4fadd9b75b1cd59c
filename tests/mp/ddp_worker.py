"""Run by tests/test_multiprocess.py under `accelerate launch --num_processes 2 --cpu` (gloo).

Each process trains a few steps and writes what it saw: prompt ids per step, replay rows and the
prompts its buffer holds, and a digest of its parameters.
"""

import hashlib
import json
import sys
from pathlib import Path


def main() -> None:
    model_dir, spec, out_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    algo, _, option = spec.partition("+")  # "grpo+share_prompts": the shared-prompt forward through DDP
    from harness.config import build_config
    from harness.trainer import Trainer

    cfg = build_config(
        "tiny",
        {
            "model": {"name": model_dir},
            "algorithm": {
                "name": algo,
                **(
                    {"min_cache_to_replay": 4, "max_cache_size": 8, "num_replays": 2} if algo.startswith("repo") else {}
                ),
                **({"start_accuracy": 0.0, "success_reward": 0.5} if algo == "exgrpo" else {}),
            },
            "data": {"train_size": 8},
            "generation": {"num_generations": 4},
            "train": {
                "max_steps": 4,
                "prompts_per_step": 2,
                "format_reward_weight": 0.5,
                "output_dir": str(out_dir / "run"),
                "log_completions_every": 0,
                "share_prompts": option == "share_prompts",
            },
            "eval": {"before_training": False, "after_training": False},
            "tracking": {"tracking_uri": f"sqlite:///{out_dir / 'mlflow.db'}", "experiment_name": "ddp"},
        },
    )
    tr = Trainer(cfg, progress=False)
    steps = []
    tr.callbacks.append(
        lambda r: steps.append(
            {
                "prompt_ids": r.prompt_ids,
                "replay_rows": r.metrics.get("replay/rows", 0.0),
                "experience_groups": r.metrics.get("exgrpo/experience_groups", 0.0),
            }
        )
    )
    local_rows = []
    orig = tr.algorithm.build_batch

    def spy(groups, step):
        batch = orig(groups, step)
        local_rows.append(int((batch.source == 1).sum()))
        return batch

    tr.algorithm.build_batch = spy
    tr.fit()
    params = tr.accelerator.unwrap_model(tr.model).state_dict()
    digest = hashlib.sha256(b"".join(params[k].detach().numpy().tobytes() for k in sorted(params))).hexdigest()
    buffer_prompts = sorted(tr.algorithm.buffer.prompt_ids()) if hasattr(tr.algorithm, "buffer") else []
    rank = tr.accelerator.process_index
    (out_dir / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "rank": rank,
                "world": tr.accelerator.num_processes,
                "steps": steps,
                "local_replay_rows": local_rows,
                "param_digest": digest,
                "buffer_prompts": buffer_prompts,
                "owned": [tr.train_rows[i]["id"] for i in tr.sampler.shard],
            }
        )
    )


if __name__ == "__main__":
    main()
