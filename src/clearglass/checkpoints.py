"""Checkpoints: model weights, a metadata JSON beside them, and the plain-data resume state of a run.

Layout of ``ckpt.pt``: a plain state dict (tensors only, read with ``weights_only=True``). By default it is *slim*:
it leaves out the frozen tensors that the model's base rebuilds exactly (the MiniLM package's text transformer, an
open_clip pretrained tag, a Hugging Face directory, or an earlier checkpoint), so a default-model checkpoint holds
the image tower and the projections only. ``save_frozen=True`` writes every tensor instead, for checkpoints that
travel to a machine without the base (such a file also loads with ``open_clip.create_model(name, pretrained=path)``).

``ckpt.json`` (format ``clearglass-checkpoint/2``): how to rebuild the model (kind, architecture, model config),
its ``base`` spec and the sha256 of the tensors left out (checked when it loads), the training config, the dataset's
sha256 and the metrics. ``ckpt.extra.pt``: the resume state (optimizer, sampler, RNG), tensors and plain data only.
Format 1 checkpoints (full state dicts, written before slim checkpoints) still load.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from clearglass.errors import ClearglassError
from clearglass.io import json_writer, load_torch, read_json, torch_writer, write_together

if TYPE_CHECKING:  # models imports this module
    from clearglass.models import ModelBundle, ModelSource

FORMAT = "clearglass-checkpoint/2"
FORMATS = ("clearglass-checkpoint/1", FORMAT)


def metadata_path(checkpoint: str | os.PathLike) -> Path:
    """The metadata JSON beside a checkpoint: ``ckpt.pt`` -> ``ckpt.json``."""
    return Path(checkpoint).with_suffix(".json")


def extra_state_path(checkpoint: str | os.PathLike) -> Path:
    """The resume state beside a checkpoint: ``ckpt.pt`` -> ``ckpt.extra.pt``."""
    path = Path(checkpoint)
    return path.with_name(path.stem + ".extra.pt")


def rebuildable_frozen_keys(model: nn.Module, source: ModelSource) -> list[str]:
    """State-dict keys that the model's base (``source.base``) rebuilds exactly: frozen parameters, and buffers of
    modules without a trainable parameter, under the prefixes ``source.rebuildable`` names (sorted)."""
    prefixes = tuple(source.rebuildable) if source.base else ()
    if not prefixes:
        return []
    params = dict(model.named_parameters())
    keys = []
    for key in model.state_dict():
        if not key.startswith(prefixes):
            continue
        if key in params:
            frozen = not params[key].requires_grad
        else:
            owner = model.get_submodule(key.rsplit(".", 1)[0]) if "." in key else model
            frozen = not any(p.requires_grad for p in owner.parameters())
        if frozen:
            keys.append(key)
    return sorted(keys)


def tensors_sha256(state: dict[str, Any], keys: list[str]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``state[k]`` for ``keys`` in order."""
    digest = hashlib.sha256()
    for k in keys:
        t = state[k].detach().cpu().contiguous()
        digest.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(bundle: ModelBundle, path: str | os.PathLike, *, train_config: dict, dataset_sha256: str,
                    metrics: dict, extra_state: dict | None = None, save_frozen: bool = False,
                    info: dict | None = None) -> Path:
    """Write the bundle's weights (slim unless ``save_frozen``), the metadata JSON and, given, the resume state, each
    atomically; returns the .pt path. ``info`` adds keys to the metadata (e.g. the best validation step)."""
    source = getattr(bundle, "source", None)
    if source is None:
        raise ClearglassError(f"save_checkpoint {path}: got a {type(bundle).__name__} without a ModelSource: the model "
                              "was not built by load_model, so it cannot be rebuilt")
    model = getattr(bundle.model, "module", bundle.model)  # DistributedDataParallel
    path = Path(path)
    if path.suffix not in (".pt", ".pth"):
        raise ClearglassError(f"checkpoint path {path}: expected a .pt or .pth file name")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    omitted = [] if save_frozen else rebuildable_frozen_keys(model, source)
    writes = {path: torch_writer({k: v for k, v in state.items() if k not in set(omitted)})}
    if extra_state is not None:
        writes[extra_state_path(path)] = torch_writer(extra_state)
    meta = {
        "format": FORMAT,
        "kind": source.kind,
        "architecture": source.architecture,
        "spec": bundle.name,
        "weights": path.name,
        "extra_state": extra_state_path(path).name if extra_state is not None else None,
        "model_config": source.config,
        "base": source.base if omitted else None,
        "omitted": {"keys": len(omitted), "prefixes": list(source.rebuildable),
                    "sha256": tensors_sha256(state, omitted)} if omitted else None,
        "train_config": train_config,
        "dataset_sha256": dataset_sha256,
        "metrics": metrics,
        **(info or {}),
    }
    writes[metadata_path(path)] = json_writer(meta)  # last: a .json names a complete checkpoint
    write_together(writes)  # none of the three replaces its file unless all were written
    return path


def read_checkpoint_metadata(path: str | os.PathLike) -> dict:
    """The metadata JSON of a checkpoint, checked for a known format and the fields that rebuild the model."""
    meta_path = metadata_path(path)
    if not meta_path.is_file():
        raise ClearglassError(f"checkpoint {path}: metadata {meta_path} not found")
    meta = read_json(meta_path, "checkpoint metadata", dict)
    missing = [k for k in ("kind", "architecture", "model_config") if k not in meta]
    if meta.get("format") not in FORMATS or missing:
        raise ClearglassError(f"checkpoint metadata {meta_path}: expected format {FORMAT!r} (or an earlier "
                              f"{FORMATS[0]!r}) with kind, architecture and model_config; missing {missing}")
    return meta


def checkpoint_dataset_sha256(meta: dict) -> str:
    """The dataset sha256 a checkpoint was trained on (format 1 called it ``data_hash``)."""
    return meta.get("dataset_sha256", meta.get("data_hash", ""))


def load_weights(model: nn.Module, path: str | os.PathLike, meta: dict | None = None) -> None:
    """Load a checkpoint's weights (its metadata ``meta``; None: a full state dict) into ``model``, built from its
    base when slim; every key must match, and the tensors a slim checkpoint left out must be those it was saved
    with."""
    state = load_torch(path, "checkpoint weights")
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise ClearglassError(f"checkpoint {path}: expected a state dict of tensors")
    omitted = (meta or {}).get("omitted")
    keys = set(model.state_dict())
    unexpected, left_out = sorted(set(state) - keys), sorted(keys - set(state))
    if unexpected or (left_out and omitted is None):
        raise ClearglassError(f"checkpoint {path}: its weights do not fit {type(model).__name__}: missing "
                              f"{left_out[:5]} ({len(left_out)}), unexpected {unexpected[:5]} ({len(unexpected)})")
    if omitted is not None and (len(left_out) != omitted["keys"]
                                or tensors_sha256(model.state_dict(), left_out) != omitted["sha256"]):
        raise ClearglassError(
            f"checkpoint {path}: its base {meta['base']!r} no longer gives the {omitted['keys']} frozen tensors it was "
            f"saved without (under {omitted['prefixes']}); load it where that base is the same, or save checkpoints "
            "with save_frozen=true")
    try:
        model.load_state_dict(state, strict=omitted is None)
    except RuntimeError as e:  # "Error(s) in loading state_dict for X:", then one line per tensor
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        first = lines[1] if len(lines) > 1 else lines[0]
        raise ClearglassError(f"checkpoint {path}: cannot load its weights into {type(model).__name__}: {first}") \
            from None


def load_extra_state(path: str | os.PathLike) -> dict:
    """The resume state saved with a checkpoint (optimizer state, step, sampler, RNG): tensors and plain data."""
    meta = read_checkpoint_metadata(path)
    if meta.get("extra_state") is None:
        raise ClearglassError(f"checkpoint {path}: saved without a resume state")
    name = meta["extra_state"]
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or os.sep in name:
        raise ClearglassError(f"checkpoint metadata {metadata_path(path)}: extra_state {name!r}: expected the file "
                              "name of the resume state beside the checkpoint")
    extra = Path(path).with_name(name)
    if meta["format"] != FORMAT:
        raise ClearglassError(f"checkpoint {path}: its resume state {extra.name} was written by clearglass 0.1 as "
                              "pickled Python objects, which are not loaded (a pickle can run code); its weights still "
                              f"load as a model (model={path}), but the run cannot resume: start a fresh one")
    state = load_torch(extra, "resume state")
    if not isinstance(state, dict):
        raise ClearglassError(f"{extra}: expected a resume state object, got {type(state).__name__}")
    return state
