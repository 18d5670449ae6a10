"""`clearglass pretrain`: build the offline corpus and pretrain the clearglass-mini base (resumable).

Example: clearglass pretrain --out runs/pretrain-mini --ship
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path

from clearglass.errors import ClearglassError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `pretrain` command."""
    p = subparsers.add_parser("pretrain", help="build the offline corpus and pretrain the clearglass-mini base",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="clearglass-mini", help="pretraining recipe (configs/pretrain/NAME.json)")
    p.add_argument("--out", type=Path, default=Path("runs/pretrain-mini"), help="work folder (corpus, run, tag)")
    p.add_argument("--ship", action="store_true", help="copy the finished tag into the package's pretrained/ folder")
    p.add_argument("--remeasure", type=Path, default=None, metavar="TAG_DIR",
                   help="measure a written tag's card figures again (its shipped slice and the corpus test split, "
                        "rebuilt under --out) and rewrite its card; no training")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="train config overrides, e.g. steps=100")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build, pretrain, measure and write the tag; print where the card is and its figures."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is offline: the caller's (this command's) choice
    from clearglass.experiments.mini.recipe import PretrainRecipe, remeasure_card, run_pretrain

    recipe = PretrainRecipe.load(args.config)
    command = shlex.join(["clearglass", "pretrain", "--config", args.config, "--out", str(args.out),
                          *(["--ship"] if args.ship else []),
                          *(["--remeasure", str(args.remeasure)] if args.remeasure else []), *args.overrides])
    if args.remeasure is not None:
        if args.ship or args.overrides:
            raise ClearglassError("--remeasure measures a written tag again: --ship and key=value overrides train, "
                                  "so they do not go with it")
        card = remeasure_card(args.remeasure, args.out, recipe, command)
        print(json.dumps({"tag": str(args.remeasure), "figures": {
            split: {k: round(v["value"], 4) for k, v in figures.items()}
            for split, figures in card["figures"].items()}}))
        return 0
    card = run_pretrain(args.out, recipe, list(args.overrides), args.ship, command)
    print(json.dumps({"tag": card["tag"], "steps": card["steps"], "best": card["best"],
                      "figures": {k: round(v["value"], 4) for k, v in card["figures"]["shipped_test"].items()},
                      "card": str(args.out / card["tag"] / "MODEL_CARD.md"), "shipped_to": card.get("shipped_to")}))
    return 0
