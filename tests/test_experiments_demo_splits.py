"""The demo's base-to-novel split (disjoint, stratified by level2 group, following the base's card) and its
training-caption filter."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from clearglass.errors import ClearglassError
from clearglass.experiments.demo.config import DemoConfig
from clearglass.experiments.demo.data import base_excluded, build_splits, concept_emoji
from clearglass.experiments.demo.splits import (
    SUBSETS,
    _allocate,
    concept_vocabulary,
    drop_concept_word_captions,
    filter_training_captions,
    pick_concepts,
    split_demo,
)
from clearglass.magic.leak import leaked_words
from demo_fixtures import make_concepts as _concepts


def _kinds(unseen: set[str] | None = None, **kw: int) -> dict[str, set[str]]:
    settings = {"holdout_per_group": 1, "novel_test": 3, "novel_val": 2, "seed": 0, **kw}
    return pick_concepts(_concepts(groups=3, per_group=5), unseen, **settings)


def test_every_concept_is_of_one_kind_and_novel_ones_spread_over_the_groups() -> None:
    kinds = _kinds()
    names = [n for k in kinds.values() for n in k]
    assert len(names) == len(set(names)) == 15
    assert [len(kinds[k]) for k in ("held_out", "novel_test", "novel_val")] == [3, 3, 2]
    groups = {k: sorted(n[-2] for n in kinds[k]) for k in kinds}
    assert groups["held_out"] == ["0", "1", "2"] and groups["novel_test"] == ["0", "1", "2"]
    assert all(groups["base"].count(g) >= 1 for g in "012")  # every group keeps a concept to fine-tune on
    assert _kinds() == kinds and _kinds(seed=1) != kinds  # seeded


def test_the_split_follows_what_the_base_saw() -> None:
    unseen = {f"concept{g}{c}" for g in range(3) for c in (0, 1)}
    kinds = _kinds(unseen)
    assert kinds["held_out"] <= unseen  # unseen objects only
    assert not (kinds["novel_test"] | kinds["novel_val"]) & unseen  # novel concepts: objects the base knows
    assert unseen - kinds["held_out"] <= kinds["base"]  # the other unseen ones are fine-tuned
    with pytest.raises(ClearglassError, match="cannot hold out 3"):
        _kinds(unseen, holdout_per_group=3)
    with pytest.raises(ClearglassError, match="novel_test: 7 wanted, but the groups can give only 6"):
        _kinds(unseen, novel_test=7, novel_val=0)


def test_allocation_is_proportional_with_largest_remainders() -> None:
    assert _allocate(16, {"a": 3, "b": 4, "c": 5, "d": 1, "e": 13, "f": 2}, "x") == \
        {"a": 2, "b": 2, "c": 3, "d": 1, "e": 7, "f": 1}  # 16 * cap / 28, remainders .71 .86 .57 win
    assert _allocate(0, {"a": 1}, "x") == {"a": 0}


def test_split_demo_is_disjoint_and_no_novel_concept_is_trained() -> None:
    concepts = _concepts(groups=3, per_group=5)
    kinds = _kinds()
    splits = split_demo(concepts, kinds, val_fraction=0.25, seed=0)
    trained = {c.concept for c in splits["train"]}
    assert trained == kinds["base"]
    assert {c.concept for c in splits["test_novel"]} == kinds["novel_test"]
    assert {c.concept for c in splits["val_novel"]} == kinds["novel_val"]
    assert {c.concept for c in splits["test_held_out"]} == kinds["held_out"]
    train_ids = {im.image for c in splits["train"] for im in c.train_images}
    for subset in SUBSETS:
        assert not train_ids & {im.image for c in splits[subset] for im in c.test_images}, subset
    for subset in ("test_novel", "val_novel", "test_held_out"):
        assert all(len(c.test_images) == 5 and not c.train_images for c in splits[subset])  # every image, untrained
    assert all(len(c.test_images) == 1 for c in splits["val_seen"])  # round(0.25 * 4) of the train images


def test_the_shipped_demo_split_matches_the_base_card(tmp_path: Path) -> None:
    config = DemoConfig.load("default")
    config = replace(config, data=replace(config.data, images_per_subgroup=5))
    splits, summary = build_splits(tmp_path, config, progress=False)
    assert summary["base_corpus"] == {"held_out_emoji_seen": [], "novel_emoji_unseen": []}
    assert len(summary["kinds"]["novel_test"]) == 16 and len(summary["kinds"]["novel_val"]) == 8
    excluded = base_excluded(config.base)
    emoji = concept_emoji(config.data)
    for c in splits["test_novel"] + splits["val_novel"]:
        assert not emoji[c.concept] & excluded, c.concept  # novel items are in the base's corpus
    for c in splits["test_held_out"]:
        assert emoji[c.concept] <= excluded, c.concept  # unseen-object items are not
    vocabulary = concept_vocabulary([c for subset in splits.values() for c in subset])
    assert not [cap for c in splits["train"] for im in c.train_images for cap in im.new_captions
                if leaked_words(cap, vocabulary)]  # no concept word in any training text


def test_training_captions_never_name_a_concept_word() -> None:
    concepts = _concepts()
    concepts[0].train_images[0].new_captions = ["a concept11 thing", "a plain thing"]
    concepts[0].train_images[1].new_captions = ["two group2 things"]
    out, stats = drop_concept_word_captions(concepts, concept_vocabulary(concepts))
    assert out[0].train_images[0].new_captions == ["a plain thing"]
    assert len(out[0].train_images) == len(concepts[0].train_images) - 1
    assert stats["captions_removed"] == 2 and stats["images_dropped"] == 1


def test_only_training_captions_are_filtered_and_evaluation_images_stay() -> None:
    splits = split_demo(_concepts(groups=3, per_group=5), _kinds(), val_fraction=0.25, seed=0)
    for c in splits["train"] + splits["test_held_out"]:
        for im in c.train_images + c.test_images:
            im.new_captions = [f"one {c.concept} thing"]  # every caption names a concept word
    out, stats = filter_training_captions(splits)
    assert not [im for c in out["train"] for im in c.train_images] and stats["images_dropped"] > 0
    assert out["test_held_out"] == splits["test_held_out"]  # evaluation images and captions as built
    assert all(not c.train_images for c in out["test_seen"] + out["val_seen"])  # they follow the train split
    assert [c.test_images for c in out["test_seen"]] == [c.test_images for c in splits["test_seen"]]
