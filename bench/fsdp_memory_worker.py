"""One process of bench/bench_memory.py's FSDP-vs-DDP part; started by ``torch.distributed.run`` (gloo, CPU).

Run: ``python -m torch.distributed.run --nproc_per_node 2 bench/fsdp_memory_worker.py SPEC_JSON OUT_DIR``
(bench_memory.py does this). SPEC_JSON: ``{"model", "preset" (null: the model's own), "sharding" (none | fsdp), "steps", "prompts", "generations",
"completion", "prompt_length", "train_size", "gradient_checkpointing"}``. Each process writes ``OUT_DIR/rank{R}.json``.

It trains the real :class:`harness.trainer.Trainer` (GRPO, hf engine) and measures this process's resident set
(``/proc/self/status``): ``base`` = VmRSS once torch, transformers and the trainer are imported but before the model
exists; ``setup_peak`` = VmHWM over the trainer's set-up (model load, sharding, optimizer, engine); ``peak`` = the
highest VmHWM over the training steps (sampling, training, optimizer step, weight sync). To attribute it, the
trainer's phases are wrapped here (nothing in harness/ changes): at each boundary the current RSS and the
high-water mark since the previous boundary are recorded and the mark is reset (``/proc/self/clear_refs``), so the
phases' peaks tile the steps exactly and their maximum is the steps' peak. The trainer resets the mark itself at
each step start (for ``memory/step_peak_rss_gb``); the wrapper around ``train_step`` records just before that.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Mallinfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (malloc.h)."""

    _fields_ = [
        (n, ctypes.c_size_t)
        for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def malloc_bytes() -> dict[str, int]:
    """glibc's ``mallinfo2``: ``in_use`` (allocated: heap chunks + mmapped blocks; torch's CPU tensors come from
    malloc) and ``free_held`` (freed heap memory malloc keeps, in every arena: resident once touched unless
    trimmed); empty where unavailable (not glibc >= 2.33, e.g. another allocator preloaded)."""
    from harness.memory import libc_function

    fn = libc_function("mallinfo2", (), Mallinfo2)
    if fn is None:
        return {}
    m = fn()
    if m.arena == 0 and m.hblkhd == 0:  # another allocator answers with zeros
        return {}
    return {"in_use": int(m.uordblks + m.hblkhd), "free_held": int(m.fordblks), "mmapped": int(m.hblkhd)}


def main() -> None:
    spec, out_dir = json.loads(sys.argv[1]), Path(sys.argv[2])
    import torch  # noqa: F401  (the runtime base includes torch, transformers and the trainer)
    import transformers  # noqa: F401

    from harness.config import build_config
    from harness.memory import peak_rss_bytes, reset_peak_rss, rss_bytes
    from harness.models import get_spec
    from harness.trainer import Trainer

    base = rss_bytes()
    marks: list[dict] = []  # {"step", "phase", "rss" at its end, "hwm" over it}
    where = {"step": -1}

    def mark(phase: str) -> None:
        marks.append(
            {"step": where["step"], "phase": phase, "rss": rss_bytes(), "hwm": peak_rss_bytes(), **malloc_bytes()}
        )
        reset_peak_rss()

    sharding = spec["sharding"]
    cfg = build_config(
        # the given preset, else the model's own (smollm2-cpu), as `harness run` applies it
        spec.get("preset") or getattr(get_spec(spec["model"]), "preset", None),
        {
            "model": {
                "name": spec["model"],
                "dtype": "float32",
                "gradient_checkpointing": bool(spec.get("gradient_checkpointing", False)),
            },
            "algorithm": {"name": "grpo"},
            "data": {"train_size": spec["train_size"], "max_prompt_length": spec["prompt_length"]},
            "generation": {
                "engine": "hf",
                "num_generations": spec["generations"],
                "max_completion_length": spec["completion"],
            },
            "train": {
                "max_steps": spec["steps"],
                "prompts_per_step": spec["prompts"],
                "output_dir": str(out_dir / "run"),
                "log_completions_every": 0,
                "save_every": 0,
                "warmup_ratio": 0.0,
                "sharding": sharding,
            },
            "eval": {"before_training": False, "after_training": False, "every_steps": 0},
            "tracking": {"tracking_uri": f"sqlite:///{out_dir / 'mlflow.db'}", "experiment_name": sharding},
        },
    )
    reset_peak_rss()
    t0 = time.perf_counter()
    tr = Trainer(cfg, progress=False)
    setup_s = time.perf_counter() - t0
    setup_peak, after_setup = peak_rss_bytes(), rss_bytes()
    reset_peak_rss()

    def wrap(obj, name: str, before: str | None, after: str | None) -> None:
        fn = getattr(obj, name)

        def wrapped(*a, **k):
            if before:
                mark(before)
            out = fn(*a, **k)
            if after:
                mark(after)
            return out

        setattr(obj, name, wrapped)

    # phase names: what ran since the previous boundary
    wrap(tr, "collect_groups", "gather (step start)", "sampling")
    wrap(tr, "train_on", "reshard + build batch", None)
    wrap(tr, "_behaviour_logprobs", "train_on prelude", "behaviour log-probs")
    wrap(tr, "_optimizer_step", "forward + backward", "optimizer step")
    wrap(tr.engine, "sync_weights", "train_on tail", "weight sync")

    def step_start(fn):
        def wrapped(*a, **k):
            where["step"] += 1
            mark("between steps")
            return fn(*a, **k)

        return wrapped

    tr.train_step = step_start(tr.train_step)
    step_times: list[float] = []
    tr.callbacks.append(lambda r: step_times.append(float(r.metrics.get("time/step_s", float("nan")))))
    t0 = time.perf_counter()
    tr.fit()
    fit_s = time.perf_counter() - t0
    mark("after the last step")  # fit's tail: the final checkpoint (gathered to the main process under FSDP)
    in_steps = [
        m
        for m in marks
        if m["step"] >= 0
        and m["phase"] != "after the last step"
        and not (m["step"] == 0 and m["phase"] == "between steps")  # that one is fit's start, before step 0
    ]
    peak_mark = max(in_steps, key=lambda m: m["hwm"])
    rank = tr.accelerator.process_index
    n_params = sum(p.numel() for p in tr.model.parameters())  # local (sharded) element count under FSDP
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in tr.model.parameters())
    opt_bytes = sum(
        (v.to_local() if hasattr(v, "to_local") else v).numel() * v.element_size()
        for st in tr.optimizer.state.values()
        for v in st.values()
        if hasattr(v, "numel") and v.dim() > 0
    )
    tr.close()
    (out_dir / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "rank": rank,
                "sharding": sharding,
                "fsdp": bool(tr.fsdp),
                "base": base,
                "setup_peak": setup_peak,
                "after_setup": after_setup,
                "peak": peak_mark["hwm"],
                "peak_phase": f"step {peak_mark['step']}: {peak_mark['phase']}",
                "final_save_peak": marks[-1]["hwm"],
                "marks": marks,
                "params": n_params,
                "local_params": local,
                "optimizer_state_bytes": opt_bytes,
                "setup_s": setup_s,
                "fit_s": fit_s,
                "step_s": step_times,
            }
        )
    )


if __name__ == "__main__":
    main()
