import hashlib
import json
import os
from collections import Counter
from itertools import islice

import pytest
from PIL import Image

from clearglass.errors import ClearglassError
from clearglass.experiments.mini import corpus_sources
from clearglass.experiments.mini.corpus import (
    CorpusConfig,
    build_corpus,
    exclusion_rule,
    item_file_stem,
    prepare_base,
    render_folder,
)
from clearglass.experiments.mini.corpus_sources import (
    CorpusItem,
    font_glyphs,
    parse_cldr_annotations,
    read_unicode_data,
    source_items,
    symbol_items,
    symbol_skip_reason,
)
from clearglass.magic.leak import leaked_words
from clearglass.magic.schema import load_concepts

SMALL_SOURCES = ["symbola", "emoji", "mdi", "font_awesome", "tango"]
CLDR_XML = """<?xml version="1.0" encoding="UTF-8" ?>
<ldml><annotations>
<annotation cp="😀">face | grin | grinning face | food</annotation>
<annotation cp="😀" type="tts">grinning face</annotation>
<annotation cp="☂">clothing | rain | umbrella</annotation>
<annotation cp="☂" type="tts">umbrella</annotation>
</annotations></ldml>
"""
OUTPUTS = ("train.json", "val.json", "test.json", "corpus.json")


@pytest.fixture
def tiny_cldr(tmp_path, monkeypatch):
    """A two-emoji CLDR annotation file in place of unicode-cldr-core's."""
    path = tmp_path / "en.xml"
    path.write_text(CLDR_XML, encoding="utf-8")
    monkeypatch.setattr(corpus_sources, "CLDR_ANNOTATIONS", path)
    return path


def _images(out, split):
    return [im for c in load_concepts(out / f"{split}.json") for im in c.train_images + c.test_images]


def _names_by_stem(sources, limit):
    return {item_file_stem(i.key): i.name for s in sources for i in islice(source_items(s, Counter()), limit)}


def _item_names(image_id, names_by_stem):
    """The names of the items an image id shows: '.../{stem}-{k}.png' or '.../two/{stem}__{stem}.png'."""
    stem = os.path.basename(image_id)[:-len(".png")]
    stems = stem.split("__") if "/two/" in image_id else [stem.rsplit("-", 1)[0]]
    return [names_by_stem[s] for s in stems]


def test_tiny_build_end_to_end_is_deterministic_and_cached(tmp_path, tiny_cldr):
    config = CorpusConfig(image_size=32, val_fraction=0.1, test_fraction=0.1, sources=SMALL_SOURCES,
                          limit_per_source=10)
    stats = build_corpus(tmp_path / "a", config, ["food"], set(), set(), progress=False)
    again = build_corpus(tmp_path / "b", config, ["food"], set(), set(), progress=False)
    a, b = tmp_path / "a", tmp_path / "b"
    for name in OUTPUTS:
        assert (a / name).read_bytes() == (b / name).read_bytes()
    train, val, test = (_images(a, s) for s in ("train", "val", "test"))
    assert all(im.level1 is None for im in train) and val and test
    assert all(not c.train_images for s in ("val", "test") for c in load_concepts(a / f"{s}.json"))
    assert {c.concept for c in load_concepts(a / "train.json")} >= {"icons: Font Awesome", "emoji: smileys and emotion"}
    folder = render_folder(config)
    for source in SMALL_SOURCES:
        mine = [im for im in train + val + test if im.image.startswith(f"{folder}/{source}/")]
        counts = stats["sources"][source]
        assert counts["items"] == 10 and counts["images"]["total"] == len(mine) > 20
        assert counts["images"]["two_item"] == sum("/two/" in im.image for im in mine) > 0
        assert counts["image_caption_pairs"] == sum(len(im.old_captions) for im in mine)
        assert counts["images"]["val"] == sum(im in val for im in mine)
    for im in train + val + test:
        assert im.old_captions == im.new_captions and 1 <= len(im.old_captions) <= 3
        assert (a / im.image).read_bytes() == (b / im.image).read_bytes()
        picture = Image.open(a / im.image)
        assert picture.size == (32, 32) and picture.mode == "RGB" and len(picture.getcolors(4096)) > 1
    emoji_captions = [c for im in train + val + test if "/emoji/" in im.image for c in im.old_captions]
    assert "grinning face, grin" in emoji_captions  # CLDR keywords less the name's words and the leaking "food"
    corpus = json.loads((a / "corpus.json").read_text())
    assert corpus["train_sha256"] == hashlib.sha256((a / "train.json").read_bytes()).hexdigest()
    assert corpus["settings"]["limit_per_source"] == 10 and corpus["forbidden_words"] == ["food"]
    assert stats["total"]["rendered"] == len(train + val + test) and again["total"]["reused"] == 0
    stamp = (a / train[0].image).stat().st_mtime_ns
    cached = build_corpus(a, config, ["food"], set(), set(), progress=False)
    assert cached["total"]["rendered"] == 0 and cached["total"]["reused"] == len(train + val + test)
    assert (a / train[0].image).stat().st_mtime_ns == stamp
    assert json.loads((a / "stats.json").read_text())["total"] == cached["total"]
    captions = {c for im in train + val + test for c in im.old_captions}
    assert cached["total"]["distinct_captions"] == len(captions)  # a caption two sources share counts once


def test_symbol_skip_reasons():
    assert symbol_skip_reason("LATIN CAPITAL LETTER A", "Lu", "Basic Latin") == "letter"
    assert symbol_skip_reason("DIGIT ONE", "Nd", "Basic Latin") == "digit or number"
    assert symbol_skip_reason("COMBINING ACUTE ACCENT", "Mn", "Combining Diacritical Marks") == "mark"
    assert symbol_skip_reason("KANGXI RADICAL ONE", "So", "Kangxi Radicals") == "cjk"
    assert symbol_skip_reason("CIRCLED LATIN CAPITAL LETTER A", "So", "Enclosed Alphanumerics") == "letter-like name"
    assert symbol_skip_reason("UMBRELLA", "So", "Miscellaneous Symbols") is None
    assert symbol_skip_reason("PLUS SIGN", "Sm", "Basic Latin") is None


def test_symbols_without_a_glyph_are_skipped_and_counted():
    skipped = Counter()
    items = list(symbol_items("symbola", corpus_sources.SYMBOLA, skipped))
    chars, _ = read_unicode_data(corpus_sources.UNICODE_DATA)
    glyphs = font_glyphs(str(corpus_sources.SYMBOLA))
    drawn = {ord(i.text) for i in items}
    missing = {cp for cp, (_, category) in chars.items() if category in ("So", "Sm") and cp not in glyphs}
    assert missing and not missing & drawn
    assert 0 < skipped["no glyph"] <= len(missing) and skipped["letter"] > 0 and skipped["mark"] > 0
    assert not drawn & {ord("A"), ord("1"), 0x0301, 0x2F00}  # letter, digit, mark, Kangxi radical
    assert all(glyphs[cp] for cp in drawn)
    umbrella = next(i for i in items if i.text == "\u2602")
    assert (umbrella.name, umbrella.category) == ("umbrella", "symbols: Miscellaneous Symbols")
    space = CorpusItem("symbola:space", "space", "symbola", "symbols: x", text=" ", font=str(corpus_sources.SYMBOLA))
    assert prepare_base(space, 64) is None  # a glyph that draws nothing counts as missing
    assert prepare_base(umbrella, 64).recolour


def test_leaking_captions_and_images_are_dropped_and_counted(tmp_path):
    forbidden = ["sign", "glyph"]
    config = CorpusConfig(image_size=32, val_fraction=0, test_fraction=0, sources=["symbola"], limit_per_source=12)
    stats = build_corpus(tmp_path, config, forbidden, set(), set(), progress=False)["sources"]["symbola"]
    items = list(islice(source_items("symbola", Counter()), 12))
    leaking = [i for i in items if leaked_words(i.name, forbidden)]
    assert 0 < len(leaking) < len(items)
    assert stats["leaks"]["items"] == len(leaking) and stats["leaks"]["images"] == 2 * len(leaking)
    assert stats["leaks"]["captions"] > 3 * 2 * len(leaking)  # and the "a glyph of ..." captions of the rest
    assert stats["leaks"]["examples"][0]["words"]
    images = _images(tmp_path, "train")
    assert all(not leaked_words(c, forbidden) for im in images for c in im.old_captions)
    assert min(len(im.old_captions) for im in images if "/two/" not in im.image) < 3
    names_by_stem = _names_by_stem(["symbola"], 12)
    names = {n for im in images for n in _item_names(im.image, names_by_stem)}
    assert names == {i.name for i in items} - {i.name for i in leaking}


def test_excluded_chars_appear_in_no_source(tmp_path, monkeypatch, tiny_cldr):
    unicode_data = tmp_path / "UnicodeData.txt"
    unicode_data.write_text("".join(f"{cp};{name};{cat};0;ON;;;;;N;;;;;\n" for cp, name, cat in (
        ("0041", "LATIN CAPITAL LETTER A", "Lu"), ("2600", "BLACK SUN WITH RAYS", "So"), ("2602", "UMBRELLA", "So"),
        ("1F600", "GRINNING FACE", "So"), ("1F603", "SMILING FACE WITH OPEN MOUTH", "So"))))
    monkeypatch.setattr(corpus_sources, "UNICODE_DATA", unicode_data)
    config = CorpusConfig(image_size=32, val_fraction=0, test_fraction=0, sources=["symbola", "emoji"],
                          limit_per_source=4)  # emoji: the first four smileys, 😀 😃 😄 😁
    stats = build_corpus(tmp_path / "out", config, [], {"😀", "\u2602\ufe0f"}, {"😃"}, progress=False)["sources"]
    ids = [os.path.basename(im.image) for im in _images(tmp_path / "out", "train")]
    assert not [i for i in ids if "1f600" in i or "2602" in i]  # neither as emoji nor as Symbola glyph
    assert [i for i in ids if i.startswith("emoji-1f603-")] and not [i for i in ids if "symbola-hint-1f603" in i]
    assert [i for i in ids if i.startswith("symbola-symbola-hint-2600-")]
    assert (stats["symbola"]["excluded"]["excluded_chars"], stats["symbola"]["excluded"]["excluded_monochrome_chars"]) \
        == (2, 1)
    assert (stats["emoji"]["excluded"]["excluded_chars"], stats["emoji"]["excluded"]["excluded_monochrome_chars"]) \
        == (1, 0)
    assert stats["symbola"]["items"] == 4 and stats["symbola"]["skipped"]["letter"] == 1
    service_dog = CorpusItem("emoji:x", "service dog", "emoji", "emoji: x", text="\U0001F415\u200d\U0001F9BA")
    assert exclusion_rule(service_dog, {"\U0001F415"}, set()) == "excluded_chars"
    umbrella = CorpusItem("emoji:2602", "umbrella", "emoji", "emoji: x", text="\u2602\ufe0f")
    assert exclusion_rule(umbrella, {"\u2602"}, set()) == "excluded_chars"
    assert exclusion_rule(umbrella, set(), {"\u2602"}) is None  # a color emoji is no monochrome render


def test_held_out_names_never_reach_train(tmp_path, tiny_cldr):
    sources = ["mdi", "font_awesome"]
    config = CorpusConfig(image_size=32, val_fraction=0.2, test_fraction=0.2, sources=sources, limit_per_source=30)
    build_corpus(tmp_path, config, [], set(), set(), progress=False)
    names_by_stem = _names_by_stem(sources, 30)
    val, test = ({im.level1 for im in _images(tmp_path, s)} for s in ("val", "test"))
    assert len(val) == len(test) == round(0.2 * len(set(names_by_stem.values()))) and not val & test
    for split, _held in (("val", val), ("test", test)):
        assert all(_item_names(im.image, names_by_stem) == [im.level1] for im in _images(tmp_path, split))
    train = _images(tmp_path, "train")
    assert any("/two/" in im.image for im in train)
    for im in train:
        assert not set(_item_names(im.image, names_by_stem)) & (val | test)


def test_cldr_parser(tmp_path, tiny_cldr):
    annotations = parse_cldr_annotations(tiny_cldr)
    assert annotations["😀"].name == "grinning face"
    assert annotations["😀"].keywords == ("face", "grin", "grinning face", "food")
    bad = tmp_path / "bad.xml"
    bad.write_text("<ldml><annotations><annotation cp='x'>", encoding="utf-8")
    with pytest.raises(ClearglassError, match="bad.xml: cannot read the CLDR annotations"):
        parse_cldr_annotations(bad)


def _png(path, size, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    image.paste(colour, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    image.save(path)


def test_icon_theme_walker_takes_one_file_per_context_and_name(tmp_path, monkeypatch):
    theme = tmp_path / "theme"
    for size in (16, 48, 512):
        _png(theme / f"{size}x{size}/devices/printer.png", size, (200, 30, 30, 255))
    (theme / "scalable/devices").mkdir(parents=True)
    (theme / "scalable/devices/printer.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    _png(theme / "48x48/actions/go-next.png", 48, (40, 40, 40, 255))
    _png(theme / "48x48/actions/go-next-rtl.png", 48, (40, 40, 40, 255))
    _png(theme / "16x16/actions/edit-copy-symbolic.png", 16, (40, 40, 40, 255))
    _png(theme / "32x32/animations/process-working.png", 32, (40, 40, 40, 255))
    _png(theme / "48x48/status/faint.png", 48, (40, 40, 40, 128))
    _png(theme / "48x48/status/dark-accent.png", 48, (40, 40, 40, 255))
    accented = Image.open(theme / "48x48/status/dark-accent.png")
    accented.paste((220, 30, 30, 255), (22, 22, 28, 28))
    accented.save(theme / "48x48/status/dark-accent.png")
    (theme / "48x48/apps").mkdir(parents=True)
    (theme / "48x48/apps/printer-alias.png").symlink_to(theme / "48x48/devices/printer.png")
    monkeypatch.setitem(corpus_sources.ICON_THEMES, "tango", (theme, "tango-icon-theme"))
    skipped = Counter()
    items = {i.key: i for i in source_items("tango", skipped)}
    assert sorted(items) == ["tango:actions:edit-copy", "tango:actions:go-next", "tango:devices:printer",
                             "tango:status:dark-accent", "tango:status:faint"]
    printer = items["tango:devices:printer"]
    assert (printer.name, printer.category, printer.note) == ("printer", "icons: devices", "a device icon")
    assert printer.file == str(theme / "48x48/devices/printer.png") and printer.colour == "auto"
    assert items["tango:actions:go-next"].file.endswith("48x48/actions/go-next.png")
    assert (items["tango:actions:edit-copy"].name, items["tango:actions:edit-copy"].colour) == ("edit copy", "mono")
    assert skipped == Counter({"alias": 1, "animation or no context": 1, "variant": 1})
    red, grey = prepare_base(printer, 64), prepare_base(items["tango:actions:go-next"], 64)
    assert (red.recolour, red.on_dark, grey.recolour, grey.on_dark) == (False, True, True, True)
    faint, dark = prepare_base(items["tango:status:faint"], 64), prepare_base(items["tango:status:dark-accent"], 64)
    assert faint.recolour and faint.image.getchannel("A").getextrema() == (255, 255)  # half-transparent ink made full
    assert not dark.recolour and not dark.on_dark  # dark grey with a red accent: never on a dark background
    _png(theme / "48x48/status/white.png", 48, (250, 250, 250, 255))
    shaded = Image.open(theme / "48x48/status/white.png")
    shaded.paste((185, 190, 190, 255), (12, 12, 24, 36))  # a white sheet with a grey fold: no flat ink
    shaded.save(theme / "48x48/status/white.png")
    white = prepare_base(CorpusItem("tango:status:white", "white", "tango", "icons: status", file=str(
        theme / "48x48/status/white.png"), colour="auto"), 64)
    assert white.pale and white.on_dark and not white.recolour and not red.pale


def test_missing_packages_and_bad_settings_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_sources, "SYMBOLA", tmp_path / "Symbola_hint.ttf")
    with pytest.raises(ClearglassError, match=r"^fonts-symbola is not installed: .*Symbola_hint.ttf not found; "
                                              r"apt-get install fonts-symbola$"):
        build_corpus(tmp_path, CorpusConfig(sources=["symbola"]), [], set(), set(), progress=False)
    monkeypatch.setattr(corpus_sources, "CLDR_ANNOTATIONS", tmp_path / "en.xml")
    with pytest.raises(ClearglassError, match="apt-get install unicode-cldr-core$"):
        list(source_items("emoji", Counter()))
    monkeypatch.setitem(corpus_sources.ICON_THEMES, "oxygen", (tmp_path / "oxygen", "oxygen-icon-theme"))
    with pytest.raises(ClearglassError, match="apt-get install oxygen-icon-theme$"):
        build_corpus(tmp_path, CorpusConfig(sources=["oxygen"]), [], set(), set(), progress=False)
    with pytest.raises(ClearglassError, match="pair_fraction must be in"):
        build_corpus(tmp_path, CorpusConfig(pair_fraction=1.0), [], set(), set(), progress=False)
    with pytest.raises(ClearglassError, match="sources must be distinct names among"):
        build_corpus(tmp_path, CorpusConfig(sources=["bogus"]), [], set(), set(), progress=False)
    assert not list(tmp_path.glob("*.json"))


def test_a_caption_two_sources_share_is_one_distinct_caption(tmp_path):
    """The total's distinct captions count the union over sources, not the sum of each source's count."""
    from clearglass.experiments.mini.corpus import Picture, _new_stats, _write_outputs

    def picture(source: str, name: str, captions: tuple[str, ...]) -> Picture:
        item = CorpusItem(key=f"{source}:{name}", name=name, source=source, category=f"{source}: things")
        return Picture(f"{source}/{name}.png", (item,), captions, "s")

    pictures = {"symbola": [picture("symbola", "umbrella", ("an umbrella", "a picture of an umbrella"))],
                "emoji": [picture("emoji", "umbrella", ("an umbrella",)), picture("emoji", "kite", ("a kite",))]}
    stats = {s: _new_stats() for s in pictures}
    report = _write_outputs(tmp_path, CorpusConfig(), pictures, {"umbrella": "train", "kite": "train"}, stats,
                            {}, 0.0)
    assert [report["sources"][s]["distinct_captions"] for s in ("symbola", "emoji")] == [2, 2]
    assert report["total"]["distinct_captions"] == 3 and report["total"]["image_caption_pairs"] == 4
