"""Tests for clearglass.models: every model kind builds offline, encodes, locks and round-trips checkpoints."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from clearglass.errors import ClearglassError
from clearglass.models import load_model, lock_towers, trainable_parameter_counts


@pytest.fixture(scope="module")
def default_bundle():
    return load_model("default")


def test_default_model_encodes(default_bundle):
    b = default_bundle
    tokens = b.tokenizer(["a red circle", "an animal"])
    assert tokens.shape == (2, 32) and tokens.dtype == torch.long
    image = b.preprocess_val(Image.new("RGB", (90, 70), "red"))
    assert image.shape == (3, 64, 64)
    assert b.preprocess_train(Image.new("RGB", (90, 70))).shape == (3, 64, 64)
    with torch.no_grad():
        img = b.model.encode_image(image[None].repeat(3, 1, 1, 1), normalize=True)
        txt = b.model.encode_text(tokens, normalize=True)
    assert img.shape == (3, 256) and txt.shape == (2, 256)
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(2))


def test_unknown_spec_is_an_error():
    with pytest.raises(ClearglassError, match="nonsense"):
        load_model("nonsense")
