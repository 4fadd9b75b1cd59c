"""Normalising golds written as prose (CHAMP's style) into the answer a solver would box.

CHAMP (Mao et al. 2024) writes many final answers as sentences: ``2 inequalities``, ``98 values``,
``C(10, 5), or equivalently 252``, ``The limit exists and is equal to 2/3``, ``5/14, or
approximately 35.7%``. math-verify parses such a gold as a product of letters (``2*E*E*a*i*...``)
or a set, so the right answer (``\\boxed{2}``) scores 0. :func:`normalize_gold` rewrites a gold
into the value the question asks for, by a short list of explicit rules (each one a regex that
only fires on that phrasing); anything no rule recognises is left as it was. The loader keeps the
untouched text beside the gold (``answer_original``).

Rules, in order:

1. ``A, or equivalently B`` / ``A, or an equivalent form such as B`` -> ``B`` (the closed form or
   number); ``A, or approximately B`` -> ``A`` (the exact value).
2. A trailing parenthetical in words is dropped: ``100 (i.e., all values)`` -> ``100``,
   ``0 (none of the values)`` -> ``0`` (not ``(x=2, y=8)``: no word of 3+ letters).
3. Sentences around a value: ``The limit exists and is equal to X``, ``The only possible value
   for the limit is X``, ``X is the only possible value``, ``... with a period of X`` -> ``X``;
   ``At least / At most / Exactly N <words>`` -> ``N`` (``one`` -> ``1``, ...);
   ``N <lower-case words>`` with N a number or one letter -> ``N`` (``2 inequalities``, ``n times``).
4. Plain-text notation into LaTeX (math-verify reads some of it, and only with non-nested
   parentheses): ``C(n, k)`` -> ``\\binom{n}{k}``, ``floor(x)`` -> ``\\lfloor x \\rfloor``,
   ``sqrt(x)`` -> ``\\sqrt{x}``, ``^(e)`` -> ``^{e}``, ``sum_(i=1)^n`` -> ``\\sum_{i=1}^{n}``,
   ``±`` -> ``\\pm``, ``−`` -> ``-``, ``≥`` -> ``\\ge``, ``...`` between factors -> ``\\cdots``.
5. What is left as a sentence (two or more words of letters and nothing else, e.g. ``No integer
   solutions``) is wrapped in ``\\text{...}``, so it is compared as one piece of text and not as a
   product of single letters (which any anagram would match). One-word golds (``Yes``, ``No``)
   are left alone: math-verify already compares them as text.
"""

from __future__ import annotations

import re

__all__ = ["normalize_gold"]

_WORD_NUMBERS = {
    "zero": "0",
    "no": "0",
    "none": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}

_EQUIVALENTLY = re.compile(r"^(?P<a>.+?),?\s+or\s+(?:equivalently|an equivalent form such as)\s+(?P<b>.+)$", re.I)
_APPROXIMATELY = re.compile(r"^(?P<a>.+?),?\s+or\s+approximately\s+(?P<b>.+)$", re.I)
_PROSE_NOTE = re.compile(r"[A-Za-z]{3,}")
_SENTENCES = [
    re.compile(r"^the limit exists and is equal to\s+(?P<x>.+)$", re.I),
    re.compile(r"^the only possible value (?:for|of) the limit is\s+(?P<x>.+)$", re.I),
    re.compile(r"^(?P<x>.+?)\s+is the only possible value$", re.I),
    re.compile(r"^.*,\s*with a period of\s+(?P<x>.+)$", re.I),
]
_COUNT_PHRASE = re.compile(r"^(?:at least|at most|exactly)\s+(?P<x>[-+]?\d+|[A-Za-z]+)(?:\s+[A-Za-z][\w\- ]*)?$", re.I)
_VALUE_WORDS = re.compile(r"^(?P<x>[-+]?\d+(?:\.\d+)?|[A-Za-z])\s+(?P<words>[a-z][a-z\-]*(?:\s+[a-z][a-z\-]*)*)$")
_BINOM = re.compile(r"\bC\(\s*([^(),]+?)\s*,\s*([^(),]+?)\s*\)")
_SUM = re.compile(r"\bsum_\(([^()]+)\)\^(\w+|\([^()]+\))\s*")
_PLAIN_WORDS = re.compile(r"^[A-Za-z][A-Za-z\-']*(?:[ ,]+[A-Za-z][A-Za-z\-']*)+\.?$")


def _close(s: str, open_at: int) -> int:
    """Index of the ``)`` matching the ``(`` at ``open_at``; -1 if unbalanced."""
    depth = 0
    for k in range(open_at, len(s)):
        depth += {"(": 1, ")": -1}.get(s[k], 0)
        if depth == 0:
            return k
    return -1


def _strip_prose_note(s: str) -> str:
    """Drop a trailing ``(...)`` written in words (``100 (i.e., all values)``); nested parentheses allowed."""
    if not s.endswith(")"):
        return s
    depth = 0
    for k in range(len(s) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(s[k], 0)
        if depth == 0:
            head, note = s[:k].rstrip(), s[k + 1 : -1]
            if head and k > 0 and s[k - 1].isspace() and _PROSE_NOTE.search(note):
                return head
            return s
    return s


def _calls_to_latex(s: str) -> str:
    """``floor(x)`` -> ``\\lfloor x \\rfloor``, ``sqrt(x)`` -> ``\\sqrt{x}``, ``^(e)`` -> ``^{e}``
    (balanced parentheses, nested calls too); an exponent that becomes a floor gets braces."""
    for name in ("floor(", "sqrt(", "^("):
        out, i = [], 0
        while True:
            j = s.find(name, i)
            if j >= 0 and name != "^(" and j > 0 and (s[j - 1].isalpha() or s[j - 1] == "\\"):
                out.append(s[i : j + len(name)])
                i = j + len(name)
                continue
            k = _close(s, j + len(name) - 1) if j >= 0 else -1
            if k < 0:
                out.append(s[i:])
                break
            inner = s[j + len(name) : k]
            if name == "floor(":
                rep = f"\\lfloor {inner} \\rfloor"
                rep = "{" + rep + "}" if j > 0 and s[j - 1] == "^" else rep
            elif name == "sqrt(":
                rep = f"\\sqrt{{{inner}}}"
            else:
                rep = f"^{{{inner}}}"
            out.append(s[i:j] + rep)
            i = k + 1
        s = "".join(out)
    return s


def _notation(s: str) -> str:
    s = s.replace("\u2212", "-").replace("±", "\\pm ").replace("∓", "\\mp ").replace("≥", "\\ge ").replace("≤", "\\le ")
    s = s.replace("…", "\\cdots ")
    s = re.sub(r"(?<=\))\.\.\.(?=\()", "\\\\cdots ", s)  # (x-2)...(x-2022): a product
    s = _BINOM.sub(r"\\binom{\1}{\2}", s)
    s = _SUM.sub(lambda m: f"\\sum_{{{m.group(1)}}}^{{{m.group(2).strip('()')}}} ", s)
    if "(" in s:
        s = _calls_to_latex(s)
    return s.strip()


def normalize_gold(text: str) -> str:
    """The value a prose gold asks for (see the module docstring); other golds come back unchanged
    (up to surrounding whitespace)."""
    s = text.strip()
    if not s:
        return s
    m = _EQUIVALENTLY.match(s)
    if m:
        s = m.group("b").strip()
    else:
        m = _APPROXIMATELY.match(s)
        if m:
            s = m.group("a").strip()
    s = _strip_prose_note(s)
    for rx in _SENTENCES:
        m = rx.match(s)
        if m:
            s = m.group("x").strip()
            break
    m = _COUNT_PHRASE.match(s)
    if m:
        x = m.group("x")
        x = _WORD_NUMBERS.get(x.lower(), x)
        if re.fullmatch(r"[-+]?\d+|[A-Za-z]", x):
            s = x
    m = _VALUE_WORDS.match(s)
    if m:
        s = m.group("x")
    s = s.rstrip(".") if re.search(r"\d\.$", s) else s
    s = _notation(s)
    if _PLAIN_WORDS.match(s) and " " in s:
        s = "\\text{" + s.rstrip(".") + "}"
    return s
