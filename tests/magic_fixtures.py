"""Helpers for the MAGIC tests: a tiny COCO-layout folder with real JPEGs, and a deterministic fake name embedder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from PIL import Image


def write_coco(root: Path, captions: dict[int, list[str]], split: str = "val2017", size: int = 16) -> Path:
    """annotations/captions_{split}.json plus one JPEG per image id under {split}/; returns the annotations file."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, texts in captions.items():
        name = f"{i:012d}.jpg"
        Image.new("RGB", (size, size), ((37 * i) % 256, (91 * i) % 256, 128)).save(root / split / name)
        images.append({"id": i, "file_name": name, "height": size, "width": size})
        annotations += [{"id": 1000 * i + k, "image_id": i, "caption": c} for k, c in enumerate(texts)]
    path = root / "annotations" / f"captions_{split}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def fake_embed(names: list[str]) -> torch.Tensor:
    """(n, 8) unit vectors seeded by each name's hash, so the builder's tests need no model."""
    out = []
    for name in names:
        seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
        out.append(torch.randn(8, generator=torch.Generator().manual_seed(seed)))
    return torch.nn.functional.normalize(torch.stack(out), dim=-1)
