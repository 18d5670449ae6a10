"""Shipped model sets: each loads, and every open_clip spec in them names a tag open_clip serves."""

from __future__ import annotations

import open_clip
import pytest

from clearglass.errors import ClearglassError
from clearglass.model_sets import ModelSet, model_set_names


def test_every_open_clip_spec_of_a_shipped_set_is_a_served_tag():
    served = set(open_clip.list_pretrained())
    assert "paper" in model_set_names()
    for name in model_set_names():
        model_set = ModelSet.load(name)
        for spec in model_set.models.values():
            kind, arch, tag = spec.split(":")
            assert kind == "open_clip" and (arch, tag) in served, (name, spec)
    paper = ModelSet.load("paper")
    assert {"NegCLIP", "CE-CLIP"} <= set(paper.unavailable)
    assert "open_clip:ViT-B-32:openai" in paper.models.values()


def test_a_set_without_models_is_refused():
    with pytest.raises(ClearglassError, match="at least one"):
        ModelSet(description="empty")
