"""``harness data prepare`` / ``harness data list``: make benchmarks and the training set usable offline.

Run ``harness data prepare`` once on a machine with internet: every benchmark (and the DeepMath subset)
is downloaded through ``datasets``, mapped to our schema (``id``, ``problem``, ``answer``, ``benchmark``)
and written to ``<data-dir>/<name>.jsonl`` with a ``<name>.meta.json`` recording the source, split,
the columns the source really had, which field fed each of ours, row count and a content hash. Copy
the folder to the offline machine and point ``--data-dir`` (or ``$HARNESS_DATA_DIR``) at it.

``--from DIR`` reads the source files from a local folder instead of the hub (``DIR/<name>.parquet``,
``DIR/<name>.jsonl`` or ``DIR/<name>/...``, e.g. a ``huggingface-cli download`` snapshot).

The first online prepare is also the schema check this repository could not do offline: a column
that the mapping expects but the source lacks is printed as a warning, and a missing problem/answer
field is an error naming the benchmark, the field and the columns present.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks import mathematics
from benchmarks.datasets import (
    BENCHMARKS,
    PAPER_BENCHMARKS,
    TRAIN_SETS,
    DatasetError,
    SourceSpec,
    _pick,
    default_data_dir,
    expand_benchmarks,
    fetch_from_hub,
    find_local_source,
    normalize_rows,
    read_records,
    rows_fingerprint,
)
from harness.io import atomic_write_text

BUILTIN = {"arith": "synthetic, built in", "champ": "champ-dataset PyPI package (offline)"}
DM_SOURCE = "mathematics_dataset, generated"


def _field_usage(spec: SourceSpec, raws: list[dict]) -> dict[str, dict[str, int]]:
    use: dict[str, Counter] = {"problem": Counter(), "answer": Counter(), "id": Counter()}
    for r in raws:
        use["problem"][_pick(r, spec.problem_fields)[0] or "-"] += 1
        use["answer"][_pick(r, spec.answer_fields)[0] or "-"] += 1
        use["id"][(_pick(r, spec.id_fields)[0] if spec.id_fields else None) or "row index"] += 1
    return {k: dict(v) for k, v in use.items()}


def _source_rows(spec: SourceSpec, source_dir: str | None, info: dict, **hub_kw: Any) -> tuple[list[dict], str]:
    if source_dir:
        files = find_local_source(spec.name, spec.split, source_dir, include_default=False)
        if not files:
            raise DatasetError(
                f"{spec.name}: no {spec.name}.parquet/.jsonl/.json or {spec.name}/ folder in {source_dir}"
            )
        recs: list[dict] = []
        for f in files:
            recs.extend(read_records(f))
        info["columns"] = sorted({k for r in recs for k in r})
        info["num_rows"] = len(recs)
        return recs, ", ".join(str(f) for f in files)
    try:
        return fetch_from_hub(spec, info=info, **hub_kw), f"hub:{spec.hub_id}"
    except DatasetError:
        raise
    except Exception as e:  # noqa: BLE001 - name the data set and the way out
        raise DatasetError(
            f"{spec.name}: cannot download {spec.hub_id} (config {spec.config}, split {spec.split}): {type(e).__name__}: {str(e)[:300]}. "
            f"`harness data prepare` needs internet access to the Hugging Face hub, or --from DIR with the source files"
        ) from e


def _meta(spec: SourceSpec, rows: list[dict], raws: list[dict], where: str, info: dict, **extra: Any) -> dict[str, Any]:
    expected = set(spec.columns)
    present = set(info.get("columns") or [])
    return {
        "name": spec.name,
        "source": where,
        **spec.describe(),
        "columns_present": sorted(present),
        "columns_expected_but_missing": sorted(expected - present) if present else [],
        "field_usage": _field_usage(spec, raws),
        "num_rows": len(rows),
        "source_num_rows": info.get("num_rows"),
        "content_hash": rows_fingerprint(rows),
        "source_fingerprint": info.get("fingerprint"),
        "datasets_version": info.get("datasets_version"),
        "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }


def _write(out_dir: Path, name: str, rows: list[dict], meta: dict) -> Path:
    path = out_dir / f"{name}.jsonl"
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_text(out_dir / f"{name}.meta.json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return path


def prepare_benchmark(
    name: str, out_dir: str | os.PathLike, *, source_dir: str | None = None, force: bool = False
) -> dict[str, Any]:
    """Fetch, normalise and write one benchmark; returns its meta (``skipped`` if already there)."""
    out = Path(out_dir)
    if name in BUILTIN:
        return {"name": name, "skipped": True, "reason": f"built in ({BUILTIN[name]}); nothing to prepare"}
    if mathematics.is_dm_name(name):
        return {
            "name": name,
            "skipped": True,
            "reason": f"built in ({DM_SOURCE} offline from a seed); nothing to prepare",
        }
    if name not in BENCHMARKS:
        raise DatasetError(f"unknown benchmark '{name}'; preparable: {', '.join(BENCHMARKS)}")
    spec = BENCHMARKS[name]
    if (out / f"{name}.jsonl").is_file() and not force:
        return {"name": name, "skipped": True, "reason": f"{out / (name + '.jsonl')} exists (use --force to redo)"}
    info: dict[str, Any] = {}
    raws, where = _source_rows(spec, source_dir, info)
    rows = normalize_rows(spec, raws, where)
    meta = _meta(spec, rows, raws, where, info)
    meta["path"] = str(_write(out, name, rows, meta))
    return meta


def prepare_train_set(
    name: str,
    out_dir: str | os.PathLike,
    *,
    size: int | None = 1024,
    seed: int = 42,
    source_dir: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write the DeepMath subset (``shuffle(seed)``, first ``size``; ``size=None``: the whole split in source order)."""
    out = Path(out_dir)
    name = "deepmath" if name in ("deepmath", "deepmath_r1") else name
    if name in BUILTIN or mathematics.is_dm_name(name):
        what = BUILTIN.get(name) or f"{DM_SOURCE} offline from a seed"
        return {"name": name, "skipped": True, "reason": f"built in ({what}); nothing to prepare"}
    if name not in TRAIN_SETS:
        raise DatasetError(f"unknown training set '{name}'; preparable: {', '.join(TRAIN_SETS)}")
    spec = TRAIN_SETS[name]
    meta_file = out / f"{name}.meta.json"
    if meta_file.is_file() and not force:
        old = json.loads(meta_file.read_text())
        if old.get("subset") is False or (
            old.get("seed") == seed and size is not None and old.get("num_rows", 0) >= size
        ):
            return {
                "name": name,
                "skipped": True,
                "reason": f"{out / (name + '.jsonl')} already covers it (use --force to redo)",
            }
    info: dict[str, Any] = {}
    if source_dir:
        import numpy as np

        raws_all, where = _source_rows(spec, source_dir, info)
        if size is None:
            raws = [dict(r, _index=i) for i, r in enumerate(raws_all)]
        else:
            perm = np.random.default_rng(seed).permutation(len(raws_all))[:size]
            raws = [dict(raws_all[int(i)], _index=int(i)) for i in perm]
    else:
        if size is None:
            raws, where = _source_rows(spec, None, info, shuffle_seed=None)
            raws = [dict(r, _index=i) for i, r in enumerate(raws)]
        else:
            raws, where = _source_rows(spec, None, info, shuffle_seed=seed, size=size)
    rows = normalize_rows(spec, raws, where)
    for r, raw in zip(rows, raws):
        r["id"] = f"{name}-{raw['_index']}"
    meta = _meta(
        spec,
        rows,
        raws,
        where,
        info,
        subset=size is not None,
        seed=seed if size is not None else None,
        order=f"datasets shuffle(seed={seed}), first {size}"
        if size is not None
        else "source order (shuffled at load time)",
    )
    meta["path"] = str(_write(out, name, rows, meta))
    return meta


# ------------------------------------------------------------------------------------------------
# command line


def add_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``data prepare`` and ``data list`` to the ``harness`` sub-command parser; dispatch with :func:`cmd_data`."""
    data = subparsers.add_parser(
        "data",
        help="Download and normalise benchmarks / the training set for offline use.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dsub = data.add_subparsers(dest="data_command", required=True)
    prep = dsub.add_parser(
        "prepare", help="Fetch benchmarks and the DeepMath subset into --data-dir (run once with internet)."
    )
    prep.add_argument(
        "--benchmarks",
        default="all",
        help=f"Comma-separated benchmarks, 'all' (= {','.join(PAPER_BENCHMARKS)}) or 'none' (default: all).",
    )
    prep.add_argument(
        "--train-sets",
        default="deepmath",
        help="Comma-separated training sets (deepmath) or 'none' (default: deepmath).",
    )
    prep.add_argument(
        "--train-size",
        default="1024",
        help="DeepMath prompts to keep after the seed shuffle, or 'all' (default: 1024, as the paper).",
    )
    prep.add_argument("--seed", type=int, default=42, help="DeepMath shuffle seed (default: 42, as the paper).")
    prep.add_argument("--data-dir", help=f"Output folder (default: $HARNESS_DATA_DIR or {default_data_dir()}).")
    prep.add_argument(
        "--from", dest="source_dir", metavar="DIR", help="Read the source files from DIR instead of the hub."
    )
    prep.add_argument("--force", action="store_true", help="Redo benchmarks already prepared.")
    ls = dsub.add_parser("list", help="Show every benchmark, its source, field mapping and whether it is prepared.")
    ls.add_argument("--data-dir", help="Data folder to inspect (default: $HARNESS_DATA_DIR or the cache).")
    return data


def cmd_data(args: argparse.Namespace) -> int:
    return {"prepare": cmd_data_prepare, "list": cmd_data_list}[args.data_command](args)


def _names(value: str | None) -> list[str]:
    if not value or value.strip().lower() == "none":
        return []
    return [n.strip() for n in value.split(",") if n.strip()]


def cmd_data_prepare(args: argparse.Namespace) -> int:
    out = Path(args.data_dir) if getattr(args, "data_dir", None) else default_data_dir()
    source_dir = getattr(args, "source_dir", None)
    force = getattr(args, "force", False)
    benches = (
        []
        if _names(getattr(args, "benchmarks", "all")) == []
        else expand_benchmarks(getattr(args, "benchmarks", "all"))
    )
    train_sets = _names(getattr(args, "train_sets", "deepmath"))
    size_arg = str(getattr(args, "train_size", "1024")).strip().lower()
    size = None if size_arg in ("all", "none") else int(size_arg)
    seed = getattr(args, "seed", 42)
    failures = 0
    print(f"data dir: {out}")
    jobs = [("benchmark", b) for b in benches] + [("training set", t) for t in train_sets]
    for kind, name in jobs:
        try:
            if kind == "benchmark":
                meta = prepare_benchmark(name, out, source_dir=source_dir, force=force)
            else:
                meta = prepare_train_set(name, out, size=size, seed=seed, source_dir=source_dir, force=force)
        except Exception as e:  # noqa: BLE001 - report every data set, then fail
            failures += 1
            print(f"  FAILED  {name:24s} {type(e).__name__}: {e}", file=sys.stderr)
            continue
        if meta.get("skipped"):
            print(f"  skip    {name:24s} {meta['reason']}")
            continue
        print(
            f"  ok      {name:24s} {meta['num_rows']:6d} rows  <- {meta['source']}  fields: "
            f"problem={meta['field_usage']['problem']} answer={meta['field_usage']['answer']}"
        )
        if meta["columns_expected_but_missing"]:
            print(
                f"  WARNING {name:24s} source lacks columns the mapping documents: {meta['columns_expected_but_missing']} "
                f"(present: {meta['columns_present']}); check benchmarks/datasets.py",
                file=sys.stderr,
            )
    if failures:
        print(f"{failures} data set(s) failed; see the messages above.", file=sys.stderr)
        return 1
    print(f"done. Offline use: --data-dir {out}  (or export HARNESS_DATA_DIR={out})")
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    data_dir = getattr(args, "data_dir", None)
    print(f"{'name':24s} {'source':36s} {'split':6s} {'verified':8s} {'prepared':8s} mapping")
    for name, what in BUILTIN.items():
        print(
            f"{name:24s} {what:36s} {'-':6s} {'-':8s} {'builtin':8s}"
            + ("  benchmark and training set (same 270 problems)" if name == "champ" else "")
        )
    for name, modules in mathematics.MIXES.items():
        print(f"{name:24s} {DM_SOURCE:36s} {'tr/te':6s} {'-':8s} {'builtin':8s} mix of {', '.join(modules)}")
    print(
        f"{'dm_<module>':24s} {DM_SOURCE:36s} {'tr/te':6s} {'-':8s} {'builtin':8s} one generator module: "
        f"{len(mathematics.MODULES)} offered (below)"
    )
    for spec in list(BENCHMARKS.values()) + list(TRAIN_SETS.values()):
        files = find_local_source(spec.name, spec.split, data_dir)
        d = spec.describe()
        print(
            f"{spec.name:24s} {spec.hub_id:36s} {spec.split:6s} {('yes' if spec.schema_verified else 'NO'):8s} "
            f"{('yes' if files else 'no'):8s} problem<-{d['problem']}; answer<-{d['answer']}"
        )
    print(
        "\nverified = mapping checked against the real hub schema (NO: written from documentation/memory; "
        "`harness data prepare` checks it when online). 'all' = " + ",".join(PAPER_BENCHMARKS)
    )
    print(
        f"dm_* = DeepMind mathematics_dataset (Apache-2.0), generated offline: level easy by default, add "
        f"{', '.join('-' + lv for lv in mathematics.LEVELS if lv != mathematics.DEFAULT_LEVEL)} for the others; train/test "
        f"disjoint (split by a hash of the problem text); sizes train {mathematics.DEFAULT_SIZES['train']}, test "
        f"{mathematics.DEFAULT_SIZES['test']} (tr/te: the train split is data.train, the test split eval.benchmarks).\n"
        f"  offered modules: {', '.join(mathematics.MODULES)}.\n"
        f"  left out (answers the verifier cannot score right): {', '.join(sorted(mathematics.EXCLUDED))}."
    )
    return 0


__all__ = ["add_data_parser", "cmd_data", "cmd_data_list", "cmd_data_prepare", "prepare_benchmark", "prepare_train_set"]
