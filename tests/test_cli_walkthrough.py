"""A new user's first hour, end to end through the real entry point: a CSV of 60 pictures in 6 concepts, kept apart
from the dataset it builds; build, a few training steps from the default (pretrained) model with open_clip-style
flags, eval, compare with named models, concepts. None of issue 20's traps: no untrained warning, no image folder
given twice, named columns, identical captions not counted against each other."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

from clearglass.cli import main

CONCEPTS = {"sunny day": "weather", "rainy day": "weather", "red fruit": "food", "green fruit": "food",
            "round sign": "street", "square sign": "street"}


def write_pictures(folder: Path) -> Path:
    """10 drawn pictures per concept, two captions each (one templated, so captions repeat), as a CSV."""
    rows = ["filepath,title,concept,parent"]
    for c, (concept, parent) in enumerate(CONCEPTS.items()):
        for j in range(10):
            image = Image.new("RGB", (64, 64), (255, 255, 255 - 20 * c))
            shape = ImageDraw.Draw(image).ellipse if c % 2 == 0 else ImageDraw.Draw(image).rectangle
            shape((8 + j, 8 + j, 50 + j, 50 - j), fill=(40 * c, 200 - 30 * c, 25 * j))
            rel = f"pics/{concept.replace(' ', '-')}-{j}.png"
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            image.save(folder / rel)
            rows += [f"{rel},a drawing number {j} in colour {c},{concept},{parent}",
                     f"{rel},a simple drawing,{concept},{parent}"]
    (folder / "captions.csv").write_text("\n".join(rows) + "\n")
    return folder / "captions.csv"


def test_a_new_users_walk_through(tmp_path: Path, capsys, one_thread) -> None:
    csv = write_pictures(tmp_path / "mine")
    data = tmp_path / "datasets" / "magic.json"  # elsewhere than the pictures
    assert main(["build", "--source", "csv", "--csv", str(csv), "--csv-level-keys", "concept", "parent",
                 "--labeler", "truth", "--out", str(data), "--no-progress"]) == 0
    capsys.readouterr()
    run = tmp_path / "runs" / "first"
    assert main(["train", "--train-data", str(data), "--steps", "3", "--warmup", "1", "--lr", "3e-4",
                 "--batch-size", "4x2", "--device", "cpu", "--seed", "0", "--out", str(run)]) == 0
    out, err = capsys.readouterr()
    checkpoint = json.loads(out.strip().splitlines()[-1])["checkpoint"]
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "clearglass-mini" and (config["groups_per_batch"], config["pairs_per_group"]) == (4, 2)
    results = tmp_path / "results.json"
    assert main(["eval", "--model", checkpoint, "--data", str(data), "--k", "3", "--n-boot", "20",
                 "--out", str(results)]) == 0
    metrics = {f"{r['task']}/{r['subset']}/{r['metric']}": r["value"]
               for r in json.loads(results.read_text())["metrics"]}
    assert {"recognition/concept_level1/i2t_R@1", "retrieval/old_captions/i2t_R@1"} <= set(metrics)
    assert metrics["retrieval/old_captions/i2t_R@1"] > 0  # "a simple drawing" is a right answer for every picture
    report = tmp_path / "compare"
    assert main(["compare", "--models", "base=clearglass-mini", f"ft={checkpoint}", "--baseline", "base",
                 "--data", str(data), "--k", "3", "--n-boot", "20", "--out", str(report)]) == 0
    markdown = (report / "report.md").read_text()
    header = next(ln for ln in markdown.splitlines() if ln.startswith("| task |"))
    assert header.rstrip(" |").endswith("| base | ft"), header  # columns carry the names, not the specs
    assert f"ft = {checkpoint}" in markdown or f"ft = `{checkpoint}`" in markdown
    assert main(["concepts", str(tmp_path / "mine" / "pics" / "red-fruit-0.png"), "--model", checkpoint,
                 "--data", str(data), "--levels", "1", "2", "--json"]) == 0
    out, err = capsys.readouterr()
    ranked = json.loads(out.strip()[out.index("{"):])
    [per_level] = ranked.values()
    assert {r["label"] for r in per_level["level1"]} <= set(CONCEPTS) and per_level["level2"]
    assert "untrained" not in err and "not found" not in err
