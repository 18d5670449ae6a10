"""Tests for clearglass.inference: features and concept scores against a slow one-at-a-time oracle."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

from clearglass.inference import encode_images, encode_texts, score_concepts
from clearglass.models import load_model

CONCEPTS = ["celebration", "a red circle", "sport", "travel"]


@pytest.fixture(scope="module")
def mini():
    return load_model("clearglass-mini")


def _oracle_image(bundle, image: Image.Image) -> torch.Tensor:
    """Slow oracle: one image through preprocess_val and encode_image, normalised by hand."""
    with torch.no_grad():
        x = bundle.model.encode_image(bundle.preprocess_val(image)[None])[0]
    return x / x.norm()


def _oracle_text(bundle, text: str) -> torch.Tensor:
    """Slow oracle: one text, its full padded token row (no trimming), normalised by hand."""
    with torch.no_grad():
        x = bundle.model.encode_text(bundle.tokenizer([text]))[0]
    return x / x.norm()


def test_features_match_the_one_at_a_time_oracle(mini, tmp_path):
    pictures = [Image.new("RGB", (70, 50), colour) for colour in ("red", "navy", "gold")]
    pictures[1].save(tmp_path / "navy.png")
    images = encode_images(mini, [pictures[0], tmp_path / "navy.png", str(tmp_path / "navy.png"), pictures[2]],
                           batch_size=2)
    texts = encode_texts(mini, CONCEPTS, batch_size=3)
    assert images.shape == (4, 256) and texts.shape == (4, 256) and not images.requires_grad
    expected = [_oracle_image(mini, im) for im in (pictures[0], pictures[1], pictures[1], pictures[2])]
    torch.testing.assert_close(images, torch.stack(expected), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(texts, torch.stack([_oracle_text(mini, t) for t in CONCEPTS]), rtol=1e-5, atol=1e-5)


def test_score_concepts_ranks_every_concept_by_its_cosine(mini):
    image = Image.new("RGB", (64, 64), "white")
    ranked = score_concepts(mini, image, CONCEPTS, template="a photo of {}")
    cosines = {c: float(_oracle_text(mini, f"a photo of {c}") @ _oracle_image(mini, image)) for c in CONCEPTS}
    assert [c for c, _ in ranked] == sorted(CONCEPTS, key=lambda c: -cosines[c])
    for concept, score in ranked:
        assert score == pytest.approx(cosines[concept], abs=1e-5)


def test_clearglass_mini_names_a_drawn_shape(mini) -> None:
    for shape, concept in (("ellipse", "circle"), ("rectangle", "square")):
        image = Image.new("RGB", (64, 64), "white")
        getattr(ImageDraw.Draw(image), shape)((12, 12, 52, 52), fill="red")
        assert score_concepts(mini, image, ["circle", "square", "animal"])[0][0] == concept, shape
