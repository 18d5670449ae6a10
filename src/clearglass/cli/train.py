"""`clearglass train [--config FILE] [flags] [key=value ...]`: train a model on a MAGIC dataset.

Settings come from the config (default: default-grouped), then the key=value overrides (dotted keys; a value is
JSON or plain text, and a single value for a list key is a list of one: report_to=tensorboard), then the flags,
which follow open_clip's names. A setting given both by a flag and by key=value is an error.

Examples:
  clearglass train --train-data data/emoji/magic.json --batch-size 8x4 --lr 1e-4 --steps 2000 --out runs/cg
  clearglass train --config default-clip --dataset data/emoji/magic.json --batch-size 32 --epochs 5 \\
      --report-to tensorboard loss.tau=0.05
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clearglass.errors import ClearglassError

if TYPE_CHECKING:
    from clearglass.train import TrainConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "train"

# flag -> (config key, argparse options); each sets its key when given
FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "--train-data": ("data", {"metavar": "MAGIC.json", "help": "the MAGIC dataset JSON"}),
    "--model": ("model", {"metavar": "SPEC", "help": "model spec to start from"}),
    "--lr": ("lr", {"type": float, "help": "peak learning rate"}),
    "--steps": ("steps", {"type": int, "help": "main-stage optimiser steps"}),
    "--warmup": ("warmup", {"type": int, "help": "linear warm-up steps (fewer than the steps)"}),
    "--precision": ("precision", {"help": "fp32, bf16 or amp (the precision key below)"}),
    "--device": ("device", {"help": "torch device; auto is CUDA when available, else the CPU"}),
    "--seed": ("seed", {"type": int, "help": "seed of sampling and initialisation"}),
    "--report-to": ("report_to", {"nargs": "+", "metavar": "LOGGER", "help": "tensorboard and/or wandb"}),
    "--lock-image": ("lock.lock_image", {"action": "store_const", "const": True,
                                         "help": "freeze the image tower (its last groups: see the next flag)"}),
    "--lock-image-unlocked-groups": ("lock.lock_image_unlocked_layers", {
        "type": int, "metavar": "N", "help": "freeze the image tower except its last N layer groups (sets "
                                             "lock.lock_image too)"}),
    "--out": ("out", {"metavar": "DIR", "help": "run folder: checkpoints, metrics.jsonl, config.json"}),
}
BATCH_KEYS = ("groups_per_batch", "pairs_per_group")


def _batch_size(text: str) -> tuple[int, int | None]:
    """'8x4' -> (8, 4): M groups x N pairs; '32' -> (32, None): a plain batch of pairs."""
    found = re.fullmatch(r"([1-9]\d*)(?:[xX]([1-9]\d*))?", text)
    if not found:
        raise argparse.ArgumentTypeError(f"{text!r}: expected M x N as '8x4' (grouped loss) or a count '32' (CLIP)")
    return int(found[1]), int(found[2]) if found[2] else None


class _HelpWithKeys(argparse.Action):
    """``-h``: the help with every config key and its default, read from TrainConfig when asked (not at start-up,
    which would import the training stack for every command)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        from clearglass.train import TrainConfig

        width = max(len(key) for key, _, _ in TrainConfig.key_defaults())
        parser.epilog = "config keys (key=value), with their defaults (a config file sets its own):\n" + "\n".join(
            f"  {key:<{width}} = {json.dumps(default)}  ({kind})" for key, kind, default in TrainConfig.key_defaults())
        parser.print_help()
        parser.exit()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` command."""
    parser = subparsers.add_parser("train", help="train with the grouped (or CLIP baseline) loss", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    parser.add_argument("-h", "--help", action=_HelpWithKeys, help="show this help, every config key and its default")
    parser.add_argument("--config", default="default-grouped",
                        help=f"train config JSON, or a name in {CONFIG_DIR.name}/ (default default-grouped): "
                             f"{', '.join(sorted(p.stem for p in CONFIG_DIR.glob('*.json')))}")
    for flag, (key, options) in FLAGS.items():
        names = [flag, "--dataset"] if flag == "--train-data" else [flag]
        parser.add_argument(*names, dest=key, default=None, **options)
    parser.add_argument("--batch-size", type=_batch_size, default=None, metavar="MxN|B",
                        help="M groups x N pairs for a grouped loss (8x4), B pairs for the CLIP loss (32)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="passes over the train groups (or pairs): sets steps from the dataset; not with --steps")
    parser.add_argument("--resume", default=None, help="'auto' (out/latest.json if present) or a checkpoint .pt")
    parser.add_argument("--resume-allow-changes", action="store_true",
                        help="resume although settings that decide the result (lr, loss, batch shape, model, seed, "
                             "steps, ...) differ from the checkpoint's (refused without it)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, values as JSON or plain text (see the keys below with --help)")
    parser.set_defaults(func=run)


def _claimed(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The key=value items of the flags given, and per key the flag that sets it, as typed."""
    items, claims = [], {}
    for flag, (key, _) in FLAGS.items():
        value = getattr(args, key)
        if value is not None:
            items.append(f"{key}={json.dumps(value)}")
            claims[key] = f"{flag} {' '.join(value) if isinstance(value, list) else value}"
            if flag == "--lock-image-unlocked-groups":
                items.append("lock.lock_image=true")
                claims["lock.lock_image"] = claims[key]
    if args.batch_size is not None:
        claims.update(dict.fromkeys(BATCH_KEYS, f"--batch-size {'x'.join(str(v) for v in args.batch_size if v)}"))
    if args.epochs is not None:
        if "steps" in claims:
            raise ClearglassError(f"--epochs {args.epochs} and {claims['steps']} both set the run's length; give one")
        claims["steps"] = f"--epochs {args.epochs}"
    for item in args.overrides:
        key = item.partition("=")[0]
        if key in claims:
            raise ClearglassError(f"{key} is set twice: by {claims[key]} and by {item!r}; give one")
    return items, claims


def training_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of the command line: config file, key=value overrides, flags; --batch-size read for the
    config's loss and --epochs turned into steps from the dataset, each error naming its flag."""
    from clearglass.losses import LOSSES
    from clearglass.train import TrainConfig
    from clearglass.train.run import batches_per_epoch

    items, claims = _claimed(args)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's; the batch splits over the ranks
    # --epochs sets steps once the data is read: until then the file's steps must not fail the warmup check
    items += [f"steps={sys.maxsize}"] if args.epochs is not None else []
    config = TrainConfig.load(args.config, [*args.overrides, *items])
    if args.batch_size is not None:
        (m, n), typed = args.batch_size, claims[BATCH_KEYS[0]]
        grouped = LOSSES[config.loss.kind].batches == "groups"
        if grouped and n is None:
            raise ClearglassError(f"{typed}: loss.kind {config.loss.kind!r} trains on M groups x N pairs: give both, "
                                  "e.g. --batch-size 8x4")
        if not grouped and n is not None:
            raise ClearglassError(f"{typed}: loss.kind {config.loss.kind!r} trains on random pairs: give one count, "
                                  "e.g. --batch-size 32")
        items += [f"groups_per_batch={m}", f"pairs_per_group={n or 1}"]
        config = TrainConfig.load(args.config, [*args.overrides, *items])
        if config.data:
            try:  # the sampler's own check, before any model loads, blamed on the flag
                batches_per_epoch(config, world_size)
            except ClearglassError as e:
                raise ClearglassError(f"{typed}: {e}") from None
    if args.epochs is not None:
        if not config.data:
            raise ClearglassError(f"--epochs {args.epochs} counts passes over the dataset: give it (--train-data)")
        per_epoch = batches_per_epoch(config, world_size)
        try:
            config = TrainConfig.load(args.config, [*args.overrides, *items, f"steps={args.epochs * per_epoch}"])
        except ClearglassError as e:
            raise ClearglassError(f"--epochs {args.epochs} (= {args.epochs * per_epoch} steps, {per_epoch} batches "
                                  f"an epoch): {e}") from None
    return config


def run(args: argparse.Namespace) -> int:
    """Load the config with its overrides and flags, train, print the final step, checkpoint, metrics path and
    best step."""
    from clearglass.train import TrainingInterrupted, train
    from clearglass.train.run import print_result

    config = training_config(args)
    try:
        result = train(config, resume=args.resume, allow_changes=args.resume_allow_changes)
    except TrainingInterrupted as e:
        print(f"clearglass train: {e}", file=sys.stderr)
        return 130
    print_result(result)
    return 0
