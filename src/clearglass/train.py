"""Training: ``TrainConfig`` (JSON data + ``a.b=value`` overrides) and ``train(config)``.

One loop over global steps. Steps [0, pretrain.steps) are the optional caption pre-training stage (text-only CLIP
loss between original captions and their new captions / concept words, as in the CLEAR GLASS reference); the
remaining ``steps`` are the main stage on batches of groups (``loss.kind='grouped'``, or ``'multilevel'`` with each
group's level2 id) or random pairs (``loss.kind='clip'``, the baseline), optionally with synthetic hard-negative
captions as extra text negatives (``synthetic_negatives``, see `clearglass.hard_negatives`). AdamW (no weight
decay on parameters with ndim < 2), cosine schedule with linear warmup per stage, gradient clipping, fp32/bf16/amp.
Checkpoints are written atomically with the model weights, a metadata JSON, and a resume state (optimizer,
scheduler, sampler positions, RNG states); ``latest.json`` points at the newest complete one.
``torchrun --nproc_per_node=K -m clearglass.train --config FILE`` runs DDP (gloo on CPU, nccl on GPU): every rank
builds the same global batch and takes its slice; the loss gathers features.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from clearglass import data as cg_data
from clearglass.errors import ClearglassError
from clearglass.hard_negatives import CaptionNegatives, SyntheticNegativesConfig, fill_hard_negatives
from clearglass.losses import LN_100, GroupedContrastiveLoss, MultiLevelGroupedLoss
from clearglass.magic.schema import load_concepts, read_json, write_json_atomic
from clearglass.models import (FrozenTextCache, ModelBundle, frozen_modules_to_eval, load_model, lock_towers,
                               save_checkpoint, trim_padding)

CONFIG_DIR = Path(__file__).parent / "configs" / "train"
PRECISIONS = ("fp32", "bf16", "amp")
LOSS_KINDS = ("grouped", "clip", "multilevel")


@dataclass
class LockConfig:
    """Which towers are frozen, and how many of their last layers stay trainable (see models.lock_towers)."""

    lock_image: bool = False
    lock_image_unlocked_layers: int = 0
    lock_text: bool = True
    lock_text_unlocked_layers: int = 0
    lock_text_projection: bool = False


@dataclass
class LossConfig:
    """kind 'grouped' (GroupedContrastiveLoss on M x N groups), 'clip' (outer 'clip', no inner, random pairs) or
    'multilevel' (MultiLevelGroupedLoss on M x N groups with their level2 ids: instance_weight * per-pair CLIP +
    level1_weight * grouped + level2_weight * grouped over level2 groups; the weights are unused by other kinds)."""

    kind: str = "grouped"
    outer: str = "pairwise"
    inner: str | None = "scaled_pairwise"
    alpha: float = 0.7
    tau: float = 0.1
    tau_inner: float = 0.07
    learn_tau: bool = False
    local_loss: bool = False
    instance_weight: float = 1.0
    level1_weight: float = 1.0
    level2_weight: float = 1.0


@dataclass
class PretrainConfig:
    """Caption pre-training stage: ``steps`` text-only steps of ``batch_size`` pairs before the main stage."""

    steps: int = 0
    batch_size: int = 64
    lr: float = 2e-5
    warmup: int = 0


@dataclass
class TrainConfig:
    """A training run, as JSON data. ``images`` defaults to the dataset JSON's folder; ``device`` 'auto' picks CUDA
    when available. ``anchors_per_batch`` None means one anchor group per rank."""

    data: str = ""
    images: str | None = None
    model: str = "default"
    lock: LockConfig = field(default_factory=LockConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    caption_field: str = "new_captions"
    short_groups: str = "replace"
    groups_per_batch: int = 8
    pairs_per_group: int = 4
    anchors_per_batch: int | None = None
    steps: int = 500
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup: int = 50
    grad_clip: float | None = 1.0
    precision: str = "fp32"
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    out: str = "runs/train"
    checkpoint_every: int = 100
    log_every: int = 10
    tensorboard: bool = False
    num_workers: int = 0
    cache_images: bool = False
    cache_text_features: bool = False
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    synthetic_negatives: SyntheticNegativesConfig = field(default_factory=SyntheticNegativesConfig)

    @classmethod
    def from_dict(cls, raw: dict, source: str = "<dict>") -> TrainConfig:
        """Build from nested JSON data; unknown keys and wrong types raise ClearglassError naming the key."""
        return _dataclass_from_dict(cls, raw, source, "")

    @classmethod
    def load(cls, path: str | os.PathLike, overrides: list[str] | None = None) -> TrainConfig:
        """Read a JSON config file (a bare name means configs/train/<name>.json) and apply ``a.b=value`` overrides."""
        path = Path(path)
        if not path.is_file() and (CONFIG_DIR / f"{path.name.removesuffix('.json')}.json").is_file():
            path = CONFIG_DIR / f"{path.name.removesuffix('.json')}.json"
        raw = read_json(path, "train config", dict)
        for item in overrides or []:
            apply_override(raw, item)
        return cls.from_dict(raw, str(path))

    def to_dict(self) -> dict:
        """Nested JSON data."""
        return dataclasses.asdict(self)


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


def _dataclass_from_dict(cls: type, raw: Any, source: str, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ClearglassError(f"{source}: {prefix or 'config'}: expected an object, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ClearglassError(f"{source}: unknown key(s) {[prefix + k for k in unknown]}: expected {sorted(fields)}")
    kwargs = {}
    for name, value in raw.items():
        factory = fields[name].default_factory
        if dataclasses.is_dataclass(factory):
            kwargs[name] = _dataclass_from_dict(factory, value, source, f"{prefix}{name}.")
            continue
        ftype = str(fields[name].type)
        ok = (
            (value is None and "None" in ftype)
            or (isinstance(value, bool) and "bool" in ftype)
            or (isinstance(value, int) and not isinstance(value, bool) and ("int" in ftype or "float" in ftype))
            or (isinstance(value, float) and "float" in ftype)
            or (isinstance(value, str) and "str" in ftype)
        )
        if not ok:
            raise ClearglassError(f"{source}: {prefix}{name} = {value!r}: expected {ftype}")
        kwargs[name] = float(value) if "float" in ftype and "int" not in ftype and value is not None else value
    return cls(**kwargs)


def _validate(config: TrainConfig) -> None:
    if not config.data:
        raise ClearglassError("train config: 'data' (the MAGIC dataset JSON) is required")
    if config.precision not in PRECISIONS:
        raise ClearglassError(f"train config: precision {config.precision!r}: expected one of {PRECISIONS}")
    if config.loss.kind not in LOSS_KINDS:
        raise ClearglassError(f"train config: loss.kind {config.loss.kind!r}: expected one of {LOSS_KINDS}")
    for name in ("steps", "groups_per_batch", "pairs_per_group", "checkpoint_every", "log_every"):
        if getattr(config, name) < 1:
            raise ClearglassError(f"train config: {name} = {getattr(config, name)}: expected >= 1")
    if config.pretrain.steps < 0 or config.warmup < 0 or config.num_workers < 0:
        raise ClearglassError("train config: pretrain.steps, warmup and num_workers must be >= 0")
    if config.synthetic_negatives.caption and config.loss.kind != "clip" and config.loss.outer == "centroid":
        raise ClearglassError("train config: synthetic_negatives.caption needs loss.outer 'pairwise' or 'clip' "
                              "(outer 'centroid' has no per-image rows to add text negatives to)")


# ----------------------------------------------------------------------------------------------------------------
# pieces of the loop


def cosine_factor(step: int, steps: int, warmup: int) -> float:
    """lr multiplier: (step+1)/warmup during warmup, then 0.5 * (1 + cos(pi * (step - warmup) / (steps - warmup)))."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


class _Schedule:
    """Per-stage cosine-with-warmup multiplier of the base lr, over the global step."""

    def __init__(self, config: TrainConfig) -> None:
        self.pre = config.pretrain
        self.config = config

    def __call__(self, step: int) -> float:
        if step < self.pre.steps:
            return self.pre.lr / self.config.lr * cosine_factor(step, self.pre.steps, self.pre.warmup)
        return cosine_factor(step - self.pre.steps, self.config.steps, self.config.warmup)


def make_optimizer(params: list[tuple[str, nn.Parameter]], config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: no decay on gains, biases and logit scales (ndim < 2)."""
    decay = [p for _, p in params if p.ndim >= 2]
    no_decay = [p for _, p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=(0.9, 0.98), eps=1e-6)


class _Features(nn.Module):
    """Encodes (M, N, ...) images and tokens to (M, N, D) features; the module DDP wraps."""

    def __init__(self, model: nn.Module, text_cache: FrozenTextCache | None = None) -> None:
        super().__init__()
        self.model = model
        self.encode_text = text_cache or (lambda tokens: model.encode_text(trim_padding(model, tokens)))

    def forward(self, images: torch.Tensor | None, texts: torch.Tensor, negatives: torch.Tensor | None = None
                ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """(M, N, C, H, W) images (or None), (M, N, L) tokens, (K, L) negative tokens (or None) -> (M, N, D) image
        and text features and (K, D) negative features; captions and negatives share one text-tower call."""
        m, n = texts.shape[:2]
        rows = texts.flatten(0, 1) if negatives is None else torch.cat([texts.flatten(0, 1), negatives])  # (M*N+K, L)
        encoded = self.encode_text(rows)  # (M*N+K, D)
        text, negative = encoded[:m * n].unflatten(0, (m, n)), None if negatives is None else encoded[m * n:]
        if images is None:
            return None, text, negative
        image = self.model.encode_image(images.flatten(0, 1)).unflatten(0, (m, n))  # (M, N, D)
        return image, text, negative


def _rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Source:
    """Endless batches from an epoch sampler, counting consumed batches so (epoch, position) is exact for resume."""

    def __init__(self, loader: torch.utils.data.DataLoader, sampler: cg_data._EpochSampler) -> None:
        self.loader = loader
        self.sampler = sampler
        self.epoch = 0
        self.position = 0
        self._it: Iterator | None = None

    def state_dict(self) -> dict[str, int]:
        """Epoch and number of batches consumed in it."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue at the saved epoch and position."""
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._it = None

    def next(self) -> Any:
        """The next batch, moving to the next epoch when this one is spent."""
        while True:
            if self._it is None:
                self.sampler.load_state_dict({"epoch": self.epoch, "position": self.position})
                self._it = iter(self.loader)
            try:
                batch = next(self._it)
            except StopIteration:
                self.epoch, self.position, self._it = self.epoch + 1, 0, None
                continue
            self.position += 1
            return batch


def data_hash(path: str | os.PathLike) -> str:
    """sha256 of the dataset JSON file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world_size, device); initialises the process group under torchrun (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if world_size == 1:
        return 0, 1, torch.device(device)
    use_cuda = torch.device(device).type == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")


def _latest(out: Path) -> Path | None:
    pointer = out / "latest.json"
    if not pointer.is_file():
        return None
    return out / json.loads(pointer.read_text(encoding="utf-8"))["checkpoint"]


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past ``step`` (written by a run that died after its last checkpoint)."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------
# the run


def train(config: TrainConfig, resume: str | None = None) -> dict:
    """Run training; returns the final metrics, the step, and the paths (out, checkpoint, metrics).

    ``resume``: None (fresh run), 'auto' (continue from ``out/latest.json`` if present) or a checkpoint path.
    """
    rank, world_size, device = _setup_distributed(config.device)
    try:
        return _train(config, resume, rank, world_size, device)
    finally:
        if world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: TrainConfig, resume: str | None, rank: int, world_size: int, device: torch.device) -> dict:
    _validate(config)
    out = Path(config.out)
    if config.precision == "amp" and device.type != "cuda":
        raise ClearglassError("train config: precision 'amp' (fp16 + GradScaler) needs CUDA; use 'bf16' or 'fp32'")
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)

    # data
    data_path = Path(config.data)
    concepts = load_concepts(data_path)
    synthetic = config.synthetic_negatives
    filled: list[str] = []
    if synthetic.concepts:
        concepts, filled = fill_hard_negatives(concepts, synthetic.concepts_per_group)
    image_root = Path(config.images) if config.images else data_path.parent
    index = cg_data.GroupIndex(concepts, config.caption_field, config.pairs_per_group, config.short_groups)
    negative_captions = None
    if synthetic.caption:
        negative_captions = CaptionNegatives(index, concepts, synthetic.source, synthetic.per_caption, config.seed,
                                             synthetic.specificity)
    bundle: ModelBundle = load_model(config.model, device)
    lock_towers(bundle, **dataclasses.asdict(config.lock))
    model = bundle.model
    for name in ("logit_scale", "logit_bias"):  # the model's own scale is unused: the loss has its temperature
        if isinstance(getattr(model, name, None), nn.Parameter):
            getattr(model, name).requires_grad_(False)
    dataset = cg_data.PairDataset(index, image_root, bundle.preprocess_train, bundle.tokenizer, config.cache_images)
    batch_pairs = config.groups_per_batch * config.pairs_per_group
    if config.loss.kind in ("grouped", "multilevel"):
        anchors = config.anchors_per_batch or world_size
        sampler: cg_data._EpochSampler = cg_data.GroupBatchSampler(
            index, config.groups_per_batch, config.pairs_per_group, config.seed, anchors, rank, world_size
        )
        n = config.pairs_per_group
        grouped_args = (config.loss.outer, config.loss.inner, config.loss.alpha, config.loss.tau,
                        config.loss.tau_inner, config.loss.learn_tau, config.loss.local_loss)
        if config.loss.kind == "grouped":
            loss_fn = GroupedContrastiveLoss(*grouped_args)
        else:
            loss_fn = MultiLevelGroupedLoss(config.loss.instance_weight, config.loss.level1_weight,
                                            config.loss.level2_weight, *grouped_args)
    else:
        sampler = cg_data.RandomPairSampler(index, batch_pairs, config.seed, rank, world_size)
        n = 1
        loss_fn = GroupedContrastiveLoss(
            "clip", None, tau=config.loss.tau, learn_tau=config.loss.learn_tau, local_loss=config.loss.local_loss
        )
    loss_fn.to(device)
    scale_fn = loss_fn.grouped if isinstance(loss_fn, MultiLevelGroupedLoss) else loss_fn  # owns the temperature
    level2_ids = torch.tensor(index.level2_ids(), device=device)  # (groups,)
    pin = device.type == "cuda"
    main_source = _Source(cg_data.make_loader(dataset, sampler, n, config.num_workers, pin), sampler)
    pre_source = None
    if config.pretrain.steps:
        if not any(p.requires_grad for name, p in model.named_parameters() if not name.startswith("visual")):
            raise ClearglassError(
                "train config: pretrain.steps > 0 trains the text tower, but lock.lock_text freezes all of it"
            )
        pairs = cg_data.text_pretrain_pairs(concepts)
        pre_sampler = cg_data.TextPairSampler(len(pairs), config.pretrain.batch_size, config.seed, rank, world_size)
        pre_loader = cg_data.make_loader(
            cg_data.TextPairDataset(pairs, bundle.tokenizer), pre_sampler, 1, config.num_workers, pin
        )
        pre_source = _Source(pre_loader, pre_sampler)
        pre_loss_fn = GroupedContrastiveLoss("clip", None, tau=config.loss.tau).to(device)

    # optimisation
    params = [(n_, p) for n_, p in model.named_parameters() if p.requires_grad]
    params += [(f"loss.{n_}", p) for n_, p in loss_fn.named_parameters()]
    if not params:
        raise ClearglassError(f"train config: nothing to train: every parameter of {config.model!r} is locked")
    optimizer = make_optimizer(params, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _Schedule(config))
    scaler = torch.amp.GradScaler("cuda") if config.precision == "amp" else None
    autocast_dtype = {"bf16": torch.bfloat16, "amp": torch.float16}.get(config.precision)
    features = _Features(model, FrozenTextCache(model) if config.cache_text_features else None)
    if world_size > 1:
        features = nn.parallel.DistributedDataParallel(
            features, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.pretrain.steps > 0,
        )
    total_steps = config.pretrain.steps + config.steps
    digest = data_hash(data_path)

    # resume
    step = 0
    resume_path = None
    last: dict[str, float] = {}  # the latest logged metrics (a finished run resumed trains nothing and keeps its own)
    if resume == "auto":
        resume_path = _latest(out)
    elif resume:
        resume_path = Path(resume)
    if resume_path is not None:
        from clearglass.models import load_extra_state, read_checkpoint_metadata

        meta = read_checkpoint_metadata(resume_path)
        last = dict(meta["metrics"])
        if meta["data_hash"] != digest:
            raise ClearglassError(
                f"resume {resume_path}: trained on data sha256 {meta['data_hash'][:12]}, but {data_path} has"
                f" {digest[:12]}: expected the same dataset"
            )
        state = load_extra_state(resume_path)
        model.load_state_dict(torch.load(resume_path, map_location=device, weights_only=True))
        loss_fn.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None:
            scaler.load_state_dict(state["scaler"])
        main_source.load_state_dict(state["main_source"])
        if pre_source is not None:
            pre_source.load_state_dict(state["pre_source"])
        step = int(state["step"])
        _set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])

    is_main = rank == 0
    metrics_path = out / "metrics.jsonl"
    writer = None
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(config.to_dict(), out / "config.json")
        if resume_path is not None:
            _truncate_metrics(metrics_path, step)
        elif metrics_path.exists():
            metrics_path.unlink()
        if config.tensorboard:
            writer = _tensorboard_writer(out)

    def checkpoint(at_step: int, metrics: dict) -> Path:
        rng = [_rng_state()]
        if world_size > 1:
            rng = [None] * world_size
            dist.all_gather_object(rng, _rng_state())
        path = out / "checkpoints" / f"step_{at_step:06d}.pt"
        if is_main:
            extra = {
                "step": at_step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "loss": loss_fn.state_dict(),
                "main_source": main_source.state_dict(),
                "pre_source": pre_source.state_dict() if pre_source is not None else None,
                "rng": rng,
            }
            save_checkpoint(bundle, path, train_config=config.to_dict(), data_hash=digest, metrics=metrics,
                            extra_state=extra)
            write_json_atomic({"checkpoint": str(path.relative_to(out)), "step": at_step}, out / "latest.json")
        if world_size > 1:
            dist.barrier()
        return path

    model.train()
    frozen_modules_to_eval(model)
    last_ckpt = _latest(out) if resume_path is not None else None
    bar = tqdm(total=total_steps, initial=step, desc="train", disable=not is_main, dynamic_ncols=True)
    start = time.perf_counter()
    while step < total_steps:
        pretraining = step < config.pretrain.steps
        if step == config.pretrain.steps and config.pretrain.steps:
            optimizer.state.clear()  # the main stage starts with fresh moments
        if pretraining:
            old, target = pre_source.next()  # (B, 1, L) each
            with _autocast(device, autocast_dtype):  # one forward (DDP allows one per backward)
                _, text_f, _ = features(None, torch.cat([old, target], dim=1).to(device, non_blocking=True))  # (B,2,D)
            out_terms = _loss_terms(pre_loss_fn, text_f[:, :1], text_f[:, 1:], step)
        else:
            images, tokens = main_source.next()  # (M, N, C, H, W), (M, N, L)
            keys = sampler.rank_batch(main_source.epoch, main_source.position - 1)  # the keys of this batch
            negatives = None
            if negative_captions is not None:
                negatives = bundle.tokenizer(negative_captions.for_batch(keys)).to(device, non_blocking=True)  # (K, L)
            with _autocast(device, autocast_dtype):
                image_f, text_f, negative_f = features(images.to(device, non_blocking=True),
                                                       tokens.to(device, non_blocking=True), negatives)
            extra = {} if negative_f is None else {"text_negatives": negative_f}
            if isinstance(loss_fn, MultiLevelGroupedLoss):
                extra["level2_ids"] = level2_ids[[k.group for k in keys[::n]]]  # (M,)
            out_terms = _loss_terms(loss_fn, image_f, text_f, step, **extra)
        loss = out_terms["loss"]
        reduced = _reduce_terms(out_terms, step, world_size)
        optimizer.zero_grad(set_to_none=True)
        trainable = [p for _, p in params]
        if scaler is not None:
            scaler.scale(loss).backward()
            _average_loss_grads(loss_fn, world_size)
            scaler.unscale_(optimizer)
            grad_norm = _clip(trainable, config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            _average_loss_grads(loss_fn, world_size)
            grad_norm = _clip(trainable, config.grad_clip)
            if not math.isfinite(grad_norm):
                raise ClearglassError(
                    f"step {step}: gradient norm is {grad_norm} with loss {float(loss):.6g}: stopping before the"
                    " weights become non-finite (try a lower lr or precision fp32)"
                )
            optimizer.step()
        lr = optimizer.param_groups[0]["lr"]  # the rate this step used
        scheduler.step()
        if scale_fn.logit_scale is not None:
            with torch.no_grad():
                scale_fn.logit_scale.clamp_(0, LN_100)
        step += 1
        last = dict(reduced)
        last.update(
            stage="pretrain" if pretraining else "main",
            lr=lr,
            logit_scale=float(scale_fn.outer_scale()),
            grad_norm=grad_norm,
        )
        bar.update(1)
        if is_main and (step % config.log_every == 0 or step == total_steps):
            record = {"step": step, **last, "time": time.perf_counter() - start}
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}")
            if writer is not None:
                for k, v in record.items():
                    if isinstance(v, float) and k != "time":
                        writer.add_scalar(f"train/{k}", v, step)
        if step % config.checkpoint_every == 0 or step == total_steps:
            last_ckpt = checkpoint(step, last)
    bar.close()
    if writer is not None:
        writer.close()
    return {
        "step": step,
        "metrics": last,
        "out": str(out),
        "checkpoint": str(last_ckpt) if last_ckpt is not None else None,
        "metrics_path": str(metrics_path),
        "data_hash": digest,
        "skipped_groups": index.skipped,
        "world_size": world_size,
        "filled_hard_negatives": filled,
        "synthetic_negatives": dict(negative_captions.stats) if negative_captions is not None else {},
    }


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _loss_terms(loss_fn: nn.Module, a: torch.Tensor, b: torch.Tensor, step: int, **extra: torch.Tensor) -> dict:
    try:
        return loss_fn(a, b, **extra)
    except ClearglassError as e:
        raise ClearglassError(f"step {step}: {e}") from None


def _reduce_terms(terms: dict[str, torch.Tensor], step: int, world_size: int) -> dict[str, float]:
    """The loss terms averaged over ranks (with local_loss each rank holds its share); raises ClearglassError naming
    the step and every term when the loss is not finite (on any rank), before anything is written."""
    values = torch.stack([v.detach().float() for v in terms.values()])  # (terms,)
    if world_size > 1:
        dist.all_reduce(values)
        values /= world_size
    reduced = dict(zip(terms, values.tolist()))
    if not math.isfinite(reduced["loss"]):
        described = ", ".join(f"{k}={v:.6g}" for k, v in reduced.items())
        raise ClearglassError(f"step {step}: non-finite loss ({described}); stopping without writing a checkpoint")
    return reduced


def _average_loss_grads(loss_fn: nn.Module, world_size: int) -> None:
    """Average the gradients of the loss's own parameters (a learnt temperature) over ranks, as DDP does the model's."""
    if world_size == 1:
        return
    for p in loss_fn.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world_size


def _clip(params: list[nn.Parameter], max_norm: float | None) -> float:
    """Clip the global gradient norm to ``max_norm`` (when set); returns the norm before clipping."""
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(grads, max_norm if max_norm is not None else math.inf)
    return float(norm)


def _tensorboard_writer(out: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ClearglassError(
            "train config: tensorboard=true, but tensorboard is not installed: pip install 'clearglass[tensorboard]'"
        ) from None
    return SummaryWriter(str(out / "tensorboard"))


def main(argv: list[str] | None = None) -> int:
    """``python -m clearglass.train --config FILE [key=value ...] [--resume auto|PATH]`` (torchrun-friendly)."""
    parser = argparse.ArgumentParser(prog="python -m clearglass.train", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        result = train(TrainConfig.load(args.config, args.overrides), resume=args.resume)
    except ClearglassError as e:
        print(f"clearglass train: error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: result[k] for k in ("step", "checkpoint", "metrics_path")}))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The train command's arguments, shared by ``clearglass train`` and ``python -m clearglass.train``."""
    parser.add_argument("--config", required=True, help="train config JSON (or a name in configs/train/)")
    parser.add_argument("--resume", default=None, help="'auto' (out/latest.json if present) or a checkpoint .pt")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, values as JSON literals")


if __name__ == "__main__":
    sys.exit(main())
