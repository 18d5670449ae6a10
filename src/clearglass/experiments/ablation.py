"""The hierarchy ablation on the embedded default data (rendered emoji scenes, true two-level hierarchy).

Four cumulative variants, each a train config in ``configs/train/ablation-*.json``, trained with the same steps,
batch (M groups x N pairs), learning rate, data and seeds, then scored by `clearglass.evaluate.evaluate_model`
on the same test split and compared by `clearglass.report.compare` (paired bootstrap differences vs variant 1;
with several seeds each variant's per-item hits are averaged over seeds first, as in the demo):

1. ``grouped-vit``: the grouped loss alone, on the plain ViT ``clearglass:clearglass-vit`` (the default model's
   image tower is a ResNet, so the baseline uses the ViT that variant 2 modifies, for a fair comparison);
2. ``hier-attention``: + hierarchy-aware attention (``clearglass:clearglass-vit-hier``);
3. ``synthetic-negatives``: + synthetic caption hard negatives (``synthetic_negatives.caption``, source both);
4. ``multilevel``: + the multi-level objective (instance + level1 + level2 terms, ``loss.kind='multilevel'``).

``quick`` shrinks everything (few subgroups and images, 2 steps, few bootstrap resamples) to check the plumbing;
its numbers mean nothing. Runs resume: the same command into the same folder continues an interrupted run from its
last checkpoint and retrains nothing that finished (a folder holding a run of other settings is an error).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from clearglass.config import Config
from clearglass.errors import ClearglassError
from clearglass.evaluate import EvalConfig, ModelEncoder, evaluate_model
from clearglass.experiments.seeds import merge_seeds
from clearglass.io import read_json, resolve_device, write_json_atomic
from clearglass.magic.builder import build_emoji_dataset
from clearglass.magic.schema import load_concepts
from clearglass.models import load_model
from clearglass.report import compare, write_report
from clearglass.train import CONFIG_DIR, TrainConfig, train

VARIANTS = ("grouped-vit", "hier-attention", "synthetic-negatives", "multilevel")
QUICK_SUBGROUPS = ["food-fruit", "food-vegetable", "animal-bird", "animal-mammal", "transport-ground",
                   "transport-water"]


def variant_config(variant: str) -> Path:
    """The train config file of an ablation variant."""
    return CONFIG_DIR / f"ablation-{VARIANTS.index(variant) + 1}-{variant}.json"


@dataclass
class AblationOptions(Config):
    """What the ablation runs: data size, training budget overrides, seeds, evaluation resamples."""

    quick: bool = False
    seeds: list[int] = field(default_factory=lambda: [0])
    steps: int | None = None
    images_per_subgroup: int = 12
    device: str = "auto"
    n_boot: int = 1000
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))

    def validate(self) -> None:
        """Known variants, at least one seed, steps >= 1 when given."""
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ClearglassError(f"unknown ablation variant(s) {unknown}: expected some of {list(VARIANTS)}")
        if not self.seeds or (self.steps is not None and self.steps < 1) or self.images_per_subgroup < 1:
            raise ClearglassError(f"ablation: expected seeds, steps >= 1 and images_per_subgroup >= 1; got {self}")

    def overrides(self) -> list[str]:
        """Train config overrides shared by every variant."""
        items = [f"device={json.dumps(self.device)}", "checkpoint_every=100000"]
        if self.quick:
            items += ["steps=2", "warmup=1", "groups_per_batch=4", "pairs_per_group=2", "log_every=1"]
        if self.steps is not None:
            items.append(f"steps={self.steps}")
        return items


def run_ablation(out_dir: str | os.PathLike, options: AblationOptions = AblationOptions()) -> dict:
    """Build the emoji data, train and evaluate every variant and seed, write ``report.md``, ``results.json`` and
    ``ablation.json`` (training summaries) under ``out_dir``; returns the comparison plus the summaries."""
    out_dir = Path(out_dir)
    data = build_emoji_dataset(out_dir / "data", QUICK_SUBGROUPS if options.quick else None,
                               4 if options.quick else options.images_per_subgroup, seed=0,
                               min_group_size=3 if options.quick else 5)
    concepts = load_concepts(data)
    eval_config = EvalConfig(n_boot=50 if options.quick else options.n_boot, seed=0)
    per_seed: dict[str, list[dict]] = {v: [] for v in options.variants}
    summaries = {}
    runs = [(v, s) for v in options.variants for s in options.seeds]
    for variant, seed in tqdm(runs, desc="ablation", unit="run"):
        name = variant if len(options.seeds) == 1 else f"{variant}/seed{seed}"
        run_dir = out_dir / "runs" / f"{variant}-seed{seed}"
        config = TrainConfig.load(variant_config(variant), [
            f"data={json.dumps(str(data))}", f"out={json.dumps(str(run_dir))}", f"seed={seed}", *options.overrides()])
        _check_same_config(run_dir, config)
        start = time.perf_counter()
        trained = train(config, resume="auto")  # a rerun into the same folder continues: finished runs train nothing
        seconds = time.perf_counter() - start
        device = resolve_device(config.device)
        encoder = ModelEncoder(load_model(trained["checkpoint"], device=device), batch_size=64, device=device)
        per_seed[variant].append(evaluate_model(encoder, concepts, data.parent, eval_config, model=variant,
                                                data=str(data)))
        summaries[name] = {"config": str(variant_config(variant).name), "seed": seed, "steps": trained["step"],
                           "train_seconds": seconds, "final_metrics": trained["metrics"],
                           "checkpoint": trained["checkpoint"]}
    # several seeds: per-item mean of hits over seeds, so intervals resample items of the seed-averaged model
    results = {v: r[0] if len(r) == 1 else merge_seeds(r) for v, r in per_seed.items()}
    comparison = compare(results)
    write_report(comparison, out_dir, title="clearglass ablation: hierarchy-aware options", intro=_intro(options, data))
    write_json_atomic({"options": options.to_dict(), "data": str(data), "runs": summaries}, out_dir / "ablation.json")
    return {**comparison, "runs": summaries}


def _check_same_config(run_dir: Path, config: TrainConfig) -> None:
    """Raise ClearglassError when run_dir holds a run of another config (resuming it would mix the two)."""
    previous = run_dir / "config.json"
    if previous.is_file() and TrainConfig.from_dict(read_json(previous, "train config"), str(previous)).to_dict() \
            != config.to_dict():
        raise ClearglassError(f"{previous}: an earlier run with other settings; use another --out or delete {run_dir}")


def _intro(options: AblationOptions, data: Path) -> str:
    lines = ["Cumulative variants (same data, steps, batch, learning rate and seeds; configs in "
             "`src/clearglass/configs/train/ablation-*.json`):", ""]
    lines += [f"{i + 1}. `{v}` ({variant_config(v).name})" for i, v in enumerate(VARIANTS) if v in options.variants]
    lines += ["", "Variant 1 uses the plain ViT `clearglass-vit`, not the default model (whose image tower is a "
              "ResNet), so that variant 2 differs only by its hierarchy-aware attention.",
              f"Seeds: {options.seeds}; overrides: `{' '.join(options.overrides())}`."]
    if options.quick:
        lines.append("\n**Quick mode: a plumbing check, the numbers mean nothing.**")
    return "\n".join(lines)
