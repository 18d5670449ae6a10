"""`clearglass demo`: the embedded default, end to end, offline on CPU: fine-tune the pretrained base with the CLIP loss
and with CLEAR GLASS, evaluate on base (fine-tuned) and novel concepts and their harmonic mean, on novel concepts of
unseen objects and on a cross-style set, write a report.

Examples:
  clearglass demo --out demo_out                   # 1 seed, about 15 minutes on 2 cores
  clearglass demo --seeds 3 --out runs/demo-3seeds --publish docs/results/base-to-novel   # the documented result
  clearglass demo --search src/clearglass/configs/demo/search-grid.json --out runs/search \
      --publish src/clearglass/configs/demo/default.search.json   # the equal-effort validation search
  clearglass demo --ablation --out ablation_out    # the hierarchy-aware ablation
"""

from __future__ import annotations

import argparse
import json
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` command."""
    parser = subparsers.add_parser("demo", help="the embedded default: CLIP loss vs CLEAR GLASS fine-tunes, report",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    parser.add_argument("--seeds", type=int, choices=[1, 3], default=1, help="training seeds (default 1)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true", help="a tiny run for tests (config 'quick', about a minute)")
    which.add_argument("--config", default=None, help="demo config (configs/demo/NAME.json; default 'default'; "
                                                      "'scratch' trains from scratch)")
    parser.add_argument("--search", default=None, metavar="GRID.json",
                        help="run this equal-effort grid on the validation split instead of the demo")
    parser.add_argument("--only", nargs="+", default=None, metavar="MODEL",
                        help="train and report only these models of the config (with its baseline and method)")
    parser.add_argument("--publish", default=None, metavar="PATH",
                        help="also copy the result: the demo's report, gallery, results JSON and plots into folder "
                             "PATH; a search's record to file PATH (the record the demo config names)")
    parser.add_argument("--ablation", action="store_true", help="run the hierarchy-aware ablation instead of the demo")
    parser.add_argument("--steps", type=int, default=None, help="ablation only: training steps per variant")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo (or the search, or the ablation) and print the headline table and where the report is."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo is offline by design: the caller's (this command's) choice
    from clearglass.errors import ClearglassError
    from clearglass.io import write_json_atomic

    config = "quick" if args.quick else args.config or "default"
    if args.steps is not None and not args.ablation:
        raise ClearglassError("--steps is only for --ablation (the demo's budget is in configs/demo/<config>.json)")
    if args.only and (args.ablation or args.search):
        raise ClearglassError("--only is for the demo, not --search or --ablation")
    if args.publish and args.ablation:
        raise ClearglassError("--publish is for the demo and the search, not --ablation")
    if args.ablation:
        from clearglass.experiments.ablation import AblationOptions, run_ablation
        from clearglass.report import markdown_table

        found = run_ablation(args.out, AblationOptions(quick=args.quick, seeds=list(range(args.seeds)),
                                                       steps=args.steps))
        print(markdown_table(found["results"]))
        print(f"report: {args.out}/report.md")
        return 0
    if args.search:
        from clearglass.experiments.demo.search import run_search

        record = run_search(args.out, args.search, config)
        if args.publish:
            write_json_atomic(record, args.publish)
        print(json.dumps({"chosen": record["chosen"], "record": args.publish or f"{args.out}/search.json"}, indent=1))
        return 0
    from clearglass.experiments.demo.report import publish, status
    from clearglass.experiments.demo.run import run_demo

    summary = run_demo(args.out, seeds=args.seeds, config_name=config, only=args.only)
    print(summary["key_table"])
    for goal in summary["targets"]:
        print(f"{status(goal)}: {goal['target']}")
    print(f"report: {summary['report']}  ({summary['seconds']:.0f} s)")
    if args.publish:
        print(f"published: {publish(args.out, args.publish)}")
    return 0
