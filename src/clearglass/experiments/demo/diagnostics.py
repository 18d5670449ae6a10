"""The image-only diagnostic: each test image's nearest concept centroid of training-image embeddings, which
separates what the image tower learnt from what the text side learnt."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clearglass.errors import ClearglassError
from clearglass.evaluate import Encoder, EvalConfig, items_hash, metric_row, strict_rank
from clearglass.magic.schema import ConceptRecord, resolve_image_path
from clearglass.results import MetricKey, MetricSpec


def centroid_ranks(encoder: Encoder, train: list[ConceptRecord], test: list[ConceptRecord],
                   image_root: str | os.PathLike, level: int) -> dict[str, Any]:
    """Image-only diagnostic: the strict rank of each test image's true level-``level`` label among the centroids
    (normalised means) of the training images' embeddings per label; labels without training images are skipped."""
    key = f"level{level}"
    members: dict[str, list[Path]] = defaultdict(list)
    for c in train:
        for im in c.train_images:
            if getattr(im, key):
                members[getattr(im, key)].append(resolve_image_path(image_root, im.image))
    labels = sorted(members)
    records = [im for c in test for im in c.test_images if getattr(im, key) in members]
    if len(labels) < 2 or not records:
        raise ClearglassError(f"{key}: image clustering needs 2+ labels with training images and test images of "
                              f"them, found {len(labels)} labels and {len(records)} test images")
    train_paths = [p for x in labels for p in members[x]]
    test_paths = [resolve_image_path(image_root, im.image) for im in records]
    emb = encoder.embed_images(train_paths + test_paths).float()  # (n_train + n_test, D)
    owner = torch.tensor([i for i, x in enumerate(labels) for _ in members[x]])  # (n_train,)
    sums = torch.zeros(len(labels), emb.shape[1]).index_add_(0, owner, emb[:len(train_paths)])
    centroids = torch.nn.functional.normalize(sums, dim=-1)  # (L, D)
    scores = (emb[len(train_paths):] @ centroids.T).numpy()  # (n_test, L)
    truth = np.array([labels.index(getattr(im, key)) for im in records])
    return {"rank": strict_rank(scores, truth), "class": truth, "labels": labels,
            "items": [im.image for im in records]}


def add_clustering(results: dict, encoder: Encoder, train: list[ConceptRecord], test: list[ConceptRecord],
                   image_root: Path, levels: list[int], config: EvalConfig) -> None:
    """Append ``image_clustering/level{L}`` rows (accuracy with a bootstrap interval) and per-item ranks to results."""
    for level in levels:
        out = centroid_ranks(encoder, train, test, image_root, level)
        key = MetricKey("image_clustering", f"level{level}", "centroid_acc")
        results["metrics"].append(metric_row(key, MetricSpec("hit", "rank", 1), {"rank": out["rank"]}, config.n_boot,
                                             config.seed, config.ci_level))
        results["per_item"][key.unit] = {"items_hash": items_hash([out["items"], out["labels"]]),
                                     "arrays": {"rank": out["rank"].tolist(), "class": out["class"].tolist()}}


