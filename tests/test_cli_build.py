"""End to end: `clearglass build --source emoji --labeler truth`, then `validate` and `stats`, through `main`."""

import json

import pytest

from clearglass.cli import main
from clearglass.magic.builder import build_emoji_dataset, embed_names, minilm_embed
from clearglass.magic.schema import load_concepts
from clearglass.magic.validate import validate


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("CLEARGLASS_CACHE", str(tmp_path / "cache"))


def test_emoji_build_validate_stats(tmp_path, capsys):
    out = tmp_path / "ds" / "magic.json"
    rc = main(["build", "--source", "emoji", "--labeler", "truth", "--emoji-subgroups",
               "food-fruit,food-vegetable,animal-bird,animal-mammal,drink", "--emoji-per-subgroup", "6",
               "--image-size", "32", "--holdout-concepts", "1", "--seed", "2", "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "concepts: 5 (1 held out)" in printed and "leaks: 0" in printed
    concepts = load_concepts(out)
    assert {c.concept for c in concepts} == {"fruit", "vegetable", "bird", "mammal", "drink"}
    assert sum(not c.train_images for c in concepts) == 1
    assert all(len(c.hard_negative) == 3 and c.concept not in c.hard_negative for c in concepts)
    assert validate(out) == []
    stats = json.loads((tmp_path / "ds" / "magic.stats.json").read_text())
    assert stats["build"]["leaks"]["count"] == 0 and stats["splits"]["test"]["concepts"] == 5
    assert main(["validate", str(out)]) == 0
    assert main(["stats", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.split("problem(s)\n", 1)[1])["concepts"] == 5
    # the cached name embeddings equal a direct MiniLM call
    names = [c.concept for c in concepts]
    assert (embed_names(names) - minilm_embed(names)).abs().max() < 1e-5


def test_library_function_and_errors(tmp_path, capsys):
    path = build_emoji_dataset(tmp_path / "lib", subgroups=["food-fruit", "animal-bird"], images_per_subgroup=5,
                               image_size=32, seed=1)
    assert path == tmp_path / "lib" / "magic.json" and len(load_concepts(path)) == 2
    assert main(["build", "--source", "flickr", "--labeler", "truth", "--out", str(tmp_path / "x.json")]) == 2
    assert "unknown source 'flickr'" in capsys.readouterr().err
    assert main(["build", "--source", "coco", "--labeler", "truth", "--coco-root", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "x.json"), "--no-progress"]) == 2
    assert "captions_val2017.json: COCO caption file not found" in capsys.readouterr().err


def test_coco_wordnet_build(tmp_path, capsys):
    from magic_fixtures import write_coco

    captions = {i: ["a dog in the park", "a brown dog"] for i in range(1, 4)}
    captions |= {i: ["a cat on a sofa", "a sleepy cat"] for i in range(4, 7)}
    write_coco(tmp_path / "coco", captions)
    out = tmp_path / "coco.json"
    assert main(["build", "--source", "coco", "--coco-root", str(tmp_path / "coco"), "--labeler", "wordnet",
                 "--min-group-size", "3", "--out", str(out), "--no-progress"]) == 0
    concepts = load_concepts(out)
    assert {c.concept for c in concepts} == {"canine", "feline"}
    assert concepts[0].train_images[0].image.endswith(".jpg")
    assert validate(out, tmp_path / "coco" / "val2017") == []
