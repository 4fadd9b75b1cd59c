"""`python -m reports ...` = `harness report ...` (the same parser and command, without loading the harness CLI)."""

from __future__ import annotations

import argparse
import sys

from reports.cli import add_report_parser, cmd_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports")
    sub = parser.add_subparsers(dest="command")
    add_report_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "report":
        argv = ["report", *argv]
    return cmd_report(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
