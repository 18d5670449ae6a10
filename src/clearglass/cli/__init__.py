"""Command line: `clearglass <command>`. Each module here registers one or more commands and calls the library."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from clearglass.errors import ClearglassError


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser, with every command module in this package registered."""
    parser = argparse.ArgumentParser(prog="clearglass", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the chosen command; bad input exits 2 with its message."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ClearglassError as e:
        print(f"clearglass {args.command}: error: {e}", file=sys.stderr)
        return 2
