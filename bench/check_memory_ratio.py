"""Check bench/bench_memory.py's last line against the memory targets (issue 15).

Run: ``python bench/bench_memory.py | tee out.txt; python bench/check_memory_ratio.py out.txt``
(or pipe: ``python bench/bench_memory.py | python bench/check_memory_ratio.py``).

The last non-empty line must read ``memory ratio chunked/full: X.XX; fsdp/ddp: Y.YY``, each value a number or
``n/a`` (a part that was skipped: ``--skip-fsdp`` / ``--only-fsdp``). Exit status: 0 when every measured ratio is
within its target (``--chunked-max``, default 0.35; ``--fsdp-max``, default 0.6), 1 when one is over, 2 when the
line is missing or malformed, or with ``--require-all`` when a part is ``n/a``.
"""

from __future__ import annotations

import argparse
import re
import sys

LINE = re.compile(r"^memory ratio chunked/full: (?P<chunked>n/a|\d+(?:\.\d+)?); fsdp/ddp: (?P<fsdp>n/a|\d+(?:\.\d+)?)$")


def parse_line(line: str) -> dict[str, float | None]:
    """``{"chunked/full": x, "fsdp/ddp": y}`` from the line (None for ``n/a``); ValueError when malformed."""
    m = LINE.match(line.strip())
    if not m:
        raise ValueError(
            f"not a memory-ratio line: {line.strip()!r} (expected 'memory ratio chunked/full: X.XX; fsdp/ddp: Y.YY')"
        )
    return {k: None if v == "n/a" else float(v) for k, v in (("chunked/full", m["chunked"]), ("fsdp/ddp", m["fsdp"]))}


def last_line(text: str) -> str:
    lines = [x for x in text.splitlines() if x.strip()]
    if not lines:
        raise ValueError("no output to check (empty input)")
    return lines[-1]


def check(
    text: str, chunked_max: float = 0.35, fsdp_max: float = 0.6, require_all: bool = False
) -> tuple[int, list[str]]:
    """Exit status and messages for bench_memory.py's output ``text`` (see the module docstring)."""
    try:
        ratios = parse_line(last_line(text))
    except ValueError as e:
        return 2, [f"error: {e}"]
    targets = {"chunked/full": chunked_max, "fsdp/ddp": fsdp_max}
    status, msgs = 0, []
    for name, value in ratios.items():
        if value is None:
            msgs.append(f"{name}: n/a (not measured)" + (": required" if require_all else ""))
            if require_all:
                status = max(status, 2)
        elif value > targets[name]:
            msgs.append(f"FAIL {name}: {value:.2f} > target {targets[name]:.2f}")
            status = max(status, 1)
        else:
            msgs.append(f"ok {name}: {value:.2f} <= target {targets[name]:.2f}")
    return status, msgs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file", nargs="?", default="-", help="bench_memory.py's output (default: stdin)")
    ap.add_argument("--chunked-max", type=float, default=0.35, help="target for chunked/full (default 0.35)")
    ap.add_argument("--fsdp-max", type=float, default=0.6, help="target for fsdp/ddp (default 0.6)")
    ap.add_argument("--require-all", action="store_true", help="fail (status 2) when a ratio is n/a")
    args = ap.parse_args(argv)
    if args.file == "-":
        text = sys.stdin.read()
    else:
        with open(args.file) as fh:
            text = fh.read()
    status, msgs = check(text, args.chunked_max, args.fsdp_max, args.require_all)
    for msg in msgs:
        print(msg, file=sys.stderr if status else sys.stdout)
    return status


if __name__ == "__main__":
    sys.exit(main())
