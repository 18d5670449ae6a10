"""`clearglass build`: make a MAGIC grouped dataset from a source (coco, emoji, csv, folder) and a labeler
(truth, wordnet, llm).

Example: clearglass build --source csv --csv my/captions.csv --csv-level-keys concept --labeler truth --out my.json
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from pathlib import Path

from clearglass.errors import ClearglassError
from clearglass.io import refuse_overwriting
from clearglass.magic.builder import BuildOptions, build_dataset, stats_path
from clearglass.magic.labelers import make_labeler
from clearglass.magic.sources import SourceItem
from clearglass.magic.stats import format_stats

SOURCES = ("coco", "emoji", "csv", "folder")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `build` command."""
    p = subparsers.add_parser("build", help="build a MAGIC grouped dataset", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help=f"image source: one of {SOURCES}")
    p.add_argument("--labeler", required=True, choices=("truth", "wordnet", "llm"))
    p.add_argument("--out", required=True, type=Path, help="output JSON; stats go to <stem>.stats.json beside it")
    p.add_argument("--coco-root", type=Path, help="COCO folder with annotations/ and the split's image folder")
    p.add_argument("--split", default="val2017",
                   help="COCO split (default val2017); images root is <coco-root>/<split>")
    p.add_argument("--max-images", type=int, help="COCO: first n images by id")
    p.add_argument("--emoji-subgroups", help="comma-separated emoji subgroup ids (default: all usable)")
    p.add_argument("--emoji-per-subgroup", type=int, default=12)
    p.add_argument("--image-size", type=int, default=64, help="emoji scene size in pixels")
    p.add_argument("--csv", type=Path, help="csv: the CSV file of image paths and captions, one row per caption")
    p.add_argument("--csv-img-key", default="filepath", help="csv (and folder captions.csv): image path column")
    p.add_argument("--csv-caption-key", default="title", help="csv (and folder captions.csv): caption column")
    p.add_argument("--csv-separator", default=",", help="csv: field separator (default ','; a tab: $'\\t')")
    p.add_argument("--csv-level-keys", nargs="+", metavar="COL",
                   help="csv: concept columns, level1 first, for the truth labeler")
    p.add_argument("--images", type=Path,
                   help="csv: root of relative image paths (default: the CSV's folder); folder: the root of the "
                        "concept folders")
    p.add_argument("--folder-depth", type=int, default=1, choices=(1, 2),
                   help="folder: 1 = ROOT/<concept>/<image>, 2 = ROOT/<level2>/<level1>/<image>")
    p.add_argument("--caption-template", help="folder: caption for images without one, e.g. 'a picture of a {}'")
    p.add_argument("--allow-concept-captions", action="store_true",
                   help="folder: allow --caption-template although its captions name the concept (they are kept "
                        "whole and counted as leaks)")
    p.add_argument("--strict", action="store_true", help="csv, folder: an empty caption is an error, not skipped")
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
    p.add_argument("--llm-structured", choices=("auto", "json_schema", "off"),
                   help="answer layout: json_schema = response_format with the answer's JSON schema, off = <output> "
                        "tags, auto (default) = json_schema unless the server refuses it")
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
            "concurrency": args.llm_concurrency, "cache_path": args.llm_cache, "structured": args.llm_structured,
            "progress": not args.no_progress}
    return {k: v for k, v in opts.items() if v is not None}


def _source(args: argparse.Namespace) -> tuple[Iterable[SourceItem], Path]:
    """The source the arguments name and its image root."""
    if args.source == "coco":
        from clearglass.magic.sources.coco import CocoSource

        if args.coco_root is None:
            raise ClearglassError("--source coco needs --coco-root")
        source = CocoSource(args.coco_root, args.split, args.max_images)
        return source, source.image_root
    if args.source == "emoji":
        from clearglass.magic.sources.emoji import EmojiSource

        subgroups = [s.strip() for s in args.emoji_subgroups.split(",")] if args.emoji_subgroups else None
        source = EmojiSource(args.out.parent, subgroups, args.emoji_per_subgroup, args.image_size, args.seed)
        return source, args.out.parent
    if args.source == "csv":
        from clearglass.magic.sources.csv import CsvSource

        if args.csv is None:
            raise ClearglassError("--source csv needs --csv FILE (with --csv-img-key and --csv-caption-key)")
        if args.labeler == "truth" and not args.csv_level_keys:
            raise ClearglassError("--labeler truth takes each image's concepts from the CSV: name its concept columns "
                                  "with --csv-level-keys COL [COL ...] (level1 first), or let --labeler wordnet or "
                                  "llm name them from the captions")
        source = CsvSource(args.csv, args.csv_img_key, args.csv_caption_key, args.csv_separator, args.csv_level_keys,
                           args.images, args.strict)
        return source, source.image_root
    if args.source == "folder":
        from clearglass.magic.sources.folder import FolderSource

        if args.images is None:
            raise ClearglassError("--source folder needs --images ROOT (ROOT/<concept>/<image>)")
        source = FolderSource(args.images, args.folder_depth, args.caption_template, args.allow_concept_captions,
                              args.csv_img_key, args.csv_caption_key, args.csv_separator, args.strict,
                              outputs=(args.out, stats_path(args.out)))
        return source, source.root
    raise ClearglassError(f"unknown source {args.source!r}: expected one of {SOURCES}")


def run(args: argparse.Namespace) -> int:
    """Build the dataset, write it and its stats, print the stats."""
    refuse_overwriting(args.out, {f"--{key.replace('_', '-')} file": value for key, value in vars(args).items()
                                  if key in ("csv", "llm_cache") and value})
    source, image_root = _source(args)
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
