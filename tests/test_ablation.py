"""The hierarchy ablation: the variant configs are cumulative and share the budget; `clearglass demo --ablation
--quick` end to end through clearglass.cli.main."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clearglass.cli import main
from clearglass.config import flatten
from clearglass.errors import ClearglassError
from clearglass.experiments.ablation import VARIANTS, AblationOptions, run_ablation, variant_config
from clearglass.report import fmt_pct


def test_variants_add_one_option_each_with_the_same_budget() -> None:
    configs = [flatten(json.loads(variant_config(v).read_text(encoding="utf-8"))) for v in VARIANTS]
    changed = [{k for k in configs[i] if configs[i][k] != configs[i - 1][k]} - {"out"} for i in range(1, len(configs))]
    assert changed[0] == {"model"} and configs[1]["model"] == "clearglass:clearglass-vit-hier"
    assert changed[1] == {"synthetic_negatives.caption", "synthetic_negatives.concepts"}
    assert "loss.kind" in changed[2] and configs[3]["loss.kind"] == "multilevel"
    assert changed[2] <= {"loss.kind", "loss.instance_weight", "loss.level2_weight"}
    for key in ("steps", "lr", "groups_per_batch", "pairs_per_group", "seed", "warmup", "weight_decay"):
        assert len({c[key] for c in configs}) == 1, key


def test_unknown_variant_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ClearglassError, match="unknown ablation variant"):
        run_ablation(tmp_path, AblationOptions(quick=True, variants=["grouped-vit", "dropout"]))


def test_cli_ablation_quick_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ablation"
    assert main(["demo", "--ablation", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["models"] == list(VARIANTS)
    runs = json.loads((out / "ablation.json").read_text(encoding="utf-8"))["runs"]
    assert list(runs) == list(VARIANTS)
    for variant, run in runs.items():
        assert run["config"] == variant_config(variant).name and run["steps"] == 2
        assert Path(run["checkpoint"]).is_file()
    diffs = {(d["model"], d["task"], d["subset"], d["metric"]) for d in results["differences"]}
    for variant in VARIANTS[1:]:
        assert (variant, "recognition", "concept_level1", "i2t_R@1") in diffs
    report = (out / "report.md").read_text(encoding="utf-8")
    row = next(r for r in results["results"]["multilevel"]["metrics"]
               if (r["task"], r["subset"], r["metric"]) == ("recognition", "concept_level1", "i2t_R@1"))
    assert f"{fmt_pct(row['value'])} [{fmt_pct(row['ci_low'])}, {fmt_pct(row['ci_high'])}]" in report
    assert "Quick mode" in report and printed.startswith("| task | subset | metric | n | " + " | ".join(VARIANTS))
    assert all((out / p).is_file() for p in ("recognition_i2t.png", "zero_shot_by_level.png"))


def test_cli_steps_only_with_ablation(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["demo", "--quick", "--steps", "3", "--out", str(tmp_path)]) == 2
    assert "only for --ablation" in capsys.readouterr().err


def test_several_seeds_are_averaged_per_variant(tmp_path: Path) -> None:
    found = run_ablation(tmp_path, AblationOptions(quick=True, seeds=[0, 1], variants=["grouped-vit", "multilevel"]))
    assert found["models"] == ["grouped-vit", "multilevel"]
    assert sorted(found["runs"]) == ["grouped-vit/seed0", "grouped-vit/seed1", "multilevel/seed0", "multilevel/seed1"]
    row = next(r for r in found["results"]["multilevel"]["metrics"]
               if (r["task"], r["subset"], r["metric"]) == ("recognition", "concept_level1", "i2t_R@1"))
    assert row["stat"]["stat"] == "mean" and found["results"]["multilevel"]["seeds"] == 2
    hits = found["results"]["multilevel"]["per_item"]["recognition/concept_level1"]["arrays"]["i2t_R@1_hit"]
    assert set(hits) <= {0.0, 0.5, 1.0} and abs(sum(hits) / len(hits) - row["value"]) < 1e-9


def test_rerun_into_the_same_folder_resumes_and_other_settings_are_refused(tmp_path: Path) -> None:
    options = AblationOptions(quick=True, variants=["grouped-vit", "multilevel"])
    first = run_ablation(tmp_path, options)
    written = {k: Path(v["checkpoint"]).stat().st_mtime_ns for k, v in first["runs"].items()}
    again = run_ablation(tmp_path, options)  # both runs finished: nothing is retrained, the same results
    assert {k: Path(v["checkpoint"]).stat().st_mtime_ns for k, v in again["runs"].items()} == written
    assert again["runs"] == {k: {**v, "train_seconds": again["runs"][k]["train_seconds"]}
                             for k, v in first["runs"].items()}
    assert again["results"] == first["results"]
    with pytest.raises(ClearglassError, match="an earlier run with other settings"):
        run_ablation(tmp_path, AblationOptions(quick=True, variants=["grouped-vit"], steps=3))
