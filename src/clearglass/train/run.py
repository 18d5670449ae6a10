"""Training as a run: :func:`build` makes its frozen :class:`Parts` (data, model, loss, optimiser, ...) in one
order, :class:`Run` holds them with what changes per step; ``restore`` resumes it, ``step``
takes one batch and returns named loss terms, ``validate`` scores it on the validation file, ``save`` writes an
atomic checkpoint; :func:`train` is the loop around them.

Steps [0, pretrain.steps) are the optional caption pre-training stage (text-only CLIP loss between original captions
and their new captions / concept words, as in the CLEAR GLASS reference); the remaining ``steps`` are the main stage,
on the batches the loss of the registry ``clearglass.losses.LOSSES`` asks for: M groups x N pairs (``grouped``,
``multilevel`` with each group's level2 id) or random pairs (``clip``, the baseline), optionally with synthetic
hard-negative captions as extra text negatives, and with ``loss.self_reg`` > 0 the self-regularisation term toward
the frozen initial model (``self_reg_loss``). AdamW (no weight decay on parameters with ndim < 2), cosine schedule
with linear warmup per stage, gradient clipping, fp32/bf16/amp. ``torchrun --nproc_per_node=K -m clearglass.train``
runs DDP (gloo on CPU, nccl on GPU): every rank builds the same global batch and takes its slice; the loss gathers
features.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import fcntl
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from clearglass import data as cg_data
from clearglass.checkpoints import (
    checkpoint_dataset_sha256,
    load_extra_state,
    load_weights,
    read_checkpoint_metadata,
    save_checkpoint,
)
from clearglass.config import flatten
from clearglass.errors import ClearglassError
from clearglass.evaluate import ModelEncoder, evaluate_model
from clearglass.hard_negatives import CaptionNegatives, fill_hard_negatives
from clearglass.io import file_sha256, remove_orphan_temps, resolve_device, write_json_atomic
from clearglass.losses import LN_100, LOSSES, GroupedContrastiveLoss, NamedLoss, add_self_regularisation, make_loss
from clearglass.magic.schema import ImageRoot, dataset_image_root, load_concepts
from clearglass.models import FrozenTextCache, frozen_modules_to_eval, load_model, lock_towers, trim_padding
from clearglass.results import Results
from clearglass.train.config import TrainConfig
from clearglass.train.reporting import Reporters
from clearglass.train.state import Source, latest_checkpoint, rng_state, set_rng_state, truncate_metrics


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped a run after it wrote a checkpoint at its last completed step."""

    def __init__(self, step: int, checkpoint: Path, out: Path) -> None:
        super().__init__(f"interrupted at step {step}: checkpoint {checkpoint}; resume with: clearglass train "
                         f"--config {out / 'config.json'} --resume auto")


def cosine_factor(step: int, steps: int, warmup: int) -> float:
    """lr multiplier: (step+1)/warmup during warmup, then 0.5 * (1 + cos(pi * (step - warmup) / (steps - warmup)))."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def lr_at(config: TrainConfig, step: int) -> float:
    """The learning rate of global ``step``: per-stage cosine with warmup (caption pre-training, then main)."""
    pre = config.pretrain
    if step < pre.steps:
        return pre.lr * cosine_factor(step, pre.steps, pre.warmup)
    return config.lr * cosine_factor(step - pre.steps, config.steps, config.warmup)


def make_optimizer(params: list[tuple[str, nn.Parameter]], config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: no decay on gains, biases and logit scales (ndim < 2)."""
    decay = [p for _, p in params if p.ndim >= 2]
    no_decay = [p for _, p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=(0.9, 0.98), eps=1e-6)


class Features(nn.Module):
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


def make_sampler(config: TrainConfig, index: cg_data.GroupIndex, rank: int = 0,
                 world_size: int = 1) -> cg_data.EpochSampler:
    """The main stage's batch sampler over ``index``: M x N groups for a grouped loss, M*N random pairs for the CLIP
    loss; a dataset too small for one batch is an error naming the setting."""
    c = config
    if LOSSES[c.loss.kind].batches == "groups":
        return cg_data.GroupBatchSampler(index, c.groups_per_batch, c.pairs_per_group, c.seed,
                                         c.anchors_per_batch or world_size, rank, world_size)
    return cg_data.RandomPairSampler(index, c.groups_per_batch * c.pairs_per_group, c.seed, rank, world_size)


def batches_per_epoch(config: TrainConfig, world_size: int = 1) -> int:
    """Global batches in one pass of the main stage's sampler over the train data of ``config.data`` (the unit of
    an epoch); an error when the data cannot fill one batch."""
    return len(make_sampler(config, _group_index(config, load_concepts(Path(config.data))), 0, world_size))


def _group_index(config: TrainConfig, concepts: list) -> cg_data.GroupIndex:
    """The train groups of ``concepts`` as the config reads them (caption field, N pairs, short-group policy)."""
    return cg_data.GroupIndex(concepts, config.caption_field, config.pairs_per_group, config.short_groups)


def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world_size, device); initialises the process group under torchrun (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    resolved = resolve_device(device)
    if world_size == 1:
        return 0, 1, resolved
    use_cuda = resolved.type == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")


@dataclass(frozen=True)
class TrainData:
    """The training data of a run: the dataset (with filled hard negatives), its image root, its groups and the
    main stage's sampler over them, the synthetic caption negatives, and the dataset's sha256."""

    path: Path
    concepts: list
    filled: list[str]
    image_root: ImageRoot
    index: cg_data.GroupIndex
    sampler: cg_data.EpochSampler
    negative_captions: CaptionNegatives | None
    sha256: str


@dataclass(frozen=True)
class Parts:
    """What a run is built from (``build``); a step changes what is inside them (weights, optimiser moments,
    source positions), never which they are."""

    config: TrainConfig
    rank: int
    world_size: int
    device: torch.device
    data: TrainData
    bundle: Any                      # models.ModelBundle
    text_cache: FrozenTextCache | None
    base: _FrozenBase | None         # the frozen initial model of loss.self_reg
    loss_fn: nn.Module
    main: Source
    pre: Source | None               # caption pre-training, with its own loss
    pre_loss_fn: nn.Module | None
    params: list[tuple[str, nn.Parameter]]
    optimizer: torch.optim.AdamW
    scaler: torch.amp.GradScaler | None
    autocast_dtype: torch.dtype | None
    features: nn.Module              # Features, DDP-wrapped with world_size > 1
    validation: _Validation | None

    @property
    def model(self) -> nn.Module:
        return self.bundle.model

    @property
    def named_loss(self) -> NamedLoss:
        """The registry entry of ``config.loss.kind``."""
        return LOSSES[self.config.loss.kind]

    @property
    def scale_owner(self) -> nn.Module:
        """The module that owns the temperature (the grouped part of a multi-level loss)."""
        return getattr(self.loss_fn, "grouped", self.loss_fn)


def build(config: TrainConfig, rank: int = 0, world_size: int = 1, device: torch.device | None = None) -> Parts:
    """Everything a run needs, in the one order that works: data (a dataset too small fails before any model
    loads), the model and its frozen parts, the loss, the batch sources, the optimiser, the validation."""
    config.check_ready()
    device = device if device is not None else resolve_device(config.device)
    if config.precision == "amp" and device.type != "cuda":
        raise ClearglassError("train config: precision 'amp' (fp16 + GradScaler) needs CUDA; use 'bf16' or 'fp32'")
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    data = _train_data(config, rank, world_size)
    bundle = load_model(config.model, device)
    model = _lock(bundle, config)
    text_cache = FrozenTextCache(model) if config.cache_text_features else None
    # before any step or restore: the base is always the initial model of config.model
    base = _FrozenBase(model, text_cache, config.loss.self_reg_features) if config.loss.self_reg else None
    loss_fn = make_loss(**dataclasses.asdict(config.loss)).to(device)
    main, pre = _sources(config, data, bundle, device, rank, world_size)
    pre_loss_fn = GroupedContrastiveLoss("clip", None, tau=config.loss.tau).to(device) if pre is not None else None
    params = _trainable(model, loss_fn, config)
    optimizer = make_optimizer(params, config)
    for group in optimizer.param_groups:
        group["lr"] = lr_at(config, 0)
    features: nn.Module = Features(model, text_cache)
    if world_size > 1:
        features = nn.parallel.DistributedDataParallel(
            features, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.pretrain.steps > 0)
    parts = Parts(config, rank, world_size, device, data, bundle, text_cache, base, loss_fn,
                  main, pre, pre_loss_fn, params, optimizer,
                  torch.amp.GradScaler("cuda") if config.precision == "amp" else None,
                  {"bf16": torch.bfloat16, "amp": torch.float16}.get(config.precision), features,
                  _Validation(config) if config.eval_every else None)
    model.train()
    frozen_modules_to_eval(model)  # frozen parts run as in inference: no dropout, fixed statistics
    if text_cache is not None and config.text_cache_file:
        _fill_text_cache(parts, Path(config.text_cache_file))
    return parts


def _train_data(c: TrainConfig, rank: int, world_size: int) -> TrainData:
    path = Path(c.data)
    concepts, filled = load_concepts(path), []
    if c.synthetic_negatives.concepts:
        concepts, filled = fill_hard_negatives(concepts, c.synthetic_negatives.concepts_per_group)
    index = _group_index(c, concepts)
    sampler = make_sampler(c, index, rank, world_size)  # data too small: fails before the model loads
    s = c.synthetic_negatives
    negatives = CaptionNegatives(index, concepts, s.source, s.per_caption, c.seed, s.specificity) if s.caption else None
    root = ImageRoot(Path(c.images) if c.images else dataset_image_root(path), c.allow_outside_root)
    return TrainData(path, concepts, filled, root, index, sampler, negatives, file_sha256(path))


def _lock(bundle: Any, c: TrainConfig) -> nn.Module:
    """Lock the towers as configured; the model's own logit scale and bias stay fixed (the loss has its own)."""
    lock_towers(bundle, **dataclasses.asdict(c.lock))
    for name in ("logit_scale", "logit_bias"):
        if isinstance(getattr(bundle.model, name, None), nn.Parameter):
            getattr(bundle.model, name).requires_grad_(False)
    return bundle.model


def _sources(c: TrainConfig, data: TrainData, bundle: Any, device: torch.device, rank: int,
             world_size: int) -> tuple[Source, Source | None]:
    """The main stage's batch source and, with pretrain.steps, the caption pre-training's."""
    pin = device.type == "cuda"
    dataset = cg_data.PairDataset(data.index, data.image_root, bundle.preprocess_train, bundle.tokenizer,
                                  c.cache_images, c.max_image_pixels)
    n = c.pairs_per_group if LOSSES[c.loss.kind].batches == "groups" else 1
    collate = cg_data.GroupCollate(n, data.index.level2_ids())

    def add_negatives(batch: cg_data.Batch) -> cg_data.Batch:
        """The batch with its synthetic negative captions' tokens (K, L), made in the main process."""
        return dataclasses.replace(batch, negatives=bundle.tokenizer(data.negative_captions.for_batch(batch.keys)))

    main = Source(cg_data.make_loader(dataset, data.sampler, collate, c.num_workers, pin), data.sampler,
                  add_negatives if data.negative_captions is not None else None)
    if not c.pretrain.steps:
        return main, None
    if not any(p.requires_grad for name, p in bundle.model.named_parameters() if not name.startswith("visual")):
        raise ClearglassError("train config: pretrain.steps > 0 trains the text tower, but lock.lock_text freezes "
                              "all of it")
    pairs = cg_data.text_pretrain_pairs(data.concepts)
    sampler = cg_data.TextPairSampler(len(pairs), c.pretrain.batch_size, c.seed, rank, world_size)
    return main, Source(cg_data.make_loader(cg_data.TextPairDataset(pairs, bundle.tokenizer), sampler,
                                            cg_data.collate_text_pairs, c.num_workers, pin), sampler)


def _trainable(model: nn.Module, loss_fn: nn.Module, c: TrainConfig) -> list[tuple[str, nn.Parameter]]:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params += [(f"loss.{n}", p) for n, p in loss_fn.named_parameters()]
    if not params:
        raise ClearglassError(f"train config: nothing to train: every parameter of {c.model!r} is locked")
    return params


def _fill_text_cache(parts: Parts, path: Path) -> None:
    """Load the stored frozen-text outputs, encode every caption of the data (and validation) not in them yet, and
    store them again when that added any."""
    cache = parts.text_cache
    if path.is_file():
        cache.load(path)
    field = parts.config.caption_field
    captions = {cap for g in parts.data.index.groups for im in g.images for cap in getattr(im, field)}
    if parts.validation is not None:
        captions |= {cap for c in parts.validation.concepts for im in c.test_images
                     for cap in im.old_captions + im.new_captions}
    before = len(cache.store)
    cache.fill(parts.bundle.tokenizer(sorted(captions)), progress=parts.rank == 0)
    if parts.rank == 0 and len(cache.store) > before:
        cache.save(path)


@dataclass(frozen=True)
class Best:
    """The best validation so far: its score and step, and the evaluations since without a better score."""

    score: float | None = None
    step: int | None = None
    bad_evals: int = 0


class Run:
    """One training run: its ``Parts`` (``build``) and what changes per step (the step count, the latest metrics,
    the best validation). Build it, optionally ``restore`` it, then ``step`` it batch by batch."""

    def __init__(self, config: TrainConfig, rank: int = 0, world_size: int = 1,
                 device: torch.device | None = None) -> None:
        self.parts = build(config, rank, world_size, device)
        self.step_count = 0
        self.metrics: dict[str, Any] = {}  # the latest logged row (a finished run resumed keeps its own)
        self.best = Best()

    config = property(lambda self: self.parts.config)
    rank = property(lambda self: self.parts.rank)
    world_size = property(lambda self: self.parts.world_size)
    model = property(lambda self: self.parts.model)
    base = property(lambda self: self.parts.base)
    text_cache = property(lambda self: self.parts.text_cache)
    main = property(lambda self: self.parts.main)
    out = property(lambda self: Path(self.parts.config.out))

    @property
    def total_steps(self) -> int:
        """Caption pre-training steps plus main steps."""
        return self.config.pretrain.steps + self.config.steps

    # -- resume -----------------------------------------------------------------------------------------------

    def restore(self, checkpoint: Path, allow_changes: bool = False) -> None:
        """Continue from a checkpoint of this run: weights, optimiser, samplers, RNG, validation record. A setting
        that decides the result (all but ``FREE_ON_RESUME``) changed since the checkpoint is an error naming each,
        unless ``allow_changes``."""
        meta = read_checkpoint_metadata(checkpoint)
        changed = changed_settings(meta.get("train_config") or {}, self.config.to_dict())
        if changed and not allow_changes:
            raise ClearglassError(
                f"resume {checkpoint}: {len(changed)} setting(s) that decide the result differ from the run's: "
                f"{'; '.join(changed)}; resume with its settings ({checkpoint.parent.parent / 'config.json'}), "
                "train into another --out, or pass --resume-allow-changes to continue with the new ones")
        if checkpoint_dataset_sha256(meta) != self.parts.data.sha256:
            raise ClearglassError(
                f"resume {checkpoint}: trained on data sha256 {checkpoint_dataset_sha256(meta)[:12]}, but "
                f"{self.parts.data.path} has {self.parts.data.sha256[:12]}: expected the same dataset")
        state = load_extra_state(checkpoint)
        load_weights(self.model, checkpoint, meta)
        try:
            self.parts.loss_fn.load_state_dict(state["loss"])
            self.parts.optimizer.load_state_dict(state["optimizer"])
            if self.parts.scaler is not None:
                self.parts.scaler.load_state_dict(state["scaler"])
            self.main.load_state_dict(state["main_source"])
            if self.parts.pre is not None:
                self.parts.pre.load_state_dict(state["pre_source"])
            self.step_count = int(state["step"])
            self.best = Best(**state["best"])
            set_rng_state(state["rng"][self.rank] if self.rank < len(state["rng"]) else state["rng"][0])
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise ClearglassError(f"resume {checkpoint}: its resume state does not fit this run ({e}): expected "
                                  "a checkpoint of the same model and settings") from None
        self.metrics = dict(meta["metrics"])

    # -- one step ---------------------------------------------------------------------------------------------

    def next_batch(self) -> cg_data.Batch | cg_data.TextBatch:
        """The next batch of the stage the current step belongs to."""
        if self.step_count < self.config.pretrain.steps:
            return self.parts.pre.next()
        return self.main.next()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.parts.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.parts.device.type, dtype=self.parts.autocast_dtype)

    def _terms(self, batch: cg_data.Batch | cg_data.TextBatch) -> dict[str, torch.Tensor]:
        """The loss terms of one batch (forward only)."""
        dev = self.parts.device
        if isinstance(batch, cg_data.TextBatch):
            with self._autocast():  # one forward (DDP allows one per backward)
                pairs = torch.cat([batch.old, batch.target], dim=1).to(dev)
                _, text_f, _ = self.parts.features(None, pairs)  # (B, 2, D)
            return _loss_terms(self.parts.pre_loss_fn, text_f[:, :1], text_f[:, 1:], self.step_count)
        negatives = None if batch.negatives is None else batch.negatives.to(dev, non_blocking=True)
        images, tokens = batch.images.to(dev, non_blocking=True), batch.tokens.to(dev, non_blocking=True)
        with self._autocast():
            image_f, text_f, negative_f = self.parts.features(images, tokens, negatives)
        extra = {} if negative_f is None else {"text_negatives": negative_f}
        if self.parts.named_loss.needs_level2:
            extra["level2_ids"] = batch.level2.to(dev)
        terms = _loss_terms(self.parts.loss_fn, image_f, text_f, self.step_count, **extra)
        if self.base is None:
            return terms
        with self._autocast():
            base = self.base(images, tokens)
        live = {"image": image_f, "text": text_f}
        locked = [k for k in base if not live[k].requires_grad]
        if locked:
            raise ClearglassError(f"train config: loss.self_reg_features={self.config.loss.self_reg_features!r} "
                                  f"regularises the {' and '.join(locked)} features, but no parameter behind them is "
                                  "trainable (see lock.*): the term could not change anything; choose features of "
                                  "a trained tower or set loss.self_reg=0")
        return add_self_regularisation(terms, [(live[k], base[k]) for k in base], self.config.loss.self_reg)

    def step(self, batch: cg_data.Batch | cg_data.TextBatch) -> dict[str, float]:
        """Forward, backward and one optimiser update on ``batch``; returns the named loss terms (averaged over
        ranks), the lr used, the logit scale and the gradient norm before clipping."""
        c, step = self.config, self.step_count
        if step == c.pretrain.steps and c.pretrain.steps:
            self.parts.optimizer.state.clear()  # the main stage starts with fresh moments
        lr = lr_at(c, step)
        for group in self.parts.optimizer.param_groups:
            group["lr"] = lr
        terms = self._terms(batch)
        reduced = _reduce_terms(terms, step, self.world_size)
        self.parts.optimizer.zero_grad(set_to_none=True)
        trainable = [p for _, p in self.parts.params]
        loss = terms["loss"]
        (self.parts.scaler.scale(loss) if self.parts.scaler is not None else loss).backward()
        _average_loss_grads(self.parts.loss_fn, self.world_size)
        if self.parts.scaler is not None:
            self.parts.scaler.unscale_(self.parts.optimizer)
        grad_norm = _clip(trainable, c.grad_clip)
        if self.parts.scaler is not None:
            self.parts.scaler.step(self.parts.optimizer)
            self.parts.scaler.update()
        else:
            if not math.isfinite(grad_norm):
                raise ClearglassError(
                    f"step {step}: gradient norm is {grad_norm} with loss {float(loss):.6g}: stopping before the"
                    " weights become non-finite (try a lower lr or precision fp32)")
            self.parts.optimizer.step()
        if self.parts.scale_owner.logit_scale is not None:
            with torch.no_grad():
                self.parts.scale_owner.logit_scale.clamp_(0, LN_100)
        self.step_count += 1
        stage = "pretrain" if step < c.pretrain.steps else "main"
        scale = float(torch.as_tensor(self.parts.scale_owner.outer_scale()).detach())
        return {**reduced, "stage": stage, "lr": lr, "logit_scale": scale, "grad_norm": grad_norm}

    # -- validation and checkpoints ---------------------------------------------------------------------------

    def validate(self) -> dict[str, float]:
        """Score the model on the validation file (rank 0; the decision is shared with every rank): the configured
        metrics, their mean ``val/score`` and the pass's ``val/seconds``; the best score so far is kept as best.pt
        with keep_best."""
        row: dict[str, Any] = {}
        if self.rank == 0:
            start = time.perf_counter()
            row = self.parts.validation.score(self.parts)
            row["val/seconds"] = time.perf_counter() - start
            if self.best.score is None or row["val/score"] > self.best.score:
                self.best = Best(row["val/score"], self.step_count)
                if self.config.keep_best:
                    self._save_weights(self.out / "checkpoints" / "best.pt", row, None)
            else:
                self.best = dataclasses.replace(self.best, bad_evals=self.best.bad_evals + 1)
        if self.world_size > 1:
            shared = [self.best]
            dist.broadcast_object_list(shared, src=0)
            self.best = shared[0]
        self.model.train()
        frozen_modules_to_eval(self.model)
        return row

    def should_stop(self) -> bool:
        """Early stopping: ``early_stop_patience`` evaluations in a row without a better validation score."""
        patience = self.config.early_stop_patience
        return bool(patience) and self.best.bad_evals >= patience

    def _save_weights(self, path: Path, metrics: dict, extra: dict | None) -> Path:
        c = self.config
        return save_checkpoint(self.parts.bundle, path, train_config=c.to_dict(), dataset_sha256=self.parts.data.sha256,
                               metrics=metrics, extra_state=extra, save_frozen=c.save_frozen,
                               info={"step": self.step_count, "best": dataclasses.asdict(self.best)})

    def save(self) -> Path:
        """Write ``checkpoints/step_N.pt`` with its resume state and point ``latest.json`` at it (every rank calls
        this; rank 0 writes)."""
        rng = [rng_state()]
        if self.world_size > 1:
            rng = [None] * self.world_size
            dist.all_gather_object(rng, rng_state())
        path = self.out / "checkpoints" / f"step_{self.step_count:06d}.pt"
        if self.rank == 0:
            extra = {"step": self.step_count, "optimizer": self.parts.optimizer.state_dict(),
                     "scaler": self.parts.scaler.state_dict() if self.parts.scaler is not None else None,
                     "loss": self.parts.loss_fn.state_dict(), "main_source": self.main.state_dict(),
                     "pre_source": self.parts.pre.state_dict() if self.parts.pre is not None else None, "rng": rng,
                     "best": dataclasses.asdict(self.best)}
            self._save_weights(path, self.metrics, extra)
            write_json_atomic({"checkpoint": str(path.relative_to(self.out)), "step": self.step_count,
                               "best": dataclasses.asdict(self.best)}, self.out / "latest.json")
        if self.world_size > 1:
            dist.barrier()
        return path

    def result(self, checkpoint: Path | None) -> dict:
        """What a finished run reports: step, metrics, paths, data identity, skips and fills, the best validation."""
        data = self.parts.data
        return {"step": self.step_count, "metrics": self.metrics, "out": str(self.out),
                "checkpoint": str(checkpoint) if checkpoint is not None else None,
                "metrics_path": str(self.out / "metrics.jsonl"), "dataset_sha256": data.sha256,
                "skipped_groups": data.index.skipped, "world_size": self.world_size,
                "unknown_hard_negatives": data.index.unknown_hard_negatives, "filled_hard_negatives": data.filled,
                "best": dataclasses.asdict(self.best), "stopped_early": self.should_stop(),
                "synthetic_negatives": dict(data.negative_captions.stats) if data.negative_captions else {}}


class _FrozenBase:
    """The frozen initial model of a run, for the self-regularisation term: its features of a batch, without gradients.

    Built before any step. Parameters the run keeps frozen never change, so the copy shares them with the model and
    copies only the trainable ones; with a FrozenTextCache the copy shares its store too, and its text features cost
    only a projection. The copy runs in eval mode (no dropout), except its batch-norm layers: each uses the batch's
    statistics exactly when the model's does (trained towers, e.g. clearglass-mini's ResNet), and its own running
    statistics never change, so the term is 0 while the model's weights are the base's. Under DDP each rank compares
    its own features with the base's features of its own pairs.
    """

    def __init__(self, model: nn.Module, text_cache: FrozenTextCache | None, which: str) -> None:
        shared = {id(p): p for p in model.parameters() if not p.requires_grad}  # deepcopy's memo: kept, not copied
        base = copy.deepcopy(model, shared).eval().requires_grad_(False)
        self.norms = [(live, frozen) for live, frozen in zip(model.modules(), base.modules())
                      if isinstance(frozen, nn.modules.batchnorm._BatchNorm)]  # (model's layer, base's layer)
        for _, frozen in self.norms:
            frozen.track_running_stats = False  # batch statistics in training mode, its stored ones in eval mode
        base_cache = None
        if text_cache is not None:
            base_cache = FrozenTextCache(base)
            base_cache.store = text_cache.store  # one frozen transformer, one store of its outputs
        self.features, self.which = Features(base, base_cache), which

    def __call__(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """(M, N, C, H, W) images and (M, N, L) tokens -> the base's (M, N, D) "image" and/or "text" features."""
        for live, frozen in self.norms:
            frozen.training = live.training
        m, n = tokens.shape[:2]
        out = {}
        with torch.no_grad():
            if self.which in ("image", "both"):
                out["image"] = self.features.model.encode_image(images.flatten(0, 1)).unflatten(0, (m, n))
            if self.which in ("text", "both"):
                out["text"] = self.features.encode_text(tokens.flatten(0, 1)).unflatten(0, (m, n))
        return out


class _Validation:
    """The validation pass of a run: the test images of ``eval_data``, encoded once per evaluation."""

    def __init__(self, c: TrainConfig) -> None:
        self.data = Path(c.eval_data)
        self.concepts = load_concepts(self.data)
        self.root = ImageRoot(Path(c.eval_images) if c.eval_images else dataset_image_root(self.data),
                              c.allow_outside_root)
        self.keys, self.eval_config = c.validation_keys(), c.validation_config()

    def score(self, parts: Parts) -> dict[str, float]:
        """``val/<metric>`` for each configured metric and their mean ``val/score``, of the run's model now."""
        encoder = ModelEncoder(parts.bundle, batch_size=256, device=parts.device, encode_text=parts.text_cache,
                               progress=False)
        results = Results.of(evaluate_model(encoder, self.concepts, self.root, self.eval_config))
        missing = [str(k) for k in self.keys if results.row(k) is None]
        if missing:
            raise ClearglassError(f"{self.data}: validation gave no {missing}; it gave "
                                  f"{sorted(str(k) for k in results.keys())}")
        row = {f"val/{k}": results.value(k) for k in self.keys}
        row["val/score"] = float(np.mean(list(row.values())))
        return row


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
    return float(torch.nn.utils.clip_grad_norm_(grads, max_norm if max_norm is not None else math.inf))


class _Interrupts:
    """While active, SIGINT and SIGTERM only set a flag that the loop reads between steps (all ranks agree)."""

    def __init__(self, world_size: int) -> None:
        self.world_size, self.flag, self.previous = world_size, False, {}

    def __enter__(self) -> _Interrupts:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.flag = True

    def requested(self) -> bool:
        """Whether any rank was asked to stop."""
        if self.world_size == 1:
            return self.flag
        flag = torch.tensor([float(self.flag)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


RUN_FILES = ("metrics.jsonl", "latest.json", "checkpoints")  # what a run writes into its folder, beside config.json
LOCK_FILE = "train.lock"
# settings (a section, or a dotted key) a resumed run may change: where and how fast it runs, what it logs (loss.chunk
# tiles the same loss; eval_tasks only limits which tasks eval_metrics may name); every other one decides the result
FREE_ON_RESUME = {"data", "out", "device", "log_every", "checkpoint_every", "report_to", "num_workers", "cache_images",
                  "text_cache_file", "loss.chunk", "eval_tasks"}


def changed_settings(saved: dict, now: dict) -> list[str]:
    """``key old -> new`` for each setting outside ``FREE_ON_RESUME`` that differs between a checkpoint's train
    config and ``now`` (keys the checkpoint does not record are not compared; the data is compared by its sha256)."""
    old, new = flatten(saved), flatten(now)
    return [f"{k} {old[k]!r} -> {new[k]!r}" for k in sorted(old.keys() & new.keys())
            if not {k, k.split(".")[0]} & FREE_ON_RESUME and old[k] != new[k]]


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run folder ``out`` (created if needed) while the block runs: a second run into
    it fails at once naming the lock. A POSIX record lock (``lockf``) on ``out/train.lock``: released on every exit,
    also when the process is killed, so a stale lock file never blocks; unlike ``flock`` it is owned by the process
    alone, so loader workers forked from a killed run (which live on for a moment) do not keep holding it."""
    if out.is_file():
        raise ClearglassError(f"out = {out}: is a file; expected an output folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ClearglassError(f"out = {out}: cannot create the run folder or its lock ({e.strerror or e})") from None
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise ClearglassError(f"out = {out}: cannot lock {out / LOCK_FILE} ({e.strerror})") from None
            raise ClearglassError(f"out = {out}: another run is training into this folder (it holds "
                                  f"{out / LOCK_FILE}); wait for it to end, or train into another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # for a person who wonders who holds it
        yield
    finally:
        os.close(fd)


def _refuse_earlier_run(out: Path, overwrite: bool) -> None:
    """A fresh run into a folder that holds a run is refused (it would mix with the old metrics and checkpoints),
    unless ``overwrite``, which removes the old run's files first."""
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found and not overwrite:
        raise ClearglassError(f"out = {out}: holds a run already ({', '.join(found)}); continue it with --resume auto, "
                              "or train into another --out")
    for name in found:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
        else:
            (out / name).unlink()


def _start(run: Run, resume: str | None, allow_changes: bool = False,
           overwrite: bool = False) -> tuple[Path | None, Reporters | None]:
    """Resume (``auto``: from ``out/latest.json`` if present), and prepare the output folder (made by run_lock) on
    rank 0. Only rank 0 removes orphan temporary files: it alone writes there, and another rank removing them could
    take a file rank 0 is writing at that moment."""
    out, config = run.out, run.config
    if run.rank == 0:
        if resume is None:
            _refuse_earlier_run(out, overwrite)
        for folder in (out, out / "checkpoints"):
            remove_orphan_temps(folder)
    resume_path = latest_checkpoint(out) if resume == "auto" else Path(resume) if resume else None
    if resume_path is not None:
        run.restore(resume_path, allow_changes)
    if run.rank != 0:
        return resume_path, None
    write_json_atomic(config.to_dict(), out / "config.json")
    metrics_path = out / "metrics.jsonl"
    if resume_path is not None:
        truncate_metrics(metrics_path, run.step_count)
    elif metrics_path.exists():
        metrics_path.unlink()
    return resume_path, Reporters(config.report_to, out, config.to_dict())


def _write_row(run: Run, reporters: Reporters | None, row: dict) -> None:
    if reporters is None:
        return
    with open(run.out / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    reporters.log(row)


def train(config: TrainConfig, resume: str | None = None, allow_changes: bool = False,
          overwrite: bool = False) -> dict:
    """Run training; returns the final metrics, the step, the paths (out, checkpoint, metrics) and the best
    validation step. ``resume``: None (fresh run; refused where ``out`` holds a run, unless ``overwrite``), 'auto'
    (continue from ``out/latest.json`` if present) or a checkpoint path; a resume with other settings that decide
    the result is refused unless ``allow_changes``. The run folder is locked while it runs (:func:`run_lock`).
    SIGINT/SIGTERM write a checkpoint at the last completed step and raise TrainingInterrupted."""
    rank, world_size, device = setup_distributed(config.device)
    try:
        with run_lock(Path(config.out)) if rank == 0 else contextlib.nullcontext():
            return _train(config, resume, allow_changes, overwrite, rank, world_size, device)
    finally:
        if world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: TrainConfig, resume: str | None, allow_changes: bool, overwrite: bool, rank: int,
           world_size: int, device: torch.device) -> dict:
    reporters = None
    try:
        run = Run(config, rank, world_size, device)
        resume_path, reporters = _start(run, resume, allow_changes, overwrite)
        c, last = config, latest_checkpoint(run.out) if resume_path is not None else None
        start = time.perf_counter()
        with _Interrupts(world_size) as interrupts, tqdm(total=run.total_steps, initial=run.step_count, desc="train",
                                                         disable=rank != 0, dynamic_ncols=True) as bar:
            while run.step_count < run.total_steps and not run.should_stop():
                run.metrics = run.step(run.next_batch())
                step, row = run.step_count, {}
                bar.update(1)
                if step % c.log_every == 0 or step == run.total_steps:
                    row = {"step": step, **run.metrics}
                    bar.set_postfix(loss=f"{run.metrics['loss']:.4f}", lr=f"{run.metrics['lr']:.2e}")
                if c.eval_every and (step % c.eval_every == 0 or step == run.total_steps):
                    row = {"step": step, **row, **run.validate()}
                if row:
                    _write_row(run, reporters, {**row, "time": time.perf_counter() - start})
                if step % c.checkpoint_every == 0 or step == run.total_steps or run.should_stop():
                    last = run.save()
                if interrupts.requested():
                    last = last if last is not None and last.stem == f"step_{step:06d}" else run.save()
                    raise TrainingInterrupted(step, last, run.out)
        return run.result(last)
    finally:
        if reporters is not None:
            reporters.close()


def print_result(result: dict) -> None:
    """The one line both train entry points print on rank 0: step, checkpoint, metrics path, metrics, best."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: result[k] for k in ("step", "checkpoint", "metrics_path", "metrics", "best")}))
        sys.stdout.flush()
