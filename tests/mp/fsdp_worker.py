"""Run by tests/test_fsdp.py under `python -m torch.distributed.run --nproc_per_node 2` (gloo).

Trains GRPO a few steps with ``train.sharding`` = argv[2] (none = DDP, fsdp = FSDP2) and writes, on the main process,
the final full parameters (``params.pt``: from the gathered state dict under FSDP) and, per process, what it saw.
"""

import json
import sys
from pathlib import Path


def full_params(trainer) -> dict:
    """Every parameter and buffer of the trainer's policy, whole (gathered one by one under FSDP), as separate tensors."""
    from harness.sharding import named_full_tensors

    return {k: v.detach().clone().contiguous() for k, v in named_full_tensors(trainer._policy())}


def main() -> None:
    model_dir, sharding, out_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    train_extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}  # e.g. a small micro-batch token budget
    algorithm = train_extra.pop("algorithm", {"name": "grpo"})
    model_extra = train_extra.pop("model", {})  # e.g. gradient checkpointing
    generation_extra = train_extra.pop("generation", {})  # e.g. a vllm engine
    resume_at = train_extra.pop("resume_at", None)  # stop after this many steps, then resume in a new Trainer

    from torch.distributed.fsdp import FSDPModule

    from harness.config import build_config
    from harness.trainer import Trainer

    cfg = build_config(
        "tiny",
        {
            "model": {"name": model_dir, **model_extra},
            "algorithm": algorithm,
            "data": {"train_size": 8},
            "generation": {"num_generations": 4, **generation_extra},
            "train": {
                "max_steps": train_extra.pop("max_steps", 3),
                "prompts_per_step": 2,
                "format_reward_weight": 0.5,
                "output_dir": str(out_dir / "run"),
                "log_completions_every": 0,
                "sharding": sharding,
                **train_extra,
            },
            "eval": {"before_training": False, "after_training": False},
            "tracking": {"tracking_uri": f"sqlite:///{out_dir / 'mlflow.db'}", "experiment_name": sharding},
        },
    )
    ref_steps: list = []
    resume_dir = None
    if resume_at:  # the uninterrupted run, checkpointing at resume_at; then resume a copy of that checkpoint
        import shutil

        import torch.distributed as dist

        d = cfg.to_dict()
        first = Trainer(build_config("tiny", {**d, "train": {**d["train"], "save_every": resume_at}}), progress=False)
        first.callbacks.append(
            lambda r: ref_steps.append({"prompt_ids": r.prompt_ids, "completion_ids": r.completion_ids})
        )
        first.fit()
        resume_dir = out_dir / "resume-from"
        if first.is_main:
            shutil.copytree(out_dir / "run" / f"checkpoint-{resume_at}", resume_dir)
        dist.barrier()
        ref_params = full_params(first)
        first.close()
        cfg = build_config("tiny", {**d, "train": {**d["train"], "output_dir": str(out_dir / "run2")}})
    tr = Trainer(cfg, progress=False, resume=str(resume_dir) if resume_dir else None)
    steps = []
    tr.callbacks.append(lambda r: steps.append({"prompt_ids": r.prompt_ids, "completion_ids": r.completion_ids}))
    # the hf engine's log-probs of its samples vs the trainer's pre-step ones on the trained rows: sampling used the
    # trained weights of the previous step (a stale or half-gathered model would show a gap)
    gaps = []
    tr.callbacks.append(lambda r: gaps.append(r.metrics.get("engine/logprob_gap_max_abs")))
    probes = []  # engines with their own weights: the probe check after every sync (max |engine - trainer| log-prob)
    tr.callbacks.append(lambda r: probes.append(r.metrics.get("engine/sync_probe_max_abs")))
    chunk_counts = []  # micro-batches planned per training pass on this process (FSDP pads to the maximum)
    plan = tr._plan
    tr._plan = lambda batch, rows: (lambda c: chunk_counts.append(len(c)) or c)(plan(batch, rows))
    tr.fit()
    rank = tr.accelerator.process_index
    params = full_params(tr)
    resumed = {}
    if resume_at:  # the resumed steps and weights against the uninterrupted run's
        resumed = {
            "same_batches": ref_steps[resume_at:] == steps,
            "n_resumed_steps": len(steps),
            "param_diff": max((ref_params[k] - v).abs().max().item() for k, v in params.items()),
        }
    if rank == 0:
        from safetensors.torch import save_file

        save_file(params, str(out_dir / "params.safetensors"))
    (out_dir / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "rank": rank,
                "fsdp": tr.fsdp,
                # the FSDP units by module name ("" = the root) and whether the input embedding backpropagates sparse
                "units": [n for n, m in tr._policy().named_modules() if isinstance(m, FSDPModule)],
                "sparse_embedding": bool(tr._policy().get_input_embeddings().sparse),
                "steps": steps,
                "chunks": chunk_counts,
                "gaps": gaps,
                "probes": probes,
                **resumed,
            }
        )
    )


if __name__ == "__main__":
    main()
