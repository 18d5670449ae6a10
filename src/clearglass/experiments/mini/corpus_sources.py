"""What the pretraining corpus can show: one small function per source yields its `CorpusItem`s, in a stable order.

Every source is a Debian package read offline; a missing one is a ClearglassError naming the package to install.
The paths are module constants read at call time, so tests can point them at tiny files.

- ``symbola``, ``noto_symbols``: Unicode symbols (general categories So and Sm, which make up the pictographic
  blocks) drawn by Symbola or by the Noto symbol fonts, named by UnicodeData.txt ("black sun with rays").
  Skipped and counted by reason: letters, digits, marks and other categories, CJK and braille blocks, letter-like
  names (circled letters, regional indicators), and code points the font's cmap lacks or maps to an empty outline.
  Each (code point, font) pair is one item.
- ``emoji``: Noto Color Emoji glyphs one at a time, named by emoji-test.txt (skin tones out), with CLDR keywords.
- ``mdi``, ``font_awesome``: icon fonts, each glyph named by its CSS class (the last of several aliases).
- ``oxygen``, ``breeze``, ``tango``, ``adwaita``: icon themes, named by file name and context folder. One file per
  (context, name): the largest PNG up to 256 px, else the SVG. A -symbolic/-rtl/-ltr variant stands in only for a
  missing plain icon; symlinked aliases and animation strips are skipped.
"""

from __future__ import annotations

import bisect
import re
import xml.etree.ElementTree as ElementTree
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fontTools.ttLib import TTFont, TTLibError

from clearglass.errors import ClearglassError
from clearglass.magic.sources import emoji as emoji_source
from clearglass.magic.sources.emoji import parse_emoji_test, render_glyph

UNICODE_DATA = Path("/usr/share/unicode/UnicodeData.txt")
BLOCKS = Path("/usr/share/unicode/Blocks.txt")
EMOJI_TEST = emoji_source.EMOJI_TEST
NOTO_EMOJI = emoji_source.NOTO_EMOJI
CLDR_ANNOTATIONS = Path("/usr/share/unicode/cldr/common/annotations/en.xml")
SYMBOLA = Path("/usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf")
NOTO_SYMBOL_FONTS = tuple(Path("/usr/share/fonts/truetype/noto") / name for name in (
    "NotoSansSymbols-Regular.ttf", "NotoSansSymbols2-Regular.ttf", "NotoSansMath-Regular.ttf",
    "NotoMusic-Regular.ttf"))


@dataclass(frozen=True)
class IconFont:
    """An icon font and the CSS whose ``.PREFIX-NAME:before { content: "\\XXXX" }`` rules name its glyphs."""

    font: Path
    css: Path
    prefix: str
    package: str
    label: str  # readable set name, in the concept name: "icons: Font Awesome"


ICON_FONTS: dict[str, IconFont] = {
    "mdi": IconFont(Path("/usr/share/fonts/truetype/materialdesignicons-webfont/materialdesignicons-webfont.ttf"),
                    Path("/usr/share/fonts-materialdesignicons-webfont/css/materialdesignicons.css"),
                    "mdi", "fonts-materialdesignicons-webfont", "Material Design Icons"),
    "font_awesome": IconFont(Path("/usr/share/fonts/truetype/font-awesome/fontawesome-webfont.ttf"),
                             Path("/usr/share/fonts-font-awesome/css/font-awesome.css"),
                             "fa", "fonts-font-awesome", "Font Awesome"),
}
ICON_THEMES: dict[str, tuple[Path, str]] = {  # source -> (theme folder, Debian package)
    "oxygen": (Path("/usr/share/icons/oxygen"), "oxygen-icon-theme"),
    "breeze": (Path("/usr/share/icons/breeze"), "breeze-icon-theme"),
    "tango": (Path("/usr/share/icons/Tango"), "tango-icon-theme"),
    "adwaita": (Path("/usr/share/icons/Adwaita"), "adwaita-icon-theme"),
}
SOURCES = ("symbola", "noto_symbols", "emoji", *ICON_FONTS, *ICON_THEMES)
MONOCHROME_FONT_SOURCES = frozenset({"symbola", "noto_symbols"})  # where `excluded_monochrome_chars` applies

CJK_BLOCK_WORDS = ("CJK", "Kangxi", "Ideographic", "Hangul", "Kanbun", "Yi Radicals", "Bopomofo", "Katakana")
LETTER_LIKE_NAME = re.compile(r"\b(?:LETTER|DIGIT|IDEOGRAPH|SYLLABLE)\b")
CONTEXT_PHRASES = {
    "actions": "an action icon", "applets": "an applet icon", "apps": "an application icon",
    "categories": "a category icon", "devices": "a device icon", "emblems": "an emblem", "emotes": "an emote",
    "mimetypes": "a file type icon", "places": "a location icon", "preferences": "a settings icon",
    "status": "a status icon", "ui": "an interface icon",
}
SKIPPED_CONTEXTS = frozenset({"animations"})  # strips of animation frames, not single pictures
MAX_PNG_SIZE = 256
_SIZE_DIR = re.compile(r"^(\d+)(?:x\d+)?(?:@(\d)x)?$")
_VECTOR_DIR = re.compile(r"^(?:scalable(?:-up-to-(\d+))?|symbolic)$")
_VARIANT = re.compile(r"(?:[-.](?:symbolic|rtl|ltr))+$")
_CSS_RULE = re.compile(r"((?:\.[\w-]+:before\s*,?\s*)+)\{\s*content:\s*\"\\([0-9a-fA-F]+)\"")


@dataclass(frozen=True)
class CorpusItem:
    """One thing a picture can show: a stable key, its caption-ready name, its source and category, how to draw it."""

    key: str  # unique and stable: "symbola:symbola_hint:2602", "tango:devices:printer"
    name: str  # "umbrella", "printer"
    source: str  # one of SOURCES
    category: str  # the concept its renders go to: "symbols: Miscellaneous Symbols", "icons: devices"
    text: str = ""  # characters drawn with `font`; empty for image files
    font: str = ""
    file: str = ""  # PNG or SVG (icon themes)
    colour: str = "mono"  # "mono": recoloured per render; "color": drawn as is; "auto": recoloured if it looks mono
    keywords: tuple[str, ...] = ()  # CLDR keywords (emoji)
    note: str = ""  # a phrase for one caption: the icon's context, "a device icon"


@dataclass(frozen=True)
class CldrAnnotation:
    """An emoji's CLDR text-to-speech name and keywords."""

    name: str
    keywords: tuple[str, ...]


def source_requirements(source: str) -> list[tuple[Path, str]]:
    """The (file, Debian package) pairs a source reads."""
    unicode = [(UNICODE_DATA, "unicode-data"), (BLOCKS, "unicode-data")]
    if source == "symbola":
        return [*unicode, (SYMBOLA, "fonts-symbola")]
    if source == "noto_symbols":
        return [*unicode, *((font, "fonts-noto-core") for font in NOTO_SYMBOL_FONTS)]
    if source == "emoji":
        return [(EMOJI_TEST, "unicode-data"), (NOTO_EMOJI, "fonts-noto-color-emoji"),
                (CLDR_ANNOTATIONS, "unicode-cldr-core")]
    if source in ICON_FONTS:
        spec = ICON_FONTS[source]
        return [(spec.font, spec.package), (spec.css, spec.package)]
    if source in ICON_THEMES:
        return [ICON_THEMES[source]]
    raise ClearglassError(f"unknown corpus source {source!r}: expected one of {list(SOURCES)}")


def require(source: str) -> None:
    """Raise a ClearglassError naming the Debian package when a file the source reads is missing."""
    for path, package in source_requirements(source):
        if not path.exists():
            raise ClearglassError(f"{package} is not installed: {path} not found; apt-get install {package}")


def source_items(source: str, skipped: Counter) -> Iterator[CorpusItem]:
    """The items of one source in a stable order; what is skipped is counted in `skipped` by reason."""
    require(source)
    if source == "symbola":
        return symbol_items(source, SYMBOLA, skipped)
    if source == "noto_symbols":
        return (item for font in NOTO_SYMBOL_FONTS for item in symbol_items(source, font, skipped))
    if source == "emoji":
        return emoji_items(skipped)
    return icon_font_items(source, skipped) if source in ICON_FONTS else icon_theme_items(source, skipped)


@lru_cache(maxsize=4)
def read_unicode_data(path: Path) -> tuple[dict[int, tuple[str, str]], tuple[tuple[int, int, str], ...]]:
    """Code point -> (name, general category), and the (first, last, category) ranges written as <..., First/Last>."""
    chars: dict[int, tuple[str, str]] = {}
    ranges = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split(";")
        if len(fields) < 3 or not re.fullmatch(r"[0-9A-F]{4,6}", fields[0]):
            raise ClearglassError(f"{path}:{number}: expected 'CODE;NAME;CATEGORY;...', got {line!r}")
        cp, name, category = int(fields[0], 16), fields[1], fields[2]
        if name.endswith(", Last>") and ranges:
            ranges[-1] = (ranges[-1][0], cp, category)
        elif name.endswith(", First>"):
            ranges.append((cp, cp, category))
        else:
            chars[cp] = (name, category)
    return chars, tuple(ranges)


@lru_cache(maxsize=4)
def read_blocks(path: Path) -> tuple[tuple[int, int, str], ...]:
    """The (first, last, name) Unicode blocks of Blocks.txt, in code point order."""
    blocks = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line:
            m = re.fullmatch(r"([0-9A-F]+)\.\.([0-9A-F]+)\s*;\s*(.+)", line)
            if m is None:
                raise ClearglassError(f"{path}:{number}: expected 'FIRST..LAST; Block Name', got {line!r}")
            blocks.append((int(m[1], 16), int(m[2], 16), m[3].strip()))
    return tuple(sorted(blocks))


def _block_of(cp: int, blocks: tuple[tuple[int, int, str], ...]) -> str:
    i = bisect.bisect_right(blocks, (cp, float("inf"))) - 1
    return blocks[i][2] if i >= 0 and blocks[i][0] <= cp <= blocks[i][1] else "No Block"


def symbol_skip_reason(name: str, category: str, block: str) -> str | None:
    """Why a code point is no corpus symbol ("letter", "digit or number", "mark", "cjk", ...), or None if it is one."""
    if category not in ("So", "Sm"):
        return {"L": "letter", "N": "digit or number", "M": "mark"}.get(category[:1], "other category")
    if any(word in block for word in CJK_BLOCK_WORDS):
        return "cjk"
    if block == "Braille Patterns":
        return "braille"
    return "letter-like name" if LETTER_LIKE_NAME.search(name) else None


@lru_cache(maxsize=16)
def font_glyphs(path: str) -> dict[int, bool]:
    """Code point -> whether the font's glyph for it has an outline (False: .notdef or empty), from its cmap."""
    try:
        font = TTFont(path, lazy=True)
        cmap = font.getBestCmap() or {}
        glyf = font["glyf"] if "glyf" in font else None
        return {cp: glyph != ".notdef" and (glyf is None or glyf[glyph].numberOfContours != 0)
                for cp, glyph in cmap.items()}
    except (OSError, TTLibError, KeyError) as e:
        raise ClearglassError(f"{path}: cannot read the font's glyph table ({e})") from None


def symbol_items(source: str, font: Path, skipped: Counter) -> Iterator[CorpusItem]:
    """The symbols `font` draws, in code point order, named by UnicodeData.txt and filed under their block."""
    chars, ranges = read_unicode_data(UNICODE_DATA)
    blocks = read_blocks(BLOCKS)
    glyphs = font_glyphs(str(font))
    symbols = {cp for cp, (_, category) in chars.items() if category in ("So", "Sm")}
    for cp in sorted(symbols | glyphs.keys()):
        info = chars.get(cp) or next((("", cat) for first, last, cat in ranges if first <= cp <= last), None)
        if info is None:
            skipped["unassigned"] += 1
            continue
        block = _block_of(cp, blocks)
        reason = symbol_skip_reason(info[0], info[1], block)
        if reason is None and not glyphs.get(cp, False):
            reason = "empty glyph" if cp in glyphs else "no glyph"
        if reason is not None:
            skipped[reason] += 1
            continue
        yield CorpusItem(key=f"{source}:{font.stem.lower()}:{cp:04X}", name=info[0].lower(), source=source,
                         category=f"symbols: {block}", text=chr(cp), font=str(font))


def parse_cldr_annotations(path: Path) -> dict[str, CldrAnnotation]:
    """CLDR annotations by characters (without U+FE0F, as CLDR writes them): the tts name and the '|' keywords."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError) as e:
        raise ClearglassError(f"{path}: cannot read the CLDR annotations ({e})") from None
    names: dict[str, str] = {}
    keywords: dict[str, tuple[str, ...]] = {}
    for i, node in enumerate(root.iter("annotation")):
        cp, text = node.get("cp"), (node.text or "").strip()
        if not cp or not text:
            raise ClearglassError(f"{path}: annotation {i}: expected a 'cp' attribute and text")
        if node.get("type") == "tts":
            names[cp] = text
        else:
            keywords[cp] = tuple(k.strip() for k in text.split("|") if k.strip())
    return {cp: CldrAnnotation(names.get(cp, ""), keywords.get(cp, ()))
            for cp in sorted(names.keys() | keywords.keys())}


def emoji_items(skipped: Counter) -> Iterator[CorpusItem]:
    """Noto Color Emoji glyphs one at a time, in emoji-test.txt order, filed under their group, with CLDR keywords."""
    cldr = parse_cldr_annotations(CLDR_ANNOTATIONS)
    for e in parse_emoji_test(EMOJI_TEST):
        if render_glyph(e.chars, str(NOTO_EMOJI)) is None:
            skipped["no glyph"] += 1
            continue
        plain = e.chars.replace("\ufe0f", "")
        annotation = cldr.get(plain, CldrAnnotation("", ()))
        yield CorpusItem(key="emoji:" + "-".join(f"{ord(c):04X}" for c in plain), name=e.name.replace(":", ","),
                         source="emoji", category=f"emoji: {e.group}", text=e.chars, font=str(NOTO_EMOJI),
                         colour="color", keywords=annotation.keywords)


def parse_icon_css(path: Path, prefix: str) -> list[tuple[list[str], int]]:
    """(class names, code point) of each ``.PREFIX-NAME:before { content: "\\XXXX" }`` rule, in file order."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ClearglassError(f"{path}: cannot read the icon CSS ({e})") from None
    rules = []
    for m in _CSS_RULE.finditer(text):
        names = re.findall(rf"\.{re.escape(prefix)}-([\w-]+):before", m[1])
        if names:
            rules.append((names, int(m[2], 16)))
    if not rules:
        raise ClearglassError(f"{path}: no '.{prefix}-NAME:before {{ content: \"\\XXXX\" }}' rules found")
    return rules


def icon_words(name: str) -> str:
    """Readable words of an icon name: "document-save" -> "document save", "envelope-o" -> "envelope outline"."""
    words = [w for w in re.split(r"[-_.\s]+", name.lower()) if w and w != "x"]
    return " ".join("outline" if w == "o" else w for w in words)


def icon_font_items(source: str, skipped: Counter) -> Iterator[CorpusItem]:
    """The glyphs of an icon font, in CSS order, each named by the last class name of its rule."""
    spec = ICON_FONTS[source]
    glyphs = font_glyphs(str(spec.font))
    seen: set[int] = set()
    for names, cp in parse_icon_css(spec.css, spec.prefix):
        skipped["alias name"] += len(names) - 1
        if cp in seen:
            skipped["alias name"] += 1
            continue
        seen.add(cp)
        if not glyphs.get(cp, False):
            skipped["empty glyph" if cp in glyphs else "no glyph"] += 1
            continue
        yield CorpusItem(key=f"{source}:{names[-1]}", name=icon_words(names[-1]), source=source,
                         category=f"icons: {spec.label}", text=chr(cp), font=str(spec.font))


def _icon_file_rank(path: Path, root: Path) -> tuple[str, tuple[int, int, int]] | None:
    """The context folder of a theme file and its preference (lower is better), or None outside a context.

    Preference: plain names before -symbolic before -rtl; then the largest PNG up to `MAX_PNG_SIZE` (a PNG outside
    a size folder counts as 0 px), then the SVG of the largest size folder, then the smallest larger PNG."""
    context, size = [], 0
    for part in path.relative_to(root).parts[:-1]:
        if m := _SIZE_DIR.match(part):
            size = int(m[1]) * int(m[2] or 1)
        elif m := _VECTOR_DIR.match(part):
            size = int(m[1] or (16 if part == "symbolic" else 1024))
        elif part != "base":
            context.append(part)
    if not context:
        return None
    variant = _VARIANT.search(path.stem)
    variant_rank = 0 if variant is None else 2 * ("rtl" in variant[0]) + ("symbolic" in variant[0])
    if path.suffix == ".svg":
        return "/".join(context), (variant_rank, 1, -size)
    return "/".join(context), (variant_rank, 0, -size) if size <= MAX_PNG_SIZE else (variant_rank, 2, size)


def icon_theme_items(source: str, skipped: Counter) -> Iterator[CorpusItem]:
    """One icon per (context, name) of a theme, sorted, named "printer" with the note "a device icon"."""
    root = ICON_THEMES[source][0]
    groups: dict[tuple[str, str], list[tuple[tuple[int, int, int], Path]]] = defaultdict(list)
    for path in sorted(root.rglob("*")):
        if path.suffix not in (".png", ".svg") or not path.is_file():
            continue
        ranked = None if path.is_symlink() else _icon_file_rank(path, root)
        if ranked is None or ranked[0] in SKIPPED_CONTEXTS:
            skipped["alias" if path.is_symlink() else "animation or no context"] += 1
            continue
        groups[(ranked[0], _VARIANT.sub("", path.stem))].append((ranked[1], path))
    for (context, plain), files in sorted(groups.items()):
        skipped["variant"] += len({p.stem for _, p in files}) - 1
        (variant, _, _), path = min(files)
        if not icon_words(plain):
            skipped["no name"] += 1
            continue
        yield CorpusItem(key=f"{source}:{context}:{plain}", name=icon_words(plain), source=source,
                         category=f"icons: {context}", file=str(path), colour="mono" if variant % 2 else "auto",
                         note=CONTEXT_PHRASES.get(context.split("/")[0], "an icon"))
