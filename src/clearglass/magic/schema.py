"""Typed records for the MAGIC JSON layout, with load and save.

The file is a JSON list of concept records, as in the CLEAR GLASS reference:
``{concept, hard_negative: [concept names], train_images: [...], test_images: [...]}``;
each image is ``{image, old_captions, new_captions, level1, level2, level3, level4}``.
A concept whose ``train_images`` is empty is a held-out (unseen) concept.
"""

from __future__ import annotations

import difflib
import functools
import os
import posixpath
import unicodedata
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from clearglass.errors import ClearglassError
from clearglass.io import read_json, write_json_atomic

LEVELS = ("level1", "level2", "level3", "level4")
SPLITS = ("train", "test")


@dataclass
class ImageRecord:
    """One image with its original and concept-level captions and its concept chain."""

    image: str
    old_captions: list[str]
    new_captions: list[str]
    level1: str | None = None
    level2: str | None = None
    level3: str | None = None
    level4: str | None = None

    def levels(self) -> tuple[str | None, str | None, str | None, str | None]:
        """The concept chain, specific to general."""
        return (self.level1, self.level2, self.level3, self.level4)


@dataclass
class ConceptRecord:
    """One concept group: its images per split and its hard-negative concepts."""

    concept: str
    hard_negative: list[str] = field(default_factory=list)
    train_images: list[ImageRecord] = field(default_factory=list)
    test_images: list[ImageRecord] = field(default_factory=list)

    def images(self, split: str) -> list[ImageRecord]:
        """The images of one split ('train' or 'test')."""
        if split not in SPLITS:
            raise ClearglassError(f"unknown split {split!r}: expected one of {SPLITS}")
        return self.train_images if split == "train" else self.test_images


COCO_ID_DIGITS = 12  # a bare COCO id, the file name without ".jpg": 000000000139


@dataclass(frozen=True)
class ImageRoot:
    """The folder a dataset's image ids are relative to, and whether an id may leave it (an absolute path, ``..``
    past the folder, or a symbolic link out of it): ``--allow-outside-root``. It is an ``os.PathLike`` of the
    folder, so it goes wherever an image root does and :func:`resolve_image_path` applies its policy."""

    folder: Path
    allow_outside: bool = False

    def __fspath__(self) -> str:
        return os.fspath(self.folder)

    @functools.cached_property
    def real(self) -> str:
        """The folder with symbolic links resolved (once)."""
        return os.path.realpath(self.folder)


def resolve_image_path(image_root: str | os.PathLike, image: str, allow_outside_root: bool = False) -> Path:
    """The file of an image id under ``image_root``: a relative path with a file suffix is joined to it, and a bare
    12-digit COCO id is that name plus ``.jpg``; any other id is an error. Unless ``allow_outside_root`` (or an
    :class:`ImageRoot` that allows it), the file must resolve inside the root (symbolic links followed)."""
    allow = allow_outside_root or getattr(image_root, "allow_outside", False)
    folder = os.fspath(image_root)
    if not image or "\x00" in image:
        raise ClearglassError(f"image id {image!r}: expected a file path relative to the image root")
    if os.path.splitext(image)[1] in ("", "."):
        if not (len(image) == COCO_ID_DIGITS and image.isdigit() and image.isascii()):
            raise ClearglassError(f"image id {image!r} has no file suffix: expected a relative path with a suffix "
                                  f"(images/a.png) or a bare {COCO_ID_DIGITS}-digit COCO id (000000000139)")
        image = f"{image}.jpg"
    joined = os.path.join(folder, image)
    if not allow:
        allowed = " (pass --allow-outside-root, or allow_outside_root=true in a train config, to allow it)"
        if os.path.isabs(image):
            raise ClearglassError(f"image id {image!r} is an absolute path: expected a path inside the image root "
                                  f"{folder}{allowed}")
        inside = image_root.real if isinstance(image_root, ImageRoot) else os.path.realpath(folder)
        target = os.path.realpath(joined)
        if not target.startswith(inside.rstrip(os.sep) + os.sep):
            raise ClearglassError(f"image id {image!r} resolves to {target}, outside the image root {inside}{allowed}")
    return Path(joined)


# the keys a record may hold: the fields asdict writes (concepts_to_json), in their order, which the messages list
CONCEPT_KEYS = tuple(f.name for f in fields(ConceptRecord))
IMAGE_KEYS = tuple(f.name for f in fields(ImageRecord))
_CAPTION_WHITESPACE = "\t\n\r"  # control characters a caption may hold: whitespace, harmless on a terminal
_UNSAFE_CATEGORIES = ("Cc", "Cf", "Cs", "Zl", "Zp")
ZWJ = "\u200d"  # the zero-width joiner, which also joins emoji sequences (👨‍🍳): allowed between two non-letters


def _is_unsafe(text: str, i: int, caption: bool = False) -> bool:
    """Whether ``text[i]`` is a control, format (bidi, zero-width), surrogate or line/paragraph separator
    character; a caption's tabs and line breaks are not, nor a zero-width joiner inside an emoji sequence."""
    ch = text[i]
    if unicodedata.category(ch) not in _UNSAFE_CATEGORIES or caption and ch in _CAPTION_WHITESPACE:
        return False
    if ch == ZWJ and 0 < i < len(text) - 1:
        return any(unicodedata.category(n)[0] in "LN" for n in (text[i - 1], text[i + 1]))
    return True


def _unsafe_positions(text: str, caption: bool = False) -> list[int]:
    """Where ``text`` holds a character :func:`unsafe_chars` names; printable text (the common case) holds none:
    it has no Cc, Cf, Cs, Zl or Zp character."""
    return [] if text.isprintable() else [i for i in range(len(text)) if _is_unsafe(text, i, caption)]


def unsafe_chars(text: str, caption: bool = False) -> list[str]:
    """The characters of ``text`` that must not reach a terminal or a dataset unseen, as ``U+XXXX``: control
    characters (a caption may hold tabs and line breaks), format characters (bidi overrides U+202A..U+202E and
    isolates U+2066..U+2069, zero-width U+200B..U+200D, U+FEFF; a zero-width joiner inside an emoji sequence is
    kept), lone surrogates and line/paragraph separators."""
    return [f"U+{ord(text[i]):04X}" for i in _unsafe_positions(text, caption)]


def clean_text(text: str) -> str:
    """``text`` in NFC form without the characters :func:`unsafe_chars` names: control characters and separators
    become spaces, format characters and surrogates are dropped; whitespace is collapsed."""
    text = unicodedata.normalize("NFC", text)
    kept = list(text)
    for i in _unsafe_positions(text):
        kept[i] = " " if unicodedata.category(text[i]) in ("Cc", "Zl", "Zp") else ""
    return " ".join("".join(kept).split())


def escaped(text: str) -> str:
    """``text`` for a terminal: the characters :func:`unsafe_chars` names written as ``\\uXXXX`` escapes."""
    kept = list(text)
    for i in _unsafe_positions(text):
        kept[i] = f"\\u{ord(text[i]):04x}"
    return "".join(kept)


def image_key(image: str) -> str:
    """The identity of an image id: ``images/./a.png``, ``images//a.png`` and ``images/a.png`` are one image."""
    return posixpath.normpath(image)


def _refuse_unknown_keys(raw: dict, known: tuple[str, ...], where: str) -> None:
    """A key the layout does not have (``train_image`` for ``train_images``) would leave its data unread."""
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"expected the keys {list(known)}"
            raise ClearglassError(f"{where}: unknown key {key!r}; {hint}")


def _name(value: Any, key: str, where: str) -> str:
    """A concept name (a concept, a level, a hard negative) in NFC form: a string with a visible character and no
    control, bidi or zero-width character."""
    if not isinstance(value, str) or not value.strip():
        raise ClearglassError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")
    bad = unsafe_chars(value)
    if bad:
        raise ClearglassError(f"{where}: field {key!r} = {value!r} holds control, bidi or zero-width characters "
                              f"{bad}; expected plain text")
    return unicodedata.normalize("NFC", value)


def _image_from_json(raw: Any, where: str) -> ImageRecord:
    if not isinstance(raw, dict):
        raise ClearglassError(f"{where}: expected an image object, got {type(raw).__name__}")
    _refuse_unknown_keys(raw, IMAGE_KEYS, where)
    if "image" not in raw:
        raise ClearglassError(f"{where}: missing field 'image'")
    if not isinstance(raw["image"], str):
        raise ClearglassError(f"{where}: field 'image' must be a string (a path relative to the image root), got "
                              f"{type(raw['image']).__name__} {raw['image']!r}")
    for key in ("old_captions", "new_captions"):
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            raise ClearglassError(f"{where}: field {key!r} must be a list of strings")
        for k, caption in enumerate(value):
            bad = unsafe_chars(caption, caption=True)
            if bad:
                raise ClearglassError(f"{where}: {key}[{k}] holds control, bidi or zero-width characters {bad}; "
                                      "expected plain text")
    levels = {key: None if raw.get(key) is None else _name(raw[key], key, where) for key in LEVELS}
    return ImageRecord(
        image=raw["image"],
        old_captions=list(raw.get("old_captions", [])),
        new_captions=list(raw.get("new_captions", [])),
        **levels,
    )


def concepts_from_json(raw: Any, source: str = "<memory>") -> list[ConceptRecord]:
    """Parse the reference JSON layout; errors name the source, the record index and the field. Concept names are
    read in Unicode NFC form, so a name written composed and decomposed is one name."""
    if not isinstance(raw, list):
        raise ClearglassError(f"{source}: expected a JSON list of concept records, got {type(raw).__name__}")
    concepts = []
    for i, rec in enumerate(raw):
        where = f"{source}: concept record {i}"
        if not isinstance(rec, dict):
            raise ClearglassError(f"{where}: expected an object, got {type(rec).__name__}")
        _refuse_unknown_keys(rec, CONCEPT_KEYS, where)
        name = _name(rec.get("concept"), "concept", where)
        negatives = rec.get("hard_negative", [])
        if not isinstance(negatives, list) or not all(isinstance(n, str) for n in negatives):
            raise ClearglassError(f"{where} ({name!r}): field 'hard_negative' must be a list of strings")
        negatives = [_name(n, f"hard_negative[{k}]", f"{where} ({name!r})") for k, n in enumerate(negatives)]
        splits = {}
        for split in SPLITS:
            key = f"{split}_images"
            images = rec.get(key, [])
            if not isinstance(images, list):
                raise ClearglassError(f"{where} ({name!r}): field {key!r} must be a list")
            splits[key] = [_image_from_json(im, f"{where} ({name!r}) {key}[{j}]") for j, im in enumerate(images)]
        concepts.append(ConceptRecord(concept=name, hard_negative=negatives, **splits))
    return concepts


def concepts_to_json(concepts: list[ConceptRecord]) -> list[dict]:
    """The reference JSON layout of a list of concept records."""
    return [asdict(c) for c in concepts]


def stats_path(dataset: str | os.PathLike) -> Path:
    """The stats file beside a dataset: magic.json -> magic.stats.json (``build`` writes it, with the image root)."""
    dataset = Path(dataset)
    return dataset.with_name(dataset.stem + ".stats.json")


def dataset_image_root(dataset: str | os.PathLike) -> Path:
    """The folder a dataset's image ids are relative to: the one ``build`` recorded in the stats file beside it
    (``image_root_relative`` to the dataset's folder, so the two move together, else the absolute ``image_root``),
    else the dataset file's folder. An explicit ``--images`` / ``images=`` wins over this."""
    dataset = Path(dataset)
    stats = stats_path(dataset)
    if not stats.is_file():
        return dataset.parent
    raw = read_json(stats, "dataset stats file", dict)
    relative = raw.get("image_root_relative")
    candidates = ([dataset.parent / relative] if isinstance(relative, str) else []) + \
        ([Path(raw["image_root"])] if isinstance(raw.get("image_root"), str) else [])
    return next((c for c in candidates if c.is_dir()), candidates[0] if candidates else dataset.parent)


def load_concepts(path: str | os.PathLike) -> list[ConceptRecord]:
    """Read a MAGIC JSON file."""
    return concepts_from_json(read_json(path, "dataset file"), str(path))


def save_concepts(concepts: list[ConceptRecord], path: str | os.PathLike) -> None:
    """Write a MAGIC JSON file atomically."""
    write_json_atomic(concepts_to_json(concepts), path)
