"""Training throughput on the default model (64 px images, text tower frozen as in default-grouped.json).

Measured side by side in one run:
  * the trainer's step (forward, loss, backward, clipping, AdamW), grouped loss on M x N group batches vs the CLIP
    loss on M*N random pairs, alternating the two step by step on one model, medians (target grouped/clip <= 1.05);
  * batches per second the group loader produces (num_workers and cache as in the config) vs steps per second the
    model consumes (target >= 10x).

Usage: ``python bench/bench_train.py [--data MAGIC.json] [--steps 30]``. Without ``--data`` a synthetic
MAGIC dataset (48 concepts x 8 noise images, chained hard negatives) is written to a temporary folder.
Prints ``name: value`` lines and writes them as JSON to ``--json`` when given.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clearglass import data as cg_data
from clearglass.losses import GroupedContrastiveLoss
from clearglass.magic.schema import ConceptRecord, ImageRecord, load_concepts, save_concepts
from clearglass.models import load_model, lock_towers
from clearglass.train import TrainConfig
from clearglass.train.run import Features, make_optimizer


def synthetic_magic(root: Path, concepts: int = 48, images: int = 8, size: int = 80) -> Path:
    """A MAGIC JSON of noise PNGs; concept k's hard negatives are k-1 and k+1."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for k in range(concepts):
        train_images = []
        for j in range(images):
            pixels = np.random.default_rng([k, j]).integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(root / "images" / f"c{k}_{j}.png")
            train_images.append(ImageRecord(f"images/c{k}_{j}.png", [f"a photo of item {k} {j}"],
                                            [f"an example of idea {k}", f"idea {k} in variant {j}"], f"c{k}"))
        negatives = [f"c{i}" for i in (k - 1, k + 1) if 0 <= i < concepts]
        records.append(ConceptRecord(f"c{k}", negatives, train_images))
    save_concepts(records, root / "magic.json")
    return root / "magic.json"


def interleaved_step_seconds(config: TrainConfig, steps: int) -> dict[str, float]:
    """Median seconds of one optimisation step (forward, loss, backward, AdamW) with each loss, alternating the two
    on one model so both see the same machine load; batches are pre-loaded, so this is the model's consumption."""
    torch.manual_seed(config.seed)
    bundle = load_model(config.model)
    lock_towers(bundle, **dataclasses.asdict(config.lock))
    bundle.model.logit_scale.requires_grad_(False)
    index = cg_data.GroupIndex(load_concepts(config.data), config.caption_field, config.pairs_per_group)
    dataset = cg_data.PairDataset(index, Path(config.data).parent, bundle.preprocess_train, bundle.tokenizer, True)
    m, n = config.groups_per_batch, config.pairs_per_group
    group_loader = cg_data.make_loader(dataset, cg_data.GroupBatchSampler(index, m, n, config.seed),
                                       cg_data.GroupCollate(n))
    pair_loader = cg_data.make_loader(dataset, cg_data.RandomPairSampler(index, m * n, config.seed),
                                      cg_data.GroupCollate(1))
    batches = {"grouped": list(itertools.islice(group_loader, 4)), "clip": list(itertools.islice(pair_loader, 4))}
    losses = {
        "grouped": GroupedContrastiveLoss(config.loss.outer, config.loss.inner, config.loss.alpha, config.loss.tau,
                                          config.loss.tau_inner),
        "clip": GroupedContrastiveLoss("clip", None, tau=config.loss.tau),
    }
    params = [(name, p) for name, p in bundle.model.named_parameters() if p.requires_grad]
    optimizer = make_optimizer(params, config)
    features = Features(bundle.model)
    bundle.model.train()
    times: dict[str, list[float]] = {"grouped": [], "clip": []}
    for i in range(steps + 2):
        for kind in (("grouped", "clip") if i % 2 else ("clip", "grouped")):
            batch = batches[kind][i % 4]
            images, tokens = batch.images, batch.tokens  # (M, N, C, H, W), (M, N, L)
            start = time.perf_counter()
            image_f, text_f, _ = features(images, tokens)
            loss = losses[kind](image_f, text_f)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
            optimizer.step()
            if i >= 2:  # the first two rounds warm up allocators and caches
                times[kind].append(time.perf_counter() - start)
    return {kind: statistics.median(t) for kind, t in times.items()}


def loader_batches_per_second(config: TrainConfig, batches: int) -> float:
    """Batches per second of the group loader alone, as the trainer builds it."""
    bundle = load_model(config.model)
    index = cg_data.GroupIndex(load_concepts(config.data), config.caption_field, config.pairs_per_group)
    dataset = cg_data.PairDataset(index, Path(config.data).parent, bundle.preprocess_train, bundle.tokenizer,
                                  config.cache_images)
    sampler = cg_data.GroupBatchSampler(index, config.groups_per_batch, config.pairs_per_group, config.seed)
    loader = cg_data.make_loader(dataset, sampler, cg_data.GroupCollate(config.pairs_per_group), config.num_workers)
    produced, start = 0, 0.0
    for epoch in range(1000):
        sampler.set_epoch(epoch)
        for _ in loader:
            produced += 1
            if produced == len(sampler):  # the first epoch fills the image cache; time the rest
                start = time.perf_counter()
            if produced == len(sampler) + batches:
                return batches / (time.perf_counter() - start)
    raise RuntimeError("unreachable: 1000 epochs")


def main() -> None:
    """Run the side-by-side measurements and print ``name: value`` lines."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a MAGIC JSON (default: a synthetic one)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--loader-batches", type=int, default=60)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else synthetic_magic(Path(tmp) / "magic")
        grouped = TrainConfig.load("default-grouped", [f"data={json.dumps(str(data))}"])
        step = interleaved_step_seconds(grouped, args.steps)
        grouped_s, clip_s = step["grouped"], step["clip"]
        loader = loader_batches_per_second(grouped, args.loader_batches)
        results = {
            "batch_pairs": grouped.groups_per_batch * grouped.pairs_per_group,
            "groups_per_batch": grouped.groups_per_batch,
            "pairs_per_group": grouped.pairs_per_group,
            "step_seconds_grouped": grouped_s,
            "step_seconds_clip": clip_s,
            "step_time_ratio_grouped_over_clip": grouped_s / clip_s,
            "loader_batches_per_second": loader,
            "model_steps_per_second": 1.0 / grouped_s,
            "loader_over_model_ratio": loader * grouped_s,
        }
    for name, value in results.items():
        print(f"{name}: {value:.4g}" if isinstance(value, float) else f"{name}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
