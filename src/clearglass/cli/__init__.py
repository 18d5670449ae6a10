"""Command line: `clearglass <command>`. Each module here registers one or more commands and calls the library."""

from __future__ import annotations

import argparse
import errno
import importlib
import pkgutil
import sys

from clearglass import __version__
from clearglass.errors import ClearglassError
from clearglass.magic.schema import escaped

DESCRIPTION = """\
Teach CLIP-family models abstract concepts: build a grouped dataset (MAGIC), train with the grouped contrastive
loss, and evaluate concept recognition, zero-shot classification per level and caption retrieval."""

EXAMPLES = """\
examples:
  clearglass demo --quick                       the whole pipeline on rendered emoji, offline
  clearglass validate data/emoji/magic.json     every problem of a dataset
  clearglass build --source emoji --labeler truth --out data/emoji/magic.json
  clearglass train --config default-grouped data=data/emoji/magic.json out=runs/cg
  clearglass eval --model runs/cg/checkpoints/step_000500.pt --data data/emoji/magic.json --out results.json

`clearglass COMMAND --help` describes a command. Bad input exits 2 with a one-line message naming the file."""

_OS_REASONS = {
    errno.EEXIST: "exists and is not a folder; expected a folder, or a path that does not exist yet",
    errno.ENOTDIR: "a part of this path is a file; expected folders",
    errno.EISDIR: "is a folder; expected a file",
    errno.ENOENT: "not found",
    errno.EACCES: "permission denied",
    errno.ENOSPC: "no space left on the device",
    errno.EROFS: "on a read-only file system",
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser, with every command module in this package registered."""
    parser = argparse.ArgumentParser(prog="clearglass", description=DESCRIPTION, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"clearglass {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}").register(sub)
    return parser


def describe_os_error(error: OSError) -> str:
    """One line for an OSError about a user's path: the path and what was expected there."""
    reason = _OS_REASONS.get(error.errno, error.strerror or type(error).__name__)
    return f"{error.filename}: {reason}"


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the chosen command. Bad input, and an OSError about a named path (a folder where a
    file should be, no permission, a full disk), exit 2 with one line; Ctrl-C exits 130. Anything else is a bug and
    keeps its traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ClearglassError as e:
        print(f"clearglass {args.command}: error: {escaped(str(e))}", file=sys.stderr)  # one line, nothing raw
        return 2
    except OSError as e:
        if e.filename is None:
            raise
        print(f"clearglass {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clearglass {args.command}: interrupted", file=sys.stderr)
        return 130
