"""Named sets of models (``configs/model_sets/<name>.json``) that `clearglass compare --models @NAME` scores in turn:
report name -> model spec, and the models the set stands for that no spec can load."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from clearglass.config import Config
from clearglass.errors import ClearglassError

MODEL_SETS_DIR = Path(__file__).resolve().parent / "configs" / "model_sets"


@dataclass
class ModelSet(Config):
    """``models``: report name -> model spec, in order; ``unavailable``: model -> why no spec loads it."""

    description: str = ""
    models: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    config_dir: ClassVar[Path] = MODEL_SETS_DIR

    def validate(self) -> None:
        """At least one model."""
        if not self.models:
            raise ClearglassError("models: expected at least one report name -> model spec")


def model_set_names() -> list[str]:
    """The shipped model sets, by name."""
    return sorted(p.stem for p in MODEL_SETS_DIR.glob("*.json"))
