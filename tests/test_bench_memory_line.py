"""bench/check_memory_ratio.py: parsing and checking bench/bench_memory.py's last line (fast, no benchmark run)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


check_mod = _load("check_memory_ratio")

GOOD = "memory ratio chunked/full: 0.21; fsdp/ddp: 0.55"


def test_parse_good_line():
    assert check_mod.parse_line(GOOD) == {"chunked/full": 0.21, "fsdp/ddp": 0.55}
    assert check_mod.check("table\n...\n" + GOOD + "\n\n") == (
        0,
        ["ok chunked/full: 0.21 <= target 0.35", "ok fsdp/ddp: 0.55 <= target 0.60"],
    )


def test_n_a_parts():
    assert check_mod.parse_line("memory ratio chunked/full: n/a; fsdp/ddp: 0.40") == {
        "chunked/full": None,
        "fsdp/ddp": 0.4,
    }
    status, msgs = check_mod.check("memory ratio chunked/full: 0.30; fsdp/ddp: n/a")
    assert status == 0 and "fsdp/ddp: n/a (not measured)" in msgs
    assert check_mod.check("memory ratio chunked/full: 0.30; fsdp/ddp: n/a", require_all=True)[0] == 2


@pytest.mark.parametrize(
    "line",
    [
        "memory ratio chunked/full: 0.21",  # the old, single-part line
        "memory ratio chunked/full: 0.21; fsdp/ddp:",
        "memory ratio chunked/full: abc; fsdp/ddp: 0.5",
        "memory ratio fsdp/ddp: 0.5; chunked/full: 0.2",
        "",
    ],
)
def test_malformed_line(line):
    if line:
        with pytest.raises(ValueError, match="not a memory-ratio line"):
            check_mod.parse_line(line)
    status, msgs = check_mod.check(line)
    assert status == 2 and msgs[0].startswith("error:")


def test_only_the_last_line_counts():
    assert check_mod.check(GOOD + "\nsomething else")[0] == 2


@pytest.mark.parametrize(
    "line,failing",
    [
        ("memory ratio chunked/full: 0.36; fsdp/ddp: 0.50", "chunked/full"),
        ("memory ratio chunked/full: 0.20; fsdp/ddp: 1.10", "fsdp/ddp"),
        ("memory ratio chunked/full: n/a; fsdp/ddp: 0.61", "fsdp/ddp"),
    ],
)
def test_over_target(line, failing):
    status, msgs = check_mod.check(line)
    assert status == 1
    assert [m for m in msgs if m.startswith("FAIL")] == [m for m in msgs if m.startswith(f"FAIL {failing}:")] != []
    assert check_mod.check(line, chunked_max=0.5, fsdp_max=1.2)[0] == 0  # the targets are arguments


def test_cli(tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("table\n" + "memory ratio chunked/full: 0.20; fsdp/ddp: 0.70\n")
    script = str(BENCH / "check_memory_ratio.py")
    bad = subprocess.run([sys.executable, script, str(out)], capture_output=True, text=True)
    assert bad.returncode == 1 and "FAIL fsdp/ddp: 0.70 > target 0.60" in bad.stderr
    ok = subprocess.run(
        [sys.executable, script, "--fsdp-max", "0.8"], input=out.read_text(), capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr


def test_bench_prints_the_checked_line():
    """bench_memory.py's formatter and the checker agree (n/a for a skipped part)."""
    fmt = _load("bench_memory").format_last_line
    assert fmt(0.2049, None) == "memory ratio chunked/full: 0.20; fsdp/ddp: n/a"
    assert check_mod.parse_line(fmt(None, 0.555)) == {"chunked/full": None, "fsdp/ddp": 0.56}
    assert check_mod.parse_line(fmt(0.3, 1.234)) == {"chunked/full": 0.3, "fsdp/ddp": 1.23}
