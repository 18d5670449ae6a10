"""`clearglass validate` and `clearglass stats`: check and summarise a MAGIC dataset file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clearglass.magic.schema import load_concepts
from clearglass.magic.stats import dataset_stats, format_stats
from clearglass.magic.validate import validate


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `validate` and `stats` commands."""
    v = subparsers.add_parser(
        "validate", help="report every problem of a MAGIC dataset file",
        description="Report every problem of a MAGIC dataset file (one line each, naming the record and field) and "
                    "exit 1 if there is any: duplicate concepts or image ids, empty captions, unknown hard negatives, "
                    "disagreeing level chains, image ids outside the image root, missing or unreadable image files.",
        epilog="example: clearglass validate data/emoji/magic.json --images data/emoji")
    v.add_argument("dataset", type=Path, help="MAGIC dataset JSON")
    v.add_argument("--images", type=Path, help="image root (default: the dataset file's folder)")
    v.add_argument("--no-images", action="store_true", help="do not check the image files (ids are still checked)")
    v.add_argument("--allow-outside-root", action="store_true",
                   help="accept image ids that are absolute paths or lead out of the image root")
    v.set_defaults(func=run_validate)
    s = subparsers.add_parser(
        "stats", help="summarise a MAGIC dataset file",
        description="Summarise a MAGIC dataset file: concepts and images per split, group sizes, hard-negative "
                    "coverage, distinct concepts per level.",
        epilog="example: clearglass stats data/emoji/magic.json --json")
    s.add_argument("dataset", type=Path, help="MAGIC dataset JSON")
    s.add_argument("--json", action="store_true", help="print the stats as JSON")
    s.set_defaults(func=run_stats)


def run_validate(args: argparse.Namespace) -> int:
    """Print every problem; exit 1 if there is any."""
    problems = validate(args.dataset, args.images, check_images=not args.no_images,
                        allow_outside_root=args.allow_outside_root)
    for p in problems:
        print(p)
    print(f"{args.dataset}: {len(problems)} problem(s)")
    missing = [p for p in problems if p.missing_under is not None]
    if missing:
        print(f"{args.dataset}: {len(missing)} image file(s) missing under the image root {missing[0].missing_under}; "
              "if the pictures are elsewhere, name their folder with --images DIR")
    return 1 if problems else 0


def run_stats(args: argparse.Namespace) -> int:
    """Print the dataset summary, readable or as JSON."""
    stats = dataset_stats(load_concepts(args.dataset), str(args.dataset))
    print(json.dumps(stats, indent=1) if args.json else format_stats(stats))
    return 0
