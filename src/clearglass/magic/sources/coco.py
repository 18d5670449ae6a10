"""MS-COCO captions: ``<root>/annotations/captions_{split}.json`` and images ``<root>/{split}/<12-digit id>.jpg``.

Image ids are the COCO file names (``000000000139.jpg``), relative to the image root ``<root>/{split}``:
build with ``--coco-root ROOT --split val2017`` and train or evaluate with ``--images ROOT/val2017``. A
``file_name`` that leaves that folder (an absolute path, ``..``) is an error, as it is in every dataset
(`clearglass.magic.schema.resolve_image_path`).
Images are yielded in id order; ``max_images`` keeps the first n.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from clearglass.errors import ClearglassError
from clearglass.io import read_json
from clearglass.magic.schema import resolve_image_path
from clearglass.magic.sources import SourceItem


def _is_int(value: object) -> bool:
    """An integer, not a JSON true or false (Python's bool is an int)."""
    return isinstance(value, int) and not isinstance(value, bool)


class CocoSource:
    """The images of one COCO split with their captions."""

    def __init__(self, root: str | os.PathLike, split: str = "val2017", max_images: int | None = None) -> None:
        self.root = Path(root)
        self.split = split
        self.image_root = self.root / split
        self.annotations = self.root / "annotations" / f"captions_{split}.json"
        if max_images is not None and max_images < 1:
            raise ClearglassError(f"--max-images {max_images}: expected the number of images to keep, >= 1 (leave it "
                                  "out for all)")
        self.max_images = max_images

    def _read(self) -> tuple[list[dict], dict[int, list[str]]]:
        path = self.annotations
        if not path.exists():
            raise ClearglassError(f"{path}: COCO caption file not found (expected <coco-root>/annotations/"
                                  f"captions_{self.split}.json)")
        raw = read_json(path, "COCO caption file")
        if not isinstance(raw, dict) or not isinstance(raw.get("images"), list) \
                or not isinstance(raw.get("annotations"), list):
            raise ClearglassError(f"{path}: expected an object with lists 'images' and 'annotations'")
        images = raw["images"]
        known: dict[int, int] = {}  # image id -> its index in 'images'
        for i, im in enumerate(images):
            if not isinstance(im, dict) or not _is_int(im.get("id")) or not isinstance(im.get("file_name"), str):
                raise ClearglassError(f"{path}: images[{i}]: expected an object with integer 'id' and string "
                                      "'file_name'")
            if im["id"] in known:
                raise ClearglassError(f"{path}: images[{i}]: id {im['id']} is also images[{known[im['id']]}]; "
                                      "expected unique image ids")
            known[im["id"]] = i
        captions: dict[int, list[str]] = defaultdict(list)
        for i, ann in enumerate(raw["annotations"]):
            if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str) or not _is_int(ann.get("image_id")):
                raise ClearglassError(f"{path}: annotations[{i}]: expected an object with integer 'image_id' "
                                      "and string 'caption'")
            if ann["image_id"] not in known:
                raise ClearglassError(f"{path}: annotations[{i}]: image_id {ann['image_id']} is not in 'images'")
            if not ann["caption"].strip():
                raise ClearglassError(f"{path}: annotations[{i}] (image_id {ann['image_id']}): empty caption")
            captions[ann["image_id"]].append(" ".join(ann["caption"].split()))
        return images, captions

    def __iter__(self) -> Iterator[SourceItem]:
        """One item per image with at least one caption, by id; an image without captions is an error."""
        images, captions = self._read()
        chosen = sorted(images, key=lambda im: im["id"])[: self.max_images]
        for im in chosen:
            if not captions.get(im["id"]):
                raise ClearglassError(f"{self.annotations}: image id {im['id']} ({im['file_name']}) has no captions")
            try:
                path = resolve_image_path(self.image_root, im["file_name"])
            except ClearglassError as e:
                raise ClearglassError(f"{self.annotations}: image id {im['id']}: file_name: {e}") from None
            yield SourceItem(image=im["file_name"], path=path.resolve(), captions=captions[im["id"]])
