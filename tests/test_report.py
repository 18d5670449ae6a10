"""Comparisons, markdown tables (numbers equal the JSON's) and plots, on hand-built encoders."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest

from clearglass.errors import ClearglassError
from clearglass.evaluate import EvalConfig, bootstrap, evaluate_model
from clearglass.page import markdown_html
from clearglass.report import (
    Measure,
    compare,
    compared_pairs,
    default_measures,
    fmt_pct,
    headline_table,
    markdown_table,
    md_code,
    md_text,
    verdict,
    verdict_sentences,
    write_report,
)
from clearglass.results import MetricKey
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


def _cell(row: dict, signed: bool = False) -> str:
    return f"{fmt_pct(row['value'], signed)} [{fmt_pct(row['ci_low'], signed)}, {fmt_pct(row['ci_high'], signed)}]"


def test_report_numbers_equal_json_numbers(results, tmp_path):
    paths = write_report(compare(results), tmp_path, title="T", intro="hello")
    saved = json.loads(paths["json"].read_text())
    md = paths["markdown"].read_text()
    assert md.startswith("# T") and "hello" in md
    for name in ["onehot", "random"]:
        for r in saved["results"][name]["metrics"]:
            cell = f"{fmt_pct(r['value'])} [{fmt_pct(r['ci_low'])}, {fmt_pct(r['ci_high'])}]"
            line = next(row for row in md.splitlines()
                        if row.startswith(f"| {r['task']} | {r['subset']} | {r['metric']} |"))
            assert cell in line
    for d in saved["differences"]:
        assert _cell(d, signed=True) in md
    long_tables = md[md.index("## Results"):]
    numbers = re.findall(r"[-+]?\d+\.\d\b", long_tables)
    assert len(numbers) == 3 * (2 * len(saved["results"]["onehot"]["metrics"]) + len(saved["differences"]))
    # every number a person reads anywhere in the report is one of the JSON's, in percent with one decimal
    shown = {f(row[k]) for res in saved["results"].values() for row in res["metrics"]
             for k in ("value", "ci_low", "ci_high") for f in (fmt_pct, lambda x: fmt_pct(x, signed=True))}
    shown |= {fmt_pct(d[k], signed=True) for d in saved["differences"] for k in ("value", "ci_low", "ci_high")}
    assert set(re.findall(r"[-+]?\d+\.\d+", md)) <= shown
    for stem in ("recognition_i2t", "recognition_t2i", "zero_shot_by_level"):
        assert paths[stem].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({stem}.png)" in md


def _first_table(md: str) -> list[list[str]]:
    """The cells of the first markdown table (header and rows, the |---| line dropped)."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    block = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start:]))
    return [[c.strip() for c in line.strip("|").split("|")] for line in block if not line.startswith("|---")]


def _numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?\d+\.\d+", cell)]


def test_report_leads_with_the_headline_table_equal_to_the_json(results, tmp_path):
    md = write_report(compare(results), tmp_path, title="T", intro="hello")["markdown"].read_text()
    saved = json.loads((tmp_path / "results.json").read_text())
    lines = md.splitlines()
    assert lines[0] == "# T" and lines[2].startswith("| measure | onehot, % [95% CI] | random, % [95% CI] |")
    header, *rows = _first_table(md)
    measures = default_measures(saved["results"]["onehot"])
    assert header[3] == "random − onehot, points [95% CI]" and len(rows) == len(measures) > 0
    diffs = {(d["task"], d["subset"], d["metric"]): d for d in saved["differences"]}
    for measure, row in zip(measures, rows):
        key, label = (measure.key.task, measure.key.subset, measure.key.metric), measure.label
        base, method = ({(r["task"], r["subset"], r["metric"]): r for r in saved["results"][m]["metrics"]}[key]
                        for m in ("onehot", "random"))
        assert row[0] == label
        for cell, source in zip(row[1:4], (base, method, diffs[key])):
            assert _numbers(cell) == [round(100 * source[k], 1) for k in ("value", "ci_low", "ci_high")]
        assert row[4] == verdict(diffs[key])
    assert {r[4] for r in rows} <= {"better", "worse", "no clear difference"}
    # the verdict follows the table, before the intro and the long tables
    paragraph = md[md.index(rows[-1][-1] + " |") :].split("\n\n")[1]
    assert paragraph.startswith("random is not clearly better than onehot") and md.index("hello") > md.index(paragraph)


def test_names_and_data_in_report_md_are_escaped_and_keep_their_table_columns(results, tmp_path):
    """report.md is Markdown with inline HTML: a model name, title, template or skip reason from data must not become
    markup (a `<script>` a viewer runs) or a column (a `|`)."""
    evil = "<script>alert(1)</script>|x"
    results = {evil: {**results["onehot"], "skipped": {"zero_shot/9": "<b>why</b>"}}, "random": results["random"]}
    results[evil]["config"] = {**results[evil]["config"], "template": "a <img src=x onerror=alert(1)> `{}`"}
    md = write_report(compare(results), tmp_path, title="<img src=x onerror=alert(1)>")["markdown"].read_text()
    assert "<script>" not in md and "<img" not in md and "<b>" not in md
    assert "&lt;script>alert(1)&lt;/script>&#124;x" in md and "# &lt;img src=x onerror=alert(1)>" in md
    for table in re.findall(r"(?:^\|.*\|\n)+", md, flags=re.M):  # every row as many columns as its header
        widths = {row.count("|") for row in table.splitlines()}
        assert len(widths) == 1, table
    assert md_code("a|b") == "a&#124;b" and md_code("x`y") == "x&#96;y" and md_code("plain <b>") == "`plain <b>`"


def test_a_link_or_bold_in_a_name_or_title_stays_text_in_report_md_and_html(results, tmp_path):
    """A title or model name shaped like a Markdown link (a javascript: URL a click runs) or bold is data: report.md
    and the report.html rendered from it show it as written, with no link and no bold."""
    link, bold = "[x](javascript:alert%281%29)", "**loud**"
    results = {link: results["onehot"], bold: results["random"]}
    md = write_report(compare(results), tmp_path, title=f"{link} {bold}")["markdown"].read_text()
    assert "](" not in md.split("## Plots")[0] and "**" not in md  # the plot images are the only links
    assert "# [x&#93;(javascript:alert%281%29) &#42;&#42;loud&#42;&#42;" in md
    assert md_text("[a][b] [c]: u ![d](e)") == "[a&#93;[b] [c&#93;: u ![d&#93;(e)"
    html = markdown_html(md, tmp_path)
    assert "<a " not in html and "href" not in html and "<b>" not in html
    assert f"<h1>{link} {bold}</h1>" in html and f"<th>{link}</th>" in html


def test_fmt_pct():
    assert fmt_pct(0.5441) == "54.4" and fmt_pct(0.037, signed=True) == "+3.7"
    assert fmt_pct(-0.037, signed=True) == "-3.7"
    assert fmt_pct(-0.00001) == "0.0" and fmt_pct(-0.00001, signed=True) == "0.0" and fmt_pct(1.0) == "100.0"


def _sentences(text: str) -> list[str]:
    return [x for x in re.split(r"(?<=\.)\s+", text) if x]


def test_verdict_sentences_say_what_is_better_worse_and_the_targets(results):
    comparison = compare(results)
    measures = default_measures(results["onehot"])
    rows = {m.label: d for m in measures
            for d in comparison["differences"] if MetricKey.of(d) == m.key}
    worse = [label for label, d in rows.items() if d["ci_high"] < 0]
    assert worse, "the random encoder should be clearly worse somewhere"
    text = verdict_sentences(comparison, "onehot", "random", measures, [("level-1 up", True), ("cost <= 5", False)])
    first, second, third = _sentences(text)
    assert first == f"random is not clearly better than onehot on any of the {len(measures)} headline measures."
    assert second.startswith("It is worse on ") and worse[0] in second
    assert f"({fmt_pct(rows[worse[0]]['value'], signed=True)} points)" in second
    assert third == "Targets met: level-1 up; missed: cost <= 5."
    reverse = compare({"random": results["random"], "onehot": results["onehot"]})
    text = verdict_sentences(reverse, "random", "onehot", measures)
    assert len(_sentences(text)) == 2 and text.startswith("onehot is better than random on ")
    assert "It is worse on none" in text
    assert verdict_sentences(reverse, "random", "onehot", measures, [("a", True), ("b", True)]).endswith(
        "All 2 targets are met: a; b.")


def test_headline_table_over_several_comparisons_and_unknown_measures(results):
    by_split = {"seen": compare(results), "held_out": compare(results)}
    measures = [Measure(MetricKey("zero_shot", "level1", "top1"), "zero-shot level 1, held-out", "held_out")]
    table = headline_table(by_split, "onehot", "random", measures)
    d = next(d for d in by_split["held_out"]["differences"] if (d["task"], d["subset"], d["metric"])
             == ("zero_shot", "level1", "top1"))
    assert "| zero-shot level 1, held-out | 100.0 [100.0, 100.0] |" in table and _cell(d, signed=True) in table
    with pytest.raises(ClearglassError, match="no comparison 'val'"):
        headline_table(by_split, "onehot", "random", [Measure(MetricKey("zero_shot", "level1", "top1"), "x", "val")])
    with pytest.raises(ClearglassError, match="has no such metric"):
        headline_table(compare(results), "onehot", "random", [Measure(MetricKey("zero_shot", "level9", "top1"), "x")])
    with pytest.raises(ClearglassError, match="no paired difference of 'onehot' minus 'random'"):
        headline_table(compare(results), "random", "onehot", [Measure(MetricKey("zero_shot", "level1", "top1"), "x")])


def test_report_of_several_models_has_a_table_per_method(results, tmp_path):
    three = compare({"onehot": results["onehot"], "random": results["random"], "again": results["random"]})
    md = write_report(three, tmp_path)["markdown"].read_text()
    assert md.index("## random vs onehot") < md.index("## again vs onehot") < md.index("## Results")
    assert md.count("| measure |") == 2


def test_explicit_pairs_are_their_own_two_model_comparisons(results, tmp_path):
    three = {"onehot": results["onehot"], "random": results["random"], "again": results["random"]}
    pairs = [("onehot", "random"), ("again", "onehot")]
    out = compare(three, pairs=pairs)
    assert compared_pairs(out) == pairs and out["models"] == list(three)
    for model, baseline in pairs:  # each pair as compare() of the baseline then the model (the default pairing)
        alone = compare({baseline: three[baseline], model: three[model]})["differences"]
        assert [d for d in out["differences"] if (d["model"], d["baseline"]) == (model, baseline)] == alone
    assert compare(three) == compare(three, pairs=[("random", "onehot"), ("again", "onehot")])
    md = write_report(out, tmp_path / "two")["markdown"].read_text()
    assert md.index("## onehot vs random") < md.index("## again vs onehot") < md.index("## Paired differences\n")
    one_baseline = compare(three, pairs=[("onehot", "random"), ("again", "random")])
    assert "## Paired differences vs random\n" in write_report(one_baseline, tmp_path / "one")["markdown"].read_text()
    for bad, message in [([("onehot", "onehot")], "expected two different models"),
                         ([("onehot", "nobody")], "'onehot' - 'nobody'"),
                         ([("again", "random"), ("again", "random")], "a pair is listed twice")]:
        with pytest.raises(ClearglassError, match=message):
            compare(three, pairs=bad)


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


def test_plots_draw_the_chance_of_recognition_and_of_zero_shot(results, tmp_path, monkeypatch):
    """1/K per recognition field; 1/labels per zero-shot level, read from the per-item classes or given."""
    from clearglass import report

    drawn = {}
    monkeypatch.setattr(report, "_bar_plot", lambda path, title, groups, by_model, pick, chance:
                        drawn.setdefault(path.stem, (title, groups, chance)))
    paths = report.write_plots(results, tmp_path, "base concepts, test")
    assert [p.stem for p in paths] == ["recognition_i2t", "recognition_t2i", "zero_shot_by_level"]
    title, groups, chance = drawn["recognition_i2t"]
    assert title.endswith("K=3\nbase concepts, test") and chance == {g: 1 / 3 for g in groups}
    assert drawn["zero_shot_by_level"][2] == {"level1": 1 / 6, "level2": 1 / 3}  # 6 things, 3 groups
    drawn.clear()
    merged = {m: {**r, "per_item": {}} for m, r in results.items()}  # merged seeds keep no classes
    report.write_plots(merged, tmp_path, labels={"level1": 4})
    assert drawn["zero_shot_by_level"][2] == {"level1": 0.25}

