"""`clearglass demo [--out DIR] [--seeds 1|3] [--quick]`: the embedded default, end to end, offline on CPU.
`clearglass demo --search GRID.json [--out DIR]` runs an equal-effort hyperparameter grid on the validation split."""

from __future__ import annotations

import argparse

import json

from clearglass.demo import run_demo, run_search


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` command."""
    parser = subparsers.add_parser("demo", help="build emoji concepts, train CLIP vs CLEAR GLASS, evaluate, report",
                                   description=__doc__)
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    parser.add_argument("--seeds", type=int, choices=[1, 3], default=1, help="training seeds (default 1)")
    parser.add_argument("--quick", action="store_true", help="a tiny run for tests (under 2 minutes)")
    parser.add_argument("--search", default=None, metavar="GRID.json",
                        help="run this hyperparameter grid on the validation split instead of the demo")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo and print the headline table and where the report is."""
    config = "quick" if args.quick else "default"
    if args.search:
        found = run_search(args.out, args.search, config)
        print(json.dumps({"chosen": found["chosen"], "results": found["results"]}, indent=1))
        return 0
    summary = run_demo(args.out, seeds=args.seeds, config_name=config)
    print(summary["key_table"])
    print(f"report: {summary['report']}  ({summary['seconds']:.0f} s)")
    return 0
