"""One config system: dataclasses read from nested JSON by one strict loader.

* Types come from ``typing.get_type_hints``: bool, int, float (an int is accepted), str, ``Literal[...]``,
  ``X | None``, ``list[X]``, ``dict[str, X]``, ``Any`` and nested config dataclasses.
* Unknown keys and wrong types are a ``ClearglassError`` naming the file and the dotted key.
* Files hold nested JSON; dotted ``key=value`` items are command-line overrides only (:func:`apply_override`).
* Each config validates itself in one place, its ``validate()`` method, which runs whenever one is made (also
  in code, through ``__post_init__``); the loader prefixes its message with the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from clearglass.errors import ClearglassError
from clearglass.io import read_json

T = TypeVar("T", bound="Config")


class Config:
    """Mixin of every config dataclass: strict loading, overrides, nested-JSON round trip, one ``validate``.
    ``config_dir`` (a class attribute) is where bare config names are looked up."""

    config_dir: ClassVar[Path | None] = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ClearglassError when values are out of range (types are already checked); default: nothing."""

    @classmethod
    def from_dict(cls: type[T], raw: Any, source: str = "<dict>") -> T:
        """Build from nested JSON data; unknown keys, wrong types and invalid values name ``source`` and the key."""
        return _build(cls, raw, source, "")

    @classmethod
    def load(cls: type[T], path: str | os.PathLike, overrides: list[str] | None = None) -> T:
        """Read a JSON file (a bare name means ``config_dir/<name>.json``) and apply ``a.b=value`` overrides."""
        path, search_dir = Path(path), cls.config_dir
        if search_dir is not None and not path.is_file():
            named = search_dir / f"{path.name.removesuffix('.json')}.json"
            if named.is_file():
                path = named
            elif path.suffix != ".json" and len(path.parts) == 1:
                known = sorted(p.stem for p in search_dir.glob("*.json"))
                raise ClearglassError(f"config {str(path)!r}: no such file, and not one of {known}")
        raw = read_json(path, f"{cls.__name__} file", dict)
        for item in overrides or []:
            apply_override(raw, item)
        return cls.from_dict(raw, str(path))

    def to_dict(self) -> dict:
        """Nested JSON data."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def apply_override(raw: dict, item: str) -> None:
    """Set ``a.b=value`` in nested dict ``raw``; value is a JSON literal, or a plain string when it is not one."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ClearglassError(f"override {item!r}: expected key=value, e.g. loss.alpha=0.5")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    *parents, last = key.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ClearglassError(f"override {item!r}: {p!r} is not a section")
    node[last] = value


def merge(base: dict, update: dict) -> dict:
    """A deep copy of nested dict ``base`` with ``update`` merged in (sections merge, values replace)."""
    out = json.loads(json.dumps(base))
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else json.loads(json.dumps(value))
    return out


def _build(cls: type, raw: Any, source: str, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ClearglassError(f"{source}: {prefix.rstrip('.') or 'config'}: expected an object, got "
                              f"{type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ClearglassError(f"{source}: unknown key(s) {[prefix + k for k in unknown]}: expected some of {names}")
    kwargs = {name: _coerce(raw[name], hints[name], source, f"{prefix}{name}") for name in names if name in raw}
    try:
        return cls(**kwargs)
    except ClearglassError as e:  # validate() names the key inside its own section
        raise ClearglassError(f"{source}: {prefix}{e}") from None


def _describe(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if not typing.get_args(annotation) else None
    return text or str(annotation).replace("typing.", "")


def _coerce(value: Any, annotation: Any, source: str, key: str) -> Any:
    """``value`` checked against ``annotation`` (and converted: int -> float, nested dicts -> dataclasses)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, source, key)
            except ClearglassError:
                continue
        raise _type_error(value, annotation, source, key)
    if origin is Literal:
        if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args):
            raise ClearglassError(f"{source}: {key} = {value!r}: expected one of {list(args)}")
        return value
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, source, f"{key}.")
    if origin is list:
        if not isinstance(value, list):
            raise _type_error(value, annotation, source, key)
        return [_coerce(v, args[0], source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(value, annotation, source, key)
        return {k: _coerce(v, args[1], source, f"{key}.{k}") for k, v in value.items()}
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ClearglassError(f"{source}: {key} = {value!r}: expected a finite number")
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    else:
        raise ClearglassError(f"{source}: {key}: unsupported config type {_describe(annotation)}")
    raise _type_error(value, annotation, source, key)


def _type_error(value: Any, annotation: Any, source: str, key: str) -> ClearglassError:
    return ClearglassError(f"{source}: {key} = {value!r}: expected {_describe(annotation)}")
