"""The shipped pretrained tag clearglass-mini: it loads as a model spec, its weights file is slim (image tower and
projections only, within 25 MB), and the held-out figures its model card states hold when measured again."""

from __future__ import annotations

import json

import pytest

from clearglass.checkpoints import read_checkpoint_metadata
from clearglass.errors import ClearglassError
from clearglass.experiments.mini.recipe import CARD_METRICS, PretrainRecipe, card_figures, train_seconds
from clearglass.models import PRETRAINED_DIR, load_model, pretrained_tags

TAG = PRETRAINED_DIR / "clearglass-mini"


def test_clearglass_mini_is_shipped_slim_and_loads() -> None:
    assert "clearglass-mini" in pretrained_tags()
    assert (TAG / "model.pt").stat().st_size <= 25_000_000
    meta = read_checkpoint_metadata(TAG / "model.pt")
    assert meta["base"] == "default" and meta["omitted"]["prefixes"] == ["text.transformer."]
    bundle = load_model("clearglass-mini")
    assert bundle.name == "clearglass-mini" and bundle.source.base == "clearglass-mini"
    for name in ("MODEL_CARD.md", "card.json", "validation_curve.png", "heldout/val.json", "heldout/test.json"):
        assert (TAG / name).is_file(), name


def test_the_card_figures_hold() -> None:
    card = json.loads((TAG / "card.json").read_text(encoding="utf-8"))
    measured = card_figures("clearglass-mini", TAG / "heldout" / "test.json")
    for name in CARD_METRICS:
        assert measured[name]["n"] == card["figures"]["shipped_test"][name]["n"]
        assert measured[name]["value"] == pytest.approx(card["figures"]["shipped_test"][name]["value"], abs=0.005), name
    card_md = (TAG / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert card["command"] in card_md and f"Steps: {card['steps']}" in card_md
    assert card["corpus"]["stats"]["total"]["image_caption_pairs"] >= 40_000


def test_train_seconds_add_up_the_parts_of_a_resumed_run() -> None:
    rows = [{"time": 10.0}, {"time": 20.0}, {"time": 5.0}, {"time": 30.0}]  # resumed after 20 s: the clock restarts
    assert train_seconds(rows) == 50.0 and train_seconds(rows[:2]) == 20.0 and train_seconds([]) == 0.0


def test_a_tag_named_like_a_work_folder_is_refused() -> None:
    with pytest.raises(ClearglassError, match="work folder uses that name"):
        PretrainRecipe(tag="corpus")
