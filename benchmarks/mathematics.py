"""DeepMind's mathematics_dataset as an offline training set and benchmark (``dm_*`` names).

Source: the generator of Saxton, Grefenstette, Hill and Kohli, "Analysing Mathematical Reasoning
Abilities of Neural Models" (ICLR 2019, arXiv:1904.01557), PyPI ``mathematics-dataset`` (Apache-2.0,
DeepMind). Nothing is downloaded: problems are *generated* here, deterministically from a seed.

Names (all usable as ``data.train`` and as ``eval.benchmarks`` entries)::

    dm_<module>[-<level>]      one generator module, e.g. dm_arithmetic__add_or_sub, dm_numbers__gcd-medium
    dm_easy[-<level>]          a mix of the easiest modules (:data:`MIXES`), equal shares

``<module>`` is the generator's own ``<area>__<name>`` (e.g. ``algebra__linear_1d``); only the modules in
:data:`MODULES` are offered (every one of them was checked to generate and to score right, see below).
``<level>`` is the generator's difficulty (entropy) regime: ``easy`` (default; ``train-easy``),
``medium`` (``train-medium``), ``hard`` (``train-hard``) or ``interpolate`` (the test regime).

Splits. Every problem goes to ``train`` or ``test`` by a stable hash of its text (one in
:data:`TEST_MODULUS` to ``test``), as in ``benchmarks.arith``: the two splits never share a problem,
whatever the seed, module, level or mix. The benchmark (test split) is generated with the fixed seed
:data:`TEST_SEED`; a training set with ``seed`` (the trainer passes ``data.shuffle_seed``). Problems are
unique within a split (deduplicated by text). Default sizes: :data:`DEFAULT_SIZES` (train 1,024 as the
paper's ``data.train_size``, test 200); a mix splits its size equally over its modules.

Determinism. The generator draws from Python's ``random``, NumPy's global ``np.random`` and SymPy's
``sympy.core.random.rng``. Each (module, level, split, seed) is generated inside :func:`_seeded`, which
seeds all three from a hash of that key and restores their previous states afterwards, so the same name
and seed give the same rows in any process (and the caller's random streams are left untouched).

Answers. Golds are the generator's answers, checked to score 1 through ``benchmarks.scoring`` when
boxed and 0 when changed. ``True``/``False`` become ``Yes``/``No`` (:func:`normalize_answer`; the
verifier reads ``true`` as a product of symbols, so a lower-case ``true`` would not match ``True``, while
``yes``, ``Yes`` and ``\\text{yes}`` all match ``Yes``); the original is kept in ``answer_original``.
Problems whose answer has more than :data:`MAX_DECIMALS` decimal places are redrawn (the verifier
compares decimals rounded to 6 places, so such a gold would accept wrong neighbours), as upstream
redraws over-long questions and answers. Modules whose answers the verifier cannot score right are left
out (:data:`EXCLUDED` says why). Rows: ``{"id", "problem", "answer", "benchmark", "module", "level",
"answer_original"}``.

Compatibility shims (:func:`_apply_shims`, applied once when the generator is first used; nothing in
site-packages is edited, and nothing outside the generator's own modules changes but one alias):

* SymPy >= 1.12 moved ``base_solution_linear`` into ``sympy.solvers.diophantine.diophantine``: the alias
  is added back to the ``sympy.solvers.diophantine`` package;
* NumPy 2 removed ``np.object`` and ``ndarray.itemset``: the generator's ``sample/polynomials.py`` (their
  only user) gets a NumPy proxy providing both (without it the ``*_composed``, ``calculus`` and most
  ``polynomials`` modules fail);
* Python >= 3.12's ``randint`` rejects integral floats, which ``numbers__round_number`` passes: the
  generator's modules get a ``random`` proxy (the same global stream) that converts them;
* determinism: ``Context.pop`` (``random.choice`` over a *set* of letters) and ``expand_entities`` (a
  shuffle of ``list(set(entities))``) depended on PYTHONHASHSEED and memory addresses; both are replaced
  by the same code over a sorted / first-seen order.

With these, all 56 generator modules run at every level (``calculus__differentiate`` included, which
fails without the NumPy shim); 40 are offered.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import random
import re
import sys
import types
from functools import lru_cache
from typing import Any, Callable, Iterator

BENCHMARK_PREFIX = "dm_"
LEVELS = {"easy": "train-easy", "medium": "train-medium", "hard": "train-hard", "interpolate": "interpolate"}
DEFAULT_LEVEL = "easy"
SPLITS = ("train", "test")
DEFAULT_SIZES = {"train": 1024, "test": 200}
#: One problem in TEST_MODULUS (by hash of its text) belongs to the test split.
TEST_MODULUS = 4
#: Seed of every test split (benchmarks take no seed).
TEST_SEED = 1904_01557
#: The generator's own limits (``generate_settings``): longer questions/answers are redrawn, as upstream.
MAX_QUESTION_LENGTH = 160
MAX_ANSWER_LENGTH = 30

#: Modules offered (``dm_<module>``): they generate under NumPy 2 / SymPy 1.14 with the shims, and their answers
#: are integers, decimals (at most 6 places, see MAX_DECIMALS), fractions, Yes/No, a letter (multiple choice or a
#: variable) or a set of numbers (prime factors), which ``benchmarks.scoring`` reads: 200 problems per module and
#: level score 1 when boxed and 0 when changed (tests/test_mathgen.py checks the easy level).
MODULES: tuple[str, ...] = (
    "algebra__linear_1d",
    "algebra__linear_1d_composed",
    "algebra__linear_2d",
    "algebra__linear_2d_composed",
    "algebra__sequence_next_term",
    "arithmetic__add_or_sub",
    "arithmetic__add_sub_multiple",
    "arithmetic__div",
    "arithmetic__mixed",
    "arithmetic__mul",
    "arithmetic__mul_div_multiple",
    "arithmetic__nearest_integer_root",
    "comparison__closest",
    "comparison__closest_composed",
    "comparison__kth_biggest",
    "comparison__kth_biggest_composed",
    "comparison__pair",
    "comparison__pair_composed",
    "measurement__conversion",
    "numbers__div_remainder",
    "numbers__div_remainder_composed",
    "numbers__gcd",
    "numbers__gcd_composed",
    "numbers__is_factor",
    "numbers__is_factor_composed",
    "numbers__is_prime",
    "numbers__is_prime_composed",
    "numbers__lcm",
    "numbers__lcm_composed",
    "numbers__list_prime_factors",
    "numbers__list_prime_factors_composed",
    "numbers__place_value",
    "numbers__place_value_composed",
    "numbers__round_number",
    "numbers__round_number_composed",
    "polynomials__coefficient_named",
    "polynomials__evaluate",
    "polynomials__evaluate_composed",
    "probability__swr_p_level_set",
    "probability__swr_p_sequence",
)

_EXPR = (
    "answers are SymPy expressions written with ** (e.g. 2*g*(g - 1)*(g + 1)**2); the verifier reads predictions as "
    "LaTeX only, so a correct answer scores 1 only when written character for character as the generator does"
)
#: Generator modules that run (with the shims) but are not offered, and why: their answers cannot be scored right.
EXCLUDED: dict[str, str] = {
    "algebra__polynomial_roots": "half the problems are 'Factor ...' whose " + _EXPR,
    "algebra__polynomial_roots_composed": "half the problems are 'Factor ...' whose " + _EXPR,
    "algebra__sequence_nth_term": _EXPR,
    "arithmetic__add_or_sub_in_base": "digits above 9 are letters: '23b9' is read as the product 23*b*9, so e.g. '9b23' scores 1",
    "numbers__base_conversion": "digits above 9 are letters: '23b9' is read as the product 23*b*9, so e.g. '9b23' scores 1",
    "arithmetic__simplify_surd": "answers such as 3*sqrt(3)/5 do not even score 1 against themselves (sqrt without a backslash)",
    "calculus__differentiate": _EXPR,
    "calculus__differentiate_composed": _EXPR,
    "comparison__sort": "the verifier compares '-4, -1, 1, 2' as a set: a wrong order scores 1",
    "comparison__sort_composed": "the verifier compares the list as a set: a wrong order scores 1",
    "measurement__time": "'8:15 AM' is read as 8/(15*a*m): e.g. '2:05 PM' and '4:10 PM' are equal to it",
    "polynomials__add": _EXPR,
    "polynomials__collect": _EXPR,
    "polynomials__compose": _EXPR,
    "polynomials__expand": _EXPR,
    "polynomials__simplify_power": _EXPR,
}

#: Mixed sets: name -> modules (equal shares, level from the name's suffix, default easy).
MIXES: dict[str, tuple[str, ...]] = {
    "dm_easy": (
        "arithmetic__add_or_sub",
        "arithmetic__add_sub_multiple",
        "arithmetic__mul",
        "algebra__linear_1d",
        "comparison__pair",
        "numbers__div_remainder",
        "numbers__gcd",
        "numbers__place_value",
    ),
}

#: The verifier compares decimals rounded to 6 places (math-verify): a problem whose answer has more decimal places
#: would accept wrong neighbours ("0.08415567" == "0.08415568"), so it is redrawn, like upstream's too-long answers.
MAX_DECIMALS = 6
_LONG_DECIMAL = re.compile(r"\.\d{%d,}" % (MAX_DECIMALS + 1))

CITATION = (
    "Saxton, Grefenstette, Hill, Kohli. Analysing Mathematical Reasoning Abilities of Neural Models. "
    "ICLR 2019, arXiv:1904.01557. Generator: PyPI mathematics-dataset (DeepMind, Apache-2.0)."
)


class MathGenError(ValueError):
    """A ``dm_*`` name or size cannot be served (unknown module/level, too few distinct problems, no package)."""


# ------------------------------------------------------------------------------------------------
# names


def is_dm_name(name: str) -> bool:
    return isinstance(name, str) and name.startswith(BENCHMARK_PREFIX)


def parse_name(name: str) -> tuple[tuple[str, ...], str]:
    """``dm_<module>[-<level>]`` / ``dm_easy[-<level>]`` -> (modules, level key); :class:`MathGenError` otherwise."""
    if not is_dm_name(name):
        raise MathGenError(f"'{name}' is not a mathematics_dataset name (dm_<module>[-<level>])")
    base, sep, level = name.partition("-")
    if not sep:
        level = DEFAULT_LEVEL
    if level not in LEVELS:
        raise MathGenError(f"'{name}': unknown level '{level}'; levels: {', '.join(LEVELS)} (default {DEFAULT_LEVEL})")
    if base in MIXES:
        return MIXES[base], level
    module = base[len(BENCHMARK_PREFIX) :]
    if module not in MODULES:
        why = f" ({EXCLUDED[module]})" if module in EXCLUDED else ""
        raise MathGenError(
            f"'{name}': module '{module}' is not offered{why}; offered: {', '.join(MODULES)}; mixes: {', '.join(MIXES)}"
        )
    return (module,), level


def base_names() -> list[str]:
    """The names registered as benchmarks / training sets (default level); ``-<level>`` variants resolve too."""
    return sorted(MIXES) + [BENCHMARK_PREFIX + m for m in MODULES]


# ------------------------------------------------------------------------------------------------
# the generator, with its shims


def _numpy_proxy() -> types.ModuleType:
    """A stand-in for ``numpy`` inside the generator's ``sample/polynomials.py`` with the NumPy 1 API it uses."""
    import numpy

    class ItemsetArray(numpy.ndarray):
        """ndarray with NumPy 1's ``itemset(index, value)`` (removed in NumPy 2)."""

        def itemset(self, index, value):  # noqa: D401
            self[index] = value

    class NumpyCompat(types.ModuleType):
        object = object

        def __getattr__(self, attr: str) -> Any:
            return getattr(numpy, attr)

        @staticmethod
        def zeros(*a: Any, **k: Any) -> Any:
            return numpy.zeros(*a, **k).view(ItemsetArray)

        @staticmethod
        def empty(*a: Any, **k: Any) -> Any:
            return numpy.empty(*a, **k).view(ItemsetArray)

    return NumpyCompat("numpy")


_SHIMMED = False


def _apply_shims() -> None:
    """Make the 2019 generator import and run under NumPy 2 and SymPy >= 1.12 (idempotent)."""
    global _SHIMMED
    if _SHIMMED:
        return
    # SymPy >= 1.12: base_solution_linear lives in sympy.solvers.diophantine.diophantine only. (import_module:
    # `import sympy.solvers.diophantine as m` would bind the *function* diophantine.)
    pkg = importlib.import_module("sympy.solvers.diophantine")
    if not hasattr(pkg, "base_solution_linear"):
        pkg.base_solution_linear = importlib.import_module("sympy.solvers.diophantine.diophantine").base_solution_linear
    # NumPy 2: np.object and ndarray.itemset are gone; only sample/polynomials.py uses them (the proxy is also
    # right under NumPy 1, so it is installed whatever the version).
    poly = importlib.import_module("mathematics_dataset.sample.polynomials")
    poly.np = _numpy_proxy()
    _make_deterministic(importlib.import_module("mathematics_dataset.util.composition"))
    # Python >= 3.12: randint/randrange reject floats; numbers.round_number passes integral ones (50.0).
    importlib.import_module("mathematics_dataset.modules.modules")  # imports every generator module
    proxy = _random_proxy()
    for mod_name, mod in list(sys.modules.items()):
        if mod_name.startswith("mathematics_dataset.") and getattr(mod, "random", None) is random:
            mod.random = proxy
    _SHIMMED = True


def _random_proxy() -> types.ModuleType:
    """``random`` for the generator: the same global stream, but ``randint``/``randrange`` take integral floats."""

    def _int(x: Any) -> Any:
        return int(x) if isinstance(x, float) and x.is_integer() else x

    class RandomCompat(types.ModuleType):
        def __getattr__(self, attr: str) -> Any:
            return getattr(random, attr)

        @staticmethod
        def randint(a: Any, b: Any) -> int:
            return random.randint(_int(a), _int(b))

        @staticmethod
        def randrange(start: Any, stop: Any = None, step: Any = 1) -> int:
            return random.randrange(_int(start), _int(stop), _int(step))

    return RandomCompat("random")


def _make_deterministic(comp: types.ModuleType) -> None:
    """Two places where the generator's output depends on set order, i.e. on PYTHONHASHSEED or on memory addresses.

    ``Context.pop`` draws a variable name with ``random.choice(list(a_set_of_letters))`` and ``expand_entities``
    shuffles ``list(set(entities))`` (entities hash by id). Both are replaced by the same code drawing from a
    sorted / first-seen order: the same distribution, but the same problems for a seed in every process.
    (Adapted from mathematics_dataset/util/composition.py, Apache-2.0, DeepMind.)"""

    def pop(self: Any) -> str:
        allowed = (
            comp._ALLOWED_SYMBOLS.difference(self._relation_symbols)
            .difference(self._self_symbols)
            .difference(self._child_symbols)
        )
        if not allowed:
            raise ValueError("Ran out of symbols")
        symbol = random.choice(sorted(allowed))
        self._self_symbols.add(symbol)
        return symbol

    def expand_entities(context: Any, **kwargs: Any) -> tuple[str, dict]:
        kwargs = kwargs.copy()
        entities = list(dict.fromkeys(context.child_entities))  # unique, first-seen order
        for key, maybe_entity in kwargs.items():
            if isinstance(maybe_entity, comp.Entity):
                if maybe_entity not in entities:
                    entities.append(maybe_entity)
                kwargs[key] = maybe_entity.handle
        random.shuffle(entities)
        child_descriptions = []
        for entity in entities:
            child_descriptions.append(entity.child_description)
            if not entity.expression_used:
                child_descriptions.append(entity.description)
        return " ".join(s for s in child_descriptions if s), kwargs

    comp.Context.pop = pop
    comp.expand_entities = expand_entities


def _entropy_fn(level: int, num_levels: int) -> Callable[[tuple[float, float]], tuple[float, float]]:
    """The generator's ``generate._make_entropy_fn``: the ``level``-th of ``num_levels`` slices of an entropy range."""
    lower, upper = level / num_levels, (level + 1) / num_levels

    def modify(range_: tuple[float, float]) -> tuple[float, float]:
        length = range_[1] - range_[0]
        return range_[0] + lower * length, range_[0] + upper * length

    return modify


def _flatten(tree: dict, prefix: str | None = None, out: dict | None = None) -> dict[str, Callable]:
    out = {} if out is None else out
    for key, value in tree.items():
        full = f"{prefix}__{key}" if prefix else key
        if isinstance(value, dict):
            _flatten(value, full, out)
        else:
            out[full] = value
    return out


@lru_cache(maxsize=None)
def _generators(level: str) -> dict[str, Callable]:
    """Module name -> problem generator for a level key (as ``generate.init_modules(train_split=True)``)."""
    try:
        _apply_shims()
        from mathematics_dataset.modules import modules
    except ImportError as e:
        raise MathGenError(
            f"the dm_* data sets need the mathematics-dataset package (pip install mathematics-dataset): {e}"
        ) from e
    regime = LEVELS[level]
    with _seeded("init"):  # building the module table draws nothing today; keep it that way for the caller
        if regime == "interpolate":
            tree = modules.test()
        else:
            tree = modules.train(_entropy_fn(("train-easy", "train-medium", "train-hard").index(regime), 3))
    return _flatten(tree)


def _seed_int(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big")


@contextlib.contextmanager
def _seeded(key: str) -> Iterator[None]:
    """Seed ``random``, ``np.random`` and SymPy's rng from ``key``; restore their states on exit."""
    import numpy as np
    import sympy.core.random as sympy_random

    py_state, np_state, sp_state = random.getstate(), np.random.get_state(), sympy_random.rng.getstate()
    s = _seed_int(key)
    random.seed(s)
    np.random.seed(s)
    sympy_random.rng.seed(s)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        sympy_random.rng.setstate(sp_state)


def split_of(problem: str) -> str:
    digest = hashlib.sha256(problem.encode("utf-8")).digest()
    return "test" if int.from_bytes(digest[:8], "big") % TEST_MODULUS == 0 else "train"


# ------------------------------------------------------------------------------------------------
# answers


def normalize_answer(answer: str) -> str:
    """The gold as written in our rows: ``True``/``False`` -> ``Yes``/``No``; everything else unchanged."""
    return {"True": "Yes", "False": "No"}.get(answer, answer)


# ------------------------------------------------------------------------------------------------
# generation


@lru_cache(maxsize=256)
def _generate_module(module: str, level: str, split: str, seed: int, n: int) -> tuple[tuple[str, str], ...]:
    """``n`` distinct (question, answer) pairs of one module in ``split``; deterministic in all arguments."""
    gen = _generators(level).get(module)
    if gen is None:
        raise MathGenError(f"module '{module}' is not in this mathematics_dataset version at level '{level}'")
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    max_draws = 50 * n + 1000
    draws = 0
    with _seeded(f"dm|{module}|{level}|{split}|{seed}"):
        while len(out) < n:
            if draws >= max_draws:
                raise MathGenError(
                    f"dm_{module} ({level}, {split}): only {len(out)} distinct problems in {draws} draws, "
                    f"{n} were asked for; ask for fewer or a harder level"
                )
            draws += 1
            problem = gen()
            question, answer = str(problem.question), str(problem.answer)
            if len(question) > MAX_QUESTION_LENGTH or len(answer) > MAX_ANSWER_LENGTH:
                continue  # as upstream's sample_from_module
            if _LONG_DECIMAL.search(answer):
                continue  # not scorable exactly (see MAX_DECIMALS)
            if question in seen or split_of(question) != split:
                continue
            seen.add(question)
            out.append((question, answer))
    return tuple(out)


def _shares(n: int, k: int) -> list[int]:
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def make_dm(name: str, split: str, n: int | None = None, seed: int | None = None) -> list[dict[str, str]]:
    """Rows of the ``dm_*`` set ``name`` in ``split`` (``train`` or ``test``).

    ``n`` defaults to :data:`DEFAULT_SIZES`; ``seed`` to :data:`TEST_SEED` for the test split (the one
    the benchmark uses) and 42 for train. A mix draws ``n / len(modules)`` problems of each module (the
    same as the first rows of that module alone) and lists them in a seed-shuffled order.
    """
    if split not in SPLITS:
        raise MathGenError(f"{name}: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    modules, level = parse_name(name)
    n = DEFAULT_SIZES[split] if n is None else int(n)
    if n < 1:
        raise MathGenError(f"{name}: the size must be >= 1, got {n}")
    seed = (TEST_SEED if split == "test" else 42) if seed is None else int(seed)
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for module, k in zip(modules, _shares(n, len(modules))):
        if k == 0:
            continue
        for question, answer in _generate_module(module, level, split, seed, k):
            if question in seen:  # two modules can word a problem the same way
                continue
            seen.add(question)
            rows.append(
                {
                    "problem": question,
                    "answer": normalize_answer(answer),
                    "answer_original": answer,
                    "module": module,
                    "level": level,
                }
            )
    if len(modules) > 1:
        random.Random(f"{name}|{split}|{seed}").shuffle(rows)
    return [
        {
            "id": f"{name}-{split}-{i}",
            "problem": r["problem"],
            "answer": r["answer"],
            "benchmark": name,
            "module": r["module"],
            "level": r["level"],
            "answer_original": r["answer_original"],
        }
        for i, r in enumerate(rows)
    ]


__all__ = [
    "CITATION",
    "DEFAULT_LEVEL",
    "DEFAULT_SIZES",
    "EXCLUDED",
    "LEVELS",
    "MIXES",
    "MODULES",
    "MathGenError",
    "TEST_MODULUS",
    "TEST_SEED",
    "base_names",
    "is_dm_name",
    "make_dm",
    "normalize_answer",
    "parse_name",
    "split_of",
]
