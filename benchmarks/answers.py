"""Reading an answer without math-verify: the ``answer_fallback`` modes and the format reward's boxed-answer check.

Pure, cheap functions on completion text (the configuration validates ``data.answer_fallback`` against
:data:`ANSWER_FALLBACKS` without importing math-verify); :mod:`benchmarks.scoring` uses them.
"""

from __future__ import annotations

import re

#: ``answer_fallback`` settings: what to read when a completion has no boxed / anchored LaTeX answer.
ANSWER_FALLBACKS = ("none", "answer_is", "last_number")

_ANSWER_IS_RE = re.compile(r"\banswer\W{0,4}(?:is\b|:|=)\s*:?", re.IGNORECASE)
_NUMBER_RE = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?(?![\w])")
_MATH_SPAN_RE = re.compile(r"\$\$?(?P<m>[^$]+?)\$\$?|\\\((?P<p>.+?)\\\)")


def fallback_answer(text: str, mode: str) -> str | None:
    """The answer a completion gives without ``\\boxed{}``, under an ``answer_fallback`` mode.

    * ``"none"``: None (the reference: no answer without LaTeX extraction).
    * ``"answer_is"``: the text after the last "the answer is" / "final answer:" / "Answer:" up to
      the end of its line or sentence; the first ``$...$`` / ``\\(...\\)`` span in it if it has one.
    * ``"last_number"``: the last number of the text (``-3``, ``1,000``, ``2.5``, ``3/4``).

    Pure and cheap; the scorer uses it only when the normal extraction finds nothing.
    """
    if mode == "none":
        return None
    if mode == "answer_is":
        found = None
        for found in _ANSWER_IS_RE.finditer(text):
            pass
        if found is None:
            return None
        ans = text[found.end() :].split("\n", 1)[0]
        span = _MATH_SPAN_RE.search(ans)
        if span:
            ans = span.group("m") or span.group("p") or ""
        else:
            ans = re.split(r"\.(?:\s|$)|;|\s+(?:so|because|since|which)\s+", ans, maxsplit=1)[0]
        ans = ans.strip().strip("*").strip().rstrip(".,;:!").strip()
        return ans or None
    if mode == "last_number":
        found = None
        for found in _NUMBER_RE.finditer(text):
            pass
        return re.sub(r"[\s,]", "", found.group(0)) if found else None
    raise ValueError(f"answer_fallback must be one of {', '.join(ANSWER_FALLBACKS)}, got {mode!r}")


def has_boxed_answer(text: str) -> bool:
    """True when ``text`` has a closed ``\\boxed{...}`` (or ``\\fbox{...}``) with something inside:
    what the format reward pays for (an empty ``\\boxed{}`` or one never closed earns nothing)."""
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0 and text[m.end() : i - 1].strip(" \t\n$~"):
            return True
    return False
