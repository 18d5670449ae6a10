"""`clearglass demo [--out DIR] [--seeds 1|3] [--quick]`: the embedded default, end to end, offline on CPU.
`clearglass demo --search GRID.json [--out DIR]` runs an equal-effort hyperparameter grid on the validation split.
`clearglass demo --ablation [--out DIR] [--seeds 1|3] [--steps N] [--quick]` runs the hierarchy-aware ablation."""

from __future__ import annotations

import argparse

import json

from clearglass.ablation import VARIANTS, AblationOptions, run_ablation
from clearglass.demo import run_demo, run_search
from clearglass.report import markdown_table


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` command."""
    parser = subparsers.add_parser("demo", help="build emoji concepts, train CLIP vs CLEAR GLASS, evaluate, report",
                                   description=__doc__)
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    parser.add_argument("--seeds", type=int, choices=[1, 3], default=1, help="training seeds (default 1)")
    parser.add_argument("--quick", action="store_true", help="a tiny run for tests (under 2 minutes)")
    parser.add_argument("--search", default=None, metavar="GRID.json",
                        help="run this hyperparameter grid on the validation split instead of the demo")
    parser.add_argument("--ablation", action="store_true",
                        help=f"run the hierarchy-aware ablation ({', '.join(VARIANTS)}) instead of the demo")
    parser.add_argument("--steps", type=int, default=None, help="ablation only: training steps per variant")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo and print the headline table and where the report is."""
    config = "quick" if args.quick else "default"
    if args.ablation:
        options = AblationOptions(quick=args.quick, seeds=list(range(args.seeds)), steps=args.steps)
        found = run_ablation(args.out, options)
        print(markdown_table(found["results"]))
        print(f"report: {args.out}/report.md")
        return 0
    if args.steps is not None:
        raise SystemExit("--steps is only for --ablation (the demo's budget is in configs/demo/default.json)")
    if args.search:
        found = run_search(args.out, args.search, config)
        print(json.dumps({"chosen": found["chosen"], "results": found["results"]}, indent=1))
        return 0
    summary = run_demo(args.out, seeds=args.seeds, config_name=config)
    print(summary["key_table"])
    print(f"report: {summary['report']}  ({summary['seconds']:.0f} s)")
    return 0
