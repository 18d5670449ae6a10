"""The demo's configs, as data (``configs/demo/*.json``, read by the one strict loader): the experiment
(:class:`DemoConfig`), an equal-effort search grid (:class:`SearchGrid`) and the record a search writes.

A model's training config is, merged in this order (:meth:`DemoConfig.train_config`, the one place):
``configs/train/default-grouped.json``, the demo's ``train`` section, the model's own ``train`` section, and the
setting the search record chose for the model's ``family`` (``clip`` or ``clear_glass``); then the demo sets data,
output folder, seed and ``model`` = the demo's ``base``. Every such section is :data:`TrainSettings`: some of
``TrainConfig``'s keys, each checked against its type when the file loads, so a misspelt key is an error naming the
file and the dotted key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar

from clearglass.config import Config, Overrides, check_overrides, merge
from clearglass.errors import ClearglassError
from clearglass.io import json_digest, read_json
from clearglass.train import CONFIG_DIR as TRAIN_CONFIG_DIR
from clearglass.train import TrainConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "demo"
FAMILIES = ("clip", "clear_glass")

TrainSettings = Annotated[dict[str, Any], Overrides(TrainConfig)]
"""Some of ``TrainConfig``'s keys as nested JSON (sections may be partial), checked key by key when loaded and kept
as written: the search record's identity digests them as the file holds them."""


@dataclass
class DemoData(Config):
    """The emoji dataset and its split (see `clearglass.experiments.demo.splits`), and the cross-style set.

    ``holdout_per_group``: test concepts of unseen objects per level2 group; ``novel_test`` / ``novel_val``: novel
    concepts (objects the base knows) for the test and for validation, spread over the groups."""

    subgroups: list[str] | None = None
    images_per_subgroup: int = 30
    image_size: int = 64
    holdout_per_group: int = 2
    novel_test: int = 16
    novel_val: int = 8
    val_fraction: float = 0.2
    seed: int = 0
    cross_style_images: int = 12

    def validate(self) -> None:
        """Sizes >= 1 (cross-style >= 0), 0 < val_fraction < 1."""
        if min(self.images_per_subgroup, self.holdout_per_group, self.novel_test, self.novel_val) < 1 \
                or self.image_size < 16 or self.cross_style_images < 0 or not 0 < self.val_fraction < 1:
            raise ClearglassError(f"data: expected images_per_subgroup, holdout_per_group, novel_test, novel_val "
                                  f">= 1, image_size >= 16, cross_style_images >= 0, 0 < val_fraction < 1; got {self}")


@dataclass
class DemoModel(Config):
    """One trained model of the demo: its loss family (whose search choice it takes) and its own train settings."""

    family: str = "clip"
    train: TrainSettings = field(default_factory=dict)

    def validate(self) -> None:
        """A known family."""
        if self.family not in FAMILIES:
            raise ClearglassError(f"family = {self.family!r}: expected one of {FAMILIES}")


@dataclass
class DemoEval(Config):
    """Evaluation settings shared by every subset; ``gallery_per_kind``: pictures of each test split in report.html."""

    k: int = 5
    n_boot: int = 1000
    seed: int = 0
    gallery_per_kind: int = 24


@dataclass
class DemoConfig(Config):
    """The embedded default experiment: fine-tune ``base`` with each model's settings, evaluate, report.

    ``retention``: also score every model on the base's own held-out item names (``pretrained/<base>/heldout``).
    ``require_unseen_held_out``: the split reads the base's model card: held-out test concepts are drawn from those
    whose emoji its pretraining corpus excluded, novel ones from those it showed, and a concept in between is an
    error; false: any concept may be either kind (a base without a card), and the summary counts what it saw.
    ``search``: the search record (``configs/demo/<name>``) whose chosen settings and WiSE-FT weights the models use;
    null: none (every model uses its settings as written and no interpolation).
    ``validation_every``: every model scores level-1 and level-2 recognition of the seen validation concepts every
    this many steps while it trains (the validation curves of the report's loss plot); 0: never.
    ``keep_fine_tunes``: keep each run's own fine-tune beside the WiSE-FT model made from it (w < 1); false: the
    run's weight file is removed once the interpolated model is written (its metadata and metrics stay), which
    halves the output folder.
    """

    description: str = ""
    base: str = "clearglass-mini"
    retention: bool = True
    require_unseen_held_out: bool = True
    data: DemoData = field(default_factory=DemoData)
    train: TrainSettings = field(default_factory=dict)
    models: dict[str, DemoModel] = field(default_factory=dict)
    baseline: str = "clip"
    method: str = "clear_glass"
    search: str | None = None
    eval: DemoEval = field(default_factory=DemoEval)
    validation_every: int = 0
    keep_fine_tunes: bool = False
    config_dir: ClassVar[Path] = CONFIG_DIR

    def validate(self) -> None:
        """baseline and method are models of the demo, and every model's merged train settings are a valid config."""
        for key in ("baseline", "method"):
            if getattr(self, key) not in self.models:
                raise ClearglassError(f"{key} = {getattr(self, key)!r}: expected one of the models "
                                      f"{sorted(self.models)}")
        for name in self.models:
            self.train_config(name, {}, "data.json", Path("out"), 0)

    def model_settings(self, name: str, chosen: dict) -> dict:
        """Model ``name``'s own train settings with the search's ``chosen`` setting for its family merged over them
        (what ``results.json`` reports under ``models``)."""
        return merge(self.models[name].train, chosen)

    def _shared_train(self) -> dict:
        """The train template with the demo's ``train`` section merged over it."""
        return merge(read_json(TRAIN_CONFIG_DIR / "default-grouped.json", "train config", dict), self.train)

    @property
    def first_seed(self) -> int:
        """The shared train settings' seed: the first of the demo's seeds and the search's seed."""
        return int(self._shared_train().get("seed", TrainConfig.seed))

    def train_config(self, name: str, chosen: dict, data: str, out: Path, seed: int) -> TrainConfig:
        """The training config of model ``name`` with the search's ``chosen`` setting for its family."""
        raw = merge(self._shared_train(), self.model_settings(name, chosen))
        raw.update(data=data, out=str(out / "runs" / f"{name}-seed{seed}"), seed=seed, model=self.base)
        if self.validation_every:
            raw.update(eval_every=self.validation_every, eval_data=str(Path(data).with_name("val_seen.json")),
                       eval_metrics=[f"recognition/concept_level{lv}/i2t_R@1" for lv in (1, 2)])
        return TrainConfig.from_dict(raw, f"demo model {name!r}")

    def identity(self) -> str:
        """A digest of what a search record must have been made with: the base, data, train and model settings,
        whether retention is scored, and the recognition items (``eval.k`` and ``eval.seed``)."""
        raw = self.to_dict()
        return json_digest({**{k: raw[k] for k in ("base", "data", "train", "models", "retention")},
                            "eval": {k: raw["eval"][k] for k in ("k", "seed")}})


@dataclass
class SearchGrid(Config):
    """An equal-effort grid: the same number of settings per family (nested train overrides), each trained once
    and scored on the validation split at every WiSE-FT weight in ``wise_ft``."""

    description: str = ""
    settings: dict[str, list[TrainSettings]] = field(default_factory=dict)
    wise_ft: list[float] = field(default_factory=lambda: [1.0])
    max_retention_drop: float | None = 0.05

    def validate(self) -> None:
        """Both families, with equal numbers of settings; weights in [0, 1]."""
        if sorted(self.settings) != sorted(FAMILIES):
            raise ClearglassError(f"settings: families {sorted(self.settings)}: expected both of {list(FAMILIES)} "
                                  "(equal effort)")
        sizes = {family: len(s) for family, s in self.settings.items()}
        if len(set(sizes.values())) != 1:
            raise ClearglassError(f"settings: every family needs the same number of settings (equal effort), "
                                  f"got {sizes}")
        if not self.wise_ft or not all(0.0 <= w <= 1.0 for w in self.wise_ft):
            raise ClearglassError(f"wise_ft = {self.wise_ft}: expected weights in [0, 1]")


def read_search_record(config: DemoConfig) -> dict | None:
    """The search record the demo config names, checked to have been made for this config's settings, its chosen
    settings checked as :data:`TrainSettings`."""
    if config.search is None:
        return None
    path = CONFIG_DIR / config.search
    record = read_json(path, "search record", dict)
    if record.get("config_identity") != config.identity():
        raise ClearglassError(f"{path}: made for other demo settings (identity {record.get('config_identity')}, this "
                              f"config {config.identity()}); rerun `clearglass demo --search GRID` and copy its "
                              "search.json here")
    for family, chosen in record.get("chosen", {}).items():
        check_overrides(TrainConfig, chosen.get("setting", {}), str(path), f"chosen.{family}.setting")
    return record
