"""Check a MAGIC dataset and report every problem with its file, record index and field."""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from clearglass.magic.schema import LEVELS, SPLITS, ConceptRecord, load_concepts, resolve_image_path


@dataclass(frozen=True)
class Problem:
    """One problem: where (file, concept record index, field path) and what."""

    file: str
    record: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: concept record {self.record}: {self.field}: {self.message}"


def validate_concepts(concepts: list[ConceptRecord], file: str, image_root: str | os.PathLike | None = None
                      ) -> list[Problem]:
    """Every problem: duplicate image ids and concepts, empty captions, unknown hard negatives, missing images
    (when ``image_root`` is given), level chains that disagree within one concept."""
    problems: list[Problem] = []
    names = {c.concept for c in concepts}
    first_concept: dict[str, int] = {}
    first_image: dict[str, str] = {}
    for r, c in enumerate(concepts):
        if c.concept in first_concept:
            problems.append(Problem(file, r, "concept", f"{c.concept!r} repeats concept record {first_concept[c.concept]}"))
        first_concept.setdefault(c.concept, r)
        for k, negative in enumerate(c.hard_negative):
            if negative not in names:
                problems.append(Problem(file, r, f"hard_negative[{k}]", f"{negative!r} is not a concept of the dataset"))
            elif negative == c.concept:
                problems.append(Problem(file, r, f"hard_negative[{k}]", "a concept is not its own hard negative"))
        chains: dict[tuple, list[str]] = defaultdict(list)
        for split in SPLITS:
            for j, im in enumerate(c.images(split)):
                where = f"{split}_images[{j}]"
                if im.image in first_image:
                    problems.append(Problem(file, r, f"{where}.image", f"duplicate image id {im.image!r} "
                                                                        f"(first at {first_image[im.image]})"))
                first_image.setdefault(im.image, f"concept record {r} {where}")
                for key in ("old_captions", "new_captions"):
                    captions = getattr(im, key)
                    if key == "new_captions" and not captions:
                        problems.append(Problem(file, r, f"{where}.{key}", "no captions"))
                    for k, caption in enumerate(captions):
                        if not caption.strip():
                            problems.append(Problem(file, r, f"{where}.{key}[{k}]", "empty caption"))
                if image_root is not None:
                    path = resolve_image_path(image_root, im.image)
                    if not path.is_file():
                        problems.append(Problem(file, r, f"{where}.image", f"image file {path} is missing"))
                chains[im.levels()].append(where)
        if len(chains) > 1:
            described = "; ".join(f"{dict(zip(LEVELS, chain))} in {', '.join(w[:3])}{' ...' if len(w) > 3 else ''}"
                                  for chain, w in sorted(chains.items(), key=lambda kv: -len(kv[1])))
            problems.append(Problem(file, r, "level1..level4", f"{len(chains)} different level chains: {described}"))
    return problems


def validate(path: str | os.PathLike, image_root: str | os.PathLike | None = None,
             check_images: bool = True) -> list[Problem]:
    """Every problem of a MAGIC JSON file; images are looked up under ``image_root`` (default: the file's folder)."""
    path = Path(path)
    concepts = load_concepts(path)
    root = (path.parent if image_root is None else Path(image_root)) if check_images else None
    return validate_concepts(concepts, str(path), root)
