"""One config system: dataclasses read from nested JSON by one strict loader.

* Types come from ``typing.get_type_hints``: bool, int, float (an int is accepted), str, ``Literal[...]``,
  ``X | None``, ``list[X]``, ``dict[str, X]``, ``Any``, nested config dataclasses, and sparse overrides of another
  config (``Annotated[dict[str, Any], Overrides(SomeConfig)]``: some of its keys, each checked against its type).
* Unknown keys and wrong types are a ``ClearglassError`` naming the file and the dotted key, with the closest known
  key ("did you mean").
* Files hold nested JSON; dotted ``key=value`` items are command-line overrides only (:func:`apply_override`), read
  against the field's type: a plain string needs no JSON quotes, and a scalar given for a list key is that list of
  one.
* Each config validates itself in one place, its ``validate()`` method, which runs whenever one is made (also
  in code, through ``__post_init__``); the loader prefixes its message with the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import string
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

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
            apply_override(raw, item, cls)
        return cls.from_dict(raw, str(path))

    def to_dict(self) -> dict:
        """Nested JSON data."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def key_defaults(cls) -> list[tuple[str, str, Any]]:
        """Every dotted key of a default-constructible config with its type (as text) and default value."""
        return _key_defaults(cls(), "")


@dataclass(frozen=True)
class Overrides:
    """The metadata of a field ``Annotated[dict[str, Any], Overrides(SomeConfig)]``: nested JSON holding some of
    ``SomeConfig``'s keys (sections may be partial), such as a config's settings for another config it makes. The
    loader checks every key and the type of every value; ``validate()`` runs when the whole config is made. The
    dict stays as written (``to_dict`` and digests see the file's keys and values)."""

    config: type


def _key_defaults(config: Any, prefix: str) -> list[tuple[str, str, Any]]:
    hints = typing.get_type_hints(type(config))
    out = []
    for f in dataclasses.fields(config):
        if not f.init:
            continue
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out += _key_defaults(value, f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, _describe(hints[f.name]), value))
    return out


def suggestion(key: str, known: list[str]) -> str:
    """"did you mean 'steps'?" for dotted ``key`` (difflib's closest of the ``known`` keys of its section), else
    the known keys."""
    *parents, last = key.split(".")
    close = difflib.get_close_matches(last, known, n=1)
    return f"did you mean {'.'.join([*parents, close[0]])!r}?" if close else f"expected one of {known}"


MAX_SEED = 2**63  # torch.manual_seed and numpy's generators take any seed from 0 to below it


def one_blank_field(template: str) -> bool:
    """Whether a format template has exactly one replacement field, a bare ``{}`` (no name, attribute, index,
    conversion or format spec: ``{.__class__.__doc__}`` would print a docstring)."""
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                  if name is not None]
    except ValueError:  # a lone { or }
        return False
    return fields == [("", "", None)]


def _options(annotation: Any) -> tuple:
    """The members of a union annotation, or the annotation alone."""
    return typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else (annotation,)


def _dataclass_of(annotation: Any) -> type | None:
    """The config dataclass an annotation holds (``X`` or ``X | None``), else None."""
    return next((a for a in _options(annotation) if dataclasses.is_dataclass(a)), None)


def _key_annotation(cls: type, key: str, item: str) -> Any:
    """The annotation of dotted ``key`` in config class ``cls`` (``Any`` below a dict or ``Any`` field); an unknown
    key is an error naming the closest known key."""
    annotation: Any = cls
    parts = key.split(".")
    i = 0
    while i < len(parts):
        section = _dataclass_of(annotation)
        if section is None:
            if annotation is Any:
                return Any
            if typing.get_origin(annotation) is dict:  # the part is a free key of the dict, then its value type
                annotation, i = typing.get_args(annotation)[1], i + 1
                continue
            raise ClearglassError(f"override {item!r}: {'.'.join(parts[:i])!r} is a value, not a section")
        names = [f.name for f in dataclasses.fields(section) if f.init]
        if parts[i] not in names:
            key_so_far = ".".join(parts[:i + 1])
            raise ClearglassError(f"override {item!r}: unknown key {key_so_far!r}; {suggestion(key_so_far, names)}")
        annotation, i = _unwrap(typing.get_type_hints(section, include_extras=True)[parts[i]]), i + 1
    return annotation


def _overrides_of(annotation: Any) -> type | None:
    """The config class of an ``Overrides`` field, else None."""
    if typing.get_origin(annotation) is not Annotated:
        return None
    return next((m.config for m in annotation.__metadata__ if isinstance(m, Overrides)), None)


def _unwrap(annotation: Any) -> Any:
    """The config class of an ``Overrides`` field (its keys are that config's), the type of another ``Annotated``
    field, else the annotation itself."""
    if typing.get_origin(annotation) is not Annotated:
        return annotation
    return _overrides_of(annotation) or typing.get_args(annotation)[0]


def _fits(value: Any, annotation: Any) -> bool:
    try:
        _coerce(value, annotation, "", "")
    except ClearglassError:
        return False
    return True


def _override_value(text: str, annotation: Any) -> Any:
    """The value of an override's text for a field of type ``annotation``: its JSON literal, else the text itself;
    a scalar for a list field becomes a list of one; what fits no reading stays the JSON literal (in a list for a
    list field), whose type error the loader names."""
    try:
        parsed = json.loads(text)
    except ValueError:  # not JSON, or a number over Python's digit limit
        parsed = text
    readings, fallback = [parsed, text], parsed
    if any(typing.get_origin(a) is list for a in _options(annotation)) and parsed is not None \
            and not isinstance(parsed, (list, dict)):
        readings, fallback = [*readings, [parsed], [text]], [parsed]
    return next((v for v in readings if _fits(v, annotation)), fallback)


def apply_override(raw: dict, item: str, cls: type) -> None:
    """Set ``a.b=value`` in nested dict ``raw`` of config class ``cls``, the value read for the key's type
    (:func:`_override_value`); an unknown key names the closest known one."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ClearglassError(f"override {item!r}: expected key=value, e.g. loss.alpha=0.5")
    value = _override_value(text, _key_annotation(cls, key, item))
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
    hints = _checked_keys(cls, raw, source, prefix)
    kwargs = {name: _coerce(raw[name], hints[name], source, f"{prefix}{name}") for name in hints if name in raw}
    try:
        return cls(**kwargs)
    except ClearglassError as e:  # validate() names the key inside its own section
        raise ClearglassError(f"{source}: {prefix}{e}") from None


def _checked_keys(cls: type, raw: dict, source: str, prefix: str) -> dict[str, Any]:
    """The type hints of config class ``cls`` by field name, once every key of ``raw`` is known to be one."""
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ClearglassError(f"{source}: unknown key(s) {[prefix + k for k in unknown]}; "
                              f"{suggestion(prefix + unknown[0], names)}")
    return {name: hints[name] for name in names}


def check_overrides(cls: type, raw: Any, source: str, key: str) -> dict:
    """Sparse nested JSON ``raw`` of config class ``cls`` checked key by key (see :class:`Overrides`); returned as
    written."""
    if not isinstance(raw, dict):
        raise _type_error(raw, dict, source, key)
    prefix = f"{key}." if key else ""
    for name, annotation in _checked_keys(cls, raw, source, prefix).items():
        if name not in raw:
            continue
        section = _dataclass_of(annotation)
        if section is not None and isinstance(raw[name], dict):
            check_overrides(section, raw[name], source, prefix + name)
        else:
            _coerce(raw[name], annotation, source, prefix + name)
    return raw


def _describe(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if not typing.get_args(annotation) else None
    return text or str(annotation).replace("typing.", "")


def _coerce(value: Any, annotation: Any, source: str, key: str) -> Any:
    """``value`` checked against ``annotation`` (and converted: int -> float, nested dicts -> dataclasses)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin is Annotated:
        config = _overrides_of(annotation)
        return check_overrides(config, value, source, key) if config else _coerce(value, args[0], source, key)
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


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as its dotted keys: ``{"loss": {"tau": 0.1}}`` -> ``{"loss.tau": 0.1}``."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
