from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from clearglass.errors import ClearglassError
from clearglass.magic.builder import (
    BuildOptions,
    build_concepts,
    consistent_chains,
    merge_small,
    rank_negatives,
    split_images,
)
from clearglass.magic.labelers import ConceptLabel
from clearglass.magic.sources import SourceItem
from clearglass.magic.validate import validate_concepts
from magic_fixtures import fake_embed


class TableLabeler:
    """Labels by a caption -> (levels, new captions, negatives) table."""

    name = "table"

    def __init__(self, table):
        self.table = table

    def label_many(self, items):
        return [ConceptLabel(*self.table[i.captions[0]]) for i in items]


def make_items(root: Path, spec: list[tuple[str, int]]) -> list[SourceItem]:
    items = []
    for key, n in spec:
        for j in range(n):
            path = root / f"{key}{j}.png"
            Image.new("RGB", (8, 8), (j, 0, 0)).save(path)
            items.append(SourceItem(path.name, path, [key, f"{key} photo {j}"]))
    return items


OPTS = BuildOptions(progress=False, min_group_size=3, test_fraction=0.25)


def test_merge_split_negatives_and_consistency(tmp_path):
    table = {
        "apple": (("fruit", "food", None, None), ["a red one"], ["bird"]),
        "kiwi": (("kiwi", "fruit", "food", None), ["a green one"], []),  # 2 images: merged into fruit
        "crow": (("bird", "animal", None, None), ["a black one"], []),
        "cat": (("mammal", "animal", None, None), ["a furry one"], []),
        "lone": (("lone", None, None, None), ["alone"], []),  # small, no parent: dropped
    }
    items = make_items(tmp_path, [("apple", 4), ("kiwi", 2), ("crow", 4), ("cat", 4), ("lone", 1)])
    records, build = build_concepts(items, TableLabeler(table), OPTS, embed=fake_embed)
    assert [r.concept for r in records] == ["bird", "fruit", "mammal"]
    assert build["merged_concepts"] == {"kiwi": "fruit"} and build["dropped_small_concepts"] == {"lone": 1}
    fruit = records[1]
    assert len(fruit.train_images) + len(fruit.test_images) == 6 and len(fruit.test_images) == 2
    assert {im.levels() for im in fruit.train_images + fruit.test_images} == {("fruit", "food", None, None)}
    assert fruit.hard_negative[0] == "bird"  # named by the labeler
    assert records[0].hard_negative[0] == "mammal"  # sibling under "animal" before the rest
    assert validate_concepts(records, "mem") == []
    again, _ = build_concepts(items, TableLabeler(table), OPTS, embed=fake_embed)
    assert again == records


def test_holdout_and_leaks(tmp_path):
    table = {k: ((k, "thing", None, None), [f"a {k}s picture", "plain"], []) for k in ("ant", "bee", "fly")}
    items = make_items(tmp_path, [("ant", 3), ("bee", 3), ("fly", 3)])
    records, build = build_concepts(items, TableLabeler(table), BuildOptions(progress=False, min_group_size=3,
                                                                             holdout_concepts=1), embed=fake_embed)
    held = [r for r in records if not r.train_images]
    assert len(held) == 1 and len(held[0].test_images) == 3 and build["held_out_concepts"] == [held[0].concept]
    assert build["leaks"]["count"] == 9 and build["leaks"]["examples"][0]["words"]
    filtered, build = build_concepts(items, TableLabeler(table), BuildOptions(progress=False, min_group_size=3,
                                                                              filter_leaks=True), embed=fake_embed)
    assert all(im.new_captions == ["plain"] for r in filtered for im in r.train_images + r.test_images)
    assert build["leaks"]["filtered"] and build["leaks"]["count"] == 9


def test_bad_images_error_or_skip(tmp_path):
    table = {"ant": (("ant", None, None, None), ["x"], [])}
    items = make_items(tmp_path, [("ant", 4)])
    items[1].path.write_bytes(b"not an image")
    with pytest.raises(ClearglassError, match=r"ant1.png: image 'ant1.png': not a readable image"):
        build_concepts(items, TableLabeler(table), OPTS, embed=fake_embed)
    records, build = build_concepts(items, TableLabeler(table), BuildOptions(progress=False, min_group_size=3,
                                                                             skip_bad_images=True), embed=fake_embed)
    assert build["bad_images"]["count"] == 1 and sum(len(r.train_images + r.test_images) for r in records) == 3


def test_consistent_chains_majority_vote():
    chains, changed = consistent_chains({"a": ("x", "p", None, None), "b": ("x", "p", None, None),
                                         "c": ("x", "q", None, None)})
    assert changed == 1 and set(chains.values()) == {("x", "p", None, None)}


def test_merge_small_cascades():
    chains = {f"i{k}": ("leaf", "mid", "top", None) for k in range(2)} | {"j": ("mid", "top", None, None)}
    merged, moves, dropped = merge_small(chains, 3)
    assert set(merged.values()) == {("top", None, None, None)} and moves == {"leaf": "mid", "mid": "top"}
    assert dropped == {}


def test_split_is_seeded_and_keeps_both_sides():
    import random
    train, test = split_images([f"i{k}" for k in range(10)], 0.2, random.Random(1))
    assert len(test) == 2 and sorted(train + test) == sorted(f"i{k}" for k in range(10))
    assert split_images([f"i{k}" for k in range(10)], 0.2, random.Random(1)) == (train, test)
    assert [len(s) for s in split_images(["a", "b"], 0.01, random.Random(0))] == [1, 1]


def test_rank_negatives_matches_brute_force():
    concepts = ["a", "b", "c", "d", "e"]
    parents = {"a": "p", "b": "p", "c": "q", "d": "q", "e": None}
    named = {c: Counter() for c in concepts} | {"a": Counter({"e": 2})}
    got = rank_negatives(concepts, parents, named, 3, fake_embed)
    vec = fake_embed(concepts)
    for i, c in enumerate(concepts):
        def score(o):
            j = concepts.index(o)
            return (-named[c][o], not (parents[c] is not None and parents[o] == parents[c]), -float(vec[i] @ vec[j]))
        assert got[c] == sorted((o for o in concepts if o != c), key=score)[:3]
    assert got["a"][:2] == ["e", "b"]


def test_every_label_failing_is_an_error_counting_the_reasons(tmp_path):
    from clearglass.magic.builder import LabellingFailed
    from clearglass.magic.labelers import LabelFailure

    reasons = ["HTTP 500 after 4 attempts"] * 3 + ["timed out"] * 2 + ["a", "b", "b"]

    class Failing:
        name = "failing"
        stats = {"requests": 8}

        def label_many(self, items):
            return [LabelFailure(i.image, r) for i, r in zip(items, reasons)]

    items = make_items(tmp_path, [("x", 8)])
    with pytest.raises(LabellingFailed) as error:
        build_concepts(items, Failing(), OPTS, embed=fake_embed)
    assert str(error.value) == ("8 of 8 images failed to label: HTTP 500 after 4 attempts (3); timed out (2); b (2); "
                                "1 other reason (1)")
    assert error.value.build["label_failures"]["count"] == 8 and error.value.build["labeler_stats"] == {"requests": 8}
