"""Offline pretraining corpus for the mini base model: augmented renders of symbols, emoji and icons, with captions.

`build_corpus` takes the items of each source (`corpus_sources`), drops the excluded characters, renders
`renders_per_item` augmented pictures of each item (scale, position, glyph and background colour) with instance-level
captions ("a black umbrella", "an icon of a printer"), drops every caption that names a forbidden concept word
(`leaked_words`) and every picture left without one, holds out a seeded fraction of the item names for val and test,
and adds two-item pictures of train items ("a banana and a red apple"). Every removal is counted in ``stats.json``.

Rendering is deterministic for a seed: picture k of an item draws from ``random.Random(f"{seed}:{key}:{k}")``, a
two-item picture from ``random.Random(f"{seed}:{key_a}+{key_b}")``. PNGs live under
``out/renders/s{size}-seed{seed}-{settings digest}/{source}/`` as ``{item}-{k}.png`` and ``two/{item a}__{item b}.png``
(``item_file_stem`` of the keys), and are re-used when present; writes are atomic.

Outputs, in the MAGIC JSON layout: ``train.json`` (one concept per source category, e.g. "symbols: Arrows" or
"icons: devices", levels null), ``val.json`` and ``test.json`` (held-out renders as ``test_images`` with
``level1`` = the item's name), ``stats.json`` and ``corpus.json`` (settings, exclusions and the sha256 of the splits).
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from itertools import islice
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from clearglass.config import Config
from clearglass.errors import ClearglassError
from clearglass.experiments.mini.corpus_sources import (
    MONOCHROME_FONT_SOURCES,
    SOURCES,
    CorpusItem,
    require,
    source_items,
)
from clearglass.io import file_sha256, json_digest, save_image_atomic, write_json_atomic
from clearglass.magic.leak import leaked_words
from clearglass.magic.schema import ConceptRecord, ImageRecord, save_concepts
from clearglass.magic.sources.emoji import render_glyph, slug, truetype_font, with_article

RENDER_VERSION = 2
SCALE = (0.4, 0.95)  # an item's long side, as a fraction of its slot
DARK_FRACTION = 0.2  # pictures on a dark background (monochrome items then drawn light)
MIN_BRIGHTNESS_ON_DARK = 110  # a colour item goes on a dark background only if its mean max(R, G, B) is this high
PALE_LUMA = 200  # a colour item this light (mean luma) gets a mid-grey "light" background instead of a near-white one
GLYPH_PX = 128  # font size glyphs are drawn at before scaling
EM_FLOOR = 0.5  # a glyph scales as if at least this fraction of an em, so a dot stays a dot
SVG_PX = 128
CAPTIONS_PER_ITEM = 3
CAPTIONS_PER_PAIR = 2
MAX_KEYWORDS = 3
EXAMPLES = 5
VARIATION_SELECTORS = str.maketrans("", "", "\ufe0e\ufe0f")

TEMPLATES: dict[str, tuple[str, ...]] = {
    "symbol": ("{x}", "{ax}", "a picture of {ax}", "{ax} on a plain background", "a glyph of {ax}", "a printed {x}"),
    "emoji": ("{ax}", "an emoji of {ax}", "a picture of {ax}", "{ax} on a plain background", "{ax_emoji}"),
    "icon": ("{x}", "an icon of {ax}", "{ax_icon}", "a pictogram of {ax}", "{ax} on a plain background"),
}
SOURCE_STYLE = {"symbola": "symbol", "noto_symbols": "symbol", "emoji": "emoji"}  # every other source: "icon"
PAIR_TEMPLATES = ("{a} and {b}", "{a} next to {b}", "{a} on the left and {b} on the right", "{b} beside {a}",
                  "a picture of {a} and {b}")


@dataclass
class CorpusConfig(Config):
    """Settings of a corpus build."""

    image_size: int = 64
    renders_per_item: int = 2
    pair_fraction: float = 0.25  # of the pictures of a source, two-item ones (all in train)
    val_fraction: float = 0.05  # of the distinct item names
    test_fraction: float = 0.05
    seed: int = 0
    sources: list[str] = field(default_factory=lambda: list(SOURCES))
    limit_per_source: int | None = None  # the first N items of each source: tiny slices for tests

    def validate(self) -> None:
        """Raise a ClearglassError naming the first bad setting."""
        val, test, sources = self.val_fraction, self.test_fraction, self.sources
        problems = [
            (self.image_size < 16, f"image_size must be >= 16, got {self.image_size}"),
            (self.renders_per_item < 1, f"renders_per_item must be >= 1, got {self.renders_per_item}"),
            (not 0 <= self.pair_fraction < 1, f"pair_fraction must be in [0, 1), got {self.pair_fraction}"),
            (not (0 <= val and 0 <= test and val + test < 1),
             f"val_fraction and test_fraction must be >= 0 with a sum < 1, got {val} and {test}"),
            (not sources or not set(sources) <= set(SOURCES) or len(set(sources)) < len(sources),
             f"sources must be distinct names among {list(SOURCES)}, got {sources}"),
            (self.limit_per_source is not None and self.limit_per_source < 1,
             f"limit_per_source must be None or >= 1, got {self.limit_per_source}"),
        ]
        for bad, message in problems:
            if bad:
                raise ClearglassError(message)


@dataclass(frozen=True)
class Picture:
    """One planned image: its id (a path relative to the output folder), what it shows and its captions."""

    image: str
    items: tuple[CorpusItem, ...]
    captions: tuple[str, ...]
    seed: str  # the string seeding its render


@dataclass(frozen=True)
class Base:
    """An item drawn once, cropped to its ink; `extent` is the length that `SCALE` refers to."""

    image: Image.Image  # RGBA
    extent: float
    recolour: bool  # drawn in a random ink per picture (its alpha is the shape)
    on_dark: bool  # stays visible on a dark background
    pale: bool  # nearly white: a light background must be mid-grey


def render_settings(config: CorpusConfig) -> dict:
    """The settings a render's pixels depend on besides its item; the module's drawing constants (colours,
    thresholds) are not listed: a change to them must raise ``RENDER_VERSION``, which renews the cache."""
    return {"image_size": config.image_size, "seed": config.seed, "scale": list(SCALE), "dark_fraction": DARK_FRACTION,
            "glyph_px": GLYPH_PX, "em_floor": EM_FLOOR, "svg_px": SVG_PX, "version": RENDER_VERSION}


def render_folder(config: CorpusConfig) -> str:
    """The cache folder of a build's renders, relative to the output folder."""
    digest = json_digest(render_settings(config))[:10]
    return f"renders/s{config.image_size}-seed{config.seed}-{digest}"


def item_file_stem(key: str) -> str:
    """The file name stem of an item's renders: a slug of its key and a short hash of it."""
    return f"{slug(key)[:80]}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def exclusion_rule(item: CorpusItem, excluded: set[str], excluded_monochrome: set[str]) -> str | None:
    """Which rule removes the item ("excluded_chars", "excluded_monochrome_chars"), or None; both sets hold
    characters without variation selectors, and an emoji sequence is removed when one of its parts is excluded."""
    plain = item.text.translate(VARIATION_SELECTORS)
    if not plain:
        return None
    parts = {plain, *plain.split("\u200d")}
    if parts & excluded:
        return "excluded_chars"
    if item.source in MONOCHROME_FONT_SOURCES and parts & excluded_monochrome:
        return "excluded_monochrome_chars"
    return None


def item_captions(item: CorpusItem, rng: random.Random, forbidden_words: list[str]) -> tuple[str, ...]:
    """`CAPTIONS_PER_ITEM` phrasings of one item; one names its note or its leak-free CLDR keywords when it has some."""
    x = item.name
    words = {"x": x, "ax": with_article(x), "ax_icon": with_article(f"{x} icon"),
             "ax_emoji": with_article(f"{x} emoji")}
    name_words = set(x.lower().split())
    keywords = [k for k in item.keywords
                if not set(k.lower().split()) <= name_words and not leaked_words(k, forbidden_words)]
    note = item.note or ", ".join(keywords[:MAX_KEYWORDS])
    templates = TEMPLATES[SOURCE_STYLE.get(item.source, "icon")]
    captions = [t.format(**words) for t in rng.sample(templates, CAPTIONS_PER_ITEM - bool(note))]
    return tuple(captions + [f"{x}, {note}"] * bool(note))


def pair_captions(a: CorpusItem, b: CorpusItem, rng: random.Random) -> tuple[str, ...]:
    """`CAPTIONS_PER_PAIR` phrasings of a two-item picture, `a` on the left."""
    names = {"a": with_article(a.name), "b": with_article(b.name)}
    return tuple(t.format(**names) for t in rng.sample(PAIR_TEMPLATES, CAPTIONS_PER_PAIR))


def _new_stats() -> dict:
    return {"items": 0, "skipped": Counter(), "excluded": Counter(), "excluded_examples": [],
            "leaks": Counter(), "leak_examples": [], "images": Counter(), "image_caption_pairs": 0,
            "distinct_captions": 0, "rendered": 0, "reused": 0}


def _kept_items(source: str, config: CorpusConfig, excluded: set[str], excluded_monochrome: set[str],
                stats: dict) -> list[CorpusItem]:
    items = list(islice(source_items(source, stats["skipped"]), config.limit_per_source))
    stats["items"] = len(items)
    kept = []
    for item in items:
        rule = exclusion_rule(item, excluded, excluded_monochrome)
        if rule is None:
            kept.append(item)
            continue
        stats["excluded"][rule] += 1
        if len(stats["excluded_examples"]) < EXAMPLES:
            stats["excluded_examples"].append({"item": item.key, "name": item.name, "rule": rule})
    return kept


def _leak_free(pictures: list[Picture], forbidden_words: list[str], stats: dict) -> list[Picture]:
    """The pictures with their leaking captions dropped; pictures left with none are dropped too (all counted)."""
    kept = []
    for picture in pictures:
        clean = []
        for caption in picture.captions:
            leaked = leaked_words(caption, forbidden_words)
            if not leaked:
                clean.append(caption)
                continue
            stats["leaks"]["captions"] += 1
            if len(stats["leak_examples"]) < EXAMPLES:
                stats["leak_examples"].append({"caption": caption, "words": leaked})
        if clean:
            kept.append(replace(picture, captions=tuple(clean)))
        else:
            stats["leaks"]["images"] += 1
    return kept


def _item_pictures(items: list[CorpusItem], config: CorpusConfig, folder: str, forbidden_words: list[str],
                   stats: dict) -> list[Picture]:
    """`renders_per_item` leak-free pictures per item; an item whose pictures all leak is counted and gone."""
    pictures = []
    for item in items:
        seeds = [f"{config.seed}:{item.key}:{k}" for k in range(config.renders_per_item)]
        planned = [Picture(f"{folder}/{item.source}/{item_file_stem(item.key)}-{k}.png", (item,),
                           item_captions(item, random.Random(f"{seed}:captions"), forbidden_words), seed)
                   for k, seed in enumerate(seeds)]
        kept = _leak_free(planned, forbidden_words, stats)
        stats["leaks"]["items"] += not kept
        pictures += kept
    return pictures


def split_names(names: set[str], config: CorpusConfig) -> dict[str, str]:
    """Name -> "train", "val" or "test": a seeded shuffle of the sorted names holds out the val and test fractions."""
    ordered = sorted(names)
    random.Random(f"{config.seed}:split").shuffle(ordered)
    n_val, n_test = round(len(ordered) * config.val_fraction), round(len(ordered) * config.test_fraction)
    return {name: "val" if i < n_val else "test" if i < n_val + n_test else "train" for i, name in enumerate(ordered)}


def _pair_pictures(source: str, items: list[CorpusItem], n_single: int, config: CorpusConfig, folder: str,
                   forbidden_words: list[str], stats: dict) -> list[Picture]:
    """Two-item pictures of distinct names among `items` (train only), `pair_fraction` of the source's pictures."""
    wanted = round(n_single * config.pair_fraction / (1 - config.pair_fraction))
    rng = random.Random(f"{config.seed}:{source}:pairs")
    chosen: dict[str, tuple[CorpusItem, CorpusItem]] = {}
    for _ in range(4 * wanted if len(items) >= 2 else 0):  # bounded retries of repeated names and pairs
        if len(chosen) == wanted:
            break
        a, b = rng.sample(items, 2)
        if a.name != b.name:
            chosen.setdefault(f"{a.key}+{b.key}", (a, b))
    planned = [Picture(f"{folder}/{source}/two/{item_file_stem(a.key)}__{item_file_stem(b.key)}.png", (a, b),
                       pair_captions(a, b, random.Random(f"{config.seed}:{key}:captions")), f"{config.seed}:{key}")
               for key, (a, b) in chosen.items()]
    return _leak_free(planned, forbidden_words, stats)


@lru_cache(maxsize=1)
def _cairosvg() -> ModuleType | None:
    try:
        import cairosvg
    except (ImportError, OSError):  # not installed, or libcairo2 missing
        return None
    return cairosvg


def _draw(item: CorpusItem) -> Image.Image | None:
    """The item drawn once as RGBA (a glyph in black on transparent, an emoji or icon as is), or None."""
    if item.font and item.colour == "color":  # a color bitmap font (Noto Color Emoji): only at its one strike size
        return render_glyph(item.text, item.font)
    if item.font:
        font = truetype_font(item.font, GLYPH_PX)
        left, top, right, bottom = font.getbbox(item.text)
        if right <= left or bottom <= top:
            return None
        mask = Image.new("L", (right - left + 4, bottom - top + 4), 0)
        ImageDraw.Draw(mask).text((2 - left, 2 - top), item.text, font=font, fill=255)
        ink = Image.new("RGBA", mask.size, (0, 0, 0, 255))
        ink.putalpha(mask)
        return ink
    try:
        if item.file.endswith(".svg"):
            cairosvg = _cairosvg()
            if cairosvg is None:
                return None
            return Image.open(io.BytesIO(cairosvg.svg2png(url=item.file, output_width=SVG_PX))).convert("RGBA")
        with Image.open(item.file) as image:
            return image.convert("RGBA")
    except (OSError, ValueError, SyntaxError):  # unreadable, or an SVG with entities (refused by defusedxml)
        return None


def _inked(image: Image.Image) -> np.ndarray:
    """The RGB values of the pixels an RGBA image visibly covers: (n, 3) int16."""
    pixels = np.asarray(image)
    return pixels[pixels[..., 3] > 32][:, :3].astype(np.int16)


def looks_monochrome(image: Image.Image) -> bool:
    """Whether the visible pixels of an RGBA image are one grey-ish colour (a symbolic icon, even half transparent):
    under 2% of them coloured (a small red accent is kept) and an even brightness."""
    inked = _inked(image)
    if len(inked) < 16:
        return False
    coloured = (inked.max(axis=1) - inked.min(axis=1)) > 40
    return float(coloured.mean()) < 0.02 and float(inked.mean(axis=1).std()) < 24


def prepare_base(item: CorpusItem, size: int) -> Base | None:
    """The item drawn once, cropped to its ink, at most 2 x size on its long side; None if it draws nothing."""
    image = _draw(item)
    box = None if image is None else image.getchannel("A").point(lambda a: 255 if a > 8 else 0).getbbox()
    if box is None:
        return None
    image = image.crop(box)
    extent = max(*image.size, EM_FLOOR * GLYPH_PX if item.font and item.colour != "color" else 0)
    shrink = min(1.0, 2 * size / max(image.size))
    if shrink < 1:
        image = image.resize((max(1, round(image.width * shrink)), max(1, round(image.height * shrink))), Image.LANCZOS)
    if item.colour == "mono" or (item.colour == "auto" and looks_monochrome(image)):
        alpha = image.getchannel("A")
        image.putalpha(alpha.point(lambda a, top=alpha.getextrema()[1]: a * 255 // top))  # full-strength ink
        return Base(image, extent * shrink, recolour=True, on_dark=True, pale=False)
    inked = _inked(image)
    brightness = float(inked.max(axis=1).mean()) if len(inked) else 0.0
    luma = float((inked @ np.array([0.299, 0.587, 0.114])).mean()) if len(inked) else 0.0
    return Base(image, extent * shrink, recolour=False, on_dark=brightness >= MIN_BRIGHTNESS_ON_DARK,
                pale=luma >= PALE_LUMA)


def _background(rng: random.Random, dark: bool, pale: bool) -> tuple[int, int, int]:
    low, high = (10, 70) if dark else (140, 190) if pale else (200, 255)
    return (rng.randint(low, high), rng.randint(low, high), rng.randint(low, high))


def _ink(rng: random.Random, dark: bool) -> tuple[int, int, int]:
    """A glyph colour that stands out: near black or a deep colour on light, near white or a pale colour on dark."""
    if rng.random() < 0.5:
        grey = rng.randint(200, 255) if dark else rng.randint(0, 70)
        return (grey, grey, grey)
    saturation, value = (rng.uniform(0.2, 0.6), rng.uniform(0.85, 1.0)) if dark else \
        (rng.uniform(0.5, 1.0), rng.uniform(0.3, 0.7))
    r, g, b = colorsys.hsv_to_rgb(rng.random(), saturation, value)
    return (round(r * 255), round(g * 255), round(b * 255))


def render_picture(bases: list[Base], size: int, rng: random.Random) -> Image.Image:
    """Bases left to right in equal slots, each scaled to `SCALE` of its slot and jittered, on a plain background
    (dark in `DARK_FRACTION` of the pictures whose bases all stay visible on dark)."""
    dark = rng.random() < DARK_FRACTION and all(base.on_dark for base in bases)
    picture = Image.new("RGB", (size, size), _background(rng, dark, any(base.pale for base in bases)))
    slot = size / len(bases)
    for i, base in enumerate(bases):
        factor = rng.uniform(*SCALE) * min(slot, size) / base.extent
        glyph = base.image.resize((max(1, round(base.image.width * factor)), max(1, round(base.image.height * factor))),
                                  Image.LANCZOS)
        if base.recolour:
            tinted = Image.new("RGBA", glyph.size, _ink(rng, dark))
            tinted.putalpha(glyph.getchannel("A"))
            glyph = tinted
        x = i * slot + rng.uniform(0, max(0.0, slot - glyph.width))
        y = rng.uniform(0, max(0.0, size - glyph.height))
        picture.paste(glyph, (int(x), int(y)), glyph)
    return picture


def _render(out: Path, pictures: list[Picture], size: int, stats: dict, bar: tqdm) -> list[Picture]:
    """The pictures whose file exists or is rendered now; those showing an item that draws nothing are dropped."""
    bases: dict[str, Base | None] = {}
    kept = []
    for picture in pictures:
        bar.update()
        path = out / picture.image
        if path.exists():
            stats["reused"] += 1
            kept.append(picture)
            continue
        for item in picture.items:
            if item.key not in bases:
                bases[item.key] = prepare_base(item, size)
                if bases[item.key] is None:
                    svg_missing = item.file.endswith(".svg") and _cairosvg() is None
                    stats["skipped"]["svg without cairosvg" if svg_missing else "empty or unreadable render"] += 1
        if any(bases[item.key] is None for item in picture.items):
            stats["images"]["unrenderable"] += 1
            continue
        save_image_atomic(render_picture([bases[i.key] for i in picture.items], size, random.Random(picture.seed)),
                          path)
        stats["rendered"] += 1
        kept.append(picture)
    return kept


def _split_of(picture: Picture, splits: dict[str, str]) -> str:
    return "train" if len(picture.items) > 1 else splits[picture.items[0].name.lower()]


def _concepts(pictures: list[Picture], held_out: bool) -> list[ConceptRecord]:
    """One concept record per category, sorted; held-out renders are test images with level1 = the item's name."""
    records: dict[str, ConceptRecord] = {}
    for p in pictures:
        record = records.setdefault(p.items[0].category, ConceptRecord(p.items[0].category))
        if held_out:
            record.test_images.append(ImageRecord(p.image, list(p.captions), list(p.captions), level1=p.items[0].name))
        else:
            record.train_images.append(ImageRecord(p.image, list(p.captions), list(p.captions)))
    return [records[c] for c in sorted(records)]


def _source_report(stats: dict, pictures: list[Picture], splits: dict[str, str]) -> dict:
    """The counts of one source: items, skips, exclusions, leaks, images per kind and split, captions."""
    images = Counter({"single": 0, "two_item": 0, "train": 0, "val": 0, "test": 0, **stats["images"]})
    split_items: dict[str, set[str]] = {"train": set(), "val": set(), "test": set()}
    for p in pictures:
        images[_split_of(p, splits)] += 1
        images["single" if len(p.items) == 1 else "two_item"] += 1
        if len(p.items) == 1:
            split_items[_split_of(p, splits)].add(p.items[0].key)
    return {
        "items": stats["items"], "skipped": {reason: n for reason, n in sorted(stats["skipped"].items()) if n},
        "excluded": {"excluded_chars": stats["excluded"]["excluded_chars"],
                     "excluded_monochrome_chars": stats["excluded"]["excluded_monochrome_chars"],
                     "examples": stats["excluded_examples"]},
        "leaks": {"captions": stats["leaks"]["captions"], "images": stats["leaks"]["images"],
                  "items": stats["leaks"]["items"], "examples": stats["leak_examples"]},
        "items_kept": sum(map(len, split_items.values())), "split_items": {s: len(v) for s, v in split_items.items()},
        "images": {**images, "total": images["single"] + images["two_item"]},
        "image_caption_pairs": sum(len(p.captions) for p in pictures),
        "distinct_captions": len({c for p in pictures for c in p.captions}),
        "rendered": stats["rendered"], "reused": stats["reused"],
    }


def _summed(reports: list[dict]) -> dict:
    """Numbers summed over reports, nested dicts key by key; lists (examples) left out. (Distinct counts do not
    add up: the caller counts those over the union.)"""
    total: dict = {}
    for report in reports:
        for key, value in report.items():
            if isinstance(value, dict):
                total[key] = _summed([total.get(key, {}), value])
            elif isinstance(value, int):
                total[key] = total.get(key, 0) + value
    return total


def _write_outputs(out: Path, config: CorpusConfig, pictures: dict[str, list[Picture]], splits: dict[str, str],
                   stats: dict[str, dict], exclusions: dict[str, list[str]], seconds: float) -> dict:
    """Write train/val/test.json, corpus.json and stats.json; return the stats."""
    by_split: dict[str, list[Picture]] = {"train": [], "val": [], "test": []}
    for source_pictures in pictures.values():
        for p in source_pictures:
            by_split[_split_of(p, splits)].append(p)
    for split, split_pictures in by_split.items():
        save_concepts(_concepts(split_pictures, held_out=split != "train"), out / f"{split}.json")
    settings = {**asdict(config), "render": render_settings(config), "render_folder": render_folder(config)}
    write_json_atomic({"settings": settings, **{f"{s}_sha256": file_sha256(out / f"{s}.json") for s in by_split},
                       **exclusions}, out / "corpus.json")
    reports = {s: _source_report(stats[s], pictures[s], splits) for s in pictures}
    total = {**_summed(list(reports.values())),  # one caption may come from several sources: count it once
             "distinct_captions": len({c for ps in pictures.values() for p in ps for c in p.captions})}
    report = {"sources": reports, "total": total,
              "split_names": dict(sorted(Counter(splits.values()).items())), "settings": settings,
              "seconds": round(seconds, 1)}
    write_json_atomic(report, out / "stats.json")
    return report


def build_corpus(out: Path, config: CorpusConfig, forbidden_words: list[str], excluded_chars: set[str],
                 excluded_monochrome_chars: set[str], progress: bool = True) -> dict:
    """Render the corpus into `out` (re-using cached renders), write its JSON files, and return the stats."""
    start = time.monotonic()
    for source in config.sources:  # every package checked before any work (source_items checks its own again)
        require(source)
    out, folder = Path(out), render_folder(config)
    excluded = {c.translate(VARIATION_SELECTORS) for c in excluded_chars}
    excluded_monochrome = {c.translate(VARIATION_SELECTORS) for c in excluded_monochrome_chars}
    stats = {source: _new_stats() for source in config.sources}
    singles = {}
    for source in config.sources:
        items = _kept_items(source, config, excluded, excluded_monochrome, stats[source])
        singles[source] = _item_pictures(items, config, folder, forbidden_words, stats[source])
    splits = split_names({p.items[0].name.lower() for pictures in singles.values() for p in pictures}, config)
    planned = {}
    for source, pictures in singles.items():
        train_items = list(dict.fromkeys(p.items[0] for p in pictures if splits[p.items[0].name.lower()] == "train"))
        planned[source] = pictures + _pair_pictures(source, train_items, len(pictures), config, folder,
                                                    forbidden_words, stats[source])
    with tqdm(total=sum(map(len, planned.values())), desc="corpus renders", unit="image", disable=not progress) as bar:
        rendered = {source: _render(out, pictures, config.image_size, stats[source], bar)
                    for source, pictures in planned.items()}
    exclusions = {"forbidden_words": sorted(set(forbidden_words)), "excluded_chars": sorted(excluded_chars),
                  "excluded_monochrome_chars": sorted(excluded_monochrome_chars)}
    return _write_outputs(out, config, rendered, splits, stats, exclusions, time.monotonic() - start)
