"""The cross-style set: Symbola's monochrome glyphs of the demo's emoji, drawn as scenes."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from clearglass.errors import ClearglassError
from clearglass.experiments.demo import cross_style
from clearglass.experiments.demo.cross_style import build_cross_style, monochrome_code_point, monochrome_glyph
from clearglass.magic.schema import ConceptRecord, ImageRecord


def test_only_single_code_points_are_drawn() -> None:
    assert monochrome_code_point("\u2615\ufe0f") == "\u2615"  # hot beverage with VS16
    assert monochrome_code_point("\U0001f468\u200d\U0001f373") is None  # a ZWJ sequence
    glyph = monochrome_glyph("\u2615", random.Random(0))
    assert glyph is not None and glyph.mode == "RGBA"
    ink = np.asarray(glyph)[..., :3][np.asarray(glyph)[..., 3] > 128]
    assert len(ink) > 50 and ink.max() <= 110  # a dark monochrome glyph, not a colour emoji
    assert monochrome_glyph("\U0001f468\u200d\U0001f373", random.Random(0)) is None


def test_build_cross_style_records_and_renders(tmp_path) -> None:
    concepts = [ConceptRecord(name, [other], [ImageRecord(f"{name}.png", ["x"], ["x"], name, "food and drink")], [])
                for name, other in (("fruit", "drink"), ("drink", "fruit"), ("not an emoji subgroup", "fruit"))]
    records, stats = build_cross_style(tmp_path, concepts, images_per_concept=3, image_size=48, seed=0)
    assert [r.concept for r in records] == ["fruit", "drink"] and stats["left_out"] == ["not an emoji subgroup"]
    assert all(not r.train_images and len(r.test_images) == 3 for r in records)
    assert records[0].hard_negative == ["drink"] and records[0].test_images[0].level2 == "food and drink"
    for im in records[0].test_images:
        with Image.open(tmp_path / im.image) as picture:
            assert picture.size == (48, 48) and len(picture.getcolors(maxcolors=48 * 48)) > 5
        assert im.level1 == "fruit" and im.old_captions == im.new_captions and len(im.old_captions) == 3
    again, _ = build_cross_style(tmp_path, concepts, images_per_concept=3, image_size=48, seed=0)
    assert again == records  # seeded and cached


def test_a_missing_symbola_names_the_package(tmp_path) -> None:
    cross_style._symbola.cache_clear()
    with pytest.raises(ClearglassError, match="apt-get install fonts-symbola"):
        monochrome_glyph("\u2615", random.Random(0), font_path=str(tmp_path / "missing.ttf"))
