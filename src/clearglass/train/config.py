"""The training config: nested JSON data (``configs/train/*.json``) read by the one strict loader of
`clearglass.config`; ``a.b=value`` overrides on the command line."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from clearglass.config import MAX_SEED, Config
from clearglass.errors import ClearglassError
from clearglass.hard_negatives import SyntheticNegativesConfig
from clearglass.io import DEFAULT_MAX_PIXELS
from clearglass.losses import INNER_TERMS, LOSSES, NEGATIVE_OUTERS, OUTER_TERMS, check_settings
from clearglass.results import MetricKey

if TYPE_CHECKING:
    from clearglass.evaluate import EvalConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "train"
# the choices are the registries' names (losses.py), so a new loss or term is one edit there
KIND = Literal[tuple(LOSSES)]  # type: ignore[valid-type]
OUTER = Literal[tuple(OUTER_TERMS)]  # type: ignore[valid-type]
INNER = Literal[tuple(INNER_TERMS)]  # type: ignore[valid-type]


@dataclass
class LockConfig(Config):
    """Which towers are frozen, and how many of their last layers stay trainable (see models.lock_towers)."""

    lock_image: bool = False
    lock_image_unlocked_layers: int = 0
    lock_text: bool = True
    lock_text_unlocked_layers: int = 0
    lock_text_projection: bool = False

    def validate(self) -> None:
        """Unlocked layer counts are >= 0."""
        for name in ("lock_image_unlocked_layers", "lock_text_unlocked_layers"):
            if getattr(self, name) < 0:
                raise ClearglassError(f"{name} = {getattr(self, name)}: expected >= 0")


@dataclass
class LossConfig(Config):
    """kind 'grouped' (GroupedContrastiveLoss on M x N groups), 'clip' (outer 'clip', no inner, random pairs) or
    'multilevel' (MultiLevelGroupedLoss on M x N groups with their level2 ids: instance_weight * per-pair CLIP +
    level1_weight * grouped + level2_weight * grouped over level2 groups; the weights are unused by other kinds).

    ``self_reg`` (lambda, any kind): adds ``self_reg * self_reg_loss`` to the main stage's loss, the mean of
    1 - cos(f, f_base) between the model's features and the frozen initial model's features of the same batch, for
    the ``self_reg_features`` "image", "text" or "both" (their mean); 0 turns it off (no base copy is made).

    ``chunk`` (groups per tile, see GroupedContrastiveLoss): null computes the outer term whole, as ClipLoss does;
    a number tiles the outer and scaled_pairwise inner terms that many groups at a time, for batches whose (B, B)
    logits do not fit in memory. The value and gradients are the same either way."""

    kind: KIND = "grouped"
    outer: OUTER = "pairwise"
    inner: INNER | None = "scaled_pairwise"
    alpha: float = 0.7
    tau: float = 0.1
    tau_inner: float = 0.07
    learn_tau: bool = False
    local_loss: bool = False
    chunk: int | None = None
    instance_weight: float = 1.0
    level1_weight: float = 1.0
    level2_weight: float = 1.0
    self_reg: float = 0.0
    self_reg_features: Literal["image", "text", "both"] = "image"

    def validate(self) -> None:
        """Every setting in the range the losses accept (``losses.check_settings``, the one check of them)."""
        check_settings(asdict(self))


@dataclass
class PretrainConfig(Config):
    """Caption pre-training stage: ``steps`` text-only steps of ``batch_size`` pairs before the main stage."""

    steps: int = 0
    batch_size: int = 64
    lr: float = 2e-5
    warmup: int = 0

    def validate(self) -> None:
        """steps, warmup >= 0; batch_size >= 2; lr > 0; a stage of steps ends after its warmup."""
        if self.steps < 0 or self.warmup < 0 or self.batch_size < 2 or self.lr <= 0:
            raise ClearglassError(f"expected steps >= 0, warmup >= 0, batch_size >= 2 and lr > 0, got {self}")
        if self.steps and self.warmup >= self.steps:
            raise ClearglassError(f"warmup = {self.warmup} >= steps = {self.steps}: the stage would end still warming "
                                  "up; expected warmup < steps")


@dataclass
class TrainConfig(Config):
    """A training run, as JSON data. ``images`` defaults to the dataset JSON's folder; ``device`` 'auto' picks CUDA
    when available. ``anchors_per_batch`` None means one anchor group per rank.

    Validation during training: every ``eval_every`` steps (0: never) the model is scored on the test images of
    ``eval_data`` (a MAGIC file; ``eval_images`` defaults to its folder); the mean of ``eval_metrics``
    ("task/subset/metric" keys of the task registry `clearglass.evaluate.TASKS`, checked against it here) is the
    validation score, written to ``metrics.jsonl``. Only the tasks and subsets those metrics need are run;
    ``eval_tasks`` (default: any) limits which tasks they may name. ``keep_best`` also keeps
    ``checkpoints/best.pt``, the checkpoint of the best score;
    ``early_stop_patience`` > 0 stops after that many evaluations without a better score.

    ``allow_outside_root`` lets image ids be absolute paths or leave ``images`` / ``eval_images`` (refused by default).

    ``cache_text_features`` runs a frozen Hugging Face text transformer once per distinct caption; with
    ``text_cache_file`` its outputs for every caption of the data are computed up front and kept in that file
    (reused by later runs with the same transformer).
    """

    data: str = ""
    images: str | None = None
    model: str = "clearglass-mini"
    lock: LockConfig = field(default_factory=LockConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    caption_field: Literal["new_captions", "old_captions"] = "new_captions"
    short_groups: Literal["replace", "skip"] = "replace"
    groups_per_batch: int = 8
    pairs_per_group: int = 4
    anchors_per_batch: int | None = None
    steps: int = 500
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup: int = 50
    grad_clip: float | None = 1.0
    precision: Literal["fp32", "bf16", "amp"] = "fp32"
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    out: str = "runs/train"
    checkpoint_every: int = 100
    log_every: int = 10
    report_to: list[Literal["tensorboard", "wandb"]] = field(default_factory=list)
    num_workers: int = 0
    cache_images: bool = False
    cache_text_features: bool = False
    text_cache_file: str | None = None
    save_frozen: bool = False
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    allow_outside_root: bool = False
    eval_every: int = 0
    eval_data: str | None = None
    eval_images: str | None = None
    eval_tasks: list[str] | None = None
    eval_metrics: list[str] = field(
        default_factory=lambda: ["recognition/concept_level1/i2t_R@1", "retrieval/old_captions/i2t_R@1"])
    keep_best: bool = False
    early_stop_patience: int = 0
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    synthetic_negatives: SyntheticNegativesConfig = field(default_factory=SyntheticNegativesConfig)
    config_dir: ClassVar[Path] = CONFIG_DIR

    def validate(self) -> None:
        """Ranges, and the combinations that cannot work (checked before anything is loaded)."""
        for name in ("steps", "groups_per_batch", "pairs_per_group", "checkpoint_every", "log_every",
                     "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ClearglassError(f"{name} = {getattr(self, name)}: expected >= 1")
        if self.lr <= 0 or self.weight_decay < 0 or (self.grad_clip is not None and self.grad_clip <= 0):
            raise ClearglassError(f"lr = {self.lr}, weight_decay = {self.weight_decay}, grad_clip = {self.grad_clip}: "
                                  "expected lr > 0, weight_decay >= 0 and grad_clip > 0 (or null)")
        for name in ("warmup", "num_workers", "eval_every", "early_stop_patience"):
            if getattr(self, name) < 0:
                raise ClearglassError(f"{name} = {getattr(self, name)}: expected >= 0")
        if self.warmup >= self.steps:
            raise ClearglassError(f"warmup = {self.warmup} >= steps = {self.steps}: training would end still warming "
                                  "up; expected warmup < steps (set warmup, or more steps)")
        if not self.out.strip():
            raise ClearglassError("out = '': expected the run folder to write (an empty one would be the working "
                                  "folder)")
        if not 0 <= self.seed < MAX_SEED:
            raise ClearglassError(f"seed = {self.seed}: expected 0 <= seed < 2**63 (the range every generator it "
                                  "seeds accepts)")
        if self.anchors_per_batch is not None and self.anchors_per_batch < 1:
            raise ClearglassError(f"anchors_per_batch = {self.anchors_per_batch}: expected >= 1 or null")
        if self.synthetic_negatives.caption and not LOSSES[self.loss.kind].outer_term(self.loss.outer).takes_negatives:
            raise ClearglassError(f"synthetic_negatives.caption needs loss.outer {NEGATIVE_OUTERS} (outer "
                                  f"{self.loss.outer!r} has no per-image rows to add text negatives to)")
        if (self.eval_every or self.keep_best or self.early_stop_patience) and not (self.eval_every and self.eval_data):
            raise ClearglassError("eval_every, keep_best and early_stop_patience need validation: set eval_every > 0 "
                                  "and eval_data")
        if self.text_cache_file and not self.cache_text_features:
            raise ClearglassError("text_cache_file keeps the frozen text tower's outputs: set cache_text_features=true")
        if self.eval_every and not self.eval_metrics:
            raise ClearglassError("eval_metrics: expected at least one 'task/subset/metric' name")
        if self.eval_every:
            self.validation_config()

    def validation_config(self) -> EvalConfig:
        """The evaluation validation runs: the tasks and subsets of ``eval_metrics``, each checked against the task
        registry (and ``eval_tasks``), one bootstrap resample (only the values are read)."""
        from clearglass.evaluate import config_for, task_named

        keys = self.validation_keys()
        for task in self.eval_tasks or []:
            task_named(task)
        outside = [str(k) for k in keys if self.eval_tasks is not None and k.task not in self.eval_tasks]
        if outside:
            raise ClearglassError(f"eval_metrics {outside}: their tasks are not in eval_tasks {self.eval_tasks}; add "
                                  "them, or leave eval_tasks out")
        return replace(config_for(keys), n_boot=1)

    def validation_keys(self) -> list[MetricKey]:
        """``eval_metrics`` as metric keys."""
        try:
            return [MetricKey.parse(m) for m in self.eval_metrics]
        except ClearglassError as e:
            raise ClearglassError(f"eval_metrics: {e}") from None

    def check_ready(self) -> None:
        """What a run needs beyond valid values: a dataset."""
        if not self.data:
            raise ClearglassError("train config: 'data' (the MAGIC dataset JSON) is required")
