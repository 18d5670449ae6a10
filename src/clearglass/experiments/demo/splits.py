"""The demo's data: the emoji MAGIC dataset split the way the base-to-novel literature does (CoOp, KgCoOp), with
training captions that name no concept word of the dataset.

Three kinds of concepts: *base* concepts are fine-tuned and tested on new images (``test_seen``, ``val_seen``);
*novel* concepts are never fine-tuned, but the base's pretraining corpus showed their items by name (``test_novel``,
``val_novel``); *novel concepts of unseen objects* are never fine-tuned and the base's corpus excluded their items
(``test_held_out``). Test images are never seen during training or while hyperparameters are chosen.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace

from clearglass.errors import ClearglassError
from clearglass.magic.builder import split_images
from clearglass.magic.leak import leaked_words
from clearglass.magic.schema import ConceptRecord

SUBSETS = ("test_seen", "test_novel", "test_held_out", "val_seen", "val_novel")


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


def concepts_by_group(concepts: list[ConceptRecord]) -> dict[str, list[str]]:
    """Concept names per level2 group, sorted."""
    by_group: dict[str, list[str]] = defaultdict(list)
    for c in concepts:
        by_group[(c.train_images or c.test_images)[0].level2 or ""].append(c.concept)
    return {g: sorted(names) for g, names in sorted(by_group.items())}


def _allocate(total: int, capacity: dict[str, int], what: str) -> dict[str, int]:
    """``total`` spread over groups in proportion to their capacity (largest remainder, ties by group name)."""
    room = sum(capacity.values())
    if total > room:
        raise ClearglassError(f"{what}: {total} wanted, but the groups can give only {room} ({capacity}) while "
                              "keeping one concept of objects the base knows to fine-tune on per group")
    if total == 0:
        return {g: 0 for g in capacity}
    exact = {g: total * c / room for g, c in capacity.items()}
    out = {g: int(x) for g, x in exact.items()}
    for g in sorted(capacity, key=lambda g: (-(exact[g] - out[g]), g))[:total - sum(out.values())]:
        out[g] += 1
    return out


def pick_concepts(concepts: list[ConceptRecord], unseen: set[str] | None, holdout_per_group: int, novel_test: int,
                  novel_val: int, seed: int) -> dict[str, set[str]]:
    """The concept names of each kind (``base``, ``novel_test``, ``novel_val``, ``held_out``).

    ``unseen``: the concepts whose items the base's corpus never showed (None: no such record, every concept may be
    either kind). Per level2 group, ``holdout_per_group`` unseen concepts are held out for the test ("novel
    concepts of unseen objects"); ``novel_test`` and ``novel_val`` concepts of *known* objects (not unseen) are
    spread over the groups in proportion to their known concepts, never the last known one of a group; everything
    else is fine-tuned (base concepts). All picks are seeded per group."""
    kinds: dict[str, set[str]] = {"base": set(), "novel_test": set(), "novel_val": set(), "held_out": set()}
    known: dict[str, list[str]] = {}
    for group, names in concepts_by_group(concepts).items():
        candidates = [n for n in names if unseen is None or n in unseen]
        if len(candidates) < holdout_per_group or len(names) <= holdout_per_group:
            raise ClearglassError(f"level2 group {group!r}: {len(candidates)} concepts of unseen objects "
                                  f"{candidates} among {len(names)}; cannot hold out {holdout_per_group} for the test "
                                  "and keep one to fine-tune on")
        held = set(random.Random(f"{seed}:test-holdout:{group}").sample(candidates, holdout_per_group))
        kinds["held_out"] |= held
        known[group] = [n for n in names if n not in held and (unseen is None or n not in unseen)]
        kinds["base"] |= set(names) - held - set(known[group])
    for kind, total in (("novel_test", novel_test), ("novel_val", novel_val)):
        quota = _allocate(total, {g: max(0, len(k) - 1) for g, k in known.items()}, kind)
        for group, k in quota.items():
            chosen = random.Random(f"{seed}:{kind}:{group}").sample(known[group], k)
            kinds[kind] |= set(chosen)
            known[group] = [n for n in known[group] if n not in chosen]
    kinds["base"] |= {n for names in known.values() for n in names}
    return kinds


def split_demo(concepts: list[ConceptRecord], kinds: dict[str, set[str]], val_fraction: float, seed: int
               ) -> dict[str, list[ConceptRecord]]:
    """The train split and the evaluation subsets (``SUBSETS``) of a built dataset, from ``pick_concepts``'s kinds:
    base concepts give ``val_fraction`` of their images to ``val_seen`` and train on the rest (``test_seen`` holds
    their test images); novel and held-out concepts are never trained and every image of theirs is evaluated."""
    out: dict[str, list[ConceptRecord]] = {name: [] for name in ("train",) + SUBSETS}
    target = {"novel_test": "test_novel", "novel_val": "val_novel", "held_out": "test_held_out"}
    for c in concepts:
        kind = next((k for k, names in kinds.items() if c.concept in names), None)
        if kind is None:
            raise ClearglassError(f"concept {c.concept!r}: of no kind in the split")
        if kind != "base":
            out[target[kind]].append(replace(c, train_images=[], test_images=c.train_images + c.test_images))
            continue
        by_id = {im.image: im for im in c.train_images}
        fit, val = split_images(list(by_id), val_fraction, random.Random(f"{seed}:val:{c.concept}"))
        fit_images = [by_id[i] for i in fit]
        out["train"].append(replace(c, train_images=fit_images, test_images=[]))
        out["val_seen"].append(replace(c, train_images=fit_images, test_images=[by_id[i] for i in val]))
        out["test_seen"].append(replace(c, train_images=fit_images))
    return out


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
