"""End to end: `clearglass eval`, `compare` and `concepts` on tiny images, with the untrained clearglass:scratch
model (fast, random weights) and the default clearglass-mini."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clearglass.cli import main
from clearglass.magic.schema import ConceptRecord, ImageRecord, save_concepts

COMMON = ["--k", "3", "--n-boot", "50", "--batch-size", "8"]


def write_test_set(root: Path, n_concepts: int = 4, n_images: int = 2) -> Path:
    (root / "img").mkdir(parents=True, exist_ok=True)
    concepts = []
    for i in range(n_concepts):
        images = []
        for j in range(n_images):
            rel = f"img/c{i}_{j}.png"
            pixels = np.random.default_rng([i, j]).integers(0, 255, (16, 16, 3)).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(root / rel)
            images.append(ImageRecord(image=rel, old_captions=[f"a photo of thing {i} number {j}"],
                                      new_captions=[f"an example of idea {i}"], level1=f"thing{i}",
                                      level2=f"family{i // 2}", level3=f"kind{i % 2}", level4="entity"))
        concepts.append(ConceptRecord(concept=f"thing{i}", hard_negative=[f"thing{(i + 1) % n_concepts}"],
                                      test_images=images))
    path = root / "test.json"
    save_concepts(concepts, path)
    return path


def test_eval_writes_results(tmp_path, capsys):
    data = write_test_set(tmp_path)
    out = tmp_path / "results.json"
    assert main(["eval", "--model", "clearglass:scratch", "--data", str(data), "--levels", "1", "2",
                 "--fields", "old_caption", "concept_level1", "--out", str(out), *COMMON]) == 0
    res = json.loads(out.read_text())
    assert res["model"] == "clearglass:scratch" and len(res["test_set_hash"]) == 16
    keys = {(r["task"], r["subset"], r["metric"]) for r in res["metrics"]}
    assert ("recognition", "concept_level1", "t2i_R@1") in keys and ("zero_shot", "level2", "mean_class_recall") in keys
    assert ("retrieval", "old_captions", "i2t_R@10") in keys
    for r in res["metrics"]:
        assert 0 <= r["ci_low"] <= r["value"] <= r["ci_high"] <= 1
    assert res["n_images_embedded"] == 8
    printed = capsys.readouterr()
    assert "recognition/old_caption/i2t_R@1:" in printed.out
    assert printed.err == ("warning: model 'clearglass:scratch' is untrained (random weights): its scores are chance "
                           "level; 'clearglass-mini' is the pretrained default\n")


def test_compare_writes_report_and_plots(tmp_path):
    data = write_test_set(tmp_path)
    out = tmp_path / "cmp"
    assert main(["compare", "--models", "clearglass:scratch", "clearglass:clearglass-default", "--data", str(data),
                 "--fields", "concept_level1", "--levels", "1", "2", "--tasks", "recognition", "zero_shot",
                 "--out", str(out), *COMMON]) == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["models"] == ["clearglass:scratch", "clearglass:clearglass-default"]
    assert len(saved["differences"]) == len(saved["results"]["clearglass:scratch"]["metrics"])
    md = (out / "report.md").read_text()
    assert "| clearglass:scratch | clearglass:clearglass-default |" in md and "Paired differences" in md
    assert (out / "zero_shot_by_level.png").stat().st_size > 1000
    html = (out / "report.html").read_text()  # the gallery: every model's top concepts for sampled test images
    assert "clearglass:clearglass-default" in html and html.count("data:image/png;base64,") >= 4


def test_concepts_ranks_labels(tmp_path, capsys):
    data = write_test_set(tmp_path)
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n\ntree\n")
    image = str(tmp_path / "img" / "c0_0.png")
    assert main(["concepts", image, "--labels", str(labels), "--json", "--top", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    ranked = out[image]["labels"]
    assert len(ranked) == 2 and ranked[0]["score"] >= ranked[1]["score"]
    assert {x["label"] for x in ranked} <= {"cat", "dog", "tree"}
    assert main(["concepts", image, "--data", str(data), "--levels", "1", "2"]) == 0
    text = capsys.readouterr().out
    assert "level1: thing" in text and "level2: family" in text


def test_concepts_prints_score_concepts_and_says_when_the_model_is_untrained(tmp_path, capsys):
    from clearglass.inference import score_concepts
    from clearglass.models import load_model

    write_test_set(tmp_path)
    (tmp_path / "labels.txt").write_text("cat\ndog\ntree\n")
    image = str(tmp_path / "img" / "c0_0.png")
    assert main(["concepts", image, "--labels", str(tmp_path / "labels.txt"), "--json"]) == 0
    printed = capsys.readouterr()
    expected = score_concepts(load_model("clearglass-mini"), image, ["cat", "dog", "tree"])
    assert [(x["label"], x["score"]) for x in json.loads(printed.out)[image]["labels"]] == expected
    assert printed.err == ""
    assert main(["concepts", image, "--labels", str(tmp_path / "labels.txt"), "--model", "clearglass:scratch"]) == 0
    assert "model 'clearglass:scratch' is untrained (random weights)" in capsys.readouterr().err


def test_hierarcaps_csv_end_to_end(tmp_path):
    (tmp_path / "COCO_val2014_000000000001.jpg").parent.mkdir(exist_ok=True)
    rows = ["id,captions,image_url"]
    for i in range(4):
        Image.new("RGB", (16, 16), (60 * i, 20, 200 - 40 * i)).save(tmp_path / f"COCO_val2014_{i:012d}.jpg")
        rows.append(f'{i},"thing => thing {i} => big thing {i} => a big thing {i} on a table",'
                    f"http://images.cocodataset.org/val2014/COCO_val2014_{i:012d}.jpg")
    csv_path = tmp_path / "hierarcaps_test.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "hc.json"
    assert main(["eval", "--model", "clearglass:scratch", "--data", str(csv_path), "--format", "hierarcaps-csv",
                 "--tasks", "recognition", "hierarchical", "--fields", "concept_level1", "--out", str(out),
                 *COMMON]) == 0
    metrics = {r["metric"]: r for r in json.loads(out.read_text())["metrics"] if r["task"] == "hierarchical"}
    assert set(metrics) == {"precision", "recall", "d_corr"} and metrics["d_corr"]["n"] == 4


@pytest.mark.parametrize("argv, message", [
    (["--model", "no-such-model"], "unknown model spec"),
    (["--model", "clearglass:scratch", "--k", "9"], "k=9 needs at least 9"),
])
def test_eval_bad_input_exits_2(tmp_path, capsys, argv, message):
    data = write_test_set(tmp_path)
    args = ["eval", "--data", str(data), "--out", str(tmp_path / "r.json"), "--n-boot", "10",
            "--fields", "old_caption", *argv]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_eval_missing_image_names_the_file(tmp_path, capsys):
    data = write_test_set(tmp_path)
    (tmp_path / "img" / "c1_1.png").unlink()
    assert main(["eval", "--model", "clearglass:scratch", "--data", str(data), "--out", str(tmp_path / "r.json"),
                 *COMMON]) == 2
    assert "c1_1.png" in capsys.readouterr().err


def test_option_defaults_are_the_eval_config_defaults(tmp_path):
    from clearglass.cli import build_parser
    from clearglass.cli.evaluate import _config
    from clearglass.evaluate import EvalConfig

    parser = build_parser()
    args = parser.parse_args(["eval", "--model", "clearglass:scratch", "--data", "t.json", "--out", "r.json"])
    assert _config(args) == EvalConfig()


def test_eval_and_compare_check_their_output_before_evaluating(tmp_path, capsys, monkeypatch):
    import clearglass.cli.evaluate as cli_evaluate

    def never(*args):
        raise AssertionError("evaluated before the output was checked")

    monkeypatch.setattr(cli_evaluate, "_evaluate", never)
    data = write_test_set(tmp_path)
    (tmp_path / "file").write_text("x")
    assert main(["eval", "--model", "clearglass:scratch", "--data", str(data), "--out", str(tmp_path / "img")]) == 2
    assert f"{tmp_path / 'img'}: is a folder; expected a file path for the results JSON" in capsys.readouterr().err
    assert main(["compare", "--models", "clearglass:scratch", "x.pt", "--data", str(data), "--out",
                 str(tmp_path / "file")]) == 2
    assert f"{tmp_path / 'file'}: is a file; expected a folder for the comparison report" in capsys.readouterr().err


def test_eval_refuses_image_ids_outside_the_root_unless_allowed(tmp_path, capsys):
    data = write_test_set(tmp_path / "set")
    raw = json.loads(data.read_text())
    Image.new("RGB", (16, 16), (9, 9, 9)).save(tmp_path / "outside.png")
    raw[0]["test_images"][0]["image"] = "../outside.png"
    data.write_text(json.dumps(raw))
    argv = ["eval", "--model", "clearglass:scratch", "--data", str(data), "--out", str(tmp_path / "r.json"), "--tasks",
            "retrieval", *COMMON]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "image id '../outside.png' resolves to" in err and "--allow-outside-root" in err
    assert not (tmp_path / "r.json").exists()
    assert main(argv + ["--allow-outside-root"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["n_images_embedded"] == 8


def test_a_16_bit_image_scores_as_its_8_bit_original_not_as_white(tmp_path, capsys):
    grey = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (32, 1))
    Image.fromarray(grey).save(tmp_path / "g8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    Image.new("L", (32, 32), 255).save(tmp_path / "white.png")
    (tmp_path / "labels.txt").write_text("cat\ndog\ntree\n")
    paths = [str(tmp_path / n) for n in ("g8.png", "g16.png", "white.png")]
    assert main(["concepts", *paths, "--labels", str(tmp_path / "labels.txt"), "--json"]) == 0
    scores = {Path(p).stem: {x["label"]: x["score"] for x in ranked["labels"]}
              for p, ranked in json.loads(capsys.readouterr().out).items()}
    assert scores["g16"] == scores["g8"] and scores["g16"] != scores["white"]


def test_the_console_stays_quiet_while_models_load(tmp_path):
    """A whole `concepts` run prints its answer and nothing on stderr: no load report of the frozen text tower
    (``pooler.dense.weight | UNEXPECTED``), no open_clip notice, no bar for sub-second loops."""
    import os
    import subprocess
    import sys

    Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / "red.png")
    (tmp_path / "labels.txt").write_text("red\nblue\n")
    done = subprocess.run([sys.executable, "-m", "clearglass", "concepts", str(tmp_path / "red.png"), "--labels",
                           str(tmp_path / "labels.txt")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.splitlines()[0] == str(tmp_path / "red.png")


TINY = ["--fields", "concept_level1", "--levels", "1", "2", "--tasks", "recognition", "zero_shot", "--device", "cpu",
        *COMMON]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny open_clip checkpoints of different weights."""
    from tiny_magic import write_tiny_model

    root = tmp_path_factory.mktemp("models")
    return write_tiny_model(root / "a.pt", seed=0), write_tiny_model(root / "b.pt", seed=1)


def test_compare_names_models_and_differences_against_a_baseline_or_pairs(tmp_path, tiny_models):
    data = write_test_set(tmp_path)
    a, b = (str(p) for p in tiny_models)
    out = tmp_path / "baseline"
    assert main(["compare", "--models", f"base={a}", f"other={b}", a, "--baseline", "other", "--data", str(data),
                 "--out", str(out), *TINY]) == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["models"] == ["base", "other", a] and saved["results"]["other"]["model"] == b
    assert {(d["model"], d["baseline"]) for d in saved["differences"]} == {("base", "other"), (a, "other")}
    md = (out / "report.md").read_text()
    assert f"| base | other | {a} |" in md and f"Models: base = `{a}`; other = `{b}`." in md
    assert "## base vs other" in md and "## Paired differences vs other" in md
    assert "other" in (out / "report.html").read_text()
    out = tmp_path / "pairs"
    assert main(["compare", "--models", f"base={a}", f"base-2={b}", f"x={a}", "--pairs", "base-2-base", "x-base-2",
                 "--data", str(data), "--out", str(out), *TINY]) == 0
    pairs = [(d["model"], d["baseline"]) for d in json.loads((out / "results.json").read_text())["differences"]]
    assert list(dict.fromkeys(pairs)) == [("base-2", "base"), ("x", "base-2")]  # split at the '-' that names two


def test_compare_at_paper_scores_each_open_clip_baseline_in_turn(tmp_path, monkeypatch):
    """`--models @paper` loads each preset through open_clip (its download mocked: a tiny model of the preset's
    name), evaluates it and frees it before the next loads; the report names every preset."""
    import gc
    import weakref

    import open_clip

    from clearglass.model_sets import ModelSet
    from clearglass.models import register_open_clip_config
    from tiny_magic import TINY_MODEL_CONFIG

    tiny = register_open_clip_config("clearglass-test-tiny", TINY_MODEL_CONFIG)
    create_model, get_tokenizer = open_clip.create_model, open_clip.get_tokenizer
    loaded, alive = [], []

    def create_model_and_transforms(name, pretrained=None, device="cpu", **kwargs):
        gc.collect()
        assert not any(ref() is not None for ref in alive), "the previous model is still in memory"
        loaded.append((name, pretrained))
        model = create_model(tiny, device=device)
        alive.append(weakref.ref(model))
        return model, *(open_clip.image_transform(32, is_train) for is_train in (True, False))

    monkeypatch.setattr(open_clip, "create_model_and_transforms", create_model_and_transforms)
    monkeypatch.setattr(open_clip, "get_tokenizer", lambda name, **kwargs: get_tokenizer(tiny))
    data = write_test_set(tmp_path)
    out = tmp_path / "paper"
    assert main(["compare", "--models", "@paper", "--data", str(data), "--out", str(out), *TINY]) == 0
    presets = ModelSet.load("paper").models
    assert loaded == [tuple(spec.split(":")[1:]) for spec in presets.values()] and len(presets) == 6
    saved = json.loads((out / "results.json").read_text())
    assert saved["models"] == list(presets) and {r["model"] for r in saved["results"].values()} == set(
        presets.values())
    md = (out / "report.md").read_text()
    assert "| " + " | ".join(presets) + " |" in md and "open_clip:ViT-B-32:openai" in md


def test_compare_help_names_the_model_sets_and_what_open_clip_lacks(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = capsys.readouterr().out
    assert "@paper" in text and "clip_b32 = open_clip:ViT-B-32:openai" in text
    assert "not included: NegCLIP" in text and "not included: CE-CLIP" in text
