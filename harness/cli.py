"""`harness` command line: run, eval, sweep, report, serve, data, models, config.

Config is layered: paper defaults <- the model's preset (tiny: harness/presets/tiny.yaml) <- --config
YAML <- explicit flags <- --set section.key=value overrides. The resolved config is printed with
--dry-run and saved with every run.

Start-up stays light (``harness --help``): modules that import torch (models, algorithms, the trainer,
the engines, evaluation) are imported by the commands that need them.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from benchmarks.prepare import add_data_parser, cmd_data
from harness import checkpoint as ckpt
from harness.budget import plan_warnings
from harness.cli_common import (
    _positive_float,
    add_config_flags,
    add_data_dir_flag,
    add_launcher_flags,
    add_plugin_flag,
    add_report_flags,
    launcher_from_args,
    run_command,
)
from harness.config import ConfigError, HarnessConfig, build_config, config_from_dict, describe_fields
from harness.experiment import Member, matrix_name, name_members, print_matrix, run_matrix
from harness.preflight import preflight
from harness.secrets import mask_secrets
from harness.summary import compare_to_baseline, format_summary
from reports.cli import add_report_parser, cmd_report, report_at_end
from sweeps.cli import add_sweep_parser, cmd_sweep

RUN_EPILOG = """examples:
  harness run --algos grpo --models tiny --benchmarks arith
  harness run --algos grpo,repo:recent_k --models tiny --benchmarks arith --seeds 2
  harness run --algos repo --models tiny --set algorithm.num_replays=4 --set train.max_steps=20
  harness run --config tiny-matched --algos grpo,repo --models tiny --seeds 2     # matched FLOPs, report at the end
  harness run --algos grpo,repo --models tiny --budget flops:1.2e12 \
--set eval.at_budget_fractions=[0.25,0.5,0.75] --dry-run
  harness run --config paper-qwen3-1.7b --models qwen3-1.7b --algos grpo,repo:highest_k --seeds 3
  harness run --config my.yaml --resume runs/grpo-tiny-s42
  harness run --plugin examples/my_algorithm.py --algos grpo,rloo --models tiny   # an algorithm of your own
  harness run --algos grpo,repo --models smollm2-135m-gguf --seeds 2    # a real pretrained model on CPU (~27 min)
  harness models prepare smollm2-135m-gguf                              # dequantise the GGUF once, ahead of time
  harness run --algos grpo,repo --models all --seeds 3 --launcher slurm --slurm-partition gpu --slurm-gpus 4 \
--slurm-time-min 720 --tracking-uri http://mlflow-host:5000       # every member a Slurm job, one MLflow server
  harness run ... --launcher slurm --no-wait && harness status NAME     # submit, return; look at the members later
  harness run --config paper-qwen2.5-math-7b-fsdp --models qwen2.5-math-7b --algos grpo --dry-run --processes 4 \
--gpu-memory-gb 80                                                  # memory per process, DDP vs FSDP: fits?

presets (harness/presets, --config NAME): tiny, tiny-matched, smollm2-cpu, paper-qwen2.5-math-1.5b, \
paper-qwen2.5-math-7b,
paper-qwen2.5-math-7b-fsdp (FSDP on 4-8 GPUs), paper-qwen3-1.7b. In a mixed matrix --set algorithm.<field> applies to the algorithms that have the field.

algorithm specs: NAME or NAME:VARIANT, e.g. grpo, repo, repo:recent_k, repo:highest_k,
repo:max_variance_k (see `harness config show --algo repo` for every field).
"""


def _positive_int(text: str) -> int:
    """argparse type of a count (--seeds, --steps): refused at parse time, before anything runs."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_common(p: argparse.ArgumentParser) -> None:
    """The config, tracking and progress flags of `harness run` and `harness eval`."""
    add_config_flags(
        p,
        config_help="YAML config file (or a preset name from harness/presets) applied over the model's preset.",
        set_help="Override one config field, e.g. --set train.learning_rate=1e-5 (repeatable).",
        tracking_uri_help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db).",
        experiment_help="MLflow experiment name (default: harness).",
    )
    p.add_argument("--no-progress", action="store_true", help="Hide progress bars.")


def _add_run_parser(sub: Any) -> None:
    run = sub.add_parser(
        "run",
        help="Train (and evaluate before/after) every algorithm x model x seed.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=RUN_EPILOG,
    )
    run.add_argument("--algos", default="grpo", help="Comma-separated algorithm specs (default: grpo).")
    run.add_argument(
        "--models",
        default="tiny",
        help="Comma-separated models: registry names, hub ids or local paths (default: tiny).",
    )
    run.add_argument("--benchmarks", help="Comma-separated evaluation benchmarks (default: the preset's).")
    run.add_argument(
        "--seeds",
        type=_positive_int,
        default=1,
        help="Number of seeds per (algorithm, model), starting at train.seed (default: 1).",
    )
    run.add_argument("--steps", type=_positive_int, help="Shortcut for --set train.max_steps=N.")
    run.add_argument(
        "--engine",
        help="Rollout engine for training and evaluation: hf (the config default), hf-generate, vllm (colocated), "
        "vllm-server (own process; attach with --set generation.server_url=...), "
        "auto (vllm when it imports, else hf). README: 'Rollout engines'.",
    )
    run.add_argument(
        "--resume",
        metavar="PATH",
        help="Resume one run from a checkpoint folder or its output folder (latest checkpoint).",
    )
    run.add_argument(
        "--budget",
        metavar="UNIT:VALUE",
        help="Matched compute: every run stops once this is spent. "
        "Units: steps, generated_tokens, trained_tokens, flops, wall_seconds.",
    )
    run.add_argument(
        "--name",
        help="Experiment (matrix) name; default: a hash of the matrix, so re-running the same command resumes it.",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="Print the matrix with estimated compute and exit (--verbose: also each resolved config).",
    )
    run.add_argument("--verbose", action="store_true", help="With --dry-run, print every resolved config.")
    run.add_argument(
        "--processes",
        type=_positive_int,
        metavar="N",
        help="With --dry-run: estimate memory per process for members running N processes each, DDP vs FSDP "
        "(train.sharding), e.g. --processes 8 for `torchrun --nproc-per-node 8 -m harness.cli run ...`. Default: the "
        "launcher's count (--launcher slurm: one per GPU of --slurm-gpus; local: $WORLD_SIZE, else 1).",
    )
    run.add_argument(
        "--gpu-memory-gb",
        type=_positive_float,
        metavar="GB",
        help="With --dry-run: each process's GPU memory in GB (10^9 bytes; an '80GB' A100/H100 holds 85.9), to print "
        "whether each member fits, e.g. --gpu-memory-gb 80. Default: this machine's first GPU, if it has one.",
    )
    add_plugin_flag(run)
    add_data_dir_flag(
        run,
        data_dir_help="Prepared benchmark/training files (from `harness data prepare`); "
        "default $HARNESS_DATA_DIR or the cache.",
    )
    add_report_flags(
        run,
        report_dir_help="Where the comparison report is written at the end (default: reports/<matrix>/).",
        no_report_help="Do not write the report at the end (run `harness report` later).",
    )
    run.add_argument(
        "--no-wait",
        action="store_true",
        help="With --launcher slurm: submit the members, print their job ids and return; `harness status MATRIX` shows "
        "them, re-running the same command waits for them (e.g. --launcher slurm --no-wait).",
    )
    add_launcher_flags(run, job="member")
    _add_common(run)


def _add_status_parser(sub: Any) -> None:
    st = sub.add_parser(
        "status",
        help="The members of a matrix: Slurm job, state (queued, running, finished, failed, preempted), MLflow run.",
        description="Show each member of a `harness run` matrix: its Slurm job id and state, its MLflow run's status "
        "and last step. E.g. `harness status matrix-1a2b3c4d5e --tracking-uri http://mlflow-host:5000`.",
    )
    st.add_argument("matrix", help="Matrix name (printed by `harness run`; --name, or matrix-<hash>).")
    st.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."
    )
    st.add_argument("--experiment", default="harness", help="MLflow experiment name (default: harness).")


def _add_eval_parser(sub: Any) -> None:
    ev = sub.add_parser(
        "eval",
        help="Evaluate models on benchmarks with the reference protocol.",
        epilog="Protocol defaults (reference): temperature 0.2, top_p 0.95, top_k 50, 2048 new tokens, 32 samples for "
        "AIME24/AIME25/AMC23 and 1 otherwise; change with --set eval.<field>=...",
    )
    ev.add_argument(
        "--models",
        default="tiny",
        help="Comma-separated models: registry names (`all` = the paper's five), hub ids or local paths "
        "(default: tiny).",
    )
    ev.add_argument(
        "--benchmarks",
        default=None,
        help="Comma-separated benchmarks (`all` = the paper's seven; default: each model's config's eval.benchmarks, "
        "e.g. arith for tiny, dm_comparison__pair under --config smollm2-cpu).",
    )
    ev.add_argument(
        "--results-dir",
        default="eval_results",
        help="Local results: results.jsonl, per-sample JSONL, stored completions (default: eval_results).",
    )
    ev.add_argument(
        "--no-reuse",
        action="store_true",
        help="Regenerate even if completions for the same weights, prompts and settings are stored.",
    )
    add_data_dir_flag(
        ev,
        data_dir_help="Prepared benchmark files (from `harness data prepare`); default $HARNESS_DATA_DIR or the cache.",
    )
    _add_common(ev)


def _add_models_parser(sub: Any) -> None:
    models = sub.add_parser("models", help="List registered models, build the tiny one, prepare GGUF checkpoints.")
    msub = models.add_subparsers(dest="models_command", required=True)
    msub.add_parser("list", help="Show the model registry.")
    build = msub.add_parser("build", help="Build a built-in model (tiny) into the cache.")
    build.add_argument("name", choices=["tiny"], help="Model to build.")
    build.add_argument("--force", action="store_true", help="Rebuild even if a cached build exists.")
    build.add_argument("--seed", type=int, help="Build seed (default: the build config's).")
    prep = msub.add_parser(
        "prepare",
        help="Make models loadable offline ahead of time: dequantise GGUF checkpoints into a cached "
        "Hugging Face folder, build tiny. Runs do this on first use otherwise.",
        description="Dequantise GGUF checkpoints (e.g. smollm2-135m-gguf, or a path to a .gguf file) once into a "
        "plain float32 Hugging Face folder under $HARNESS_CACHE/models, which training, checkpoints and every "
        "engine (hf, vllm, vllm-server) load. Prints the folder.",
    )
    prep.add_argument("names", nargs="+", help="Registry names or .gguf paths (tiny is built).")
    prep.add_argument("--force", action="store_true", help="Prepare again even if a cached copy exists.")


def _add_config_parser(sub: Any) -> None:
    cfg = sub.add_parser("config", help="Show every config field with its default and meaning.")
    csub = cfg.add_subparsers(dest="config_command", required=True)
    show = csub.add_parser("show", help="Print all fields (and an algorithm's own fields).")
    show.add_argument("--algo", default="grpo", help="Algorithm whose fields to include (default: grpo).")
    add_plugin_flag(show)


def build_parser() -> argparse.ArgumentParser:
    from harness.engines.server import add_serve_parser  # imports torch

    parser = argparse.ArgumentParser(
        prog="harness",
        description="Compare RL algorithms (GRPO, RePO and replay variants) that train LLMs to reason.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `harness <command> --help` for each command's options.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(sub)
    _add_status_parser(sub)
    _add_eval_parser(sub)
    add_data_parser(sub)
    add_sweep_parser(sub)
    add_report_parser(sub)
    add_serve_parser(sub)
    _add_models_parser(sub)
    _add_config_parser(sub)
    return parser


def _layers_for(model: str, args: argparse.Namespace) -> list[Any]:
    from harness.models import get_spec  # imports torch

    spec = get_spec(model)
    return [spec.preset, args.config]


def resolve_run_config(model: str, algo: str, seed_offset: int, args: argparse.Namespace) -> HarnessConfig:
    """The config of one (model, algorithm, seed) of a `harness run` (or of a model of `harness eval`)."""
    flags: dict[str, Any] = {"model": {"name": model}, "algorithm": {"name": algo}}
    # `harness eval` has no --steps, --engine or --budget
    if getattr(args, "benchmarks", None):
        flags["eval"] = {"benchmarks": [b.strip() for b in args.benchmarks.split(",") if b.strip()]}
    if getattr(args, "steps", None):
        flags.setdefault("train", {})["max_steps"] = args.steps
    if getattr(args, "engine", None):
        flags["generation"] = {"engine": args.engine}
    if getattr(args, "budget", None):
        flags.setdefault("train", {}).update({"budget": args.budget, "max_steps": -1})
    tracking: dict[str, Any] = {}
    if args.tracking_uri:
        tracking["tracking_uri"] = args.tracking_uri
    if args.experiment:
        tracking["experiment_name"] = args.experiment
    if tracking:
        flags["tracking"] = tracking
    cfg = build_config(*_layers_for(model, args), flags, overrides=_overrides_for(algo, args))
    if seed_offset:
        cfg.train.seed += seed_offset
    return cfg


def _overrides_for(algo: str, args: argparse.Namespace) -> list[str]:
    """``--set`` overrides for one algorithm of the matrix.

    In a mixed matrix (``--algos grpo,repo``) an ``algorithm.<field>`` that only some of the algorithms
    have applies to those (``--set algorithm.num_replays=4`` sets RePO's k and leaves GRPO alone); a
    field that none of them has is still rejected by the config with the valid keys listed.
    """
    from algorithms import get_algorithm_class  # imports torch
    from algorithms.base import split_variant

    overrides = list(args.overrides)
    algos = [a.strip() for a in (getattr(args, "algos", None) or algo).split(",") if a.strip()]  # eval: no --algos
    if len(algos) < 2:
        return overrides

    def field_names(spec: str) -> set[str]:
        return {f.name for f in fields(get_algorithm_class(split_variant(spec)[0]).config_cls)}

    own, anyone = field_names(algo), set().union(*(field_names(a) for a in algos))
    kept = []
    for o in overrides:
        key = o.split("=", 1)[0].strip()
        field = key[len("algorithm.") :]
        if key.startswith("algorithm.") and key.count(".") == 1 and field not in own and field in anyone:
            continue
        kept.append(o)
    return kept


def _resume(args: argparse.Namespace, algos: list[str], models: list[str]) -> int:
    """``harness run --resume PATH``: continue one run from its checkpoint."""
    from harness.trainer import Trainer  # imports torch

    if len(algos) > 1 or len(models) > 1 or args.seeds > 1:
        print("error: --resume continues one run; give a single --algos/--models and --seeds 1", file=sys.stderr)
        return 2
    cfg = config_from_dict(ckpt.saved_config(args.resume))  # the trainer verifies the checkpoint it resumes from
    if args.tracking_uri:  # the saved URI holds no password (harness.secrets): give the full one again
        cfg.tracking.tracking_uri = args.tracking_uri
    trainer = Trainer(cfg, resume=args.resume, progress=not args.no_progress)
    summary = trainer.fit()
    if trainer.is_main:
        print(format_summary([(cfg.model.name, cfg.algorithm["name"], cfg.train.seed, summary)]))
    return 0


def _dry_run_processes(args: argparse.Namespace, launcher: Any) -> tuple[int, str]:
    """Processes per member for the memory estimate, and where that count comes from: --processes, else the
    launcher's (Slurm: one per GPU; local: $WORLD_SIZE or 1)."""
    own = launcher.processes()
    if args.processes is None:
        return own, launcher.processes_source()
    if launcher.name == "slurm" and args.processes != own:
        print(
            f"note: --processes {args.processes} differs from the {own} process(es) per member of "
            f"{launcher.processes_source()}",
            file=sys.stderr,
        )
    return args.processes, "--processes"


def _gpu_memory(args: argparse.Namespace) -> float | None:
    """Bytes of one process's GPU: --gpu-memory-gb, else this machine's first GPU, else None (no fits check)."""
    if args.gpu_memory_gb:
        return args.gpu_memory_gb * 1e9
    import torch

    return float(torch.cuda.get_device_properties(0).total_memory) if torch.cuda.is_available() else None


def _dry_run(name: str, members: list[Member], args: argparse.Namespace, launcher: Any) -> int:
    """``harness run --dry-run``: the matrix with its compute and memory estimates and plan warnings; runs nothing."""
    try:  # a dry run plans for any machine and loads no data: a model this machine cannot load is only noted
        preflight([m.config for m in members], data=False)
    except ConfigError as e:
        print(f"note: a real run on this machine would stop: {e}", file=sys.stderr)
    processes, source = _dry_run_processes(args, launcher)
    gpu_memory = _gpu_memory(args)
    print_matrix(name, members, processes=processes, processes_from=source, gpu_memory=gpu_memory)
    if gpu_memory is None:
        print("(give --gpu-memory-gb GB to check whether each member fits its GPUs)")
    for mem in members:
        for warning in plan_warnings(mem.config):
            print(f"warning: {mem.run_name}: {warning}")
    if args.verbose:
        for mem in members:
            print(f"\n# {mem.run_name}")
            print(yaml.safe_dump(mask_secrets(mem.config.to_dict()), sort_keys=False))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from harness.models import expand_models  # imports torch

    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    models = expand_models(args.models)
    if not algos or not models:
        raise ConfigError(f"--{'algos' if not algos else 'models'}: no {'algorithm' if not algos else 'model'} given")
    for flag, value in (("--processes", args.processes), ("--gpu-memory-gb", args.gpu_memory_gb)):
        if value is not None and not args.dry_run:
            raise ConfigError(
                f"{flag}: only with --dry-run (it sizes the memory estimate; a real run's processes come from "
                "torchrun / accelerate launch or --slurm-gpus)"
            )
    if args.resume:
        if args.launcher != "local":
            raise ConfigError(
                "--resume continues one run in this process: without --launcher (re-run the matrix "
                "command instead: members resume from their checkpoints)"
            )
        return _resume(args, algos, models)
    # validate every member's config before running anything
    members = name_members(
        [Member(m, a, s, resolve_run_config(m, a, s, args)) for m in models for a in algos for s in range(args.seeds)]
    )
    for mem in members:
        mem.seed = mem.config.train.seed
    name = matrix_name(members, args.name)
    launcher = launcher_from_args(args, wait=not args.no_wait)  # bad --slurm-* values: before anything is written
    if args.dry_run:
        return _dry_run(name, members, args, launcher)
    preflight([m.config for m in members])  # models, training sets and benchmarks resolve: before any MLflow run
    launcher.check([m.config for m in members])  # e.g. a cluster answers, the tracking server is one all jobs reach
    parent: dict[str, str] = {}
    results = None
    try:
        results = run_matrix(
            members,
            name=name,
            progress=not args.no_progress,
            on_parent=lambda uri, exp, run_id: parent.update(uri=uri, experiment=exp, run_id=run_id),
            launcher=launcher,
        )
    finally:
        if args.no_wait and results is None:
            pass  # submitted, not finished: no report yet
        elif parent and not args.no_report and _is_main_process():
            report_at_end(
                parent["uri"],
                parent["experiment"],
                args.report_dir or str(Path("reports") / name),
                parent_run_id=parent["run_id"],
                sweep_run_id=None,
                retry_hint=f"harness report --experiment {parent['experiment']} --parent {parent['run_id']}",
            )
    if results is None:
        print(f"\nmatrix '{name}' submitted; `harness status {name}` shows its members")
        return 0
    if not _is_main_process():  # under torchrun the main process prints the table (the others never evaluate)
        return 0
    print(format_summary(results))
    comparison = compare_to_baseline(results)
    if comparison:
        for line in ["", "vs the grpo run with the same model and seed:"] + ["  " + x for x in comparison]:
            print(line)
    print(
        f"\nMLflow experiment '{members[0].config.tracking.experiment_name}', matrix '{name}' "
        "(re-run the same command to resume or skip finished runs)"
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """``harness status MATRIX``: one line per member (Slurm job, state, MLflow status, last step)."""
    from harness.launchers.slurm import matrix_status
    from harness.tracking import resolve_tracking_uri

    rows = matrix_status(resolve_tracking_uri(args.tracking_uri), args.experiment, args.matrix)
    if rows is None:
        print(
            f"error: no matrix '{args.matrix}' in MLflow experiment '{args.experiment}' "
            f"({mask_secrets(resolve_tracking_uri(args.tracking_uri))})",
            file=sys.stderr,
        )
        return 2
    print(f"{'member':40s} {'job':>12s} {'state':10s} {'slurm':12s} {'mlflow':9s} {'step':>5s}")
    for r in rows:
        print(f"{r['member']:40s} {r['job']:>12s} {r['state']:10s} {r['slurm']:12s} {r['mlflow']:9s} {r['step']:5d}")
    counts = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 0


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def cmd_eval(args: argparse.Namespace) -> int:
    from benchmarks.datasets import expand_benchmarks, load_benchmark
    from harness.evaluation import run_eval
    from harness.models import expand_models
    from harness.preflight import check_model

    names: list[str] = []
    for model in expand_models(args.models):  # before any model is loaded or a result written
        cfg = resolve_run_config(model, "grpo", 0, args)
        check_model(model)
        names += [n for n in expand_benchmarks(args.benchmarks or cfg.eval.benchmarks) if n not in names]
    for name in names:
        load_benchmark(name, data_dir=args.data_dir)
    run_eval(
        args.models,
        args.benchmarks,
        lambda m: resolve_run_config(m, "grpo", 0, args),
        results_dir=args.results_dir,
        reuse=not args.no_reuse,
        data_dir=args.data_dir,
        progress=not args.no_progress,
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from harness.models import REGISTRY, describe, get_spec, prepare_model, resolve_path  # imports torch
    from harness.tiny_model import TinyBuildConfig, build_tiny_model

    if args.models_command == "list":
        for spec in REGISTRY.values():
            print(describe(spec))
        return 0
    if args.models_command == "prepare":
        for name in args.names:
            spec = get_spec(name)
            if spec.source == "builtin":
                print(build_tiny_model(TinyBuildConfig(), force=args.force))
            elif spec.gguf_file:
                print(prepare_model(spec, force=args.force))
            else:
                print(f"{name}: nothing to prepare ({resolve_path(spec)} loads as it is)")
        return 0
    bcfg = TinyBuildConfig() if args.seed is None else TinyBuildConfig(seed=args.seed)
    path = build_tiny_model(bcfg, force=args.force)
    print(path)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from algorithms import get_algorithm_class  # imports torch
    from algorithms.base import split_variant

    cfg = HarnessConfig()
    for key, default, help_ in describe_fields(cfg, ""):
        if key.startswith("algorithm"):
            continue
        print(f"{key:36s} {default!s:24s} {help_}")
    cls = get_algorithm_class(split_variant(args.algo)[0])
    print(f"\n# algorithm '{cls.name}' (set with --set algorithm.<field>=...)")
    for key, default, help_ in describe_fields(cls.config_cls, "algorithm"):
        print(f"{key:36s} {default!s:24s} {help_}")
    return 0


COMMANDS = {
    "run": cmd_run,
    "status": cmd_status,
    "eval": cmd_eval,
    "models": cmd_models,
    "config": cmd_config,
    "data": cmd_data,
    "sweep": cmd_sweep,
    "report": cmd_report,
}


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        from harness.engines.server import cmd_serve  # imports torch

        return cmd_serve(args)
    return COMMANDS[args.command](args)


def main(argv: list[str] | None = None) -> int:
    return run_command(_dispatch, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
