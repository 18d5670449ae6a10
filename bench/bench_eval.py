"""Concept recognition: encode-once scoring vs the reference's per-item protocol (re-encode K images and K texts
for every item), on the very same items with the untrained ``clearglass:scratch`` model (timing needs no
training). Prints `name: value` lines.

    .venv/bin/python bench/bench_eval.py [--concepts 12 --images-per-concept 4 --k 5 --field concept_level1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clearglass.evaluate import ModelEncoder, make_recognition_items, score_recognition
from clearglass.magic.schema import ConceptRecord, ImageRecord
from clearglass.models import load_model
from clearglass_testing.recognition_oracle import score_recognition_per_item


def make_test_set(root: Path, n_concepts: int, n_images: int) -> list[ConceptRecord]:
    """Random-pixel PNGs; concept i's hard negatives are its neighbours."""
    concepts = []
    for i in range(n_concepts):
        images = []
        for j in range(n_images):
            rel = f"c{i}_{j}.png"
            pixels = np.random.default_rng([i, j]).integers(0, 255, (32, 32, 3)).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(root / rel)
            images.append(ImageRecord(image=rel, old_captions=[f"a photo of thing {i}, view {j}"],
                                      new_captions=[f"an example of idea {i}, view {j}"], level1=f"thing {i}",
                                      level2=f"family {i // 2}", level3=f"kind {i // 4}", level4="entity"))
        concepts.append(ConceptRecord(concept=f"thing {i}", test_images=images,
                                      hard_negative=[f"thing {(i + d) % n_concepts}" for d in (1, 2, -1)]))
    return concepts


def main() -> None:
    """Run both protocols on the same items and print counts, times and whether the scores are identical."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--concepts", type=int, default=12)
    ap.add_argument("--images-per-concept", type=int, default=4)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--field", default="concept_level1")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    bundle = load_model("clearglass:scratch")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        concepts = make_test_set(root, args.concepts, args.images_per_concept)
        items = make_recognition_items(concepts, args.field, args.k, seed=0, template="a picture of {}")

        fast_enc = ModelEncoder(bundle, batch_size=args.batch_size)
        t0 = time.perf_counter()
        fast = score_recognition(fast_enc, items, root)
        fast_s = time.perf_counter() - t0

        slow_enc = ModelEncoder(bundle, batch_size=args.batch_size)
        t0 = time.perf_counter()
        slow = score_recognition_per_item(slow_enc, items, root)
        slow_s = time.perf_counter() - t0

    fast_n = fast_enc.n_images_encoded + fast_enc.n_texts_encoded
    slow_n = slow_enc.n_images_encoded + slow_enc.n_texts_encoded
    identical = all(np.array_equal(fast[key], slow[key]) for key in ("i2t_rank", "t2i_rank"))
    print(f"items: {len(items)}")
    print(f"k: {args.k}")
    print(f"field: {args.field}")
    print(f"encode_once_forward_passes: {fast_n} "
          f"({fast_enc.n_images_encoded} images + {fast_enc.n_texts_encoded} texts)")
    print(f"per_item_forward_passes: {slow_n} ({slow_enc.n_images_encoded} images + {slow_enc.n_texts_encoded} texts)")
    print(f"forward_pass_ratio: {slow_n / fast_n:.2f}")
    print(f"encode_once_seconds: {fast_s:.3f}")
    print(f"per_item_seconds: {slow_s:.3f}")
    print(f"speedup: {slow_s / fast_s:.2f}")
    print(f"i2t_R@1: {(fast['i2t_rank'] == 0).mean():.4f}")
    print(f"t2i_R@1: {(fast['t2i_rank'] == 0).mean():.4f}")
    print(f"identical_scores: {identical}")


if __name__ == "__main__":
    main()
