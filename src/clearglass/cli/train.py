"""`clearglass train --config FILE [key=value ...] [--resume auto|PATH]`: train a model on a MAGIC dataset."""

from __future__ import annotations

import argparse
import json

from clearglass.train import TrainConfig, add_arguments, train


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` command."""
    parser = subparsers.add_parser("train", help="train with the grouped (or CLIP baseline) loss", description=__doc__)
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the config with its overrides, train, print the final step, checkpoint and metrics path as JSON."""
    result = train(TrainConfig.load(args.config, args.overrides), resume=args.resume)
    print(json.dumps({k: result[k] for k in ("step", "checkpoint", "metrics_path", "metrics")}))
    return 0
