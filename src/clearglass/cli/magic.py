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
    v = subparsers.add_parser("validate", help="report every problem of a MAGIC dataset file")
    v.add_argument("dataset", type=Path)
    v.add_argument("--images", type=Path, help="image root (default: the dataset file's folder)")
    v.add_argument("--no-images", action="store_true", help="do not check that image files exist")
    v.set_defaults(func=run_validate)
    s = subparsers.add_parser("stats", help="summarise a MAGIC dataset file")
    s.add_argument("dataset", type=Path)
    s.add_argument("--json", action="store_true", help="print the stats as JSON")
    s.set_defaults(func=run_stats)


def run_validate(args: argparse.Namespace) -> int:
    """Print every problem; exit 1 if there is any."""
    problems = validate(args.dataset, args.images, check_images=not args.no_images)
    for p in problems:
        print(p)
    print(f"{args.dataset}: {len(problems)} problem(s)")
    return 1 if problems else 0


def run_stats(args: argparse.Namespace) -> int:
    """Print the dataset summary, readable or as JSON."""
    stats = dataset_stats(load_concepts(args.dataset))
    print(json.dumps(stats, indent=1) if args.json else format_stats(stats))
    return 0
