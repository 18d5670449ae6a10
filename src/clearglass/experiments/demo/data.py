"""Build everything the demo evaluates on, under ``out/data``: the emoji splits (`splits`), the cross-style set of
the same concepts (`cross_style`), and the base's own held-out item names for the retention measure."""

from __future__ import annotations

import shutil
from pathlib import Path

from clearglass.errors import ClearglassError
from clearglass.experiments.demo.config import DemoConfig, DemoData
from clearglass.experiments.demo.cross_style import build_cross_style
from clearglass.experiments.demo.splits import filter_training_captions, split_demo
from clearglass.io import read_json
from clearglass.magic.builder import build_emoji_dataset, stats_path
from clearglass.magic.schema import ConceptRecord, load_concepts, save_concepts
from clearglass.magic.sources.emoji import SUBGROUP_CONCEPTS, usable_emoji
from clearglass.models import PRETRAINED_DIR, pretrained_tags

def build_splits(out: Path, data: DemoData, progress: bool) -> tuple[dict[str, list[ConceptRecord]], dict]:
    """The emoji dataset under ``out/data`` split into train, val and test subsets; returns them and a summary."""
    built = build_emoji_dataset(out / "data", subgroups=data.subgroups, images_per_subgroup=data.images_per_subgroup,
                                image_size=data.image_size, holdout_concepts=0, seed=data.seed, progress=progress)
    leaks = read_json(stats_path(built), "build stats", dict)["build"]["leaks"]["count"]
    concepts = load_concepts(built)
    splits, dropped = filter_training_captions(split_demo(concepts, data.holdout_per_group,
                                                          data.val_holdout_per_group, data.val_fraction, data.seed))
    summary = {
        "build_leaks": leaks, "concept_word_filter": dropped,
        "concepts": {name: len(recs) for name, recs in splits.items()},
        "train_images": sum(len(c.train_images) for c in splits["train"]),
        "test_images": {name: sum(len(c.test_images) for c in recs) for name, recs in splits.items() if name != "train"},
        "level2_groups": sorted({im.level2 for c in concepts for im in c.train_images + c.test_images if im.level2}),
        "held_out_concepts": {"test": [c.concept for c in splits["test_held_out"]],
                              "val": [c.concept for c in splits["val_held_out"]]},
    }
    return splits, summary


def held_out_emoji(splits: dict[str, list[ConceptRecord]], data: DemoData) -> set[str]:
    """Every emoji of the subgroups behind the held-out concepts (test and validation)."""
    held = {c.concept for subset in ("test_held_out", "val_held_out") for c in splits[subset]}
    return {e.chars for sg, emoji in usable_emoji(data.subgroups).items() if SUBGROUP_CONCEPTS[sg] in held
            for e in emoji}


def demo_emoji(data: DemoData) -> set[str]:
    """Every emoji the demo's dataset can draw (all its subgroups)."""
    return {e.chars for emoji in usable_emoji(data.subgroups).values() for e in emoji}


def check_base_never_saw(config: DemoConfig, splits: dict[str, list[ConceptRecord]]) -> list[str]:
    """The held-out emoji the base's pretraining corpus did not exclude (its card's ``excluded_chars``); an error
    when the config requires none. A base without a card (e.g. the untrained default) saw nothing."""
    card = PRETRAINED_DIR / config.base / "card.json"
    if config.base not in pretrained_tags() or not card.is_file():
        return []
    excluded = set(read_json(card, "model card data", dict)["corpus"]["excluded_chars"])
    seen = sorted(held_out_emoji(splits, config.data) - excluded)
    if seen and config.require_unseen_held_out:
        raise ClearglassError(f"{card}: the pretraining corpus of {config.base!r} showed {len(seen)} emoji of the "
                              f"demo's held-out concepts ({''.join(seen[:10])}...): rebuild it with `clearglass "
                              "pretrain` for this demo config")
    return seen


def build_demo_data(out: Path, config: DemoConfig, progress: bool) -> tuple[dict[str, Path], dict]:
    """Write one MAGIC JSON per subset under ``out/data`` (train, val/test seen and held-out, cross-style seen and
    held-out, the base's retention sets); returns (paths by subset, summary)."""
    splits, summary = build_splits(out, config.data, progress)
    summary["held_out_emoji_seen_by_base"] = check_base_never_saw(config, splits)
    data_dir = out / "data"
    if config.data.cross_style_images:
        seen = {c.concept for c in splits["test_seen"]}
        cross, summary["cross_style"] = build_cross_style(
            data_dir, splits["test_seen"] + splits["test_held_out"], config.data.cross_style_images,
            config.data.image_size, config.data.seed)
        splits["cross_seen"] = [c for c in cross if c.concept in seen]
        splits["cross_held_out"] = [c for c in cross if c.concept not in seen]
    paths = {}
    for name, records in splits.items():
        paths[name] = data_dir / f"{name}.json"
        save_concepts(records, paths[name])
    if config.retention:
        paths.update(copy_retention_sets(config.base, data_dir / "retention"))
    return paths, summary


def copy_retention_sets(base: str, folder: Path) -> dict[str, Path]:
    """The base's shipped held-out item names (``pretrained/<base>/heldout/{val,test}.json`` and their images),
    copied under ``folder``; an error when the base has none."""
    source = PRETRAINED_DIR / base / "heldout"
    if not (source / "test.json").is_file():
        raise ClearglassError(f"retention: {source}/test.json not found: the base {base!r} ships no held-out item "
                              "names; set retention=false for it")
    if not folder.is_dir():
        shutil.copytree(source, folder)
    return {"retention_val": folder / "val.json", "retention_test": folder / "test.json"}
