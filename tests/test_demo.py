"""clearglass demo: the split, the caption filter, the image-clustering diagnostic (vs a loop oracle), seed merging,
and `clearglass demo --quick` end to end through clearglass.cli.main."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clearglass.cli import main
from clearglass.demo import (HEADLINE, SUBSETS, centroid_ranks, drop_concept_word_captions, load_demo_config,
                             merge_seeds, split_demo)
from clearglass.errors import ClearglassError
from clearglass.magic.schema import ConceptRecord, ImageRecord
from clearglass.checkpoints import metadata_path
from clearglass.report import fmt


def _concepts(groups: int = 3, per_group: int = 3, images: int = 5) -> list[ConceptRecord]:
    out = []
    for g in range(groups):
        for c in range(per_group):
            name = f"concept{g}{c}"
            ims = [ImageRecord(f"{name}/{i}.png", [f"thing {i}"], [f"thing {i}"], name, f"group{g}")
                   for i in range(images)]
            out.append(ConceptRecord(name, [], ims[:-1], ims[-1:]))
    return out


def test_split_demo_is_disjoint_and_stratified() -> None:
    splits = split_demo(_concepts(), holdout_per_group=1, val_holdout_per_group=1, val_fraction=0.25, seed=0)
    held = {c.concept for c in splits["test_held_out"]}
    val_held = {c.concept for c in splits["val_held_out"]}
    trained = {c.concept for c in splits["train"]}
    assert len(held) == len(val_held) == 3 and len(trained) == 3
    assert not (held & val_held) and not (held & trained) and not (val_held & trained)
    assert {c.test_images[0].level2 for c in splits["test_held_out"]} == {"group0", "group1", "group2"}
    train_ids = {im.image for c in splits["train"] for im in c.train_images}
    for subset in SUBSETS:
        assert not train_ids & {im.image for c in splits[subset] for im in c.test_images}, subset
    assert all(len(c.test_images) == 5 for c in splits["test_held_out"])  # every image of a held-out concept
    assert all(len(c.test_images) == 1 for c in splits["val_seen"])  # round(0.25 * 4) of the train images
    with pytest.raises(ClearglassError, match="cannot hold out"):
        split_demo(_concepts(per_group=2), holdout_per_group=1, val_holdout_per_group=1, val_fraction=0.2, seed=0)


def test_training_captions_never_name_a_concept_word() -> None:
    concepts = _concepts()
    concepts[0].train_images[0].new_captions = ["a concept11 thing", "a plain thing"]
    concepts[0].train_images[1].new_captions = ["two group2 things"]
    out, stats = drop_concept_word_captions(concepts)
    assert out[0].train_images[0].new_captions == ["a plain thing"]
    assert len(out[0].train_images) == len(concepts[0].train_images) - 1
    assert stats["captions_removed"] == 2 and stats["images_dropped"] == 1


class _TableEncoder:
    def __init__(self, table: dict[Path, torch.Tensor]) -> None:
        self.table = table

    def embed_images(self, paths: list[Path]) -> torch.Tensor:
        return torch.stack([self.table[Path(p)] for p in paths])

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        raise AssertionError("the image-clustering diagnostic must not embed text")


def test_centroid_ranks_matches_a_loop_oracle() -> None:
    concepts = _concepts(images=6)
    gen = torch.Generator().manual_seed(0)
    root = Path("/images")
    table = {root / im.image: torch.nn.functional.normalize(torch.randn(8, generator=gen), dim=0)
             for c in concepts for im in c.train_images + c.test_images}
    enc = _TableEncoder(table)
    for level in (1, 2):
        out = centroid_ranks(enc, concepts, concepts, root, level)
        key = f"level{level}"
        labels = sorted({getattr(im, key) for c in concepts for im in c.train_images})
        centroids = {}
        for x in labels:
            vs = [table[root / im.image] for c in concepts for im in c.train_images if getattr(im, key) == x]
            centroids[x] = sum(vs) / torch.linalg.norm(sum(vs))
        expected = []
        for c in concepts:
            for im in c.test_images:
                v = table[root / im.image]
                true = float(v @ centroids[getattr(im, key)])
                expected.append(sum(float(v @ centroids[x]) >= true for x in labels if x != getattr(im, key)))
        assert out["rank"].tolist() == expected
    with pytest.raises(ClearglassError, match="image clustering needs"):
        centroid_ranks(enc, concepts[:1], concepts, root, 1)


def test_merge_seeds_averages_hits_per_item() -> None:
    def res(ranks: list[int]) -> dict:
        spec = {"stat": "hit", "array": "rank", "k": 1}
        return {"config": {"n_boot": 100, "seed": 0, "ci_level": 0.95},
                "metrics": [{"task": "t", "subset": "s", "metric": "m", "value": 0.0, "n": 4, "unit": "t/s/rank",
                             "stat": spec}],
                "per_item": {"t/s": {"items_hash": "h", "arrays": {"rank": ranks}}}}

    merged = merge_seeds([res([0, 1, 0, 2]), res([0, 0, 3, 2]), res([1, 0, 0, 2])])
    row = merged["metrics"][0]
    assert merged["per_item"]["t/s"]["arrays"]["m_hit"] == pytest.approx([2 / 3, 2 / 3, 2 / 3, 0.0])
    assert row["value"] == pytest.approx(0.5) and row["ci_low"] <= 0.5 <= row["ci_high"]


def _table_cells(report: str, label: str) -> list[str]:
    line = next(ln for ln in report.splitlines() if ln.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")[1:]]


def test_demo_quick_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    printed = capsys.readouterr().out
    config = load_demo_config("quick")
    models = ["init", *config["models"]]
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    report = (out / "report.md").read_text(encoding="utf-8")
    assert report.splitlines()[2].startswith("**What the numbers say**")
    for subset in SUBSETS:
        comp = results["comparisons"][subset]
        assert set(comp["results"]) == set(models)
        for model in models:
            keys = {(r["task"], r["subset"], r["metric"]) for r in comp["results"][model]["metrics"]}
            for level in (1, 2):
                for metric in ("i2t_R@1", "t2i_R@1"):
                    assert ("recognition", f"concept_level{level}", metric) in keys
                assert ("zero_shot", f"level{level}", "top1") in keys
            assert ("retrieval", "old_captions", "i2t_R@1") in keys
            assert ("image_clustering", "level2", "centroid_acc") in keys
            for r in comp["results"][model]["metrics"]:
                assert 0.0 <= r["ci_low"] <= r["value"] <= r["ci_high"] <= 1.0 or r["metric"] == "d_corr"
        assert {d["model"] for d in comp["differences"]} == set(models) - {config["baseline"]}
    # every number of the headline table, in the report and on the terminal, is the JSON's
    for subset, task, tsub, metric, label in HEADLINE:
        cells = _table_cells(report, label)
        assert cells == _table_cells(printed, label)
        header = next(ln for ln in report.splitlines() if ln.startswith("| measure |"))
        names = [c.strip() for c in header.strip("|").split("|")[1:]]
        for name, cell in zip(names, cells):
            row = next(r for r in results["comparisons"][subset]["results"][name]["metrics"]
                       if (r["task"], r["subset"], r["metric"]) == (task, tsub, metric))
            assert cell == f"{fmt(row['value'])} [{fmt(row['ci_low'])}, {fmt(row['ci_high'])}]"
    # the first paragraph quotes the measured differences
    d = next(d for d in results["comparisons"]["test_seen"]["differences"]
             if (d["model"], d["task"], d["subset"], d["metric"]) == (config["method"], "recognition",
                                                                      "concept_level1", "i2t_R@1"))
    assert f"difference {fmt(d['value'])}, 95% CI [{fmt(d['ci_low'])}, {fmt(d['ci_high'])}]" in report.splitlines()[2]
    for png in results["plots"]:
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[0] > 100
        assert re.search(re.escape(Path(png).relative_to(out).as_posix()), report)
    for name in config["models"]:
        path = Path(results["checkpoints"][name])
        assert path.is_file() and metadata_path(path).is_file()
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert np.isfinite(results["seconds"])


def test_search_needs_equal_effort(tmp_path: Path) -> None:
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"description": "d", "settings": {"clip": [{"lr": 0.001}],
                                                                  "clear_glass": [{"lr": 0.001}, {"lr": 0.003}]}}))
    assert main(["demo", "--quick", "--search", str(grid), "--out", str(tmp_path / "s")]) == 2
    grid.write_text(json.dumps({"description": "d", "settings": {"nope": [{"lr": 0.001}]}}))
    with pytest.raises(ClearglassError, match="unknown models"):
        from clearglass.demo import run_search
        run_search(tmp_path / "s", grid, "quick")
