"""`clearglass train --config FILE [key=value ...] [--resume auto|PATH]`: train a model on a MAGIC dataset.

Example: clearglass train --config default-grouped data=data/emoji/magic.json steps=2000 out=runs/cg
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "train"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` command."""
    parser = subparsers.add_parser("train", help="train with the grouped (or CLIP baseline) loss", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True,
                        help=f"train config JSON, or a name in {CONFIG_DIR.name}/: "
                             f"{', '.join(sorted(p.stem for p in CONFIG_DIR.glob('*.json')))}")
    parser.add_argument("--resume", default=None, help="'auto' (out/latest.json if present) or a checkpoint .pt")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, values as JSON literals")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the config with its overrides, train, print the final step, checkpoint, metrics path and best step."""
    from clearglass.train import TrainConfig, TrainingInterrupted, train
    from clearglass.train.run import print_result

    config = TrainConfig.load(args.config, args.overrides)
    try:
        result = train(config, resume=args.resume)
    except TrainingInterrupted as e:
        print(f"clearglass train: {e}", file=sys.stderr)
        return 130
    print_result(result)
    return 0
