"""Answer scoring shared by training rewards and evaluation.

Training rewards and benchmark accuracy must come from the *same* verifier, otherwise
an algorithm can look better in evaluation than the reward it was trained on (or vice
versa). Everything goes through :func:`score_one`, which mirrors the RePO reference
(``SihengLi99/RePO`` ``src/rewards.py`` / ``src/evaluate_math.py``):

* gold: ``math_verify.parse(gold, [LatexExtractionConfig(), ExprExtractionConfig()],
  extraction_mode="first_match")``. Plain-string golds (no ``\\boxed``/``$``) are wrapped
  as ``$gold$`` (then ``\\boxed{gold}``, then raw) first, because the raw parse of a bare
  string picks a fragment (``2\\sqrt{2}`` -> 2, ``10^{10}`` -> 10, ``y=2x+3`` -> 2).
* prediction: LaTeX-only extraction, boxed answers first, no anchorless fallback.
* ``math_verify.verify(gold_parsed, pred_parsed)`` (gold first: verify is asymmetric).

Where this departs from the reference (README, "Differences from the reference code"):

* math-verify's malformed-operator repair (``\\frac12``, ``3\\sqrt2``, ``2^(n-1)``) is on for the
  prediction as it already is for the gold (the reference, copying open-r1, switched it off for
  the prediction only, so ``\\boxed{\\frac12}`` scored 0 against ``\\frac{1}{2}``).
* :func:`_prepare_text` fixes number formatting in both texts before parsing: ``70\\,000``
  (thin-space thousands), a trailing period inside the answer (``\\boxed{42.}``, ``$460.$``),
  ``90°`` / ``\\degree``, and ``\\fbox{}`` read as ``\\boxed{}``.
* a percent sign on the answer when the gold has none (``12.5\\%`` for ``12.5``) is read as the
  unit of the gold's number (math-verify already accepts ``50`` for a gold ``50\\%``).
* a gold written as a factorisation (a product with two or more non-constant sum factors, e.g.
  ``(x^2+x+1)(x^2-x+1)``, ``(x+1)^2``) is not matched by an answer written as one expanded sum
  (``x^4+x^2+1``): equal in value, but it is the question's own expression copied back, not a
  factorisation (:func:`_expanded_answer_to_factored_gold`).
* ``answer_fallback`` (default ``"none"``, the reference's behaviour): for models that do not
  box, ``"answer_is"`` reads "the answer is X" / "Answer: X" and ``"last_number"`` the last
  number of the completion, only when the normal extraction finds no answer (:func:`fallback_answer`).

math-verify's own timeouts use ``signal.alarm`` (whole seconds, main thread only, and a
timeout is swallowed and reported as a plain ``False``), so they are switched off here.
Instead:

* :func:`score_one` takes an optional ``timeout_s`` enforced with ``setitimer`` on the
  main thread and reports ``reason="timeout"``;
* :class:`Scorer` runs verifications in worker processes (each with that soft guard) and
  additionally kills a worker that overruns the hard deadline (a stall in C code that a
  signal cannot interrupt), replacing it while the rest of the batch carries on.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import multiprocessing as mp
import os
import re
import signal
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing.connection import Connection, wait
from typing import Any, Sequence

from latex2sympy2_extended import NormalizationConfig
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from benchmarks.answers import ANSWER_FALLBACKS, fallback_answer, has_boxed_answer

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MAX_CHARS = 20_000
#: Extracted answers longer than this are cut in results (they are only for logs).
MAX_EXTRACTED_CHARS = 300

GOLD_EXTRACTION_CONFIG = (LatexExtractionConfig(), ExprExtractionConfig())
PRED_EXTRACTION_CONFIG = (
    LatexExtractionConfig(
        normalization_config=NormalizationConfig(
            nits=False,
            malformed_operators=True,  # the reference has False: \frac12, 3\sqrt2 then score 0 (the gold side has it on)
            basic_latex=True,
            equations=True,  # deprecated upstream but still shortens "x = 2+3 = 5" to "5"
            boxed="all",
            units=True,
        ),
        boxed_match_priority=0,  # a \boxed{} answer wins over "final answer is" phrases
        try_extract_without_anchor=False,
    ),
)

# A gold is "wrapped" if it already carries a \boxed{} or an unescaped $ delimiter.
_WRAPPED_GOLD_RE = re.compile(r"\\boxed|\\fbox|(?<!\\)\$")

# number formatting, fixed in completions and golds before parsing (see _prepare_text)
# (patterns start with a literal so the regex engine can skip ahead; the look-behinds check the digit before)
_THOUSANDS_SPACE_RE = re.compile(r"\\(?<=\d\\)(?:[,;: ]|thinspace\s*)(?=\d{3}(?!\d))")
_TRAILING_PERIOD_RE = re.compile(r"\.(?<=[\d}]\.)\s*(?=\}|\$|\\\])")
_DEGREE_RE = re.compile(r"\s*(?:°|\\degree\b|\\textdegree\b)")
_FBOX_RE = re.compile(r"\\fbox\s*\{")


def _prepare_text(text: str) -> str:
    """Number formatting math-verify misreads, fixed before parsing (completions and golds):
    ``70\\,000`` -> ``70000``; ``\\boxed{42.}`` / ``$460.$`` -> no period; ``90°`` / ``90\\degree``
    -> ``90^\\circ``; ``\\fbox{..}`` -> ``\\boxed{..}`` (math-verify only anchors on ``\\boxed``)."""
    if "\\" in text:
        text = _THOUSANDS_SPACE_RE.sub("", text)
        if "\\fbox" in text:
            text = _FBOX_RE.sub(r"\\boxed{", text)
    if "." in text:
        text = _TRAILING_PERIOD_RE.sub("", text)
    if "°" in text or "degree" in text:
        text = _DEGREE_RE.sub(r"^\\circ", text)
    return text


def _check_fallback(mode: str) -> str:
    if mode not in ANSWER_FALLBACKS:
        raise ValueError(f"answer_fallback must be one of {', '.join(ANSWER_FALLBACKS)}, got {mode!r}")
    return mode


class _DropNoise(logging.Filter):
    """Drop per-call math-verify/latex2sympy warnings that would flood training logs.

    ``equations=True`` logs a deprecation warning on *every* parse, and disabling
    math-verify's signal timeouts (we enforce our own) logs a warning once per process.
    """

    _PREFIXES = ("equations=True in NormalizationConfig is deprecated", "Timeout is disabled")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        return not msg.startswith(self._PREFIXES)


def _install_log_filter() -> None:
    for name in ("latex2sympy2_extended.math_normalization", "math_verify.parser", "math_verify.grader"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in lg.filters):
            lg.addFilter(_DropNoise())


_install_log_filter()


@dataclass(frozen=True)
class ScoreResult:
    """Outcome of one verification.

    ``reason`` is None when math-verify gave a normal verdict (right *or* wrong), and
    names what went wrong otherwise: ``"no_answer"``, ``"gold_unparseable"``,
    ``"timeout"`` or ``"error: ..."``. Abnormal outcomes always have ``reward == 0.0``.
    """

    reward: float
    extracted: str | None = None
    reason: str | None = None
    #: True when the answer came from the ``answer_fallback`` rule, not the normal extraction.
    fallback: bool = False


class ScoreTimeout(BaseException):
    """Raised by the SIGALRM guard. BaseException so library ``except Exception`` blocks
    (math-verify and sympy have many) cannot swallow it."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise ScoreTimeout()


def _can_use_alarm() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> tuple:
    """Parse a gold answer once: a GRPO group shares one gold across all its samples."""
    gold = _prepare_text(gold.strip())
    candidates = [gold] if _WRAPPED_GOLD_RE.search(gold) else [f"${gold}$", f"\\boxed{{{gold}}}", gold]
    for cand in candidates:
        parsed = parse(
            cand,
            extraction_config=GOLD_EXTRACTION_CONFIG,
            extraction_mode="first_match",
            parsing_timeout=None,
        )
        if parsed:
            return tuple(parsed)
    return ()


def _parse_pred(text: str) -> list:
    return parse(text, extraction_config=PRED_EXTRACTION_CONFIG, extraction_mode="first_match", parsing_timeout=None)


def _sum_factors(expr: Any) -> int:
    """How many non-constant sums ``expr`` multiplies together: ``(x+1)(x-1)`` -> 2,
    ``(x+1)^2`` -> 2, ``n(n+1)/2`` -> 1, ``x^4+x^2+1`` -> 1, ``2^n`` -> 0."""
    import sympy

    if isinstance(expr, sympy.Add):
        return 1 if expr.free_symbols else 0
    if isinstance(expr, sympy.Pow):
        e = expr.exp
        if isinstance(expr.base, sympy.Add) and expr.base.free_symbols and e.is_Integer and e > 0:
            return int(min(e, 64))
        return 0
    if isinstance(expr, sympy.Mul):
        return sum(_sum_factors(a) for a in expr.args)
    return 0


def _expanded_answer_to_factored_gold(gold_parsed: Sequence, pred_parsed: Sequence) -> bool:
    """The factorisation rule: True when the gold is written as a factorisation (two or more
    non-constant sum factors, ``(x^2+x+1)(x^2-x+1)``) and the answer as one sum (``x^4+x^2+1``,
    a constant factor aside): equal in value, but not an answer to "factor ...". Any product form
    (other order, constants moved, partly factored) still counts. Equations compare right sides."""
    import sympy

    def expr_of(parsed: Sequence) -> Any:
        e = parsed[0] if parsed else None
        if isinstance(e, sympy.Eq):
            e = e.rhs
        return e if isinstance(e, sympy.Expr) else None

    g, p = expr_of(gold_parsed), expr_of(pred_parsed)
    if g is None or p is None or _sum_factors(g) < 2:
        return False
    factors = [f for f in sympy.Mul.make_args(p) if f.free_symbols]  # constant factors (2, 1/6) set aside
    return len(factors) == 1 and isinstance(factors[0], sympy.Add)


_PERCENT_RE = re.compile(r"\\?%")


def _verify(gold: str, gold_parsed: tuple, pred_parsed: list, extracted: str | None) -> bool:
    if verify(list(gold_parsed), pred_parsed, timeout_seconds=None):
        return not _expanded_answer_to_factored_gold(gold_parsed, pred_parsed)
    # "12.5\%" for a plain gold 12.5: the percent sign is the unit of the gold's number
    if extracted and "%" in extracted and "%" not in gold:
        bare = _parse_pred("\\boxed{" + _PERCENT_RE.sub("", extracted) + "}")
        return bool(bare) and verify(list(gold_parsed), bare, timeout_seconds=None)
    return False


def _score_unguarded(completion: str, gold: str, answer_fallback: str = "none") -> ScoreResult:
    gold_parsed = _parse_gold(gold)
    if not gold_parsed:
        return ScoreResult(0.0, None, "gold_unparseable")
    completion = _prepare_text(completion)
    pred_parsed = _parse_pred(completion)
    used_fallback = False
    if not pred_parsed and answer_fallback != "none":
        alt = fallback_answer(completion, answer_fallback)
        if alt:
            pred_parsed = _parse_pred("\\boxed{" + alt + "}")
            used_fallback = bool(pred_parsed)
    if not pred_parsed:
        return ScoreResult(0.0, None, "no_answer")
    # parse() appends the matched LaTeX string; use it rather than str(sympy_expr),
    # which can itself take forever on pathological expressions.
    extracted = next((p for p in pred_parsed if isinstance(p, str)), None)
    ok = _verify(gold, gold_parsed, pred_parsed, extracted)
    if extracted is not None and len(extracted) > MAX_EXTRACTED_CHARS:
        extracted = extracted[:MAX_EXTRACTED_CHARS] + "..."
    return ScoreResult(1.0 if ok else 0.0, extracted, None, used_fallback)


def score_one(
    completion: str,
    gold: str,
    *,
    timeout_s: float | None = None,
    max_chars: int | None = DEFAULT_MAX_CHARS,
    answer_fallback: str = "none",
) -> ScoreResult:
    """Score one completion in this process.

    ``timeout_s`` is enforced with SIGALRM, so it only applies on the main thread (it is
    silently ignored elsewhere; use :class:`Scorer` there). Completions longer than
    ``max_chars`` keep only their last ``max_chars`` characters (the answer is at the end).
    ``answer_fallback`` (one of :data:`ANSWER_FALLBACKS`) reads an unboxed answer when the normal
    extraction finds none (:func:`fallback_answer`). Never raises for bad inputs: problems are
    reported in ``reason`` (an unknown ``answer_fallback`` is a ValueError).
    """
    _check_fallback(answer_fallback)
    if max_chars is not None and len(completion) > max_chars:
        completion = completion[-max_chars:]
    use_alarm = timeout_s is not None and timeout_s > 0 and _can_use_alarm()
    old_handler = None
    try:
        if use_alarm:
            old_handler = signal.signal(signal.SIGALRM, _on_alarm)
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            return _score_unguarded(completion, gold, answer_fallback)
        finally:
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
    except ScoreTimeout:
        return ScoreResult(0.0, None, "timeout")
    except Exception as e:  # noqa: BLE001 - a reward must never crash training
        return ScoreResult(0.0, None, f"error: {type(e).__name__}: {str(e)[:200]}")
    finally:
        if use_alarm:
            signal.signal(signal.SIGALRM, old_handler if old_handler is not None else signal.SIG_DFL)


def _log_abnormal(res: ScoreResult, completion: str, gold: str) -> None:
    if res.reason is None or res.reason == "no_answer":
        return
    logger.warning(
        "scoring gave 0.0 (%s); gold=%r completion=...%r",
        res.reason,
        gold[:200],
        completion[-200:],
    )


def score(completion: str, gold: str, timeout_s: float = DEFAULT_TIMEOUT_S, answer_fallback: str = "none") -> float:
    """Reward in {0.0, 1.0} for ``completion`` against ``gold``.

    On the main thread this runs in-process under a SIGALRM time limit. Off the main
    thread signals are unavailable, so it delegates to the shared worker-process
    :func:`get_default_scorer` (which enforces its own time limit) instead of risking an
    unbounded stall.
    """
    if _can_use_alarm():
        res = score_one(completion, gold, timeout_s=timeout_s, answer_fallback=answer_fallback)
        _log_abnormal(res, completion, gold)
        return res.reward
    return get_default_scorer().score_batch([completion], [gold], answer_fallback=answer_fallback)[0].reward


# --------------------------------------------------------------------------- workers


def _limit_memory_growth(max_memory_mb: int) -> None:
    """Cap this process's address space at its current size + ``max_memory_mb``.

    Relative to the current size because the worker may already map large libraries
    (multiprocessing re-imports the parent's main module, which may import torch).
    Best effort: skipped where /proc or RLIMIT_AS is unavailable.
    """
    try:
        import resource

        with open("/proc/self/statm") as f:
            current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = current + max_memory_mb * 1024 * 1024
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, OSError, ValueError):
        pass


def _worker_main(conn: Connection, soft_timeout_s: float | None, max_memory_mb: int | None) -> None:
    """Worker loop: receive a chunk ``[(task_id, completion, gold, answer_fallback), ...]`` and send one
    ``(task_id, ScoreResult)`` per item as soon as it is done (the parent times each item)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    if max_memory_mb:
        _limit_memory_growth(max_memory_mb)
    score_one("\\boxed{1}", "1")  # warm up regexes / lazy imports before reporting ready
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # parent went away
        if msg is None:
            return
        for task_id, completion, gold, fallback in msg:
            res = score_one(completion, gold, timeout_s=soft_timeout_s, max_chars=None, answer_fallback=fallback)
            try:
                conn.send((task_id, res))
            except (BrokenPipeError, OSError):
                return


class _Worker:
    __slots__ = ("proc", "conn", "ready", "chunk", "deadline")

    def __init__(self, proc: Any, conn: Connection) -> None:
        self.proc = proc
        self.conn = conn
        self.ready = False
        self.chunk: deque[int] = deque()  # task ids sent and not yet answered, in order
        self.deadline = 0.0  # hard deadline of chunk[0], the item being scored now


def _mp_context(start_method: str | None) -> Any:
    """forkserver when available (cheap replacement of killed workers; safe with torch
    in the parent since the server is a fresh interpreter), else spawn. Never fork."""
    if start_method is None:
        start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    if start_method == "fork":
        raise ValueError("start_method='fork' is unsafe with torch/threads in the parent; use 'forkserver' or 'spawn'")
    ctx = mp.get_context(start_method)
    if start_method == "forkserver" and __name__ != "__main__":
        # Pre-import math-verify/sympy once in the fork server so workers start fast.
        # Harmless if the server is already running (the setting is then ignored).
        ctx.set_forkserver_preload([__name__])
    return ctx


class Scorer:
    """Parallel, time-limited scoring in a pool of worker processes.

    Workers start lazily on the first :meth:`score_batch` and are reused across calls.
    An item whose verification overruns ``timeout_s`` scores 0.0 with reason
    ``"timeout"``; if its worker does not come back on its own within ``kill_grace_s``
    it is killed and replaced while the other items keep being scored. Results of
    normal verdicts are kept in a small LRU cache keyed on (completion, gold, answer_fallback).
    """

    def __init__(
        self,
        num_workers: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_chars: int = DEFAULT_MAX_CHARS,
        *,
        cache_size: int = 4096,
        kill_grace_s: float = 0.5,
        soft_timeout: bool = True,
        max_memory_mb: int | None = 4096,
        start_method: str | None = None,
        startup_timeout_s: float = 120.0,
        chunk_size: int = 16,
        answer_fallback: str = "none",
    ) -> None:
        """
        Args:
            num_workers: worker processes (default ``os.cpu_count()``).
            timeout_s: time limit per verification.
            max_chars: completions are cut to their last ``max_chars`` characters.
            cache_size: LRU entries (0 disables); keys are hashes, not the texts.
            kill_grace_s: extra time after ``timeout_s`` before a worker is SIGKILLed.
            soft_timeout: also enforce ``timeout_s`` inside the worker with SIGALRM, which
                avoids killing/restarting a worker in the common case. Turn off only to
                exercise the kill path.
            max_memory_mb: how much a worker's address space may grow after start-up
                (None: unlimited), so one runaway expression cannot eat the host's memory.
            start_method: ``"forkserver"`` (default where available) or ``"spawn"``.
            startup_timeout_s: how long a new worker may take to become ready.
            chunk_size: most items sent to a worker in one message (fewer round trips;
                chunks shrink near the end of a batch to keep workers balanced). Each
                item still gets its own time limit.
            answer_fallback: default of :meth:`score_batch`'s ``answer_fallback``: how to read a
                completion without a boxed answer (:data:`ANSWER_FALLBACKS`, :func:`fallback_answer`).
        """
        if num_workers is None:
            num_workers = os.cpu_count() or 1
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if max_chars < 1:
            raise ValueError(f"max_chars must be >= 1, got {max_chars}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.answer_fallback = _check_fallback(answer_fallback)
        self.num_workers = num_workers
        self.timeout_s = float(timeout_s)
        self.max_chars = max_chars
        self.cache_size = cache_size
        self.kill_grace_s = kill_grace_s
        self.soft_timeout = soft_timeout
        self.max_memory_mb = max_memory_mb
        self.startup_timeout_s = startup_timeout_s
        self.chunk_size = chunk_size
        self._ctx = _mp_context(start_method)
        self._workers: list[_Worker] = []
        self._cache: OrderedDict[bytes, ScoreResult] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False
        #: Counters for monitoring: items scored, timeouts, worker kills, cache hits.
        self.stats = {"scored": 0, "timeouts": 0, "killed": 0, "cache_hits": 0}

    # -- lifecycle ------------------------------------------------------------------

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop all workers. Idempotent; the scorer cannot be used afterwards."""
        with self._lock:
            self._closed = True
            workers, self._workers = self._workers, []
        for w in workers:
            try:
                w.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for w in workers:
            w.proc.join(timeout=1.0)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(timeout=1.0)
            w.conn.close()

    def _start_worker(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        soft = self.timeout_s if self.soft_timeout else None
        proc = self._ctx.Process(
            target=_worker_main,
            args=(child_conn, soft, self.max_memory_mb),
            name="scoring-worker",
            daemon=True,
        )
        proc.start()
        child_conn.close()
        return _Worker(proc, parent_conn)

    def _kill(self, w: _Worker) -> None:
        w.proc.kill()
        w.proc.join(timeout=2.0)
        self.stats["killed"] += 1

    # -- scoring --------------------------------------------------------------------

    def _key(self, completion: str, gold: str, fallback: str = "none") -> bytes:
        h = hashlib.blake2b(digest_size=16)
        h.update(fallback.encode())
        h.update(b"\x00")
        h.update(gold.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
        h.update(completion.encode("utf-8", "surrogatepass"))
        return h.digest()

    def score_batch(
        self, completions: Sequence[str], golds: Sequence[str], *, answer_fallback: str | None = None
    ) -> list[ScoreResult]:
        """Score ``completions[i]`` against ``golds[i]``; results in input order.

        ``answer_fallback``: None = this scorer's setting (see the constructor)."""
        if len(completions) != len(golds):
            raise ValueError(f"got {len(completions)} completions but {len(golds)} golds")
        fallback = _check_fallback(self.answer_fallback if answer_fallback is None else answer_fallback)
        with self._lock:
            if self._closed:
                raise RuntimeError("Scorer is closed")
            return self._score_batch(list(completions), list(golds), fallback)

    def bound(self, answer_fallback: str) -> "Scorer":
        """This scorer's worker pool with another default ``answer_fallback`` (a light view: the
        workers, cache and stats are shared; closing the view closes the pool)."""
        _check_fallback(answer_fallback)
        if answer_fallback == self.answer_fallback:
            return self
        return _BoundScorer(self, answer_fallback)  # type: ignore[return-value]

    def _score_batch(self, completions: list[str], golds: list[str], fallback: str = "none") -> list[ScoreResult]:
        n = len(completions)
        results: list[ScoreResult | None] = [None] * n
        completions = [c[-self.max_chars :] if len(c) > self.max_chars else c for c in completions]

        # Dedupe identical pairs and serve cached ones.
        pending: dict[bytes, list[int]] = {}
        for i, (c, g) in enumerate(zip(completions, golds)):
            key = self._key(c, g, fallback)
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                results[i] = hit
                self.stats["cache_hits"] += 1
            else:
                pending.setdefault(key, []).append(i)
        if not pending:
            return results  # type: ignore[return-value]

        tasks = list(pending.items())  # task_id -> (key, indices)
        queue: deque[int] = deque(range(len(tasks)))
        done = 0

        def finish(task_id: int, res: ScoreResult) -> None:
            nonlocal done
            key, idxs = tasks[task_id]
            for i in idxs:
                results[i] = res
            i0 = idxs[0]
            _log_abnormal(res, completions[i0], golds[i0])
            if res.reason is None or res.reason in ("no_answer", "gold_unparseable"):
                self._cache_put(key, res)  # deterministic outcomes only
            if res.reason == "timeout":
                self.stats["timeouts"] += 1
            self.stats["scored"] += 1
            done += 1

        # Lazily (re)start the pool; workers stay up for later calls. A worker still
        # holding items from an interrupted call (e.g. KeyboardInterrupt) is replaced so
        # its stale results cannot be mistaken for this call's.
        self._workers = [w for w in self._workers if (w.proc.is_alive() and not w.chunk) or self._reap(w)]
        while len(self._workers) < self.num_workers:
            self._workers.append(self._start_worker())
        startup_deadline = time.monotonic() + self.startup_timeout_s
        startup_failures = 0

        per_item_s = self.timeout_s + self.kill_grace_s
        while done < len(tasks):
            now = time.monotonic()
            for w in self._workers:
                if not (w.ready and not w.chunk and queue):
                    continue
                size = min(self.chunk_size, -(-len(queue) // (2 * len(self._workers))))
                chunk = [queue.popleft() for _ in range(min(size, len(queue)))]
                msg = [(t, completions[tasks[t][1][0]], golds[tasks[t][1][0]], fallback) for t in chunk]
                try:
                    w.conn.send(msg)
                except (BrokenPipeError, OSError):
                    queue.extendleft(reversed(chunk))  # dead worker: its sentinel fires below
                    continue
                w.chunk.extend(chunk)
                w.deadline = now + per_item_s

            busy = [w for w in self._workers if w.chunk]
            if busy:
                wait_s = max(0.0, min(w.deadline for w in busy) - now)
            else:
                wait_s = max(0.0, startup_deadline - now)
                if wait_s == 0.0:
                    raise RuntimeError(f"no scoring worker became ready within {self.startup_timeout_s:.0f}s")
            objs: list[Any] = [w.conn for w in self._workers] + [w.proc.sentinel for w in self._workers]
            ready = set(wait(objs, timeout=wait_s))

            # worker -> reason to give its current item (if any) before replacing it
            replace: dict[_Worker, str] = {}
            for w in self._workers:
                if w.conn in ready:
                    try:
                        while True:  # drain everything already sent
                            msg = w.conn.recv()
                            if msg[0] == "ready":
                                w.ready = True
                            elif w.chunk and msg[0] == w.chunk[0]:
                                w.chunk.popleft()
                                finish(msg[0], msg[1])
                                w.deadline = time.monotonic() + per_item_s
                            if not w.conn.poll():
                                break
                    except (EOFError, OSError):
                        replace[w] = "error: worker died"
                elif w.proc.sentinel in ready:
                    replace[w] = "error: worker died"
            now = time.monotonic()
            for w in self._workers:
                if w not in replace and w.chunk and now >= w.deadline:
                    self._kill(w)
                    replace[w] = "timeout"
            for w, reason in replace.items():
                if not w.ready:
                    startup_failures += 1
                    if startup_failures > 2 * self.num_workers:
                        w.proc.join(timeout=1.0)
                        raise RuntimeError(
                            "scoring workers keep dying during start-up "
                            f"(last exit code {w.proc.exitcode}); see their stderr"
                        )
                if w.chunk:
                    if reason != "timeout":
                        w.proc.join(timeout=1.0)
                        reason = f"{reason} (exit code {w.proc.exitcode})"
                    finish(w.chunk.popleft(), ScoreResult(0.0, None, reason))
                    queue.extendleft(reversed(w.chunk))  # the rest of its chunk goes back
                    w.chunk.clear()
                self._reap(w)
                self._workers.remove(w)
                self._workers.append(self._start_worker())
                startup_deadline = time.monotonic() + self.startup_timeout_s
        return results  # type: ignore[return-value]

    def _reap(self, w: _Worker) -> bool:
        """Clean up a worker that is gone; returns False so it is dropped from the pool."""
        if w.proc.is_alive():
            w.proc.kill()
        w.proc.join(timeout=2.0)
        try:
            w.conn.close()
        except OSError:
            pass
        return False

    def _cache_put(self, key: bytes, res: ScoreResult) -> None:
        if self.cache_size <= 0:
            return
        self._cache[key] = res
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


class _BoundScorer:
    """:meth:`Scorer.bound`: a :class:`Scorer` whose ``score_batch`` defaults to another
    ``answer_fallback``; everything else is the underlying scorer's."""

    def __init__(self, base: Scorer, answer_fallback: str) -> None:
        self._base = base
        self.answer_fallback = answer_fallback

    def score_batch(
        self, completions: Sequence[str], golds: Sequence[str], *, answer_fallback: str | None = None
    ) -> list[ScoreResult]:
        return self._base.score_batch(completions, golds, answer_fallback=answer_fallback or self.answer_fallback)

    def bound(self, answer_fallback: str) -> Scorer:
        return self._base.bound(answer_fallback)

    def __enter__(self) -> "_BoundScorer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._base.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)


# --------------------------------------------------------------------------- default

_default_scorer: Scorer | None = None
_default_lock = threading.Lock()


def get_default_scorer(answer_fallback: str | None = None) -> Scorer:
    """Process-wide shared :class:`Scorer` (default settings), created on first use and
    closed at interpreter exit, so training and evaluation reuse one warm pool.

    ``answer_fallback`` (``data.answer_fallback``; None or ``"none"`` = the paper's extraction
    only) returns that pool bound to the setting (:meth:`Scorer.bound`)."""
    global _default_scorer
    with _default_lock:
        if _default_scorer is None or _default_scorer._closed:
            _default_scorer = Scorer()
            atexit.register(_default_scorer.close)
        scorer = _default_scorer
    return scorer if answer_fallback is None else scorer.bound(answer_fallback)


__all__ = [
    "ANSWER_FALLBACKS",
    "DEFAULT_MAX_CHARS",
    "DEFAULT_TIMEOUT_S",
    "ScoreResult",
    "ScoreTimeout",
    "Scorer",
    "fallback_answer",
    "get_default_scorer",
    "has_boxed_answer",
    "score",
    "score_one",
]
