"""The pretraining recipe's leak rules rebuild the shipped base's: the same concept words and excluded emoji, so
`make pretrain` reproduces the card the demo's split reads."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from clearglass.experiments.demo.config import DemoConfig
from clearglass.experiments.mini.recipe import leak_rules
from clearglass.io import read_json
from clearglass.models import PRETRAINED_DIR


def test_leak_rules_match_the_shipped_card(tmp_path: Path) -> None:
    demo = DemoConfig.load("default")
    demo = replace(demo, data=replace(demo.data, images_per_subgroup=5))
    rules = leak_rules(demo, tmp_path, progress=False)
    corpus = read_json(PRETRAINED_DIR / "clearglass-mini" / "card.json", "card", dict)["corpus"]
    assert rules["excluded_chars"] == set(corpus["excluded_chars"])
    assert sorted(rules["forbidden_words"]) == sorted(corpus["forbidden_words"])
    assert rules["excluded_monochrome_chars"] == set(corpus["excluded_monochrome_chars"])
