"""Emoji scenes, fully offline: 1-3 Noto Color Emoji glyphs of one subgroup on a light background.

Names and the group/subgroup hierarchy come from Unicode's ``emoji-test.txt`` (fully-qualified entries only);
glyphs from ``NotoColorEmoji.ttf`` (PIL renders it at size 109 only, with ``embedded_color=True``).
Each image carries its true hierarchy (level1 = subgroup concept, level2 = group concept), e.g.
``("fruit", "food and drink")`` for a scene of grapes and a banana.

Subgroups used (`SUBGROUP_CONCEPTS`, subgroup id -> readable concept name): the pictorial subgroups of
Animals & Nature, Food & Drink, Travel & Places, Activities, Objects and People & Body. Left out: skin-tone
variants, the Component and Flags groups, all Symbols subgroups (keycaps, letters, arrows, signs: not pictures),
face and hand subgroups (their names all say "face"/"hand"), and mixed or tiny subgroups (place-other,
other-object, hotel, animal-amphibian, person, family, light & video).

Captions name the emoji in several phrasings ("a red apple next to a banana") and never a word of the image's
own concept chain: an emoji whose name contains such a word (e.g. "tropical drink" in drink, "white flower" in
flower) is dropped, as is an emoji the font has no glyph for. A subgroup with fewer than
`MIN_EMOJI_PER_SUBGROUP` usable emoji is unusable.

Rendering is deterministic for a seed: image k of a subgroup draws from ``random.Random(f"{seed}:{subgroup}:{k}")``.
Files live in a folder keyed by (image size, seed) and are re-used when present.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from clearglass.errors import ClearglassError
from clearglass.io import save_image_atomic
from clearglass.magic.leak import leaked_words
from clearglass.magic.sources import SourceItem

EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
NOTO_EMOJI = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
GLYPH_SIZE = 109  # the only size NotoColorEmoji's bitmap strikes render at
MIN_EMOJI_PER_SUBGROUP = 3
MAX_EMOJI_PER_SCENE = 3
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 1024  # a scene's side in pixels; glyphs render at 109, so more adds nothing

SUBGROUP_CONCEPTS: dict[str, str] = {
    "animal-mammal": "mammal",
    "animal-bird": "bird",
    "animal-reptile": "reptile",
    "animal-marine": "marine animal",
    "animal-bug": "bug",
    "plant-flower": "flower",
    "plant-other": "plant",
    "food-fruit": "fruit",
    "food-vegetable": "vegetable",
    "food-prepared": "prepared food",
    "food-asian": "asian food",
    "food-marine": "seafood",
    "food-sweet": "dessert",
    "drink": "drink",
    "dishware": "dishware",
    "place-map": "map",
    "place-geographic": "landscape",
    "place-building": "building",
    "place-religious": "religious building",
    "transport-ground": "land vehicle",
    "transport-water": "watercraft",
    "transport-air": "aircraft",
    "time": "timekeeping",
    "sky & weather": "sky and weather",
    "event": "festivity",
    "award-medal": "award",
    "sport": "sport",
    "game": "game",
    "arts & crafts": "arts and crafts",
    "clothing": "clothing",
    "sound": "sound",
    "music": "music",
    "musical-instrument": "musical instrument",
    "phone": "phone",
    "computer": "computer",
    "book-paper": "reading material",
    "money": "money",
    "mail": "mail",
    "writing": "writing tool",
    "office": "office supply",
    "lock": "lock",
    "tool": "tool",
    "science": "science",
    "medical": "medical supply",
    "household": "household item",
    "body-parts": "body part",
    "person-role": "occupation",
    "person-fantasy": "fantasy character",
    "person-activity": "everyday activity",
    "person-sport": "athlete",
    "person-gesture": "gesture",
    "person-resting": "rest",
}

_LINE = re.compile(r"^(?P<codes>[0-9A-F ]+?)\s*;\s*(?P<status>[a-z-]+)\s*#\s*\S+\s+E\d+\.\d+\s+(?P<name>.+)$")

PHRASINGS: dict[int, tuple[str, ...]] = {
    1: ("{a}", "a picture of {a}", "{a} on a plain background", "just {a}", "an emoji of {a}"),
    2: ("{a} next to {b}", "{a} and {b}", "{a} on the left and {b} on the right", "a picture of {a} with {b}",
        "{b} beside {a}"),
    3: ("{a}, {b} and {c}", "{a}, {b} and {c} side by side", "a picture of {a}, {b} and {c}",
        "{a} on the left, {b} in the middle and {c} on the right"),
}
CAPTIONS_PER_IMAGE = 3


@dataclass(frozen=True)
class Emoji:
    """One fully-qualified emoji: its characters, CLDR name, subgroup id and group concept."""

    chars: str
    name: str
    subgroup: str
    group: str


def group_concept(group: str) -> str:
    """A readable group concept: "Food & Drink" -> "food and drink"."""
    return " ".join(group.replace("&", " and ").lower().split())


def with_article(name: str) -> str:
    """The name with an indefinite article, none for plurals and proper names: "a banana", "an apple", "grapes"."""
    first = name.split()[0]
    if first[:1].isupper() or (name.endswith("s") and not name.endswith(("ss", "us"))):
        return name
    return ("an " if name[0].lower() in "aeiou" else "a ") + name


def parse_emoji_test(path: str | os.PathLike = EMOJI_TEST) -> list[Emoji]:
    """Every fully-qualified, non-skin-tone emoji of emoji-test.txt with its subgroup and group."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ClearglassError(f"{path}: cannot read the Unicode emoji list ({e})") from None
    group = subgroup = None
    out = []
    for number, line in enumerate(lines, 1):
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line.strip() and not line.startswith("#"):
            m = _LINE.match(line)
            if m is None or group is None or subgroup is None:
                raise ClearglassError(f"{path}:{number}: expected 'CODES ; status # emoji E<version> name', "
                                      f"got {line!r}")
            if m["status"] != "fully-qualified" or "skin tone" in m["name"]:
                continue
            chars = "".join(chr(int(c, 16)) for c in m["codes"].split())
            out.append(Emoji(chars, m["name"].strip(), subgroup, group_concept(group)))
    return out


@lru_cache(maxsize=32)
def truetype_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    """A TrueType font at a pixel size, loaded once; an unloadable file is an error naming it."""
    try:
        return ImageFont.truetype(path, size)
    except OSError as e:
        raise ClearglassError(f"{path}: cannot load the font at size {size} ({e})") from None


@lru_cache(maxsize=4096)
def render_glyph(chars: str, font_path: str = str(NOTO_EMOJI)) -> Image.Image | None:
    """The emoji as an RGBA image cropped to its ink, or None if the font has no single glyph for it."""
    font = truetype_font(font_path, GLYPH_SIZE)
    canvas = Image.new("RGBA", (2 * GLYPH_SIZE + 64, GLYPH_SIZE + 64), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((16, 16), chars, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None or box[2] - box[0] > 1.5 * GLYPH_SIZE:  # no glyph, or a sequence drawn as several glyphs
        return None
    return canvas.crop(box)


def usable_emoji(subgroups: list[str] | None = None, emoji_test: str | os.PathLike = EMOJI_TEST,
                 font_path: str | os.PathLike = NOTO_EMOJI) -> dict[str, list[Emoji]]:
    """Subgroup id -> its usable emoji (renderable, name free of the chain's words), for subgroups with enough of
    them."""
    wanted = list(SUBGROUP_CONCEPTS) if subgroups is None else subgroups
    unknown = [s for s in wanted if s not in SUBGROUP_CONCEPTS]
    if unknown:
        raise ClearglassError(f"unknown emoji subgroups {unknown}: expected some of {sorted(SUBGROUP_CONCEPTS)}")
    by_subgroup: dict[str, list[Emoji]] = {s: [] for s in wanted}
    for e in parse_emoji_test(emoji_test):
        if e.subgroup in by_subgroup and not leaked_words(e.name, (SUBGROUP_CONCEPTS[e.subgroup], e.group)) \
                and render_glyph(e.chars, str(font_path)) is not None:
            by_subgroup[e.subgroup].append(e)
    too_small = {s: len(v) for s, v in by_subgroup.items() if len(v) < MIN_EMOJI_PER_SUBGROUP}
    if too_small and subgroups is not None:
        raise ClearglassError(f"emoji subgroups with fewer than {MIN_EMOJI_PER_SUBGROUP} usable emoji: {too_small}")
    return {s: v for s, v in by_subgroup.items() if s not in too_small}


def slug(text: str) -> str:
    """Lower-case letters and digits joined by hyphens: "Animal & Bird" -> "animal-bird"."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def render_scene(emoji: list[Emoji], size: int, rng: random.Random, font_path: str = str(NOTO_EMOJI),
                 glyph_of: Callable[[Emoji, random.Random], Image.Image] | None = None) -> Image.Image:
    """Emoji left to right in equal slots, each scaled to 45-90% of its slot and jittered, on a light background.
    ``glyph_of(emoji, rng)`` draws one glyph as RGBA (default: the colour emoji font at ``font_path``)."""
    background = tuple(rng.randint(200, 255) for _ in range(3))
    scene = Image.new("RGB", (size, size), background)
    slot = size / len(emoji)
    for i, e in enumerate(emoji):
        glyph = glyph_of(e, rng) if glyph_of is not None else render_glyph(e.chars, font_path)
        side = max(8, int(min(slot, size) * rng.uniform(0.45, 0.9)))
        scale = side / max(glyph.size)
        small = glyph.resize((max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))), Image.LANCZOS)
        x = int(i * slot + rng.uniform(0, max(0.0, slot - small.width)))
        y = int(rng.uniform(0, max(0.0, size - small.height)))
        scene.paste(small, (x, y), small)
    return scene


class EmojiSource:
    """Renders `images_per_subgroup` scenes per subgroup under ``image_root/images/emoji-s{size}-seed{seed}/``."""

    def __init__(self, image_root: str | os.PathLike, subgroups: list[str] | None = None,
                 images_per_subgroup: int = 12, image_size: int = 64, seed: int = 0,
                 emoji_test: str | os.PathLike = EMOJI_TEST, font_path: str | os.PathLike = NOTO_EMOJI) -> None:
        if images_per_subgroup < 1 or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
            raise ClearglassError(f"emoji source: need images_per_subgroup >= 1 and {MIN_IMAGE_SIZE} <= image_size <= "
                                  f"{MAX_IMAGE_SIZE} (--image-size), got {images_per_subgroup} and {image_size}")
        self.image_root = Path(image_root)
        self.images_per_subgroup = images_per_subgroup
        self.image_size = image_size
        self.seed = seed
        self.font_path = str(font_path)
        self.emoji = usable_emoji(subgroups, emoji_test, font_path)
        self.folder = Path("images") / f"emoji-s{image_size}-seed{seed}"

    def __iter__(self) -> Iterator[SourceItem]:
        """One item per rendered scene, subgroup by subgroup; existing files are re-used."""
        (self.image_root / self.folder).mkdir(parents=True, exist_ok=True)
        for subgroup, emoji in self.emoji.items():
            hierarchy = (SUBGROUP_CONCEPTS[subgroup], emoji[0].group)
            for k in range(self.images_per_subgroup):
                rng = random.Random(f"{self.seed}:{subgroup}:{k}")
                count = rng.randint(1, min(MAX_EMOJI_PER_SCENE, len(emoji)))
                chosen = rng.sample(emoji, count)
                templates = rng.sample(PHRASINGS[count], CAPTIONS_PER_IMAGE)
                names = dict(zip("abc", (with_article(e.name) for e in chosen)))
                captions = [t.format(**names) for t in templates]
                image = (self.folder / f"{slug(subgroup)}-{k:04d}.png").as_posix()
                path = self.image_root / image
                if not path.exists():
                    save_image_atomic(render_scene(chosen, self.image_size, rng, self.font_path), path)
                yield SourceItem(image=image, path=path.resolve(), captions=captions, hierarchy=hierarchy)
