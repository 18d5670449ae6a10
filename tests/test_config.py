"""The one config loader: overrides read against the field's type, unknown keys with a suggestion, the key list."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest

from clearglass.config import Config, Overrides
from clearglass.errors import ClearglassError
from clearglass.train import TrainConfig


@dataclass
class Inner(Config):
    alpha: float = 0.5
    names: list[str] = field(default_factory=list)


@dataclass
class Outer(Config):
    steps: int = 3
    label: str = ""
    maybe: str | None = "x"
    loggers: list[Literal["tensorboard", "wandb"]] = field(default_factory=list)
    numbers: list[int] | None = None
    inner: Inner = field(default_factory=Inner)
    by_name: dict[str, Inner] = field(default_factory=dict)
    free: dict[str, Any] = field(default_factory=dict)


def load(tmp_path: Path, *overrides: str, raw: dict | None = None) -> Outer:
    path = tmp_path / "outer.json"
    path.write_text(json.dumps(raw or {}))
    return Outer.load(path, list(overrides))


def test_override_values_are_read_for_the_fields_type(tmp_path):
    c = load(tmp_path, "label=hello world", "maybe=null", "loggers=tensorboard", "numbers=7", "inner.names=a/b",
             "by_name.first.alpha=2", "free.anything=[1, 2]", "steps=10")
    assert (c.label, c.maybe, c.loggers, c.numbers, c.inner.names, c.steps) == (
        "hello world", None, ["tensorboard"], [7], ["a/b"], 10)
    assert c.by_name == {"first": Inner(alpha=2.0)} and c.free == {"anything": [1, 2]}
    # JSON still works, and text that reads as a number is the string a str field asks for
    c = load(tmp_path, 'loggers=["tensorboard", "wandb"]', "label=2024", 'maybe="null"', "numbers=[1,2]")
    assert (c.loggers, c.label, c.maybe, c.numbers) == (["tensorboard", "wandb"], "2024", "null", [1, 2])


@pytest.mark.parametrize("item, message", [
    ("stpes=10", "override 'stpes=10': unknown key 'stpes'; did you mean 'steps'?"),
    ("inner.alpah=1", "override 'inner.alpah=1': unknown key 'inner.alpah'; did you mean 'inner.alpha'?"),
    ("by_name.x.nmaes=[]", "unknown key 'by_name.x.nmaes'; did you mean 'by_name.x.names'?"),
    ("zzz=1", "unknown key 'zzz'; expected one of ['steps', 'label'"),
    ("steps.x=1", "'steps' is a value, not a section"),
    ("loggers=mlflow", "outer.json: loggers[0] = 'mlflow': expected one of ['tensorboard', 'wandb']"),
    ("steps=many", "outer.json: steps = 'many': expected int"),
])
def test_bad_overrides_name_the_key(tmp_path, item, message):
    with pytest.raises(ClearglassError) as e:
        load(tmp_path, item)
    assert message in str(e.value)
    if "unknown key" in message:
        assert "outer.json" not in str(e.value)  # the key is to blame, not the file


def test_an_unknown_key_in_a_file_names_the_file_and_the_closest_key(tmp_path):
    with pytest.raises(ClearglassError, match=r"outer\.json: unknown key\(s\) \['inner\.alhpa'\]; did you mean "
                                              r"'inner\.alpha'\?"):
        load(tmp_path, raw={"inner": {"alhpa": 1}})


def test_key_defaults_list_every_key_of_the_nested_json_with_its_default():
    def flat(raw: dict, prefix: str = "") -> dict:  # TrainConfig has no dict fields: every dict is a section
        out = {}
        for key, value in raw.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
        return out

    listed = {key: default for key, _, default in TrainConfig.key_defaults()}
    assert listed == flat(TrainConfig().to_dict()) and len(listed) > 50
    kinds = {key: kind for key, kind, _ in TrainConfig.key_defaults()}
    assert kinds["steps"] == "int" and kinds["lock.lock_image_unlocked_layers"] == "int"
    assert "tensorboard" in kinds["report_to"]


def test_a_value_that_fits_no_reading_is_reported_as_typed(tmp_path):
    with pytest.raises(ClearglassError, match=r"steps = 1\.5: expected int"):
        load(tmp_path, "steps=1.5")


@dataclass
class Maker(Config):
    """A config holding sparse settings for another config it makes (as the demo holds TrainConfig's)."""

    settings: Annotated[dict[str, Any], Overrides(Outer)] = field(default_factory=dict)
    grid: list[Annotated[dict[str, Any], Overrides(Outer)]] = field(default_factory=list)


def test_overrides_of_another_config_are_checked_key_by_key_and_kept_as_written(tmp_path):
    raw = {"settings": {"steps": 4, "inner": {"alpha": 1}}, "grid": [{}, {"inner": {"names": ["a"]}}]}
    path = tmp_path / "maker.json"
    path.write_text(json.dumps(raw))
    maker = Maker.load(path, ["settings.inner.names=x"])
    assert maker.settings == {"steps": 4, "inner": {"alpha": 1, "names": ["x"]}}  # partial sections, 1 stays an int
    assert isinstance(maker.settings["inner"]["alpha"], int) and maker.to_dict()["grid"] == raw["grid"]
    for bad, message in [({"settings": {"inner": {"alhpa": 1}}},
                          r"maker\.json: unknown key\(s\) \['settings\.inner\.alhpa'\]; did you mean "
                          r"'settings\.inner\.alpha'\?"),
                         ({"grid": [{"stpes": 1}]}, r"unknown key\(s\) \['grid\[0\]\.stpes'\]"),
                         ({"settings": {"steps": "many"}}, r"maker\.json: settings\.steps = 'many': expected int"),
                         ({"settings": {"inner": 3}}, r"settings\.inner: expected an object, got int"),
                         ({"settings": []}, r"settings = \[\]: expected dict")]:
        path.write_text(json.dumps(bad))
        with pytest.raises(ClearglassError, match=message):
            Maker.load(path)
    with pytest.raises(ClearglassError, match=r"unknown key 'settings\.inner\.alpah'; did you mean "
                                              r"'settings\.inner\.alpha'\?"):
        Maker.load(tmp_path / "maker.json", ["settings.inner.alpah=1"])
