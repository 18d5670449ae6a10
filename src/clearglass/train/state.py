"""Run state as plain data: RNG states, batch sources that count what they consumed, the metrics file and the
``latest.json`` pointer. Everything here saves as tensors, numbers, strings, lists and dicts, so a resume state
loads with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from clearglass.errors import ClearglassError
from clearglass.io import read_json, write_text_atomic

if TYPE_CHECKING:
    from clearglass.data import EpochSampler


def rng_state() -> dict:
    """The python, numpy, torch and CUDA generator states, as tensors and plain data."""
    version, internal, gauss = random.getstate()
    _, key, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Source:
    """Endless batches from an epoch sampler, counting consumed batches so (epoch, position) is exact for resume;
    ``finish`` completes each batch in the main process (e.g. adds synthetic negatives).

    The sampler keeps a cursor too, but of the batches it has handed to the loader, which runs ahead of those
    consumed when workers prefetch; so the consumed count lives here and sets the sampler's cursor at each epoch."""

    def __init__(self, loader: torch.utils.data.DataLoader, sampler: EpochSampler,
                 finish: Callable[[Any], Any] | None = None) -> None:
        self.loader = loader
        self.sampler = sampler
        self.finish = finish
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
            return self.finish(batch) if self.finish is not None else batch


def latest_checkpoint(out: Path) -> Path | None:
    """The checkpoint ``out/latest.json`` points at, or None when there is none yet."""
    pointer = out / "latest.json"
    if not pointer.is_file():
        return None
    raw = read_json(pointer, "latest-checkpoint pointer", dict)
    if not isinstance(raw.get("checkpoint"), str):
        raise ClearglassError(f"{pointer}: expected {{\"checkpoint\": \"checkpoints/step_N.pt\", ...}}")
    return out / raw["checkpoint"]


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past ``step`` (written by a run that died after its last checkpoint)."""
    if not path.is_file():
        return
    keep = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # a row cut short by a kill: it came after the checkpoint anyway
                break
            raise ClearglassError(f"{path}:{number}: not a JSON metrics row") from None
        if row["step"] <= step:
            keep.append(line)
    write_text_atomic("".join(ln + "\n" for ln in keep), path)
