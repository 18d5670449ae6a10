"""The demo's data: the emoji MAGIC dataset split into train, validation and test subsets of seen and held-out
concepts, with training captions that name no concept word of the dataset.

Per level2 group, ``holdout_per_group`` concepts are held out for the test (unseen concepts) and
``val_holdout_per_group`` more for validation; the other concepts give ``val_fraction`` of their train images to
the validation split. Models train on what is left, so test images are never seen during training or while
hyperparameters are chosen.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace

from clearglass.errors import ClearglassError
from clearglass.magic.builder import split_images
from clearglass.magic.leak import leaked_words
from clearglass.magic.schema import ConceptRecord

SUBSETS = ("test_seen", "test_held_out", "val_seen", "val_held_out")


def concept_vocabulary(concepts: list[ConceptRecord]) -> list[str]:
    """Every level name used by any image of the dataset, sorted."""
    return sorted({v for c in concepts for im in c.train_images + c.test_images for v in im.levels() if v})


def drop_concept_word_captions(concepts: list[ConceptRecord], vocabulary: list[str]) -> tuple[list[ConceptRecord],
                                                                                              dict]:
    """Training captions naming any word of ``vocabulary`` are removed; images left without one leave train."""
    removed, images_dropped, examples = 0, 0, []
    out = []
    for c in concepts:
        train = []
        for im in c.train_images:
            kept = [cap for cap in im.new_captions if not leaked_words(cap, vocabulary)]
            removed += len(im.new_captions) - len(kept)
            if len(examples) < 5 and len(kept) < len(im.new_captions):
                examples.append(next(cap for cap in im.new_captions if cap not in kept))
            if kept:
                train.append(replace(im, new_captions=kept))
            else:
                images_dropped += 1
        out.append(replace(c, train_images=train))
    return out, {"captions_removed": removed, "images_dropped": images_dropped, "examples": examples}


def _pick_per_group(concepts: list[ConceptRecord], per_group: int, salt: str) -> set[str]:
    """``per_group`` concepts of every level2 group (seeded), never all of a group's concepts."""
    by_group: dict[str, list[str]] = defaultdict(list)
    for c in concepts:
        by_group[(c.train_images or c.test_images)[0].level2 or ""].append(c.concept)
    chosen = set()
    for group, names in sorted(by_group.items()):
        if len(names) <= per_group:
            raise ClearglassError(f"level2 group {group!r} has {len(names)} concepts {names}: cannot hold out "
                                  f"{per_group} and keep one to train on")
        chosen.update(random.Random(f"{salt}:{group}").sample(sorted(names), per_group))
    return chosen


def split_demo(concepts: list[ConceptRecord], holdout_per_group: int, val_holdout_per_group: int,
               val_fraction: float, seed: int) -> dict[str, list[ConceptRecord]]:
    """The train split and the four evaluation subsets (``SUBSETS``) of a built dataset (no held-out concepts yet)."""
    test_held = _pick_per_group(concepts, holdout_per_group, f"{seed}:test-holdout")
    rest = [c for c in concepts if c.concept not in test_held]
    val_held = _pick_per_group(rest, val_holdout_per_group, f"{seed}:val-holdout")
    train, val_seen, val_held_out, test_seen, test_held_out = [], [], [], [], []
    for c in concepts:
        if c.concept in test_held:
            test_held_out.append(replace(c, train_images=[], test_images=c.train_images + c.test_images))
        elif c.concept in val_held:
            val_held_out.append(replace(c, train_images=[], test_images=c.train_images))
        else:
            by_id = {im.image: im for im in c.train_images}
            fit, val = split_images(list(by_id), val_fraction, random.Random(f"{seed}:val:{c.concept}"))
            fit_images = [by_id[i] for i in fit]
            train.append(replace(c, train_images=fit_images, test_images=[]))
            val_seen.append(replace(c, train_images=fit_images, test_images=[by_id[i] for i in val]))
            test_seen.append(replace(c, train_images=fit_images))
    return {"train": train, "test_seen": test_seen, "test_held_out": test_held_out, "val_seen": val_seen,
            "val_held_out": val_held_out}




def filter_training_captions(splits: dict[str, list[ConceptRecord]]) -> tuple[dict[str, list[ConceptRecord]], dict]:
    """The splits with the train split's captions naming a concept word of any split removed (the seen evaluation
    subsets' training images follow); evaluation images and their captions stay as built."""
    vocabulary = concept_vocabulary([c for subset in splits.values() for c in subset])
    train, dropped = drop_concept_word_captions(splits["train"], vocabulary)
    trained = {c.concept: c.train_images for c in train}
    out = {**splits, "train": train}
    for name in ("test_seen", "val_seen"):
        out[name] = [replace(c, train_images=trained[c.concept]) for c in splits[name]]
    return out, dropped
