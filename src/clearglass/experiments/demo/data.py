"""Build everything the demo evaluates on, under ``out/data``: the emoji splits (`splits`), drawn so that they agree
with what the base's pretraining corpus showed (its model card), the cross-style set of the same concepts
(`cross_style`), and the base's own held-out item names for the retention measure."""

from __future__ import annotations

import shutil
from pathlib import Path

from clearglass.errors import ClearglassError
from clearglass.experiments.demo.config import DemoConfig, DemoData
from clearglass.experiments.demo.cross_style import build_cross_style
from clearglass.experiments.demo.splits import filter_training_captions, pick_concepts, split_demo
from clearglass.io import read_json
from clearglass.magic.builder import build_emoji_dataset, stats_path
from clearglass.magic.schema import ConceptRecord, load_concepts, save_concepts
from clearglass.magic.sources.emoji import SUBGROUP_CONCEPTS, usable_emoji
from clearglass.models import PRETRAINED_DIR, pretrained_tags


def concept_emoji(data: DemoData) -> dict[str, set[str]]:
    """Every emoji each concept of the demo's dataset can draw (its subgroup's), by concept name."""
    out: dict[str, set[str]] = {}
    for sg, emoji in usable_emoji(data.subgroups).items():
        out.setdefault(SUBGROUP_CONCEPTS[sg], set()).update(e.chars for e in emoji)
    return out


def demo_emoji(data: DemoData) -> set[str]:
    """Every emoji the demo's dataset can draw (all its subgroups)."""
    return {e for chars in concept_emoji(data).values() for e in chars}


def base_excluded(base: str) -> set[str] | None:
    """The emoji the base's pretraining corpus excluded (its card's ``excluded_chars``); None for a base without a
    card (e.g. the untrained architecture), which saw nothing of record."""
    card = PRETRAINED_DIR / base / "card.json"
    if base not in pretrained_tags() or not card.is_file():
        return None
    return set(read_json(card, "model card data", dict)["corpus"]["excluded_chars"])


def unseen_concepts(config: DemoConfig) -> set[str] | None:
    """The concepts whose emoji the base never saw, when the config requires the split to follow the base's card
    (``require_unseen_held_out``); an error for a concept the corpus showed only in part, or a base without a card."""
    if not config.require_unseen_held_out:
        return None
    excluded = base_excluded(config.base)
    if excluded is None:
        raise ClearglassError(f"base {config.base!r} has no model card with the corpus it saw; set "
                              "require_unseen_held_out=false for it")
    unseen, partial = set(), []
    for concept, chars in sorted(concept_emoji(config.data).items()):
        if chars <= excluded:
            unseen.add(concept)
        elif chars & excluded:
            partial.append(concept)
    if partial:
        raise ClearglassError(f"{PRETRAINED_DIR / config.base / 'card.json'}: the pretraining corpus of "
                              f"{config.base!r} excluded only some emoji of {partial}: a concept must be wholly seen "
                              "or wholly unseen; rebuild the base with `clearglass pretrain`")
    return unseen


def seen_by_base(config: DemoConfig, splits: dict[str, list[ConceptRecord]]) -> dict[str, list[str]]:
    """Per kind of never-trained concept, the emoji of record against the split's promise: ``held_out_emoji_seen``
    (should be empty) and ``novel_emoji_unseen`` (should be empty); both empty lists for a base without a card."""
    excluded = base_excluded(config.base)
    if excluded is None:
        return {"held_out_emoji_seen": [], "novel_emoji_unseen": []}
    emoji = concept_emoji(config.data)

    def chars(subsets: tuple[str, ...]) -> set[str]:
        return {e for s in subsets for c in splits[s] for e in emoji[c.concept]}

    return {"held_out_emoji_seen": sorted(chars(("test_held_out",)) - excluded),
            "novel_emoji_unseen": sorted(chars(("test_novel", "val_novel")) & excluded)}


def build_concepts(out: Path, data: DemoData, progress: bool) -> tuple[list[ConceptRecord], int]:
    """The demo's emoji dataset built under ``out/data`` (nothing held out yet), and its build's leak count."""
    built = build_emoji_dataset(out / "data", subgroups=data.subgroups, images_per_subgroup=data.images_per_subgroup,
                                image_size=data.image_size, holdout_concepts=0, seed=data.seed, progress=progress)
    return load_concepts(built), read_json(stats_path(built), "build stats", dict)["build"]["leaks"]["count"]


def build_splits(out: Path, config: DemoConfig, progress: bool) -> tuple[dict[str, list[ConceptRecord]], dict]:
    """The emoji dataset under ``out/data`` split into train and evaluation subsets; returns them and a summary."""
    data = config.data
    concepts, leaks = build_concepts(out, data, progress)
    kinds = pick_concepts(concepts, unseen_concepts(config), data.holdout_per_group, data.novel_test, data.novel_val,
                          data.seed)
    splits, dropped = filter_training_captions(split_demo(concepts, kinds, data.val_fraction, data.seed))
    summary = {
        "build_leaks": leaks, "concept_word_filter": dropped,
        "concepts": {name: len(recs) for name, recs in splits.items()},
        "train_images": sum(len(c.train_images) for c in splits["train"]),
        "test_images": {name: sum(len(c.test_images) for c in recs)
                        for name, recs in splits.items() if name != "train"},
        "level2_groups": sorted({im.level2 for c in concepts for im in c.train_images + c.test_images if im.level2}),
        "kinds": {kind: sorted(names) for kind, names in kinds.items()},
        "base_corpus": seen_by_base(config, splits),
    }
    return splits, summary


def build_demo_data(out: Path, config: DemoConfig, progress: bool) -> tuple[dict[str, Path], dict]:
    """Write one MAGIC JSON per subset under ``out/data`` (train, val/test seen and held-out, cross-style seen and
    held-out, the base's retention sets); returns (paths by subset, summary)."""
    splits, summary = build_splits(out, config, progress)
    data_dir = out / "data"
    if config.data.cross_style_images:
        tests = ("test_seen", "test_novel", "test_held_out")
        cross, summary["cross_style"] = build_cross_style(
            data_dir, [c for s in tests for c in splits[s]], config.data.cross_style_images, config.data.image_size,
            config.data.seed)
        for subset in tests:
            names = {c.concept for c in splits[subset]}
            splits[subset.replace("test", "cross")] = [c for c in cross if c.concept in names]
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
