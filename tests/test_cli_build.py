"""End to end through `main`: `build --source emoji --labeler truth`, then `validate` and `stats`; coco with
wordnet; the README's CSV example through build -> train -> eval; a folder source with captions.csv and .txt."""

import json
from pathlib import Path

import pytest
from PIL import Image

from clearglass.cli import main
from clearglass.magic.builder import build_emoji_dataset, embed_names, minilm_embed
from clearglass.magic.schema import dataset_image_root, load_concepts
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


EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "tiny-csv"  # the README's example


def test_csv_build_train_eval(tmp_path, capsys, one_thread, monkeypatch):
    """The README example: the tiny CSV with its concept columns -> build (truth) -> train 2 steps -> eval, from
    another folder and without naming the images again: the dataset remembers its image root."""
    from tiny_magic import write_tiny_model

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    out = tmp_path / "tiny" / "magic.json"
    assert main(["build", "--source", "csv", "--csv", str(EXAMPLE / "captions.csv"), "--csv-level-keys", "concept",
                 "parent", "--labeler", "truth", "--min-group-size", "3", "--out", str(out), "--no-progress"]) == 0
    assert "leaks: 0" in capsys.readouterr().out
    concepts = {c.concept: c for c in load_concepts(out)}
    assert set(concepts) == {"birthday party", "wedding", "street market", "grocery shopping", "team sport", "hiking"}
    wedding = concepts["wedding"].train_images + concepts["wedding"].test_images
    assert sorted(im.image for im in wedding) == [f"images/wedding-{j}.png" for j in range(3)]
    assert all(im.level2 == "celebration" and len(im.old_captions) == 2 for im in wedding)
    assert validate(out) == [] and dataset_image_root(out).resolve() == EXAMPLE.resolve()
    stats = json.loads((tmp_path / "tiny" / "magic.stats.json").read_text())
    assert (out.parent / stats["image_root_relative"]).resolve() == EXAMPLE.resolve()
    assert stats["build"]["source_stats"]["rows"] == 36 and stats["build"]["source_stats"]["images"] == 18

    model = write_tiny_model(tmp_path / "tiny-model.pt")
    overrides = [f"data={json.dumps(str(out))}", f"out={json.dumps(str(tmp_path / 'run'))}",
                 f"model={json.dumps(str(model))}", "groups_per_batch=4",
                 "pairs_per_group=2", "steps=2", "warmup=1", "log_every=1", "checkpoint_every=100",
                 'device="cpu"', "deterministic=true", "lr=0.001"]
    assert main(["train", "--config", "default-grouped", *overrides]) == 0
    checkpoint = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["checkpoint"]
    assert Path(checkpoint).is_file()
    results = tmp_path / "results.json"
    assert main(["eval", "--model", checkpoint, "--data", str(out), "--k", "3",
                 "--n-boot", "20", "--batch-size", "8", "--out", str(results)]) == 0
    metrics = {(r["task"], r["subset"], r["metric"]): r for r in json.loads(results.read_text())["metrics"]}
    assert ("recognition", "concept_level1", "i2t_R@1") in metrics and ("zero_shot", "level2", "top1") in metrics
    assert all(r["n"] >= 1 and 0 <= r["value"] <= 1 for r in metrics.values())
    moved = tmp_path / "moved" / "magic.json"  # the dataset alone, its images and stats left behind
    moved.parent.mkdir()
    moved.write_bytes(out.read_bytes())
    assert main(["train", "--config", "default-grouped", f"data={json.dumps(str(moved))}",
                 f"out={json.dumps(str(tmp_path / 'moved-run'))}", *overrides[2:]]) == 2
    assert f"image root {moved.parent}, set by images=DIR" in capsys.readouterr().err
    assert main(["eval", "--model", checkpoint, "--data", str(moved), "--out", str(tmp_path / "r2.json")]) == 2
    assert f"under the image root {moved.parent} (first: 'images/" in capsys.readouterr().err


def test_folder_build_with_sidecar_and_txt_captions(tmp_path, capsys):
    root = tmp_path / "photos"
    for k, (level2, concept) in enumerate([("animal", "golden_retriever"), ("animal", "tabby_cat"),
                                           ("vehicle", "fire_truck")]):
        folder = root / level2 / concept
        folder.mkdir(parents=True)
        for j in range(3):
            Image.new("RGB", (16, 16), (40 * k, 20 * j, 90)).save(folder / f"{j}.png")
        (folder / "0.txt").write_text(f"a view number {k}\n\nanother view {k}\n")
    rows = [f"{level2}/{concept}/{j}.png,seen from afar {k} {j}"
            for k, (level2, concept) in enumerate([("animal", "golden_retriever"), ("animal", "tabby_cat"),
                                                   ("vehicle", "fire_truck")]) for j in range(1, 3)]
    (root / "captions.csv").write_text("filepath,title\n" + "\n".join(rows) + "\n")
    out = tmp_path / "folder.json"
    assert main(["build", "--source", "folder", "--images", str(root), "--folder-depth", "2", "--labeler", "truth",
                 "--min-group-size", "3", "--hard-negatives", "2", "--out", str(out), "--no-progress"]) == 0
    concepts = {c.concept: c for c in load_concepts(out)}
    assert set(concepts) == {"golden retriever", "tabby cat", "fire truck"}
    first = next(im for im in concepts["tabby cat"].train_images + concepts["tabby cat"].test_images
                 if im.image == "animal/tabby_cat/0.png")
    assert first.old_captions == ["a view number 1", "another view 1"] and first.level2 == "animal"
    assert validate(out, root) == []
    assert f"image root {root}" in capsys.readouterr().out


def test_truth_on_a_csv_without_concept_columns_names_the_flag(tmp_path, capsys):
    assert main(["build", "--source", "csv", "--csv", str(EXAMPLE / "captions.csv"), "--labeler", "truth",
                 "--out", str(tmp_path / "x.json"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--csv-level-keys COL [COL ...]" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.json").exists()


def test_a_template_caption_is_built_whole_and_its_leaks_are_counted(tmp_path, capsys):
    root = tmp_path / "photos"
    for k, concept in enumerate(["dog", "cat"]):
        (root / concept).mkdir(parents=True)
        for j in range(2):
            Image.new("RGB", (16, 16), (90 * k, 40 * j, 60)).save(root / concept / f"{j}.png")
    out = tmp_path / "folder.json"
    assert main(["build", "--source", "folder", "--images", str(root), "--caption-template", "a picture of a {}",
                 "--allow-concept-captions", "--labeler", "truth", "--min-group-size", "2", "--hard-negatives", "1",
                 "--out", str(out), "--no-progress"]) == 0
    assert "leaks: 4 captions name a concept word" in capsys.readouterr().out
    captions = {im.image: im.new_captions for c in load_concepts(out) for im in c.train_images + c.test_images}
    assert captions == {f"{c}/{j}.png": [f"a picture of a {c}"] for c in ("dog", "cat") for j in range(2)}


def test_validate_names_the_image_root_and_the_flag_when_images_are_missing(tmp_path, capsys):
    """A dataset copied away from its pictures: every missing file is listed, then one line names the root and
    --images; given the folder, validate passes."""
    out = tmp_path / "tiny" / "magic.json"
    assert main(["build", "--source", "csv", "--csv", str(EXAMPLE / "captions.csv"), "--csv-level-keys", "concept",
                 "parent", "--labeler", "truth", "--min-group-size", "3", "--out", str(out), "--no-progress"]) == 0
    moved = tmp_path / "moved" / "magic.json"
    moved.parent.mkdir()
    moved.write_bytes(out.read_bytes())
    capsys.readouterr()
    assert main(["validate", str(moved)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert sum(line.endswith(" is missing") for line in lines) == 18
    assert lines[-1] == (f"{moved}: 18 image file(s) missing under the image root {moved.parent}; "
                         "if the pictures are elsewhere, name their folder with --images DIR")
    assert main(["validate", str(moved), "--images", str(EXAMPLE)]) == 0
    assert "missing under" not in capsys.readouterr().out
