"""`clearglass demo [--out DIR] [--seeds 1|3] [--quick]`: the embedded default, end to end, offline on CPU."""

from __future__ import annotations

import argparse

from clearglass.demo import run_demo


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` command."""
    parser = subparsers.add_parser("demo", help="build emoji concepts, train CLIP vs CLEAR GLASS, evaluate, report",
                                   description=__doc__)
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    parser.add_argument("--seeds", type=int, choices=[1, 3], default=1, help="training seeds (default 1)")
    parser.add_argument("--quick", action="store_true", help="a tiny run for tests (under 2 minutes)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo and print the headline table and where the report is."""
    summary = run_demo(args.out, seeds=args.seeds, config_name="quick" if args.quick else "default")
    print(summary["key_table"])
    print(f"report: {summary['report']}  ({summary['seconds']:.0f} s)")
    return 0
