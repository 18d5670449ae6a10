import pytest
from PIL import Image

from clearglass.errors import ClearglassError
from clearglass.magic.leak import leaked_words
from clearglass.magic.sources.emoji import (
    SUBGROUP_CONCEPTS,
    EmojiSource,
    group_concept,
    parse_emoji_test,
    usable_emoji,
    with_article,
)

SUBGROUPS = ["food-fruit", "animal-bird", "drink"]


def test_parse_keeps_fully_qualified_without_skin_tones():
    emoji = parse_emoji_test()
    assert not any("skin tone" in e.name for e in emoji)
    apple = next(e for e in emoji if e.name == "red apple")
    assert (apple.chars, apple.subgroup, apple.group) == ("\U0001F34E", "food-fruit", "food and drink")
    assert sum(e.name == "red heart" for e in emoji) == 1  # the unqualified variant is skipped


def test_usable_emoji_drop_names_with_chain_words():
    usable = usable_emoji(SUBGROUPS)
    names = {s: {e.name for e in v} for s, v in usable.items()}
    assert "banana" in names["food-fruit"] and "kiwi fruit" not in names["food-fruit"]
    assert "bird" not in names["animal-bird"] and "tropical drink" not in names["drink"]
    for s, v in usable.items():
        assert all(not leaked_words(e.name, (SUBGROUP_CONCEPTS[s], e.group)) for e in v)
    assert not set(SUBGROUP_CONCEPTS) & {"keycap", "country-flag", "skin-tone", "face-smiling"}


def test_unknown_subgroup_is_an_error():
    with pytest.raises(ClearglassError, match="unknown emoji subgroups"):
        usable_emoji(["country-flag"])


def test_scenes_are_deterministic_cached_and_leak_free(tmp_path):
    items = list(EmojiSource(tmp_path / "a", SUBGROUPS, images_per_subgroup=4, image_size=48, seed=3))
    again = list(EmojiSource(tmp_path / "b", SUBGROUPS, images_per_subgroup=4, image_size=48, seed=3))
    other = list(EmojiSource(tmp_path / "c", SUBGROUPS, images_per_subgroup=4, image_size=48, seed=4))
    assert len(items) == 12 and len({i.image for i in items}) == 12
    assert [i.captions for i in items] == [i.captions for i in again]
    assert [i.captions for i in items] != [i.captions for i in other]
    for a, b in zip(items, again):
        assert Image.open(a.path).tobytes() == Image.open(b.path).tobytes()
        assert Image.open(a.path).size == (48, 48)
        assert a.path == (tmp_path / "a" / a.image).resolve()
    assert items[0].hierarchy == ("fruit", "food and drink")
    for item in items:
        assert len(item.captions) == 3
        assert not any(leaked_words(c, item.hierarchy) for c in item.captions)
    stamp = items[0].path.stat().st_mtime_ns
    list(EmojiSource(tmp_path / "a", SUBGROUPS, images_per_subgroup=4, image_size=48, seed=3))
    assert items[0].path.stat().st_mtime_ns == stamp  # re-used, not re-rendered


def test_readable_words():
    assert group_concept("Animals & Nature") == "animals and nature"
    assert [with_article(n) for n in ("banana", "apple", "grapes", "Christmas tree")] == \
        ["a banana", "an apple", "grapes", "Christmas tree"]
