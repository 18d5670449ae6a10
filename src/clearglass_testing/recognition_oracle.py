"""The reference's concept-recognition protocol, item by item: the slow twin of
`clearglass.evaluate.score_recognition`."""

from __future__ import annotations

import os

import numpy as np

from clearglass.evaluate import Encoder, Item
from clearglass.magic.schema import resolve_image_path


def score_recognition_per_item(encoder: Encoder, items: list[Item],
                               image_root: str | os.PathLike) -> dict[str, np.ndarray]:
    """The reference's protocol: re-encode the K images and K texts of every item (slow; the parity oracle)."""
    i2t, t2i = [], []
    for it in items:
        img = encoder.embed_images([resolve_image_path(image_root, i) for i in it.images]).float().numpy()  # (K, D)
        txt = encoder.embed_texts(list(it.texts)).float().numpy()  # (K, D)
        sims = img @ txt.T  # (K images, K texts)
        i2t.append(int((sims[0] >= sims[0, 0]).sum() - 1))
        t2i.append(int((sims[:, 0] >= sims[0, 0]).sum() - 1))
    return {"i2t_rank": np.array(i2t, dtype=int), "t2i_rank": np.array(t2i, dtype=int)}

