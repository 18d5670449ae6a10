"""Readers for outside test sets, turned into MAGIC ``ConceptRecord``s so every evaluation task runs on them.

- ``hierarcaps-csv``: the official HierarCaps test file (TAU-VAILab/hierarcaps ``data/hierarcaps_test.csv``):
  columns ``id, captions, image_url``; ``captions`` is 4 texts general -> specific joined by ``" => "``.
  Each row is one concept named by its id; its one test image is the URL's file name (e.g.
  ``COCO_val2014_000000301718.jpg``, joined to ``--images``). Levels: level4 = most general ... level1 = most
  specific (the MAGIC convention); the most specific text is also the image's caption (old and new).
- ``hierarcaps-json``: the layout the CLEAR GLASS reference reads: a list of
  ``{concept, images: [ids], general_captions_level1..4: [texts]}``; level N is the first text of
  ``general_captions_levelN``, captions are all texts of ``general_captions_level1``; a numeric COCO image id
  (``123``) is its file name ``000000000123.jpg``.
- ``breeds``: the reference's BREEDS layout (one or more files, concatenated): a list of
  ``{concept, images: [ImageNet ids like n01631663_2291], general_captions_level1: [texts], level1, level2, level3}``;
  images live at ``ROOT/<wnid>/<id>.JPEG``; level1 = concept, level2..4 = the record's level1..3 (its
  superclass chain), captions = ``general_captions_level1``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from clearglass.errors import ClearglassError
from clearglass.io import read_json
from clearglass.magic.schema import COCO_ID_DIGITS, ConceptRecord, ImageRecord, load_concepts
from clearglass.magic.sources.csv import read_csv

FORMATS = ("magic", "hierarcaps-csv", "hierarcaps-json", "breeds")


def _strings(rec: dict, key: str, where: str) -> list[str]:
    value = rec.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(x, str) and x for x in value):
        raise ClearglassError(f"{where}: field {key!r} must be a non-empty list of non-empty strings")
    return value


def _string(rec: dict, key: str, where: str) -> str:
    value = rec.get(key)
    if not isinstance(value, str) or not value:
        raise ClearglassError(f"{where}: field {key!r} must be a non-empty string")
    return value


def load_hierarcaps_csv(path: str | os.PathLike) -> list[ConceptRecord]:
    """The official HierarCaps test CSV as one concept per row."""
    columns = ("id", "captions", "image_url")
    concepts = []
    for line, row in read_csv(path, ",", {key: "a HierarCaps column" for key in columns},
                              "a comma-separated HierarCaps CSV with the columns id, captions, image_url"):
        where = f"{path}: row {line}"
        for key in columns:
            if not row[key]:
                raise ClearglassError(f"{where}: column {key!r} is empty (expected id, captions, image_url)")
        chain = [x.strip() for x in row["captions"].split("=>")]
        if len(chain) != 4 or not all(chain):
            raise ClearglassError(f"{where}: 'captions' must be 4 non-empty texts joined by ' => ', got {len(chain)}")
        image = row["image_url"].rstrip("/").rsplit("/", 1)[-1]
        concepts.append(ConceptRecord(concept=f"hierarcaps-{row['id']}", test_images=[ImageRecord(
            image=image, old_captions=[chain[3]], new_captions=[chain[3]],
            level1=chain[3], level2=chain[2], level3=chain[1], level4=chain[0])]))
    return concepts


def load_hierarcaps_json(path: str | os.PathLike) -> list[ConceptRecord]:
    """The reference's HierarCaps JSON layout."""
    path = Path(path)
    concepts = []
    for i, rec in enumerate(read_json(path, "test set file", list)):
        where = f"{path}: record {i}"
        if not isinstance(rec, dict):
            raise ClearglassError(f"{where}: expected an object")
        name = _string(rec, "concept", where)
        levels = [_strings(rec, f"general_captions_level{n}", f"{where} ({name!r})") for n in (1, 2, 3, 4)]
        images = _strings(rec, "images", f"{where} ({name!r})")
        concepts.append(ConceptRecord(concept=name, test_images=[ImageRecord(
            image=f"{int(im):0{COCO_ID_DIGITS}d}.jpg" if im.isascii() and im.isdigit() else im,
            old_captions=list(levels[0]), new_captions=list(levels[0]),
            level1=levels[0][0], level2=levels[1][0], level3=levels[2][0], level4=levels[3][0]) for im in images]))
    return concepts


def load_breeds(paths: list[str | os.PathLike]) -> list[ConceptRecord]:
    """The reference's BREEDS JSON layout (files concatenated, e.g. living + non-living)."""
    concepts = []
    for path in map(Path, paths):
        for i, rec in enumerate(read_json(path, "test set file", list)):
            where = f"{path}: record {i}"
            if not isinstance(rec, dict):
                raise ClearglassError(f"{where}: expected an object")
            name = _string(rec, "concept", where)
            where = f"{where} ({name!r})"
            captions = _strings(rec, "general_captions_level1", where)
            chain = [_string(rec, f"level{n}", where) for n in (1, 2, 3)]
            test = []
            for im in _strings(rec, "images", where):
                wnid = im.split("_")[0]
                test.append(ImageRecord(image=f"{wnid}/{im}.JPEG", old_captions=list(captions),
                                        new_captions=list(captions), level1=name, level2=chain[0],
                                        level3=chain[1], level4=chain[2]))
            concepts.append(ConceptRecord(concept=name, test_images=test))
    return concepts


def load_test_set(paths: list[str | os.PathLike], fmt: str = "magic") -> list[ConceptRecord]:
    """Read one test set in any supported format (several files are concatenated)."""
    if fmt not in FORMATS:
        raise ClearglassError(f"unknown test set format {fmt!r}: expected one of {FORMATS}")
    if fmt == "breeds":
        return load_breeds(paths)
    loader: Any = {"magic": load_concepts, "hierarcaps-csv": load_hierarcaps_csv,
                   "hierarcaps-json": load_hierarcaps_json}[fmt]
    return [c for p in paths for c in loader(p)]
