"""Check a MAGIC dataset and report every problem with its file, record index and field."""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from clearglass.errors import ClearglassError
from clearglass.io import DEFAULT_MAX_PIXELS, check_image
from clearglass.magic.schema import (
    LEVELS,
    SPLITS,
    ConceptRecord,
    ImageRoot,
    dataset_image_root,
    image_key,
    load_concepts,
    resolve_image_path,
)


@dataclass(frozen=True)
class Problem:
    """One problem: where (file, concept record index or None for the whole file, field path) and what."""

    file: str
    record: int | None
    field: str
    message: str
    missing_under: Path | None = None  # the image root an image id's file is missing under

    def __str__(self) -> str:
        where = f"concept record {self.record}: " if self.record is not None else ""
        return f"{self.file}: {where}{self.field}: {self.message}"


def _image_problem(image_root: ImageRoot, image: str, check_files: bool, max_pixels: int) -> tuple[str, bool] | None:
    """Why an image id is bad, and whether its file is missing: it leaves the root or has no suffix (always
    checked), or (with ``check_files``) its file is missing, empty, not an image or over ``max_pixels``; None when
    it is fine."""
    try:
        path = resolve_image_path(image_root, image)
        if check_files and path.is_symlink() and not path.exists():  # a loop, or a link to nothing
            return f"image file {path} is a symbolic link that leads nowhere (a loop, or a missing target)", False
        if check_files and not path.exists():
            return f"image file {path} is missing", True
        if check_files:
            check_image(path, max_pixels=max_pixels)
    except ClearglassError as e:
        return str(e), False
    return None


def validate_concepts(concepts: list[ConceptRecord], file: str, image_root: str | os.PathLike | None = None,
                      check_files: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Problem]:
    """Every problem: no concept at all, duplicate image ids and concepts, empty captions, unknown hard negatives,
    level chains that disagree within one concept; given ``image_root``, also image ids outside it or without a
    suffix and (``check_files``) missing, empty, unreadable, truncated or over-large image files (each is decoded,
    as training will)."""
    root = image_root if isinstance(image_root, ImageRoot) or image_root is None else ImageRoot(Path(image_root))
    problems: list[Problem] = []
    if not concepts:
        problems.append(Problem(file, None, "dataset", "no concept records: expected a list of at least one"))
    names = {c.concept for c in concepts}
    first_concept: dict[str, int] = {}
    first_image: dict[str, str] = {}
    for r, c in enumerate(concepts):
        if c.concept in first_concept:
            problems.append(Problem(file, r, "concept",
                                    f"{c.concept!r} repeats concept record {first_concept[c.concept]}"))
        first_concept.setdefault(c.concept, r)
        for k, negative in enumerate(c.hard_negative):
            if negative in c.hard_negative[:k]:
                problems.append(Problem(file, r, f"hard_negative[{k}]", f"{negative!r} repeats hard_negative"
                                                                         f"[{c.hard_negative.index(negative)}]"))
            elif negative not in names:
                problems.append(Problem(file, r, f"hard_negative[{k}]",
                                        f"{negative!r} is not a concept of the dataset"))
            elif negative == c.concept:
                problems.append(Problem(file, r, f"hard_negative[{k}]", "a concept is not its own hard negative"))
        chains: dict[tuple, list[str]] = defaultdict(list)
        for split in SPLITS:
            for j, im in enumerate(c.images(split)):
                where = f"{split}_images[{j}]"
                key = image_key(im.image)  # images/./a.png is images/a.png
                if key in first_image:
                    problems.append(Problem(file, r, f"{where}.image", f"duplicate image id {im.image!r} "
                                                                        f"(first at {first_image[key]})"))
                else:
                    first_image[key] = f"concept record {r} {where}"
                    bad = None if root is None else _image_problem(root, im.image, check_files, max_pixels)
                    if bad is not None:
                        problems.append(Problem(file, r, f"{where}.image", bad[0], root.folder if bad[1] else None))
                for key in ("old_captions", "new_captions"):
                    captions = getattr(im, key)
                    if key == "new_captions" and not captions:
                        problems.append(Problem(file, r, f"{where}.{key}", "no captions"))
                    for k, caption in enumerate(captions):
                        if not caption.strip():
                            problems.append(Problem(file, r, f"{where}.{key}[{k}]", "empty caption"))
                chains[im.levels()].append(where)
        if len(chains) > 1:
            described = "; ".join(f"{dict(zip(LEVELS, chain))} in {', '.join(w[:3])}{' ...' if len(w) > 3 else ''}"
                                  for chain, w in sorted(chains.items(), key=lambda kv: -len(kv[1])))
            problems.append(Problem(file, r, "level1..level4", f"{len(chains)} different level chains: {described}"))
    return problems


def validate(path: str | os.PathLike, image_root: str | os.PathLike | None = None, check_images: bool = True,
             allow_outside_root: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Problem]:
    """Every problem of a MAGIC JSON file; image ids are resolved under ``image_root`` (default: the file's folder),
    which must be a folder when ``check_images``; ``allow_outside_root`` lets them leave it."""
    path = Path(path)
    concepts = load_concepts(path)
    root = dataset_image_root(path) if image_root is None else Path(image_root)
    if check_images and not root.is_dir():
        raise ClearglassError(f"image root {root}: {'not a folder' if root.exists() else 'not found'}; expected the "
                              f"folder the image ids of {path} are relative to (--images DIR)")
    return validate_concepts(concepts, str(path), ImageRoot(root, allow_outside_root), check_images, max_pixels)
