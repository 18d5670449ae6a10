"""Synthetic hard negatives: both caption sources, determinism, never a positive, borrowing, concept-level filling,
and the outer loss's denominator growing with them."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch

from clearglass.data import GroupIndex, PairKey
from clearglass.errors import ClearglassError
from clearglass.hard_negatives import CaptionNegatives, SyntheticNegativesConfig, fill_hard_negatives, substitute
from clearglass.losses import GroupedContrastiveLoss
from clearglass.magic.labelers.wordnet import wordnet_reader
from clearglass.magic.schema import ConceptRecord, ImageRecord
from magic_fixtures import fake_embed


def concept(name: str, captions: list[str], negatives: list[str] = (), chain: tuple = (None, None, None),
            old: list[str] = (), test: list[str] = ()) -> ConceptRecord:
    """One concept whose train images each carry one of ``captions`` (and ``old`` original captions)."""
    def image(k: int, caption: str) -> ImageRecord:
        return ImageRecord(f"{name}-{k}.png", list(old), [caption], name, *chain)
    return ConceptRecord(name, list(negatives), [image(k, c) for k, c in enumerate(captions)],
                         [image(100 + k, c) for k, c in enumerate(test)])


EMOJI_LIKE = [
    concept("fruit", ["a red apple next to a banana", "a banana", "an apple and a cherry on the left",
                      "just a plain background"], ["land vehicle"]),
    concept("land vehicle", ["a red taxi next to a bus", "a bus on the left", "an ambulance and a taxi"], ["fruit"]),
]


def keys_of(index: GroupIndex, seed: int = 7) -> list[PairKey]:
    return [PairKey(g, i, 0, seed + 31 * g + i) for g, group in enumerate(index.groups)
            for i in range(len(group.images))]


def changed_words(caption: str, negative: str) -> list[tuple[str, str]]:
    """(old, new) word pairs where the two differ (same word count expected), articles ignored."""
    a, b = re.findall(r"[A-Za-z]+", caption), re.findall(r"[A-Za-z]+", negative)
    assert len(a) == len(b), (caption, negative)
    return [(x, y) for x, y in zip(a, b) if x != y and x.lower() not in ("a", "an")]


def test_substitute_fixes_articles_and_keeps_punctuation():
    assert substitute("a red apple, an apple and a banana", {2: "taxi", 4: "ambulance", 7: "bus"}) \
        == "a red taxi, an ambulance and a bus"
    assert substitute("A banana", {1: "apple"}) == "An apple"


def test_groups_source_swaps_concept_words_for_hard_negative_objects():
    index = GroupIndex(EMOJI_LIKE)
    neg = CaptionNegatives(index, EMOJI_LIKE, "groups", per_caption=3, seed=0)
    assert neg.specific[0] == {"apple", "banana", "cherry"}  # "red", "left" are in both groups: not concept words
    assert neg.objects[0, 1] == ["ambulance", "bus", "taxi"]
    for key in keys_of(index):
        caption = neg.captions[key.group][key.image][key.caption]
        for text in neg.for_key(key):
            if not neg.bearing(key.group, caption):  # borrowed from another caption of the group
                continue
            swaps = changed_words(caption, text)
            assert {old.lower() for old, _ in swaps} == {w for _, w in neg.bearing(key.group, caption)}
            assert all(new in neg.objects[key.group, 1 - key.group] for _, new in swaps)
    assert neg.for_key(PairKey(0, 0, 0, 5)) == neg.for_key(PairKey(0, 0, 0, 5))


def test_wordnet_source_uses_cohyponyms_outside_the_concept():
    chain = ("pet", None, None)
    concepts = [concept("canine", ["a dog on a sofa", "a small dog on a sofa"], ["pet bird"], chain),
                concept("pet bird", ["a parrot on a sofa", "a small parrot on a sofa"], ["canine"], chain)]
    index = GroupIndex(concepts)
    neg = CaptionNegatives(index, concepts, "wordnet", per_caption=4, seed=0)
    wn = wordnet_reader()
    dog = wn.synsets("dog", wn.NOUN)[0]
    siblings = {h.lemma_names()[0].replace("_", " ") for p in dog.hypernyms() for h in p.hyponyms()}
    assert neg.cohyponyms(0, "dog") and set(neg.cohyponyms(0, "dog")) < siblings
    for name in neg.cohyponyms(0, "dog"):  # none is itself a canine (the group's concept): wolf, fox, ... are out
        synset = wn.synsets(name.replace(" ", "_"), wn.NOUN)[0]
        ancestors = {n for s in synset.closure(lambda s: s.hypernyms()) for n in s.lemma_names()}
        assert "canine" not in ancestors, name
    for key in keys_of(index):
        caption = neg.captions[key.group][key.image][key.caption]
        [(_, word)] = neg.bearing(key.group, caption)
        for text in neg.for_key(key):
            match = re.fullmatch(r"a small (.+) on a sofa" if "small" in caption else r"an? (.+) on a sofa", text)
            assert match and match[1] in neg.cohyponyms(key.group, word), (caption, text)
    assert neg.stats["wordnet"] == 4 * len(keys_of(index))


def test_wordnet_filter_follows_the_group_concept():
    """apple's co-hyponym banana is a negative for a 'tool' group but not for a 'fruit' group."""
    concepts = [concept("fruit", ["an apple"], ["tool"]), concept("tool", ["a hammer"], ["fruit"])]
    neg = CaptionNegatives(GroupIndex(concepts), concepts, "both", seed=0)
    assert "banana" not in neg.cohyponyms(0, "apple") and "banana" in neg.cohyponyms(1, "apple")
    assert neg.sources(0, "an apple") == ["groups"]  # every co-hyponym of apple is a fruit: no wordnet edit


def test_both_sources_are_deterministic_and_seeded():
    index = GroupIndex(EMOJI_LIKE)
    first = CaptionNegatives(index, EMOJI_LIKE, "both", per_caption=2, seed=3).for_batch(keys_of(index))
    again = CaptionNegatives(index, EMOJI_LIKE, "both", per_caption=2, seed=3).for_batch(keys_of(index))
    other = CaptionNegatives(index, EMOJI_LIKE, "both", per_caption=2, seed=4).for_batch(keys_of(index))
    assert first == again and first != other and len(first) == 2 * len(keys_of(index))


def test_never_a_real_caption_of_the_concept_and_borrowing_is_counted():
    fruit = concept("fruit", ["an apple", "a cherry", "just a plain background"], ["vehicle"], old=["a bus"],
                    test=["a taxi"])
    vehicle = concept("vehicle", ["a bus", "a taxi", "an ambulance"], ["fruit"])
    index = GroupIndex([fruit, vehicle])
    neg = CaptionNegatives(index, [fruit, vehicle], "groups", per_caption=3, seed=0)
    made = Counter(t for key in keys_of(index) for t in neg.for_key(key) if key.group == 0)
    assert set(made) == {"an ambulance"}  # "a bus" (an original caption) and "a taxi" (a test caption) are positives
    assert neg.stats["borrowed"] == 3  # the background caption has no concept word: it borrows all three


def test_a_concept_without_any_usable_edit_is_an_error():
    fruit = concept("fruit", ["an apple"], ["vehicle"], test=["a taxi"])
    vehicle = concept("vehicle", ["a taxi"], ["fruit"])
    index = GroupIndex([fruit, vehicle])
    neg = CaptionNegatives(index, [fruit, vehicle], "groups", seed=0)
    with pytest.raises(ClearglassError, match="'fruit'.*differs from its real captions"):
        neg.for_key(PairKey(0, 0, 0, 1))
    lonely = [concept("fruit", ["an apple"]), concept("vehicle", ["a taxi"])]  # no hard negatives: no objects
    with pytest.raises(ClearglassError, match=r"concept\(s\) \['fruit', 'vehicle'\]"):
        CaptionNegatives(GroupIndex(lonely), lonely, "groups")


def test_config_is_validated():
    with pytest.raises(ClearglassError, match="source"):
        SyntheticNegativesConfig(source="llm")
    with pytest.raises(ClearglassError, match="per_caption"):
        SyntheticNegativesConfig(per_caption=0)


def test_fill_hard_negatives_ranks_siblings_then_cousins_then_others():
    chains = {"a": ("p", "x"), "b": ("p", "x"), "c": ("q", "x"), "d": ("r", "y"), "e": ("q", "x")}
    concepts = [concept(n, [f"caption {n}"], [] if n != "e" else ["d"], (p, g, None)) for n, (p, g) in chains.items()]
    concepts.append(ConceptRecord("held", []))  # held out: never a group, never filled
    filled, names = fill_hard_negatives(concepts, 3, fake_embed)
    assert names == ["a", "b", "c", "d"]
    vec = dict(zip(chains, fake_embed(list(chains))))
    for rec in filled[:4]:
        c = rec.concept

        def rank(o: str) -> tuple:
            return (chains[o][0] != chains[c][0], chains[o][1] != chains[c][1], -float(vec[c] @ vec[o]), o)
        assert rec.hard_negative == sorted((o for o in chains if o != c), key=rank)[:3]
    assert filled[0].hard_negative[0] == "b" and filled[4].hard_negative == ["d"] and filled[5].hard_negative == []
    assert concepts[0].hard_negative == []  # the input is not modified


def test_negatives_grow_the_outer_denominator():
    """With extra text negatives the image->text logsumexp gains terms, so the pairwise outer loss grows."""
    gen = torch.Generator().manual_seed(0)
    images, texts = torch.randn(3, 2, 8, generator=gen), torch.randn(3, 2, 8, generator=gen)
    negatives = torch.randn(6, 8, generator=gen)
    loss = GroupedContrastiveLoss("pairwise", None)
    plain, with_neg = loss(images, texts)["outer_loss"], loss(images, texts, text_negatives=negatives)["outer_loss"]
    assert with_neg > plain
