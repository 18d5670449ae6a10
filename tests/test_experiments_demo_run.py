"""`clearglass demo --quick` end to end through clearglass.cli.main: every artefact is present and parses, the report
leads with the targets and its headline numbers are the JSON's; and a tiny equal-effort search writes a record."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clearglass.checkpoints import metadata_path
from clearglass.cli import main
from clearglass.errors import ClearglassError
from clearglass.experiments.demo.config import DemoConfig
from clearglass.experiments.demo.report import HEADLINE
from clearglass.report import fmt_pct


def _cells(text: str, label: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")[1:]]


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "out"
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["demo", "--out", str(out), "--quick"]) == 0
    return out, printed.getvalue()


def test_every_artefact_is_present_and_parses(quick_demo: tuple[Path, str]) -> None:
    out, _ = quick_demo
    config = DemoConfig.load("quick")
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    models = ["base", *config.models]
    assert set(results["comparisons"]) >= {"harmonic_mean", "test_seen", "test_novel", "test_held_out", "val_seen",
                                           "val_novel", "cross_seen", "cross_novel", "cross_held_out",
                                           "retention_val", "retention_test"}
    hm = results["comparisons"]["harmonic_mean"]["results"]["clear_glass"]["metrics"][0]
    seen, novel = (next(r for r in results["comparisons"][s]["results"]["clear_glass"]["metrics"]
                        if (r["task"], r["subset"], r["metric"]) == ("recognition", "concept_level1", "i2t_R@1"))
                   for s in ("test_seen", "test_novel"))
    assert (hm["base"], hm["novel"]) == (seen["value"], novel["value"])  # of the reported subsets' values
    for subset, comp in results["comparisons"].items():
        assert comp["models"] == ["base", config.baseline, config.method, *[m for m in config.models
                                                                          if m not in (config.baseline, config.method)]]
        assert set(comp["results"]) == set(models)
        assert {d["model"] for d in comp["differences"]} == set(models) - {config.baseline}
        for model in models:
            for r in comp["results"][model]["metrics"]:
                assert 0.0 <= r["ci_low"] <= r["value"] <= r["ci_high"] <= 1.0, (subset, model, r)
    keys = {(r["task"], r["subset"], r["metric"])
            for r in results["comparisons"]["test_seen"]["results"]["base"]["metrics"]}
    assert {("recognition", "concept_level1", "i2t_R@1"), ("zero_shot", "level2", "top1"),
            ("retrieval", "old_captions", "i2t_R@1"), ("image_clustering", "level1", "centroid_acc")} <= keys
    for png in results["plots"]:
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[0] > 100
    for name in config.models:
        path = Path(results["checkpoints"][name][0])
        assert path.is_file() and metadata_path(path).is_file()
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert state and all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") >= 8 and "http://" not in html.replace("http://www.w3.org", "")
    assert [g["target"] for g in results["targets"]] and len(results["targets"]) == 5
    assert not list((out / "runs").rglob("*.extra.pt"))  # finished demo runs keep no resume state


def test_the_report_leads_with_the_targets_and_quotes_the_json(quick_demo: tuple[Path, str]) -> None:
    out, printed = quick_demo
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    report = (out / "report.md").read_text(encoding="utf-8")
    lines = report.splitlines()
    assert lines[2].startswith("**Targets**")
    target_lines = [ln for ln in lines if ln.startswith(("- MET", "- MISSED", "- NOT MEASURED"))]
    assert len(target_lines) == len(results["targets"]) == 5
    for goal, line in zip(results["targets"], target_lines):
        assert goal["measured"] and line == f"- {'MET' if goal['met'] else 'MISSED'}: {goal['target']}"
    header = next(ln for ln in lines if ln.startswith("| measure |"))
    names = [c.strip() for c in header.strip("|").split("|")[1:]]
    for subset, task, tsub, metric, label in HEADLINE:
        cells = _cells(report, label)
        assert cells == _cells(printed, label)
        for name, cell in zip(names, cells):
            if name in results["comparisons"][subset]["results"]:
                row = next(r for r in results["comparisons"][subset]["results"][name]["metrics"]
                           if (r["task"], r["subset"], r["metric"]) == (task, tsub, metric))
                assert cell == f"{fmt_pct(row['value'])} [{fmt_pct(row['ci_low'])}, {fmt_pct(row['ci_high'])}]"
        d = next(d for d in results["comparisons"][subset]["differences"]
                 if (d["model"], d["task"], d["subset"], d["metric"]) == ("clear_glass", task, tsub, metric))
        assert cells[-2] == f"{fmt_pct(d['value'], True)} [{fmt_pct(d['ci_low'], True)}, {fmt_pct(d['ci_high'], True)}]"
    for png in results["plots"]:
        assert re.search(re.escape(Path(png).relative_to(out).as_posix()), report)


def test_a_tiny_search_records_every_row_and_its_choice(tmp_path: Path) -> None:
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"description": "d",
                                "settings": {"clip": [{"lr": 0.001}], "clear_glass": [{"lr": 0.001}]},
                                "wise_ft": [0.5, 1.0]}))
    assert main(["demo", "--quick", "--search", str(grid), "--out", str(tmp_path / "s")]) == 0
    record = json.loads((tmp_path / "s" / "search.json").read_text(encoding="utf-8"))
    rows = [json.loads(ln) for ln in (tmp_path / "s" / "search.jsonl").read_text(encoding="utf-8").splitlines()]
    assert record["results"] == rows and len(rows) == 4
    assert {(r["family"], r["wise_ft"]) for r in rows} == {(f, w) for f in ("clip", "clear_glass") for w in (0.5, 1.0)}
    for family, chosen in record["chosen"].items():
        best = max((r for r in rows if r["family"] == family), key=lambda r: r["score"])
        assert chosen["score"] <= best["score"] and chosen["setting"] == {"lr": 0.001}
    assert record["config_identity"] == DemoConfig.load("quick").identity()
    assert main(["demo", "--quick", "--search", str(grid), "--out", str(tmp_path / "s")]) == 0  # again, same folder
    again = (tmp_path / "s" / "search.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(ln) for ln in again] == json.loads((tmp_path / "s" / "search.json").read_text())["results"]
    assert len(again) == 4
    grid.write_text(json.dumps({"description": "d", "settings": {"clip": [{}], "clear_glass": [{}, {}]}}))
    assert main(["demo", "--quick", "--search", str(grid), "--out", str(tmp_path / "t")]) == 2


def test_several_seeds_compare_with_the_single_base_result() -> None:
    """Seeds are merged per item for every model; the base (one result: nothing trains it) enters the same way."""
    from clearglass.experiments.demo.run import compare_models

    def res(name: str, ranks: list[int]) -> dict:
        spec = {"stat": "hit", "array": "i2t_rank", "k": 1}
        return {"model": name, "test_set_hash": "t", "config": {"n_boot": 50, "seed": 0, "ci_level": 0.95},
                "metrics": [{"task": "recognition", "subset": "concept_level1", "metric": "i2t_R@1",
                             "value": float(np.mean(np.array(ranks) < 1)), "ci_low": 0.0, "ci_high": 1.0, "n": 4,
                             "unit": "recognition/concept_level1/i2t_rank", "stat": spec}],
                "per_item": {"recognition/concept_level1": {"items_hash": "h", "arrays": {"i2t_rank": ranks}}}}

    per_model = {"base": [{"test_seen": res("base", [1, 1, 0, 1])}],
                 "clip": [{"test_seen": res("clip", r)} for r in ([0, 1, 1, 1], [0, 1, 0, 1], [1, 1, 1, 1])],
                 "cg": [{"test_seen": res("cg", r)} for r in ([0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 1, 1])]}
    comp = compare_models(per_model, "clip", "cg", seeds=3)["test_seen"]
    assert comp["models"] == ["base", "clip", "cg"]
    values = {m: comp["results"][m]["metrics"][0]["value"] for m in comp["models"]}
    assert values == pytest.approx({"base": 0.25, "clip": 3 / 12, "cg": 7 / 12})  # per-item mean hits over seeds
    diffs = {(d["model"], d["baseline"]): d["value"] for d in comp["differences"] + comp["vs_base"]}
    assert diffs[("cg", "clip")] == pytest.approx(4 / 12) and diffs[("cg", "base")] == pytest.approx(4 / 12)


@pytest.mark.parametrize("keep", [False, True])
def test_a_wise_ft_model_is_written_and_the_raw_fine_tune_kept_only_when_asked(
        quick_demo: tuple[Path, str], tmp_path: Path, keep: bool) -> None:
    """w < 1: the interpolated model is a loadable slim checkpoint equal to (1 - w) * base + w * fine-tune; the run's
    own weight file goes unless keep_fine_tunes (its metadata stays either way)."""
    import shutil

    from clearglass.experiments.demo.run import effective_settings, final_model
    from clearglass.interpolate import interpolate
    from clearglass.models import load_model

    out, _ = quick_demo
    config = DemoConfig.load("quick")
    config.keep_fine_tunes = keep
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    raw = tmp_path / "run" / "step.pt"
    raw.parent.mkdir()
    shutil.copy(results["training"]["clip"][0]["checkpoint"], raw)
    shutil.copy(metadata_path(results["training"]["clip"][0]["checkpoint"]), metadata_path(raw))
    expected = interpolate(load_model(config.base), load_model(str(raw)), 0.5).model.state_dict()
    record = {"chosen": {"clip": {"setting": {"lr": 0.002}, "wise_ft": 0.5},
                         "clear_glass": {"setting": {}, "wise_ft": 1.0}}}
    final = final_model(config, "clip", record, str(raw), tmp_path / "final" / "clip.pt")
    got = load_model(str(final)).model.state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert raw.is_file() == keep and metadata_path(raw).is_file()
    meta = json.loads(metadata_path(final).read_text(encoding="utf-8"))
    assert meta["train_config"]["wise_ft"] == {"base": config.base, "fine_tuned": str(raw), "w": 0.5,
                                               "fine_tuned_kept": keep}
    settings = effective_settings(config, record)
    assert settings["clip"]["train"]["lr"] == 0.002 and settings["clip"]["wise_ft"] == 0.5
    assert settings["clear_glass"]["wise_ft"] == 1.0


def test_the_set_up_quotes_the_settings_each_model_ran_with(quick_demo: tuple[Path, str]) -> None:
    out, _ = quick_demo
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    report = (out / "report.md").read_text(encoding="utf-8")
    for name, settings in results["models"].items():
        assert f"`{name}` ({settings['family']}, WiSE-FT w {settings['wise_ft']:g}): {json.dumps(settings['train'])}" \
            in report
    assert results["base_untrained"] is False and "(untrained" not in report
    from clearglass.experiments.demo.report import _setup  # a scratch base is said to be untrained

    assert "Base: `clearglass-mini` (untrained: random weights" in _setup({**results, "base_untrained": True})


def test_choose_keeps_retention_when_any_row_does() -> None:
    """The best score among rows whose retention fell by at most max_drop; the best overall, flagged, when none."""
    from clearglass.experiments.demo.search import RETENTION_METRIC, choose

    def r(family: str, lr: float, w: float, score: float, retention: float) -> dict:
        return {"family": family, "setting": {"lr": lr}, "wise_ft": w, "score": score,
                "scores": {"/".join(RETENTION_METRIC): retention}}

    rows = [r("clip", 1e-3, 1.0, 0.60, 0.10), r("clip", 1e-3, 0.5, 0.50, 0.24), r("clip", 1e-4, 1.0, 0.55, 0.20),
            r("clear_glass", 1e-3, 1.0, 0.70, 0.05), r("clear_glass", 1e-4, 1.0, 0.65, 0.06)]
    assert choose(rows, "clip", 0.26, 0.05) == {"setting": {"lr": 1e-3}, "wise_ft": 0.5, "score": 0.50,
                                                "retention_kept": True}
    assert choose(rows, "clip", 0.26, None)["score"] == 0.60  # no rule: the best score
    assert choose(rows, "clear_glass", 0.26, 0.05) == {"setting": {"lr": 1e-3}, "wise_ft": 1.0, "score": 0.70,
                                                       "retention_kept": False}


def test_publish_copies_the_report_with_its_relative_links(quick_demo: tuple[Path, str], tmp_path: Path) -> None:
    from clearglass.experiments.demo.report import publish

    out, _ = quick_demo
    dest = publish(out, tmp_path / "docs")
    report = (dest / "report.md").read_text(encoding="utf-8")
    for link in re.findall(r"\]\((plots/[^)]+)\)", report):
        assert (dest / link).is_file(), link
    assert json.loads((dest / "results.json").read_text()) == json.loads((out / "results.json").read_text())
    assert not (dest / "checkpoints").exists() and not (dest / "runs").exists()
    with pytest.raises(ClearglassError, match="publish copies a finished demo"):
        publish(tmp_path / "nothing", tmp_path / "x")


def test_only_some_models_may_be_trained_but_never_without_the_baseline_and_method() -> None:
    from clearglass.experiments.demo.run import chosen_models

    config = DemoConfig.load("default")
    assert chosen_models(config, None) == list(config.models)
    assert chosen_models(config, ["clip", "clear_glass"]) == ["clip", "clear_glass"]
    with pytest.raises(ClearglassError, match=r"must include the baseline and the method \['clear_glass'\]"):
        chosen_models(config, ["clip"])
    with pytest.raises(ClearglassError, match=r"no model \['nope'\]"):
        chosen_models(config, ["clip", "clear_glass", "nope"])
