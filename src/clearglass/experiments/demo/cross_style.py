"""The cross-style test set: the demo's concepts drawn in another style. The same emoji, as the monochrome glyphs of
Symbola (Debian's fonts-symbola) in a random dark ink, are rendered as scenes the way the emoji source renders its
colour ones (1-3 emoji of one subgroup on a light background), captioned by their names.

Only single-code-point emoji that Symbola has a glyph for are drawn (a ZWJ sequence would come out as several
glyphs); a concept with fewer than `MIN_EMOJI` of them is left out and listed in the stats. The pretraining corpus of
``clearglass-mini`` renders none of these characters in a monochrome font, so every cross-style picture is new to
the base.
"""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from clearglass.errors import ClearglassError
from clearglass.io import save_image_atomic
from clearglass.magic.schema import ConceptRecord, ImageRecord
from clearglass.magic.sources.emoji import (
    CAPTIONS_PER_IMAGE,
    MAX_EMOJI_PER_SCENE,
    PHRASINGS,
    SUBGROUP_CONCEPTS,
    Emoji,
    render_scene,
    truetype_font,
    usable_emoji,
    with_article,
)

SYMBOLA = Path("/usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf")
GLYPH_SIZE = 96
MIN_EMOJI = 3


def monochrome_code_point(chars: str) -> str | None:
    """The one code point an emoji is drawn from in a monochrome font (VS16 dropped), or None for a sequence."""
    bare = chars.replace("\ufe0f", "")
    return bare if len(bare) == 1 else None


@lru_cache(maxsize=2)
def _symbola(path: str) -> tuple[ImageFont.FreeTypeFont, frozenset[int]]:
    from fontTools.ttLib import TTFont

    if not Path(path).is_file():
        raise ClearglassError(f"fonts-symbola is not installed: {path} not found; apt-get install fonts-symbola")
    return truetype_font(path, GLYPH_SIZE), frozenset(TTFont(path).getBestCmap())


def monochrome_glyph(chars: str, rng: random.Random, font_path: str = str(SYMBOLA)) -> Image.Image | None:
    """The emoji's Symbola glyph in a random dark ink as RGBA cropped to its ink, or None if Symbola has none."""
    font, cmap = _symbola(font_path)
    point = monochrome_code_point(chars)
    if point is None or ord(point) not in cmap:
        return None
    ink = tuple(rng.randint(0, 110) for _ in range(3))
    canvas = Image.new("RGBA", (2 * GLYPH_SIZE, 2 * GLYPH_SIZE), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((GLYPH_SIZE // 2, GLYPH_SIZE // 2), point, font=font, fill=(*ink, 255))
    box = canvas.getbbox()
    return None if box is None else canvas.crop(box)


def drawable_emoji(subgroups: list[str], font_path: str = str(SYMBOLA)) -> dict[str, list[Emoji]]:
    """Subgroup id -> its usable emoji that Symbola draws as one glyph (subgroups with at least MIN_EMOJI)."""
    _, cmap = _symbola(font_path)
    out = {}
    for subgroup, emoji in usable_emoji(subgroups).items():
        ok = [e for e in emoji if (p := monochrome_code_point(e.chars)) is not None and ord(p) in cmap]
        if len(ok) >= MIN_EMOJI:
            out[subgroup] = ok
    return out


def build_cross_style(out_dir: Path, concepts: list[ConceptRecord], images_per_concept: int, image_size: int,
                      seed: int, font_path: str = str(SYMBOLA)) -> tuple[list[ConceptRecord], dict]:
    """Concept records (test images only, the hard negatives of ``concepts``) of cross-style scenes rendered under
    ``out_dir/images/cross-style-s{size}-seed{seed}/``; returns them and their stats."""
    by_name = {name: sg for sg, name in SUBGROUP_CONCEPTS.items()}
    wanted = [by_name[c.concept] for c in concepts if c.concept in by_name]
    drawable = drawable_emoji(wanted, font_path)
    folder = Path("images") / f"cross-style-s{image_size}-seed{seed}"
    records, left_out = [], []
    for concept in concepts:
        subgroup = by_name.get(concept.concept)
        emoji = drawable.get(subgroup)
        if not emoji:
            left_out.append(concept.concept)
            continue
        level2 = (concept.train_images or concept.test_images)[0].level2
        images = []
        for k in range(images_per_concept):
            rng = random.Random(f"{seed}:cross:{subgroup}:{k}")
            chosen = rng.sample(emoji, rng.randint(1, min(MAX_EMOJI_PER_SCENE, len(emoji))))
            names = dict(zip("abc", (with_article(e.name) for e in chosen)))
            captions = [t.format(**names) for t in rng.sample(PHRASINGS[len(chosen)], CAPTIONS_PER_IMAGE)]
            image = (folder / f"{concept.concept.replace(' ', '-')}-{k:04d}.png").as_posix()
            if not (out_dir / image).exists():
                scene = render_scene(chosen, image_size, rng,
                                     glyph_of=lambda e, r: monochrome_glyph(e.chars, r, font_path))
                save_image_atomic(scene, out_dir / image)
            images.append(ImageRecord(image, captions, captions, concept.concept, level2))
        records.append(ConceptRecord(concept.concept, list(concept.hard_negative), [], images))
    stats = {"font": Path(font_path).name, "concepts": len(records), "images": sum(len(r.test_images) for r in records),
             "left_out": left_out, "emoji_per_concept": {sg: len(v) for sg, v in drawable.items()}}
    return records, stats
