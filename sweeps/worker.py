"""A sweep worker: run trials of one study until its trial budget is used up.

    python -m sweeps.worker --study NAME [--storage URL] [--output-dir runs] [--worker-index I]

`harness sweep --workers N` starts N of these; on another machine, start them directly (or run
`harness sweep --study-name NAME --storage URL --workers N` there) against the same storage. The
storage URL may also come from $HARNESS_SWEEP_STORAGE (keeps a password out of the process list).

Before every trial the worker fails stale trials (a dead worker's trial whose heartbeat stopped
more than the grace period ago) and checks the budget: finished + running trials. Workers that
check at the same instant can each start one more trial, so a study may end up to N-1 trials over.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from harness.plugins import load_plugins_from_env
from sweeps.study import counted_trials, fail_stale, get_spec, normalize_storage_url, open_storage, stale_trial_callback
from sweeps.trial import TrialContext, run_trial


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_worker(
    storage_url: str,
    study_name: str,
    *,
    output_root: str | Path = "runs",
    worker_index: int = 0,
    heartbeat_interval: int | None = 10,
    grace_period: int | None = 60,
    deadline: float | None = None,
    progress: bool = False,
    log=print,
) -> int:
    """Run trials until the study's budget (its stored spec's ``trials``) is reached; returns trials this worker ran."""
    import optuna

    plain = open_storage(storage_url, heartbeat_interval=None)
    spec = get_spec(optuna.load_study(study_name=study_name, storage=plain))
    if not spec:
        raise SystemExit(
            f"study '{study_name}' has no harness sweep spec: "
            f"create it with `harness sweep SPACE.yaml --study-name {study_name}`"
        )
    storage = open_storage(
        storage_url,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        stale_callback=stale_trial_callback(spec.get("tracking_uri")),
    )
    ctx = TrialContext(spec, study_name, output_root, worker_index=worker_index, progress=progress)
    study = optuna.load_study(
        study_name=study_name,
        storage=storage,
        sampler=ctx.space.make_sampler(seed_offset=worker_index),
        pruner=ctx.space.make_pruner(),
    )
    ran = 0
    while True:
        fail_stale(study)
        target = int((get_spec(study) or spec).get("trials", 0))
        used = len(counted_trials(study))
        if used >= target:
            log(f"[worker {worker_index}] budget reached ({used}/{target} trials); {ran} run here")
            break
        if deadline is not None and time.time() >= deadline:
            log(f"[worker {worker_index}] timeout reached; {ran} trials run here")
            break
        study.optimize(lambda t: run_trial(t, ctx), n_trials=1, catch=(Exception,), gc_after_trial=True)
        ran += 1
    return ran


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sweeps.worker", description="Run trials of a harness sweep study until its budget is used up."
    )
    p.add_argument("--study", required=True, help="Study name.")
    p.add_argument("--storage", help="Optuna storage URL (default: $HARNESS_SWEEP_STORAGE or sqlite:///optuna.db).")
    p.add_argument(
        "--output-dir", default="runs", help="Trial outputs go to OUTPUT_DIR/<study>/trial-<n> (default: runs)."
    )
    p.add_argument(
        "--worker-index", type=int, default=0, help="Offsets the sampler seed so workers do not draw the same trials."
    )
    p.add_argument("--heartbeat-interval", type=int, default=10, help="Seconds between trial heartbeats (default: 10).")
    p.add_argument(
        "--grace-period",
        type=int,
        default=60,
        help="A running trial without a heartbeat for this long is failed (default: 60).",
    )
    p.add_argument("--deadline", type=float, help="Unix time after which no new trial starts.")
    p.add_argument("--progress", action="store_true", help="Show training progress bars.")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # preemption: the running trial is failed and its MLflow run closed
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored (background job)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    load_plugins_from_env()  # the plug-ins `harness sweep --plugin` loaded: their algorithms can be named in trials
    url = normalize_storage_url(args.storage)
    try:
        run_worker(
            url,
            args.study,
            output_root=args.output_dir,
            worker_index=args.worker_index,
            heartbeat_interval=args.heartbeat_interval,
            grace_period=args.grace_period,
            deadline=args.deadline,
            progress=args.progress,
            log=lambda m: print(m, flush=True),
        )
    except KeyboardInterrupt:
        print(f"[worker {args.worker_index}] interrupted", flush=True)
        return 130
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
