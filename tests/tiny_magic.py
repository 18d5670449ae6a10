"""A tiny MAGIC dataset with real PNG images, for the data and training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from clearglass.magic.schema import ConceptRecord, ImageRecord, save_concepts

COLOURS = [(230, 30, 30), (30, 200, 30), (30, 30, 230), (220, 220, 20), (200, 30, 200), (20, 200, 200),
           (120, 60, 0), (250, 140, 0), (90, 90, 90), (255, 255, 255)]


def write_tiny_magic(root: Path, concepts: int = 8, images_per_concept: int = 4, held_out: int = 1,
                     size: int = 32) -> Path:
    """Write ``root/magic.json`` and PNGs under ``root/images``; concept k's hard negatives are k-1 and k+1."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    names = [f"concept{k}" for k in range(concepts + held_out)]
    records = []
    for k, name in enumerate(names):
        train = []
        if k < concepts:
            for j in range(images_per_concept):
                rel = f"images/{name}_{j}.png"
                colour = COLOURS[k % len(COLOURS)]
                noise = np.random.default_rng([k, j]).integers(0, 60, (size, size, 3))
                pixels = (np.array(colour) * 0.75 + noise).clip(0, 255).astype(np.uint8)
                Image.fromarray(pixels, "RGB").save(root / rel)
                train.append(ImageRecord(
                    image=rel,
                    old_captions=[f"a photo of thing {k} number {j}", f"thing {k} seen from afar {j}"],
                    new_captions=[f"an example of idea {k}", f"something showing idea {k} variant {j}"],
                    level1=name, level2=f"family{k // 2}", level3="kind", level4=None,
                ))
        negatives = [names[i] for i in (k - 1, k + 1) if 0 <= i < len(names)]
        records.append(ConceptRecord(concept=name, hard_negative=negatives, train_images=train))
    path = root / "magic.json"
    save_concepts(records, path)
    return path
