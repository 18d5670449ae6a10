"""Image sources for MAGIC builds: each yields `SourceItem`s (an image id, its file, its captions, an optional
hierarchy).

`coco.py` reads MS-COCO captions; `emoji.py` renders scenes of Noto Color Emoji offline; `csv.py` reads a CSV of
image paths and captions (open_clip's layout); `folder.py` reads ROOT/<concept>/<image> folders. A source may
have a ``stats`` dict (rows read, captions skipped, ...) that the build stats copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class SourceItem:
    """One source image: the id stored in `ImageRecord.image`, its absolute path, its captions, its own concept
    chain."""

    image: str
    path: Path
    captions: list[str]
    hierarchy: tuple[str, ...] | None = None  # specific -> general, e.g. ("fruit", "food and drink")
    origin: str = ""  # where the source read it, for error messages, e.g. "captions.csv:12"
    names_concept: bool = False  # its captions were written from its concept (a caption template): keep the words
