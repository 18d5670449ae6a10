"""Comparisons, markdown tables (numbers equal the JSON's) and plots, on hand-built encoders."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from clearglass.errors import ClearglassError
from clearglass.evaluate import EvalConfig, bootstrap, evaluate_model
from clearglass.report import compare, fmt, markdown_table, write_report
from test_evaluate import ROOT, ConceptEncoder, RandomEncoder, make_concepts

CONFIG = EvalConfig(k=3, fields=["old_caption", "concept_level1"], levels=[1, 2], n_boot=200)


@pytest.fixture(scope="module")
def results():
    concepts = make_concepts()
    return {"onehot": evaluate_model(ConceptEncoder(concepts), concepts, ROOT, CONFIG, model="onehot"),
            "random": evaluate_model(RandomEncoder(), concepts, ROOT, CONFIG, model="random")}


def test_paired_differences(results):
    out = compare(results)
    assert out["models"] == ["onehot", "random"]
    by = {(d["task"], d["subset"], d["metric"]): d for d in out["differences"]}
    assert len(by) == len(results["onehot"]["metrics"])
    for row in results["random"]["metrics"]:
        d = by[(row["task"], row["subset"], row["metric"])]
        base = next(r for r in results["onehot"]["metrics"] if r["metric"] == row["metric"]
                    and r["task"] == row["task"] and r["subset"] == row["subset"])
        assert d["value"] == pytest.approx(row["value"] - base["value"])
        assert d["ci_low"] <= d["value"] + 1e-12 and d["value"] - 1e-12 <= d["ci_high"]
    # paired: resampling the same items for both; recomputed by hand for one metric
    unit = results["onehot"]["per_item"]["recognition/concept_level1"]["arrays"]["i2t_rank"]
    other = results["random"]["per_item"]["recognition/concept_level1"]["arrays"]["i2t_rank"]
    a, b = np.asarray(unit) < 1, np.asarray(other) < 1
    low, high = bootstrap(lambda idx: b[idx].mean(1) - a[idx].mean(1), len(a), 200, 0)
    d = by[("recognition", "concept_level1", "i2t_R@1")]
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((low, high))


def test_self_comparison_is_exactly_zero(results):
    out = compare({"a": results["onehot"], "b": results["onehot"]})
    assert all(d["value"] == 0 and d["ci_low"] == 0 and d["ci_high"] == 0 for d in out["differences"])


def test_compare_refuses_different_items(results):
    concepts = make_concepts()
    other = evaluate_model(RandomEncoder(), concepts, ROOT, EvalConfig(k=3, fields=["old_caption", "concept_level1"],
                                                                       levels=[1, 2], n_boot=200, seed=5))
    with pytest.raises(ClearglassError, match="different items"):
        compare({"a": results["onehot"], "b": other})


def test_report_numbers_equal_json_numbers(results, tmp_path):
    paths = write_report(compare(results), tmp_path, title="T", intro="hello")
    saved = json.loads(paths["json"].read_text())
    md = paths["markdown"].read_text()
    assert md.startswith("# T") and "hello" in md
    for name in ["onehot", "random"]:
        for r in saved["results"][name]["metrics"]:
            cell = f"{fmt(r['value'])} [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]"
            line = next(l for l in md.splitlines() if l.startswith(f"| {r['task']} | {r['subset']} | {r['metric']} |"))
            assert cell in line
    for d in saved["differences"]:
        assert f"{fmt(d['value'])} [{fmt(d['ci_low'])}, {fmt(d['ci_high'])}]" in md
    numbers = re.findall(r"-?\d+\.\d{4}", md)
    assert len(numbers) == 3 * (2 * len(saved["results"]["onehot"]["metrics"]) + len(saved["differences"]))
    for stem in ("recognition_i2t", "recognition_t2i", "zero_shot_by_level"):
        assert paths[stem].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({stem}.png)" in md


def test_markdown_table_marks_missing_metrics(results):
    partial = dict(results["random"], metrics=results["random"]["metrics"][:1])
    table = markdown_table({"onehot": results["onehot"], "random": partial})
    assert table.count("| - |") == len(results["onehot"]["metrics"]) - 1


def test_single_results_report(results, tmp_path):
    paths = write_report(results["onehot"], tmp_path)
    saved = json.loads(paths["json"].read_text())
    assert saved["models"] == ["onehot"] and saved["differences"] == []
    assert "Paired differences" not in paths["markdown"].read_text()


def test_report_names_data_inside_its_folder_relatively(results, tmp_path):
    inside = {**results["onehot"], "data": str(tmp_path / "data" / "magic.json")}
    text = write_report(inside, tmp_path)["markdown"].read_text()
    assert "Data: `data/magic.json`" in text and str(tmp_path) not in text
    outside = {**results["onehot"], "data": "/elsewhere/magic.json"}
    assert "Data: `/elsewhere/magic.json`" in write_report(outside, tmp_path / "r")["markdown"].read_text()
