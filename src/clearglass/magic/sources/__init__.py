"""Image sources for MAGIC builds: each yields `SourceItem`s (an image id, its file, its captions, an optional hierarchy).

`coco.py` reads MS-COCO captions; `emoji.py` renders scenes of Noto Color Emoji offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class SourceItem:
    """One source image: the id stored in `ImageRecord.image`, its absolute path, its captions, its own concept chain."""

    image: str
    path: Path
    captions: list[str]
    hierarchy: tuple[str, ...] | None = None  # specific -> general, e.g. ("fruit", "food and drink")
