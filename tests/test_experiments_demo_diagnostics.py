"""The image-only diagnostic against a loop oracle."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clearglass.errors import ClearglassError
from clearglass.experiments.demo.diagnostics import centroid_ranks
from demo_fixtures import make_concepts as _concepts


class _TableEncoder:
    def __init__(self, table: dict[Path, torch.Tensor]) -> None:
        self.table = table

    def embed_images(self, paths: list[Path]) -> torch.Tensor:
        return torch.stack([self.table[Path(p)] for p in paths])

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        raise AssertionError("the image-clustering diagnostic must not embed text")


def test_centroid_ranks_matches_a_loop_oracle() -> None:
    concepts = _concepts(images=6)
    gen = torch.Generator().manual_seed(0)
    root = Path("/images")
    table = {root / im.image: torch.nn.functional.normalize(torch.randn(8, generator=gen), dim=0)
             for c in concepts for im in c.train_images + c.test_images}
    enc = _TableEncoder(table)
    for level in (1, 2):
        out = centroid_ranks(enc, concepts, concepts, root, level)
        key = f"level{level}"
        labels = sorted({getattr(im, key) for c in concepts for im in c.train_images})
        centroids = {}
        for x in labels:
            vs = [table[root / im.image] for c in concepts for im in c.train_images if getattr(im, key) == x]
            centroids[x] = sum(vs) / torch.linalg.norm(sum(vs))
        expected = []
        for c in concepts:
            for im in c.test_images:
                v = table[root / im.image]
                true = float(v @ centroids[getattr(im, key)])
                expected.append(sum(float(v @ centroids[x]) >= true for x in labels if x != getattr(im, key)))
        assert out["rank"].tolist() == expected
    with pytest.raises(ClearglassError, match="image clustering needs"):
        centroid_ranks(enc, concepts[:1], concepts, root, 1)
