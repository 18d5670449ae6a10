"""The demo's configs: strict loading, the merged training config of each model, equal-effort grids, and search
records that must match the config they are used with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clearglass.errors import ClearglassError
from clearglass.experiments.demo import config as demo_config
from clearglass.experiments.demo.config import DemoConfig, SearchGrid, read_search_record


def test_shipped_demo_configs_load_and_merge_the_model_settings() -> None:
    for name in ("default", "quick", "scratch"):
        config = DemoConfig.load(name)
        assert config.baseline in config.models and config.method in config.models
    config = DemoConfig.load("default")
    train = config.train_config("clear_glass", {"lr": 0.002, "lock": {"lock_image": True}}, "d.json", Path("o"), 3)
    assert train.model == "clearglass-mini" and train.seed == 3 and train.data == "d.json"
    assert train.loss.kind == "grouped" and train.groups_per_batch == 10 and train.pairs_per_group == 4
    assert train.lr == 0.002 and train.lock.lock_image and train.lock.lock_text  # the chosen setting merges last
    assert train.out == str(Path("o") / "runs" / "clear_glass-seed3")
    clip = config.train_config("clip_frozen_text", {}, "d.json", Path("o"), 0)
    assert clip.loss.kind == "clip" and clip.lock.lock_text_projection and clip.steps == train.steps


def test_bad_demo_configs_name_the_file_and_key(tmp_path: Path) -> None:
    raw = json.loads((demo_config.CONFIG_DIR / "quick.json").read_text(encoding="utf-8"))
    for change, message in [({"nonsense": 1}, r"unknown key\(s\) \['nonsense'\]"),
                            ({"baseline": "nope"}, "baseline = 'nope'"),
                            ({"models": {"clip": {"family": "other"}}}, "family = 'other'"),
                            ({"data": {"val_fraction": 2}}, "val_fraction"),
                            ({"train": {"lr": -1}}, "lr = -1")]:
        path = tmp_path / "bad.json"
        bad = {**raw, **change}
        if "models" in change:
            bad["models"] = {**raw["models"], **change["models"]}
        path.write_text(json.dumps(bad))
        with pytest.raises(ClearglassError, match=message) as err:
            DemoConfig.load(path)
        assert "bad.json" in str(err.value) or "demo model" in str(err.value)


def test_a_misspelt_train_key_names_the_file_and_the_dotted_key(tmp_path: Path) -> None:
    raw = json.loads((demo_config.CONFIG_DIR / "quick.json").read_text(encoding="utf-8"))
    path = tmp_path / "bad.json"
    for section, message in [
            (lambda r: r["models"]["clear_glass"]["train"]["loss"],
             r"\['models\.clear_glass\.train\.loss\.alhpa'\]; did you mean 'models\.clear_glass\.train\.loss\.alpha'"),
            (lambda r: r["train"]["lock"], r"\['train\.lock\.alhpa'\]")]:
        bad = json.loads(json.dumps(raw))
        section(bad)["alhpa"] = 0.5
        path.write_text(json.dumps(bad))
        with pytest.raises(ClearglassError, match=r"bad\.json: unknown key\(s\) " + message):
            DemoConfig.load(path)
    bad = json.loads(json.dumps(raw))
    bad["models"]["clip"]["train"]["steps"] = "many"
    path.write_text(json.dumps(bad))
    with pytest.raises(ClearglassError, match=r"bad\.json: models\.clip\.train\.steps = 'many': expected int"):
        DemoConfig.load(path)
    grid = {"settings": {"clip": [{"lr": 1e-3}], "clear_glass": [{"lrr": 1e-3}]}}
    path.write_text(json.dumps(grid))
    with pytest.raises(ClearglassError, match=r"\['settings\.clear_glass\[0\]\.lrr'\]; did you mean"):
        SearchGrid.load(path)


def test_the_shipped_search_record_matches_the_default_config_and_reports_its_settings() -> None:
    """Typing the train settings keeps them as written: the identity the shipped record was made for is unchanged,
    and results.json's ``models`` settings are the model's own merged with the chosen one."""
    config = DemoConfig.load("default")
    record = read_search_record(config)
    assert sorted(record["chosen"]) == ["clear_glass", "clip"]
    chosen = record["chosen"]["clip"]["setting"]
    assert config.model_settings("clip", chosen) == {**config.models["clip"].train, **chosen}
    assert config.first_seed == config.train["seed"] == 0


def test_search_grids_need_equal_effort(tmp_path: Path) -> None:
    with pytest.raises(ClearglassError, match="same number of settings"):
        SearchGrid(settings={"clip": [{"lr": 1e-3}], "clear_glass": [{"lr": 1e-3}, {"lr": 3e-3}]})
    with pytest.raises(ClearglassError, match="families"):
        SearchGrid(settings={"nope": [{}]})
    with pytest.raises(ClearglassError, match="expected both"):
        SearchGrid(settings={"clip": [{}]})  # one family alone is no comparison
    with pytest.raises(ClearglassError, match="wise_ft"):
        SearchGrid(settings={"clip": [{}], "clear_glass": [{}]}, wise_ft=[1.5])


def test_a_search_record_of_other_settings_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_config, "CONFIG_DIR", tmp_path)
    config = DemoConfig.load(Path(__file__).resolve().parents[1] / "src/clearglass/configs/demo/quick.json")
    config.search = "rec.json"
    (tmp_path / "rec.json").write_text(json.dumps({"config_identity": config.identity(), "chosen": {}}))
    assert read_search_record(config)["chosen"] == {}
    (tmp_path / "rec.json").write_text(json.dumps({"config_identity": config.identity(),
                                                   "chosen": {"clip": {"setting": {"lrr": 1}, "wise_ft": 1.0}}}))
    with pytest.raises(ClearglassError, match=r"rec\.json: unknown key\(s\) \['chosen\.clip\.setting\.lrr'\]"):
        read_search_record(config)
    for change in ("steps", "k", "retention"):
        changed = DemoConfig.load(Path(__file__).resolve().parents[1] / "src/clearglass/configs/demo/quick.json")
        changed.search = "rec.json"
        if change == "steps":
            changed.train["steps"] = 99
        elif change == "k":
            changed.eval.k = 3  # other recognition distractors behind every search score
        else:
            changed.retention = False  # the retention rule would not filter the rows
        with pytest.raises(ClearglassError, match="made for other demo settings"):
            read_search_record(changed)
