"""Using a loaded model: L2-normalised features of images and texts, and concepts ranked for an image.

Each function runs the bundle's own ``preprocess_val`` and tokenizer on the model's device, without grad, and
leaves the model's mode alone: :func:`clearglass.models.load_model` gives it in eval mode (no dropout).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import PIL.Image
import torch
from torch import Tensor

from clearglass.config import one_blank_field
from clearglass.errors import ClearglassError
from clearglass.io import load_image, to_rgb8
from clearglass.models import ModelBundle, trim_padding

ImageInput = PIL.Image.Image | str | os.PathLike


def _device(bundle: ModelBundle) -> torch.device:
    return next(bundle.model.parameters()).device


def encode_images(bundle: ModelBundle, images: Sequence[ImageInput], batch_size: int = 64) -> Tensor:
    """(n, D) float32 L2-normalised features of PIL images or image files, on the CPU, without grad."""
    rows = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunk = [to_rgb8(im) if isinstance(im, PIL.Image.Image) else load_image(im)
                     for im in images[start:start + batch_size]]
            pixels = torch.stack([bundle.preprocess_val(im) for im in chunk])  # (b, 3, H, W)
            features = bundle.model.encode_image(pixels.to(_device(bundle))).float()  # (b, D)
            rows.append(torch.nn.functional.normalize(features, dim=-1).cpu())
    return torch.cat(rows)


def encode_texts(bundle: ModelBundle, texts: Sequence[str], batch_size: int = 64) -> Tensor:
    """(n, D) float32 L2-normalised features of texts, on the CPU, without grad."""
    rows = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            tokens = trim_padding(bundle, bundle.tokenizer(list(texts[start:start + batch_size])))  # (b, L' <= L)
            features = bundle.model.encode_text(tokens.to(_device(bundle))).float()  # (b, D)
            rows.append(torch.nn.functional.normalize(features, dim=-1).cpu())
    return torch.cat(rows)


def score_concepts(bundle: ModelBundle, image: ImageInput, concepts: Sequence[str],
                   template: str = "a picture of {}") -> list[tuple[str, float]]:
    """Every concept with the cosine similarity of ``template.format(concept)`` to the image, highest first.

    The scores are cosines, not probabilities: clearglass trains with the loss's own temperature and leaves the
    model's ``logit_scale`` as its base had it (clearglass-mini's is open_clip's initial 1/0.07), so a softmax at
    that scale would state a confidence no training calibrated.
    """
    if not one_blank_field(template):
        raise ClearglassError(f"template {template!r}: expected one {{}} for the label and no other {{...}} field "
                              "(write {{ and }} for braces)")
    image_features = encode_images(bundle, [image])[0]  # (D,)
    scores = encode_texts(bundle, [template.format(c) for c in concepts]) @ image_features  # (C,)
    order = torch.argsort(scores, descending=True, stable=True)
    return [(concepts[i], float(scores[i])) for i in order.tolist()]
