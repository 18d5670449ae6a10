"""Scoring the demo's models on every subset. All models share one frozen MiniLM, so its pooled outputs are computed
once per distinct text for all of them (the projection still runs per model): exact, and several times faster than
encoding every subset's texts again for every model."""

from __future__ import annotations

from pathlib import Path

import torch

from clearglass.errors import ClearglassError
from clearglass.evaluate import EvalConfig, ModelEncoder, evaluate_model
from clearglass.experiments.demo.diagnostics import add_clustering
from clearglass.magic.schema import ConceptRecord, load_concepts
from clearglass.models import FrozenTextCache, ModelBundle, frozen_modules_to_eval, lock_towers

RECOGNITION_SUBSETS = ("test_seen", "test_novel", "test_held_out", "val_seen", "val_novel", "cross_seen", "cross_novel",
                       "cross_held_out")
RETENTION_SUBSETS = ("retention_val", "retention_test")


class DemoEvaluator:
    """Evaluates bundles on the demo's subsets (those present in ``paths``), sharing one frozen-text store."""

    def __init__(self, paths: dict[str, Path], k: int, n_boot: int, seed: int) -> None:
        self.paths = paths
        self.splits = {name: load_concepts(p) for name, p in paths.items()}
        self.concept_config = EvalConfig(k=k, fields=["concept_level1", "concept_level2"], levels=[1, 2],
                                         n_boot=n_boot, seed=seed)
        self.retention_config = EvalConfig(tasks=["retrieval", "zero_shot"], levels=[1], retrieval_ks=[1, 5],
                                           n_boot=n_boot, seed=seed)
        self.store: dict[bytes, torch.Tensor] = {}
        self.transformer: str | None = None

    def encoder(self, bundle: ModelBundle) -> ModelEncoder:
        """An encoder whose text side reads the shared store (checked to be the same frozen transformer)."""
        lock_towers(bundle, lock_text=True)
        frozen_modules_to_eval(bundle)
        cache = FrozenTextCache(bundle)
        digest = cache.transformer_sha256()
        if self.transformer not in (None, digest):
            raise ClearglassError(f"model {bundle.name!r}: its text transformer differs from the other models'; the "
                                  "demo's models must share the base's frozen MiniLM")
        self.transformer, cache.store = digest, self.store
        return ModelEncoder(bundle, batch_size=128, encode_text=cache, progress=False)

    def evaluate(self, bundle: ModelBundle, name: str, subsets: tuple[str, ...] | None = None) -> dict[str, dict]:
        """Results of one model on each subset (default: all present), with the image-only diagnostic on tests."""
        encoder = self.encoder(bundle)
        wanted = subsets or tuple(s for s in RECOGNITION_SUBSETS + RETENTION_SUBSETS if s in self.paths)
        out = {}
        for subset in wanted:
            root = self.paths[subset].parent
            config = self.retention_config if subset in RETENTION_SUBSETS else self.concept_config
            out[subset] = evaluate_model(encoder, self.splits[subset], root, config, model=name, data=subset)
            if subset in ("test_seen", "test_novel", "test_held_out"):
                add_clustering(out[subset], encoder, self.splits["train"], self.splits[subset], root,
                               [1, 2] if subset == "test_seen" else [2], self.concept_config)
        return out

    def concepts(self, subset: str) -> list[ConceptRecord]:
        """The concept records of one subset."""
        return self.splits[subset]
