"""The demo's split (disjoint, stratified by level2 group) and its training-caption filter."""

from __future__ import annotations

import pytest

from clearglass.errors import ClearglassError
from clearglass.experiments.demo.splits import (SUBSETS, concept_vocabulary, drop_concept_word_captions,
                                                 filter_training_captions, split_demo)
from demo_fixtures import make_concepts as _concepts


def test_split_demo_is_disjoint_and_stratified() -> None:
    splits = split_demo(_concepts(), holdout_per_group=1, val_holdout_per_group=1, val_fraction=0.25, seed=0)
    held = {c.concept for c in splits["test_held_out"]}
    val_held = {c.concept for c in splits["val_held_out"]}
    trained = {c.concept for c in splits["train"]}
    assert len(held) == len(val_held) == 3 and len(trained) == 3
    assert not (held & val_held) and not (held & trained) and not (val_held & trained)
    assert {c.test_images[0].level2 for c in splits["test_held_out"]} == {"group0", "group1", "group2"}
    train_ids = {im.image for c in splits["train"] for im in c.train_images}
    for subset in SUBSETS:
        assert not train_ids & {im.image for c in splits[subset] for im in c.test_images}, subset
    assert all(len(c.test_images) == 5 for c in splits["test_held_out"])  # every image of a held-out concept
    assert all(len(c.test_images) == 1 for c in splits["val_seen"])  # round(0.25 * 4) of the train images
    with pytest.raises(ClearglassError, match="cannot hold out"):
        split_demo(_concepts(per_group=2), holdout_per_group=1, val_holdout_per_group=1, val_fraction=0.2, seed=0)


def test_training_captions_never_name_a_concept_word() -> None:
    concepts = _concepts()
    concepts[0].train_images[0].new_captions = ["a concept11 thing", "a plain thing"]
    concepts[0].train_images[1].new_captions = ["two group2 things"]
    out, stats = drop_concept_word_captions(concepts, concept_vocabulary(concepts))
    assert out[0].train_images[0].new_captions == ["a plain thing"]
    assert len(out[0].train_images) == len(concepts[0].train_images) - 1
    assert stats["captions_removed"] == 2 and stats["images_dropped"] == 1


def test_only_training_captions_are_filtered_and_evaluation_images_stay() -> None:
    splits = split_demo(_concepts(), holdout_per_group=1, val_holdout_per_group=1, val_fraction=0.25, seed=0)
    for c in splits["train"] + splits["test_held_out"]:
        for im in c.train_images + c.test_images:
            im.new_captions = [f"one {c.concept} thing"]  # every caption names a concept word
    out, stats = filter_training_captions(splits)
    assert not [im for c in out["train"] for im in c.train_images] and stats["images_dropped"] > 0
    assert out["test_held_out"] == splits["test_held_out"]  # evaluation images and captions as built
    assert all(not c.train_images for c in out["test_seen"] + out["val_seen"])  # they follow the train split
    assert [c.test_images for c in out["test_seen"]] == [c.test_images for c in splits["test_seen"]]
