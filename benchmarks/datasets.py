"""Named prompt sets in one schema: rows ``{"id", "problem", "answer", "benchmark"}``.

``load_benchmark(name)`` returns an evaluation set, ``load_train_set(name, size, seed)`` a training
set. Three kinds of source:

* **built in, offline**: ``arith`` (synthetic, the CI workhorse), ``champ`` (270 competition
  problems shipped inside the ``champ-dataset`` PyPI package; also a training set) and ``dm_*``
  (DeepMind's mathematics_dataset, generated from a seed into disjoint train/test splits:
  ``benchmarks/mathematics.py``);
* **hub benchmarks** (the paper's seven, :data:`BENCHMARKS`) and the **DeepMath training set**
  (:data:`TRAIN_SETS`): each has an explicit :class:`SourceSpec` naming the hub repo, split and the
  field mapping from the source schema to ours. They are read, in order, from

  1. a *prepared* file in the data directory (``--data-dir`` / ``$HARNESS_DATA_DIR`` / the default
     ``$HARNESS_CACHE/data``, i.e. ``~/.cache/rl-harness/data``): ``<name>.jsonl`` as written by
     ``harness data prepare`` (our schema), or the source files in the *source* schema:
     ``<name>.jsonl|.json|.parquet`` or a folder ``<name>/`` holding them (e.g. a hub snapshot);
  2. the Hugging Face hub through ``datasets`` (which caches it), unless that cannot be reached.

  Neither available -> :class:`DatasetError` naming the benchmark and the command that fixes it
  (``harness data prepare --benchmarks NAME``). Never a silent empty benchmark.

* **a local file** with ``problem``/``answer`` fields (JSONL, JSON or Parquet) given as a path.

Mappings that could not be checked against the real hub schema here (no internet) are flagged
``schema_verified=False``; the first ``harness data prepare`` with internet checks them: a missing
column fails naming the benchmark, the field and the columns actually present.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

from benchmarks import arith, mathematics

logger = logging.getLogger(__name__)

Row = dict[str, str]

_EVAL_LOADERS: dict[str, Callable[..., list[Row]]] = {}
_TRAIN_LOADERS: dict[str, Callable[..., list[Row]]] = {}

#: The paper's seven benchmarks, in the order of the reference's ``build_math_benchmarks.py``.
PAPER_BENCHMARKS = ("math500", "amc23", "olympiadbench", "minerva", "aime24", "aime25", "gsm8k")
#: Samples per prompt in the reference protocol (``FIXED_32_DATASETS``; 1 for the rest).
REFERENCE_SAMPLES = {"aime24": 32, "aime25": 32, "amc23": 32}
RAW_SUFFIXES = (".jsonl", ".json", ".parquet")


class DatasetError(ValueError):
    """A dataset cannot be loaded or a row is malformed; the message names the file/benchmark and row."""


# ------------------------------------------------------------------------------------------------
# registry


def register_benchmark(name: str, loader: Callable[..., list[Row]]) -> None:
    """Register an evaluation loader. It is called with ``data_dir=`` if it accepts that keyword."""
    _EVAL_LOADERS[name] = loader


def register_train_set(name: str, loader: Callable[..., list[Row]]) -> None:
    """Register a training-set loader ``loader(size=..., seed=...)`` (``data_dir=`` if accepted)."""
    _TRAIN_LOADERS[name] = loader


def available_benchmarks() -> list[str]:
    return sorted(_EVAL_LOADERS)


def available_train_sets() -> list[str]:
    return sorted(_TRAIN_LOADERS)


def expand_benchmarks(spec: str | Iterable[str]) -> list[str]:
    """``"all"``/``"paper"`` -> the paper's seven; comma-separated strings and lists are split; order kept."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        for name in PAPER_BENCHMARKS if item.lower() in ("all", "paper") else (item,):
            if name not in out:
                out.append(name)
    return out


# ------------------------------------------------------------------------------------------------
# source specs (the field mappings, in one auditable place)


@dataclass(frozen=True)
class SourceSpec:
    """Where a hub data set lives and how its rows map to ``{"id", "problem", "answer"}``.

    ``problem_fields`` / ``answer_fields`` / ``id_fields`` are tried in order; the first present
    (non-null) one is used, and which one was used is recorded by ``harness data prepare``.
    ``answer_rule`` post-processes the raw answer value (see :data:`ANSWER_RULES`).
    """

    name: str
    hub_id: str
    split: str
    config: str | None = None
    problem_fields: tuple[str, ...] = ("problem",)
    answer_fields: tuple[str, ...] = ("answer",)
    id_fields: tuple[str, ...] = ()
    answer_rule: str = "plain"
    #: Columns we believe the source has (documentation + fixtures); only problem/answer are required.
    columns: tuple[str, ...] = ()
    #: True only if this mapping was checked against the real hub data. False here: no internet.
    schema_verified: bool = False
    #: What the RePO reference does with this data set (from paper.md §3/§6).
    reference: str = ""
    notes: str = ""
    extra_fields: tuple[str, ...] = ()  # source columns kept in our rows (e.g. DeepMath's R1 solution)
    raw_from: str | None = None  # another data set whose *source* files this one may read (same hub repo)

    def describe(self) -> dict[str, Any]:
        return {
            "hub_id": self.hub_id,
            "config": self.config,
            "split": self.split,
            "problem": " | ".join(self.problem_fields),
            "answer": f"{' | '.join(self.answer_fields)} ({self.answer_rule})",
            "id": " | ".join(self.id_fields) or "row index",
            "schema_verified": self.schema_verified,
            "reference": self.reference,
            "notes": self.notes,
        }


BENCHMARKS: dict[str, SourceSpec] = {
    s.name: s
    for s in [
        SourceSpec(
            "math500",
            "HuggingFaceH4/MATH-500",
            "test",
            id_fields=("unique_id",),
            columns=("problem", "solution", "answer", "subject", "level", "unique_id"),
            reference="problem -> problem, answer -> answer",
        ),
        SourceSpec(
            "amc23",
            "math-ai/amc23",
            "test",
            problem_fields=("question", "problem"),
            id_fields=("id",),
            answer_rule="number",
            columns=("id", "question", "answer", "url"),
            reference="question -> problem, answer -> answer",
            notes="Answer may be stored as a number (27.0): written as '27'. Column names from memory; unverified.",
        ),
        SourceSpec(
            "olympiadbench",
            "zwhe99/simplerl-OlympiadBench",
            "test",
            problem_fields=("question",),
            answer_fields=("final_answer",),
            id_fields=("id",),
            answer_rule="first_of_list",
            columns=(
                "id",
                "question",
                "solution",
                "final_answer",
                "context",
                "modality",
                "difficulty",
                "is_multiple_answer",
                "unit",
                "answer_type",
                "error",
                "question_type",
                "subfield",
                "subject",
                "language",
            ),
            reference="problem = ' '.join(solution) (the worked SOLUTION as the prompt: an answer leak if "
            "`solution` is the usual SimpleRL list of solution texts), answer = final_answer[0]",
            notes="We use the real question (`question`) and final_answer[0]. The reference's problem field is "
            "available as benchmark 'olympiadbench_reference' only to reproduce its numbers. `unit` is ignored "
            "(as in the reference). Schema (SimpleRL-Zoo OlympiadBench) unverified here.",
        ),
        SourceSpec(
            "minerva",
            "zwhe99/simplerl-minerva-math",
            "test",
            problem_fields=("problem", "question"),
            answer_fields=("answer", "solution"),
            id_fields=("idx", "id"),
            answer_rule="answer_or_last_boxed",
            columns=("problem", "solution", "type", "idx"),
            reference="not recorded in paper.md (presumably problem -> problem, answer -> answer)",
            notes="SimpleRL-Zoo/Qwen2.5-Math minerva_math rows may have no `answer` column: then the gold is the last "
            "\\boxed{} of `solution`. Which field was used is recorded by `harness data prepare`. Unverified.",
        ),
        SourceSpec(
            "aime24",
            "HuggingFaceH4/aime_2024",
            "train",
            id_fields=("id",),
            answer_rule="number",
            columns=("id", "problem", "solution", "answer", "url", "year"),
            reference="problem -> problem, answer -> answer (split 'train': the only split)",
        ),
        SourceSpec(
            "aime25",
            "math-ai/aime25",
            "test",
            problem_fields=("problem", "question"),
            id_fields=("id",),
            answer_rule="number",
            columns=("problem", "answer", "id"),
            reference="problem -> problem, answer -> answer",
        ),
        SourceSpec(
            "gsm8k",
            "openai/gsm8k",
            "test",
            config="main",
            problem_fields=("question",),
            answer_rule="gsm8k",
            columns=("question", "answer"),
            reference="question -> problem, answer.split('####')[-1].strip() -> answer",
            notes="Gold = text after '####', thousands separators removed ('1,000' -> '1000').",
        ),
        SourceSpec(
            "olympiadbench_reference",
            "zwhe99/simplerl-OlympiadBench",
            "test",
            problem_fields=("solution",),
            answer_fields=("final_answer",),
            id_fields=("id",),
            answer_rule="first_of_list",
            raw_from="olympiadbench",
            reference="exactly the reference: problem = ' '.join(solution), answer = final_answer[0]",
            notes="NOT a valid benchmark if `solution` holds worked solutions (the answer is in the prompt). Only for "
            "reproducing the reference's OlympiadBench numbers; never part of 'all'.",
        ),
    ]
}

TRAIN_SETS: dict[str, SourceSpec] = {
    s.name: s
    for s in [
        SourceSpec(
            "deepmath",
            "zwhe99/DeepMath-103K",
            "train",
            problem_fields=("question",),
            answer_fields=("final_answer",),
            columns=(
                "question",
                "final_answer",
                "difficulty",
                "topic",
                "r1_solution_1",
                "r1_solution_2",
                "r1_solution_3",
            ),
            extra_fields=("r1_solution_1",),
            reference="seed-42 shuffle, first 1,024 rows; reward gold = r1_solution_1 (the full R1 solution), "
            "final_answer stored but unused",
            notes="Default gold = final_answer (the data set's answer). 'deepmath_r1' uses r1_solution_1 as the "
            "reference does (math-verify then picks an answer out of a long solution: mis-extraction possible).",
        ),
    ]
}


# ------------------------------------------------------------------------------------------------
# answer rules


def _number_text(value: Any) -> str:
    """Numbers as their plain text (27.0 -> '27'); everything else as stripped text."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value):
            return str(int(value))
        return repr(value)
    return str(value).strip()


_THOUSANDS_RE = re.compile(r"^[-+]?\d{1,3}(,\d{3})+(\.\d+)?$")


def gsm8k_answer(text: str) -> str:
    """GSM8K gold: the text after the last ``####``, stripped, thousands separators removed."""
    if "####" not in text:
        raise ValueError("no '####' marker in the GSM8K answer")
    ans = text.split("####")[-1].strip()
    if _THOUSANDS_RE.match(ans):
        ans = ans.replace(",", "")
    return ans


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces matched; None if absent."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def _first_of_list(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("empty list")
        value = value[0]
    return _number_text(value)


ANSWER_RULES: dict[str, Callable[[Any, str], str]] = {
    # rule(value, field_used) -> gold text
    "plain": lambda v, f: _number_text(v),
    "number": lambda v, f: _number_text(v),
    "gsm8k": lambda v, f: gsm8k_answer(str(v)),
    "first_of_list": lambda v, f: _first_of_list(v),
    "answer_or_last_boxed": lambda v, f: _number_text(v) if f != "solution" else (last_boxed(str(v)) or ""),
}


def _join_if_list(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def _pick(raw: dict, fields: tuple[str, ...]) -> tuple[str | None, Any]:
    for f in fields:
        v = raw.get(f)
        if v is None:
            continue
        if isinstance(v, str) and not v.strip():
            continue
        if isinstance(v, (list, tuple)) and len(v) == 0:
            continue
        return f, v
    return None, None


def normalize_row(spec: SourceSpec, raw: dict, index: int, where: str = "") -> dict[str, Any]:
    """One source row -> our schema, failing with the benchmark, the row and the columns present."""
    loc = f"{spec.name}{(' (' + where + ')') if where else ''}, row {index}"
    pf, problem = _pick(raw, spec.problem_fields)
    if pf is None:
        raise DatasetError(
            f"{loc}: no problem field (expected one of {list(spec.problem_fields)}; the row has {sorted(raw)})"
        )
    af, ans = _pick(raw, spec.answer_fields)
    if af is None:
        raise DatasetError(
            f"{loc}: no answer field (expected one of {list(spec.answer_fields)}; the row has {sorted(raw)})"
        )
    try:
        answer = ANSWER_RULES[spec.answer_rule](ans, af)
    except ValueError as e:
        raise DatasetError(
            f"{loc}: cannot read the answer from field '{af}' with rule '{spec.answer_rule}': {e}"
        ) from None
    if not answer.strip():
        raise DatasetError(f"{loc}: empty answer from field '{af}' (rule '{spec.answer_rule}')")
    _, rid = _pick(raw, spec.id_fields) if spec.id_fields else (None, None)
    row: dict[str, Any] = {
        "id": str(rid) if rid is not None else f"{spec.name}-{index}",
        "problem": _join_if_list(problem).strip(),
        "answer": answer.strip(),
        "benchmark": spec.name,
    }
    for f in spec.extra_fields:
        if raw.get(f) is not None:
            row[f] = str(raw[f])
    return row


def _is_normalised(raw: dict, name: str) -> bool:
    return raw.get("benchmark") == name and all(isinstance(raw.get(k), str) for k in ("id", "problem", "answer"))


def normalize_rows(spec: SourceSpec, raws: Iterable[dict], where: str = "") -> list[dict[str, Any]]:
    """Source rows (or rows already in our schema, as prepared) -> our schema; ids made unique."""
    rows = []
    for i, raw in enumerate(raws):
        if not isinstance(raw, dict):
            raise DatasetError(f"{spec.name} ({where}), row {i}: expected an object, got {type(raw).__name__}")
        if _is_normalised(raw, spec.name):
            if not raw["problem"].strip() or not raw["answer"].strip():
                raise DatasetError(f"{spec.name} ({where}), row {i}: empty problem or answer")
            rows.append(dict(raw))
        else:
            rows.append(normalize_row(spec, raw, i, where))
    if not rows:
        raise DatasetError(f"{spec.name}: no rows in {where or 'the source'}")
    return _unique_ids(rows)


def _unique_ids(rows: list[dict]) -> list[dict]:
    seen: dict[str, int] = {}
    for r in rows:
        base = r["id"]
        if base in seen:
            seen[base] += 1
            r["id"] = f"{base}#{seen[base]}"
        else:
            seen[base] = 0
    return rows


# ------------------------------------------------------------------------------------------------
# files


def default_data_dir() -> Path:
    """``$HARNESS_DATA_DIR``, else ``$HARNESS_CACHE/data`` (default ``~/.cache/rl-harness/data``)."""
    if os.environ.get("HARNESS_DATA_DIR"):
        return Path(os.environ["HARNESS_DATA_DIR"])
    return Path(os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "rl-harness") / "data"


def _data_dirs(data_dir: str | os.PathLike | None) -> list[Path]:
    dirs = [Path(data_dir)] if data_dir else []
    d = default_data_dir()
    if d not in dirs:
        dirs.append(d)
    return dirs


def read_records(path: str | os.PathLike) -> list[dict]:
    """Records of a JSONL, JSON (a list, or ``{"data"|"rows"|<split>: [...]}``) or Parquet file."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DatasetError(f"{p}: reading Parquet needs pyarrow (pip install pyarrow)") from None
        return pq.read_table(p).to_pylist()
    if suffix == ".json":
        try:
            obj = json.loads(_read_utf8(p))
        except json.JSONDecodeError:
            return _read_jsonl_records(p)  # JSON Lines saved as .json (common for hub data sets)
        if isinstance(obj, dict):
            for key in ("data", "rows", "examples", "test", "train"):
                if isinstance(obj.get(key), list):
                    obj = obj[key]
                    break
        if not isinstance(obj, list):
            raise DatasetError(f"{p}: expected a JSON list of records")
        return obj
    return _read_jsonl_records(p)


def _not_utf8(p: Path, lineno: int, e: UnicodeDecodeError, column: int) -> DatasetError:
    return DatasetError(
        f"{p}:{lineno}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at byte {column + 1} of the line); "
        f"data files must be UTF-8: re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
    )


def _read_utf8(p: Path) -> str:
    """The whole file as UTF-8 (a BOM is dropped); a bad byte fails naming the file and line."""
    data = p.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        start = data.rfind(b"\n", 0, e.start) + 1
        raise _not_utf8(p, data.count(b"\n", 0, e.start) + 1, e, e.start - start) from None


def _jsonl_lines(p: Path):
    """(line number, text) of the non-blank lines of a UTF-8 file; a bad byte fails naming the file and line."""
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(p, lineno, e, e.start) from None
            if line.strip():
                yield lineno, line


def _read_jsonl_records(p: Path) -> list[dict]:
    out = []
    for lineno, line in _jsonl_lines(p):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DatasetError(f"{p}:{lineno}: not valid JSON ({e.msg})") from None
    return out


def _files_in(folder: Path, split: str) -> list[Path]:
    """Data files under ``folder`` (recursively), preferring those whose path names ``split``."""
    files = sorted(
        f
        for f in folder.rglob("*")
        if f.is_file() and f.suffix.lower() in RAW_SUFFIXES and not f.name.endswith(".meta.json")
    )
    named = [f for f in files if re.search(rf"(^|[/\\._-]){re.escape(split)}([/\\._-]|$)", str(f.relative_to(folder)))]
    return named or files


def find_local_source(
    name: str, split: str, data_dir: str | os.PathLike | None = None, *, include_default: bool = True
) -> list[Path]:
    """Files holding data set ``name`` in the data directories (first directory that has any)."""
    for d in _data_dirs(data_dir) if include_default else [Path(data_dir)] if data_dir else []:
        for suffix in RAW_SUFFIXES:
            f = d / f"{name}{suffix}"
            if f.is_file():
                return [f]
        sub = d / name
        if sub.is_dir():
            files = _files_in(sub, split)
            if files:
                return files
    return []


def load_jsonl(path: str | Path, benchmark: str | None = None) -> list[Row]:
    """Rows from a JSONL (or JSON/Parquet) file with ``problem`` and ``answer`` (``id`` optional); bad rows fail naming the line."""
    p = Path(path)
    name = benchmark or p.stem
    recs = read_records(p) if p.suffix.lower() in (".json", ".parquet") else None
    rows: list[Row] = []
    if recs is None:
        recs = []
        for lineno, line in _jsonl_lines(p):
            try:
                recs.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise DatasetError(f"{p}:{lineno}: not valid JSON ({e.msg})") from None
    else:
        recs = list(enumerate(recs, 1))
    for lineno, obj in recs:
        if not isinstance(obj, dict):
            raise DatasetError(f"{p}:{lineno}: expected a JSON object with 'problem' and 'answer'")
        for key in ("problem", "answer"):
            if not isinstance(obj.get(key), (str, int, float)) or str(obj.get(key)).strip() == "":
                raise DatasetError(f"{p}:{lineno}: field '{key}' is missing or empty (expected a non-empty string)")
        rows.append(
            {
                "id": str(obj.get("id", f"{name}-{lineno - 1}")),
                "problem": str(obj["problem"]),
                "answer": _number_text(obj["answer"]),
                "benchmark": name,
            }
        )
    if not rows:
        raise DatasetError(f"{p}: no rows found (expected JSONL with 'problem' and 'answer' fields)")
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{p}: duplicate 'id' values; ids must be unique (they key per-prompt state)")
    return rows


# ------------------------------------------------------------------------------------------------
# hub


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


#: Seconds the hub reachability probe waits (DNS + TCP connect) before calling the hub unreachable.
HUB_PROBE_TIMEOUT_S = 3.0
_hub_probe: dict[str, str | None] = {}


def _hub_unreachable() -> str | None:
    """None if a TCP connection to the hub (or the HTTPS proxy) opens within HUB_PROBE_TIMEOUT_S, else why not.

    Cached per process and endpoint. Without it a machine with no network spends ~30-50 s in
    ``huggingface_hub`` retries before ``datasets`` gives up."""
    import socket
    from urllib.parse import urlparse

    proxy = next(
        (os.environ[v] for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy") if os.environ.get(v)), None
    )
    url = urlparse(
        proxy
        if proxy and "://" in proxy
        else f"http://{proxy}"
        if proxy
        else os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    )
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    key = f"{host}:{port}"
    if key not in _hub_probe:
        try:
            socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
            _hub_probe[key] = None
        except OSError as e:
            _hub_probe[key] = f"{'proxy ' if proxy else ''}{key}: {type(e).__name__}: {e}"
    return _hub_probe[key]


def _hf_cache_dirs() -> list[Path]:
    """Where ``datasets`` / ``huggingface_hub`` keep downloaded data sets (from the environment; nothing imported)."""
    home = Path(
        os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    )
    return [
        Path(os.environ.get("HF_DATASETS_CACHE") or home / "datasets"),
        Path(os.environ.get("HF_HUB_CACHE") or home / "hub"),
    ]


def in_hf_cache(hub_id: str) -> bool:
    """Whether the local HF cache seems to hold ``hub_id`` (a ``datasets`` build or a hub snapshot of it)."""
    org, _, name = hub_id.partition("/")
    wanted = {f"{org}___{name}".lower(), f"datasets--{org}--{name}".lower()}
    for d in _hf_cache_dirs():
        try:
            if any(c.name.lower() in wanted for c in d.iterdir() if c.is_dir()):
                return True
        except OSError:
            continue
    return False


def _hub_precheck(spec: SourceSpec) -> str | None:
    """Why the hub cannot serve ``spec`` here, decided at once (no ``datasets`` import); None = try it."""
    if _offline() and not in_hf_cache(spec.hub_id):
        return "offline mode (HF_HUB_OFFLINE=1) and no copy in the Hugging Face cache"
    return None


class _forced_hf_offline:
    """Treat the hub as offline inside the block (``datasets``/``huggingface_hub`` read these flags at call time)."""

    def __enter__(self) -> "_forced_hf_offline":
        import datasets.config as dc
        import huggingface_hub.constants as hc

        self._saved = [(m, m.HF_HUB_OFFLINE) for m in (dc, hc)]
        for m, _ in self._saved:
            m.HF_HUB_OFFLINE = True
        return self

    def __exit__(self, *exc: Any) -> None:
        for m, v in self._saved:
            m.HF_HUB_OFFLINE = v


def fetch_from_hub(
    spec: SourceSpec, *, shuffle_seed: int | None = None, size: int | None = None, info: dict | None = None
) -> list[dict]:
    """Raw rows of ``spec`` from the hub via ``datasets`` (uses and fills the HF cache).

    With ``shuffle_seed``: ``Dataset.shuffle(seed)`` then the first ``size`` rows, as the reference
    does; an ``_index`` column keeps each row's position in the unshuffled split. ``info`` (if given)
    receives the source's column names, row count and ``datasets`` fingerprint, for the record.
    """
    unreachable = None if _offline() else _hub_unreachable()
    try:
        import datasets
    except ImportError:
        raise DatasetError(
            f"'{spec.name}' needs the `datasets` package to download from the hub (pip install datasets)"
        ) from None
    if unreachable is None:
        ds = datasets.load_dataset(spec.hub_id, spec.config, split=spec.split)
    else:  # no network: only the HF cache can serve it; offline mode fails at once instead of ~50 s of retries
        try:
            with _forced_hf_offline():
                ds = datasets.load_dataset(spec.hub_id, spec.config, split=spec.split)
        except Exception as e:  # noqa: BLE001
            raise DatasetError(
                f"the Hugging Face hub cannot be reached ({unreachable}) and the HF cache has no copy "
                f"({type(e).__name__})"
            ) from e
    if info is not None:
        info.update(
            columns=list(ds.column_names),
            num_rows=len(ds),
            fingerprint=getattr(ds, "_fingerprint", None),
            datasets_version=datasets.__version__,
        )
    wanted = set(spec.problem_fields + spec.answer_fields + spec.id_fields + spec.extra_fields)
    cols = set(ds.column_names)
    if cols & set(spec.problem_fields) and cols & set(spec.answer_fields) and len(cols) > len(cols & wanted):
        ds = ds.select_columns([c for c in ds.column_names if c in wanted])  # drop unused (large) columns early
    if shuffle_seed is not None:
        ds = ds.add_column("_index", list(range(len(ds)))).shuffle(seed=shuffle_seed)
        if size is not None:
            ds = ds.select(range(min(size, len(ds))))
    return ds.to_list()


def _hub_failure_reason(e: BaseException) -> str:
    if isinstance(e, DatasetError):
        return str(e)
    if _offline():
        return "offline mode (HF_HUB_OFFLINE=1)"
    return f"{type(e).__name__}: {str(e)[:200]}"


def _not_available(spec: SourceSpec, kind: str, data_dir, reason: str) -> DatasetError:
    dirs = ", ".join(str(d) for d in _data_dirs(data_dir))
    flag = "--benchmarks" if kind == "benchmark" else "--train-sets"
    return DatasetError(
        f"{kind} '{spec.name}' ({spec.hub_id}, split '{spec.split}') is not available: no prepared file in [{dirs}] "
        f"and the Hugging Face hub could not be used ({reason}). Fix: run `harness data prepare {flag} {spec.name}` "
        f"on a machine with internet (it writes {default_data_dir() / (spec.name + '.jsonl')}), copy that folder here and "
        f"point --data-dir (or $HARNESS_DATA_DIR) at it; or put the source files (e.g. a hub snapshot of {spec.hub_id}) "
        f"in <data-dir>/{spec.raw_from or spec.name}/."
    )


def load_source(
    spec: SourceSpec, data_dir: str | os.PathLike | None = None, kind: str = "benchmark"
) -> tuple[list[dict], str]:
    """Raw (or prepared) rows of ``spec`` and a description of where they came from."""
    files = find_local_source(spec.name, spec.split, data_dir)
    if not files and spec.raw_from:
        files = find_local_source(spec.raw_from, spec.split, data_dir)
    if files:
        recs: list[dict] = []
        for f in files:
            recs.extend(read_records(f))
        where = ", ".join(str(f) for f in files)
        if spec.raw_from and recs and _is_normalised(recs[0], spec.raw_from):
            raise DatasetError(
                f"{kind} '{spec.name}' needs the source rows of {spec.hub_id}, but {where} holds prepared '{spec.raw_from}' rows; "
                f"run `harness data prepare --benchmarks {spec.name}` or put the source files in <data-dir>/{spec.raw_from}/"
            )
        return recs, where
    if (why := _hub_precheck(spec)) is not None:
        raise _not_available(spec, kind, data_dir, why)
    try:
        return fetch_from_hub(spec), f"hub:{spec.hub_id}"
    except Exception as e:  # noqa: BLE001 - offline, missing repo, network, no `datasets`: all end in the same advice
        raise _not_available(spec, kind, data_dir, _hub_failure_reason(e)) from e


def _load_spec_benchmark(spec: SourceSpec, data_dir: str | os.PathLike | None = None) -> list[Row]:
    recs, where = load_source(spec, data_dir)
    return normalize_rows(spec, recs, where)


# ------------------------------------------------------------------------------------------------
# CHAMP (offline, from the champ-dataset package)


def _champ_file() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("champ_dataset")  # locate without importing (no side effects)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            "benchmark 'champ' needs the champ-dataset package (pip install champ-dataset; MIT, offline)"
        )
    f = Path(list(spec.submodule_search_locations)[0]) / "dataset_files" / "v0.json"
    if not f.is_file():
        raise DatasetError(f"benchmark 'champ': {f} not found in the champ-dataset package")
    return f


@lru_cache(maxsize=1)
def _champ_rows() -> tuple[tuple[str, str, str, str], ...]:
    problems = json.loads(_champ_file().read_text())["problems"]
    out = []
    for pid, p in problems.items():
        text = (p.get("_raw_text") or p.get("_text") or "").replace("@@", "").strip()
        ans = (p.get("_raw_answer") or p.get("_answer") or "").replace("@@", "").strip()
        if not text or not ans:
            raise DatasetError(f"champ: problem {pid} has an empty text or answer")
        out.append((p.get("identifier", pid), text, ans, p.get("category", "")))
    return tuple(out)


def load_champ() -> list[Row]:
    """CHAMP (Mao et al. 2024; MIT): 270 competition problems with free-form final answers.

    Gold = the ``answer`` text with CHAMP's ``@@`` math markers removed, then normalised by
    :func:`benchmarks.golds.normalize_gold`: prose golds become the value asked for ("2 inequalities"
    -> ``2``, "C(10, 5), or equivalently 252" -> ``252``, "The limit exists and is equal to 2/3" ->
    ``2/3``), sentences that remain are compared as text. ``answer_original`` keeps CHAMP's text.
    Not a paper benchmark: a real, messy offline one.
    """
    from benchmarks.golds import normalize_gold

    return [
        {"id": pid, "problem": text, "answer": normalize_gold(ans), "answer_original": ans, "benchmark": "champ"}
        for pid, text, ans, _ in _champ_rows()
    ]


# ------------------------------------------------------------------------------------------------
# DeepMath training set


def _load_deepmath(
    size: int | None = None, seed: int = 42, data_dir: str | os.PathLike | None = None, gold: str = "final_answer"
) -> list[Row]:
    """The reference's DeepMath subset: ``shuffle(seed)`` of the train split, first ``size`` rows.

    Sources, in order: a prepared ``deepmath.jsonl`` (+ ``deepmath.meta.json`` recording the seed and
    size it was drawn with) or the raw split (``deepmath/`` folder or file in the source schema, shuffled
    here exactly as ``datasets`` does: ``np.random.default_rng(seed).permutation(n)``), else the hub.
    ``gold``: ``final_answer`` (default) or ``r1_solution_1`` (the reference's choice).
    """
    spec = TRAIN_SETS["deepmath"]
    name = "deepmath_r1" if gold == "r1_solution_1" else "deepmath"
    files = find_local_source("deepmath", spec.split, data_dir)
    if files:
        meta_file = (
            files[0].with_name("deepmath.meta.json") if len(files) == 1 and files[0].stem == "deepmath" else None
        )
        meta = json.loads(meta_file.read_text()) if meta_file is not None and meta_file.is_file() else None
        recs: list[dict] = []
        for f in files:
            recs.extend(read_records(f))
        where = ", ".join(str(f) for f in files)
        if meta and meta.get("subset"):  # a prepared subset: already shuffled with meta["seed"]
            if meta.get("seed") != seed:
                raise DatasetError(
                    f"{where} holds the DeepMath subset drawn with seed {meta.get('seed')}, but seed {seed} was asked for; "
                    f"run `harness data prepare --train-sets deepmath --seed {seed}` (or prepare the full set with --train-size all)"
                )
            if size is None or size > len(recs):
                raise DatasetError(
                    f"{where} holds {len(recs)} DeepMath prompts, {size or 'all'} were asked for; "
                    f"run `harness data prepare --train-sets deepmath --train-size {size or 'all'} --seed {seed}`"
                )
            chosen = recs[:size]
        elif meta is None and recs and _is_normalised(recs[0], "deepmath"):
            raise DatasetError(
                f"{where} is a prepared DeepMath file without its deepmath.meta.json (which records the seed and size "
                f"it was drawn with); re-run `harness data prepare --train-sets deepmath --seed {seed}`"
            )
        else:  # the full split in source order: shuffle like datasets.Dataset.shuffle(seed)
            import numpy as np

            perm = np.random.default_rng(seed).permutation(len(recs))
            chosen = []
            for i in perm[: size if size is not None else len(recs)]:
                r = dict(recs[int(i)])
                r.setdefault("_index", int(i))
                chosen.append(r)
    else:
        if (why := _hub_precheck(spec)) is not None:
            raise _not_available(spec, "training set", data_dir, why)
        try:
            chosen, where = fetch_from_hub(spec, shuffle_seed=seed, size=size), f"hub:{spec.hub_id}"
        except Exception as e:  # noqa: BLE001
            raise _not_available(spec, "training set", data_dir, _hub_failure_reason(e)) from e
    rows = []
    for i, raw in enumerate(chosen):
        if _is_normalised(raw, "deepmath"):
            r = dict(raw)
            r.pop("_index", None)
        else:
            r = normalize_row(spec, raw, i, where)
            if "_index" in raw:
                r["id"] = f"deepmath-{raw['_index']}"
        if gold == "r1_solution_1":
            if not r.get("r1_solution_1"):
                raise DatasetError(f"deepmath_r1 ({where}), row {i}: no r1_solution_1 to use as the gold")
            r["answer"] = r["r1_solution_1"]
        r["benchmark"] = name
        r.pop("r1_solution_1", None)
        rows.append(r)
    if not rows:
        raise DatasetError(f"{name}: no rows in {where}")
    return _unique_ids(rows)


def _champ_train(size: int | None, seed: int) -> list[Row]:
    """CHAMP as a training set: the benchmark's rows (same golds) in a ``seed`` shuffle; ``size`` > 270 takes all 270."""
    import random

    rows = load_champ()
    if size is not None and size > len(rows):
        logger.warning(
            "champ has %d problems; %d were asked for (data.train_size): training on all %d", len(rows), size, len(rows)
        )
    random.Random(f"champ-train-{seed}").shuffle(rows)
    return rows


# ------------------------------------------------------------------------------------------------
# DeepMind mathematics_dataset (generated offline: benchmarks/mathematics.py)


def _load_dm(name: str, split: str, size: int | None = None, seed: int | None = None) -> list[Row]:
    """``dm_*`` rows: the held-out ``test`` split (fixed seed) for evaluation, ``train`` (``seed``) for training."""
    try:
        return mathematics.make_dm(name, split, size, seed if split == "train" else None)
    except mathematics.MathGenError as e:
        raise DatasetError(str(e)) from None


# ------------------------------------------------------------------------------------------------
# public entry points


def _call(loader: Callable[..., list[Row]], data_dir, **kw) -> list[Row]:
    import inspect

    try:
        params = inspect.signature(loader).parameters
    except (TypeError, ValueError):
        params = {}
    if "data_dir" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kw["data_dir"] = data_dir
    return loader(**kw)


def _is_path(name: str) -> bool:
    return Path(name).suffix.lower() in RAW_SUFFIXES and Path(name).is_file()


def load_benchmark(
    name: str, max_examples: int | None = None, *, data_dir: str | os.PathLike | None = None
) -> list[Row]:
    """Rows of benchmark ``name`` (a registered name or a path to a JSONL/JSON/Parquet file).

    ``max_examples`` keeps the first N rows in source order. Raises :class:`DatasetError` (never
    returns an empty list) when the benchmark cannot be loaded.
    """
    if name in _EVAL_LOADERS:
        rows = _call(_EVAL_LOADERS[name], data_dir)
    elif mathematics.is_dm_name(name):  # dm_<module>-<level> variants (the base names are registered)
        rows = _load_dm(name, "test")
    elif _is_path(name):
        rows = load_jsonl(name)
    else:
        raise DatasetError(
            f"unknown benchmark '{name}'; available: {', '.join(available_benchmarks())}, 'all' "
            f"(= {','.join(PAPER_BENCHMARKS)}) or a path to a .jsonl/.json/.parquet file"
        )
    if not rows:
        raise DatasetError(f"benchmark '{name}' has no rows")
    return rows[:max_examples] if max_examples else rows


def load_train_set(
    name: str, size: int | None = None, seed: int = 42, *, data_dir: str | os.PathLike | None = None
) -> list[Row]:
    """Training prompts: ``arith``, ``dm_*`` (generated mathematics_dataset problems, train split), ``champ`` (its 270
    problems: the benchmark itself, no held-out part), ``deepmath`` (gold = final answer), ``deepmath_r1`` (gold = R1
    solution, as the reference) or a local JSONL/JSON/Parquet file with problem/answer."""
    if name in _TRAIN_LOADERS:
        rows = _call(_TRAIN_LOADERS[name], data_dir, size=size, seed=seed)
    elif mathematics.is_dm_name(name):
        rows = _load_dm(name, "train", size, seed)
    elif _is_path(name):
        rows = load_jsonl(name)
    else:
        raise DatasetError(
            f"unknown training set '{name}'; available: {', '.join(available_train_sets())} (or a path to a .jsonl/.json/.parquet file)"
        )
    if not rows:
        raise DatasetError(f"training set '{name}' has no rows")
    return rows[:size] if size else rows


def rows_fingerprint(rows: list[Row]) -> str:
    """Short content hash of a row list (recorded with results and prepared files)."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r["id"], r["problem"], r["answer"]], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


register_benchmark("arith", lambda: arith.make_arith("test"))
register_benchmark("champ", load_champ)
for _spec in BENCHMARKS.values():
    register_benchmark(_spec.name, lambda data_dir=None, _s=_spec: _load_spec_benchmark(_s, data_dir))
register_train_set("arith", lambda size=None, seed=42: arith.make_arith("train", n=size, seed=seed))
register_train_set(
    "deepmath", lambda size=None, seed=42, data_dir=None: _load_deepmath(size, seed, data_dir, "final_answer")
)
register_train_set(
    "deepmath_r1", lambda size=None, seed=42, data_dir=None: _load_deepmath(size, seed, data_dir, "r1_solution_1")
)
register_train_set("champ", lambda size=None, seed=42: _champ_train(size, seed))
for _dm in mathematics.base_names():
    register_benchmark(_dm, lambda _n=_dm: _load_dm(_n, "test"))
    register_train_set(_dm, lambda size=None, seed=42, _n=_dm: _load_dm(_n, "train", size, seed))
