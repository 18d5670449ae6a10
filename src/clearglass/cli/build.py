"""`clearglass build`: make a MAGIC grouped dataset from a source (coco, emoji) and a labeler (truth, wordnet, llm)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from clearglass.errors import ClearglassError
from clearglass.magic.builder import BuildOptions, build_dataset, stats_path
from clearglass.magic.labelers import make_labeler
from clearglass.magic.stats import format_stats

SOURCES = ("coco", "emoji")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `build` command."""
    p = subparsers.add_parser("build", help="build a MAGIC grouped dataset", description=__doc__)
    p.add_argument("--source", required=True, help=f"image source: one of {SOURCES}")
    p.add_argument("--labeler", required=True, choices=("truth", "wordnet", "llm"))
    p.add_argument("--out", required=True, type=Path, help="output JSON; stats go to <stem>.stats.json beside it")
    p.add_argument("--coco-root", type=Path, help="COCO folder with annotations/ and the split's image folder")
    p.add_argument("--split", default="val2017", help="COCO split (default val2017); images root is <coco-root>/<split>")
    p.add_argument("--max-images", type=int, help="COCO: first n images by id")
    p.add_argument("--emoji-subgroups", help="comma-separated emoji subgroup ids (default: all usable)")
    p.add_argument("--emoji-per-subgroup", type=int, default=12)
    p.add_argument("--image-size", type=int, default=64, help="emoji scene size in pixels")
    p.add_argument("--min-group-size", type=int, default=5)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--holdout-concepts", type=int, default=0)
    p.add_argument("--hard-negatives", type=int, default=3, help="hard negatives per concept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--filter-leaks", action="store_true", help="drop captions that name a concept word")
    p.add_argument("--skip-bad-images", action="store_true", help="skip (and count) missing or corrupt images")
    p.add_argument("--llm-base-url")
    p.add_argument("--llm-model")
    p.add_argument("--llm-api-key-env", help="name of the environment variable holding the API key")
    p.add_argument("--llm-concurrency", type=int)
    p.add_argument("--llm-cache", type=Path, help="SQLite answer cache file")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _labeler_options(args: argparse.Namespace) -> dict:
    if args.labeler != "llm":
        return {}
    api_key = None
    if args.llm_api_key_env:
        api_key = os.environ.get(args.llm_api_key_env)
        if not api_key:
            raise ClearglassError(f"--llm-api-key-env {args.llm_api_key_env}: that environment variable is not set")
    opts = {"base_url": args.llm_base_url, "model": args.llm_model, "api_key": api_key,
            "concurrency": args.llm_concurrency, "cache_path": args.llm_cache, "seed": args.seed,
            "progress": not args.no_progress}
    return {k: v for k, v in opts.items() if v is not None}


def run(args: argparse.Namespace) -> int:
    """Build the dataset, write it and its stats, print the stats."""
    if args.source == "coco":
        from clearglass.magic.sources.coco import CocoSource

        if args.coco_root is None:
            raise ClearglassError("--source coco needs --coco-root")
        source = CocoSource(args.coco_root, args.split, args.max_images)
        image_root = source.image_root
    elif args.source == "emoji":
        from clearglass.magic.sources.emoji import EmojiSource

        subgroups = [s.strip() for s in args.emoji_subgroups.split(",")] if args.emoji_subgroups else None
        source = EmojiSource(args.out.parent, subgroups, args.emoji_per_subgroup, args.image_size, args.seed)
        image_root = args.out.parent
    else:
        raise ClearglassError(f"unknown source {args.source!r}: expected one of {SOURCES}")
    options = BuildOptions(min_group_size=args.min_group_size, test_fraction=args.test_fraction,
                           holdout_concepts=args.holdout_concepts, seed=args.seed, n_hard_negatives=args.hard_negatives,
                           filter_leaks=args.filter_leaks, skip_bad_images=args.skip_bad_images,
                           progress=not args.no_progress)
    labeler = make_labeler(args.labeler, **_labeler_options(args))
    try:
        stats = build_dataset(source, labeler, args.out, options, image_root)
    finally:
        if hasattr(labeler, "close"):
            labeler.close()
    print(format_stats(stats))
    print(f"wrote {args.out} and {stats_path(args.out)} (image root {image_root})")
    return 0
