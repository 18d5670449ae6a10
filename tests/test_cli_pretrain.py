"""`clearglass pretrain --config quick` end to end through clearglass.cli.main: corpus, a 4-step run, the tag with
its card (figures measured on the shipped slice), and the command recorded so it can be pasted back."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from clearglass.cli import main
from clearglass.experiments.mini.recipe import CARD_METRICS


def test_pretrain_quick_writes_a_tag_with_its_card(tmp_path: Path, capsys) -> None:
    out = tmp_path / "work dir"  # a space: the recorded command must still parse back
    assert main(["pretrain", "--config", "quick", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tag = out / "clearglass-mini-quick"
    for name in ("model.pt", "model.json", "card.json", "MODEL_CARD.md", "validation_curve.png", "heldout/test.json"):
        assert (tag / name).is_file(), name
    card = json.loads((tag / "card.json").read_text(encoding="utf-8"))
    assert shlex.split(card["command"]) == ["clearglass", "pretrain", "--config", "quick", "--out", str(out)]
    assert card["steps"] == 4 and card["best"]["step"] in (2, 4) and printed["steps"] == 4
    assert set(card["figures"]["shipped_test"]) == set(CARD_METRICS) and printed["shipped_to"] is None
    assert 0 < card["train_seconds"] <= card["seconds"]
    md = (tag / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert card["command"] in md and f"{card['corpus']['stats']['total']['distinct_captions']} |" in md
    # --remeasure: the same tag measured again by today's evaluation rewrites the card's figures and says how
    card["figures"]["corpus_test"] = {m: {"value": -1.0, "ci_low": -1.0, "ci_high": -1.0, "n": 0} for m in CARD_METRICS}
    (tag / "card.json").write_text(json.dumps(card), encoding="utf-8")
    assert main(["pretrain", "--config", "quick", "--out", str(out), "--remeasure", str(tag)]) == 0
    again = json.loads((tag / "card.json").read_text(encoding="utf-8"))
    assert again["figures"]["shipped_test"] == card["figures"]["shipped_test"]
    assert all(0 <= v["value"] <= 1 and v["n"] > 0 for v in again["figures"]["corpus_test"].values())
    assert shlex.split(again["figures_command"])[-2:] == ["--remeasure", str(tag)]
    assert again["figures_command"] in (tag / "MODEL_CARD.md").read_text(encoding="utf-8")


def test_remeasure_refuses_training_options(tmp_path: Path, capsys) -> None:
    assert main(["pretrain", "--config", "quick", "--out", str(tmp_path), "--remeasure", str(tmp_path), "--ship"]) == 2
    assert "--remeasure measures a written tag again" in capsys.readouterr().err
