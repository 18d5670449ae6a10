"""The embedded default, ``clearglass demo``: build an emoji MAGIC dataset offline, train the CLIP-loss baseline and
CLEAR GLASS on the default model, evaluate them against the untrained initialisation, and write a report.

Data (``configs/demo/<name>.json``, section ``data``): emoji scenes labelled with the ``truth`` labeler (level1 =
emoji subgroup, level2 = emoji group; the builder's leak check must find zero leaks). Training captions that name
ANY concept word of the dataset are dropped as well (e.g. "a 1st place medal" names "places"). Per level2 group,
``holdout_per_group`` concepts are held out for the test (unseen concepts) and ``val_holdout_per_group`` more for
the validation split; the other concepts give ``val_fraction`` of their train images to the validation split.
Models train on what is left, so the test split is never seen during training or hyperparameter choice.

Models (section ``models``): TrainConfig overrides per model; every model shares ``train`` (same steps, seed, data,
optimiser). The diagnostics separate the image side from the text side: (i) ``image_clustering``: each test image
is assigned to the nearest concept centroid of the training images' embeddings (image embeddings only); (ii) the
``*_frozen_text`` models, trained with the text projection frozen too, so only the image tower can learn.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clearglass.errors import ClearglassError
from clearglass.evaluate import Encoder, EvalConfig, ModelEncoder, bootstrap, evaluate_model, items_hash, metric_stat
from clearglass.magic.builder import build_emoji_dataset, split_images
from clearglass.magic.leak import leaked_words
from clearglass.io import read_json, write_json_atomic
from clearglass.magic.schema import ConceptRecord, load_concepts, resolve_image_path, save_concepts
from clearglass.report import compare, differences_table, fmt, markdown_table, write_plots

CONFIG_DIR = Path(__file__).parent / "configs" / "demo"
SUBSETS = ("test_seen", "test_held_out", "val_seen", "val_held_out")
HEADLINE = [  # (subset, task, task subset, metric, label) of the report's first paragraph and terminal table
    ("test_seen", "recognition", "concept_level1", "i2t_R@1", "level-1 recognition, seen concepts (image->text R@1)"),
    ("test_seen", "recognition", "concept_level1", "t2i_R@1", "level-1 recognition, seen concepts (text->image R@1)"),
    ("test_seen", "recognition", "concept_level2", "i2t_R@1", "level-2 recognition, seen concepts (image->text R@1)"),
    ("test_held_out", "recognition", "concept_level1", "i2t_R@1", "level-1 recognition, held-out concepts"),
    ("test_held_out", "recognition", "concept_level2", "i2t_R@1", "level-2 recognition, held-out concepts"),
    ("test_seen", "zero_shot", "level1", "top1", "zero-shot level 1, seen concepts (top-1)"),
    ("test_seen", "zero_shot", "level2", "top1", "zero-shot level 2, seen concepts (top-1)"),
    ("test_seen", "retrieval", "old_captions", "i2t_R@1", "caption retrieval, image->text R@1"),
    ("test_seen", "image_clustering", "level1", "centroid_acc", "image-only nearest concept centroid, level 1"),
    ("test_held_out", "image_clustering", "level2", "centroid_acc", "image-only nearest level-2 centroid, held-out"),
]


def load_demo_config(name: str) -> dict:
    """A demo config: ``configs/demo/<name>.json`` or a JSON file path."""
    path = Path(name) if Path(name).suffix == ".json" else CONFIG_DIR / f"{name}.json"
    config = read_json(path, "demo config", dict)
    for key in ("data", "train", "models", "baseline", "method", "eval"):
        if key not in config:
            raise ClearglassError(f"{path}: missing section {key!r}")
    for key in ("baseline", "method"):
        if config[key] not in config["models"]:
            raise ClearglassError(f"{path}: {key} {config[key]!r} is not one of the models {sorted(config['models'])}")
    return config


# ----------------------------------------------------------------------------------------------------------------
# data


def concept_vocabulary(concepts: list[ConceptRecord]) -> list[str]:
    """Every level name used by any image of the dataset, sorted."""
    return sorted({v for c in concepts for im in c.train_images + c.test_images for v in im.levels() if v})


def drop_concept_word_captions(concepts: list[ConceptRecord]) -> tuple[list[ConceptRecord], dict]:
    """Training captions naming any concept word of the dataset are removed; images left without one leave train."""
    vocabulary = concept_vocabulary(concepts)
    removed, images_dropped, examples = 0, 0, []
    out = []
    for c in concepts:
        train = []
        for im in c.train_images:
            kept = [cap for cap in im.new_captions if not leaked_words(cap, vocabulary)]
            removed += len(im.new_captions) - len(kept)
            if len(examples) < 5 and len(kept) < len(im.new_captions):
                examples.append(next(cap for cap in im.new_captions if cap not in kept))
            if kept:
                train.append(replace(im, new_captions=kept))
            else:
                images_dropped += 1
        out.append(replace(c, train_images=train))
    return out, {"captions_removed": removed, "images_dropped": images_dropped, "examples": examples}


def _pick_per_group(concepts: list[ConceptRecord], per_group: int, salt: str) -> set[str]:
    """``per_group`` concepts of every level2 group (seeded), never all of a group's concepts."""
    by_group: dict[str, list[str]] = defaultdict(list)
    for c in concepts:
        by_group[(c.train_images or c.test_images)[0].level2 or ""].append(c.concept)
    chosen = set()
    for group, names in sorted(by_group.items()):
        if len(names) <= per_group:
            raise ClearglassError(f"level2 group {group!r} has {len(names)} concepts {names}: cannot hold out "
                                  f"{per_group} and keep one to train on")
        chosen.update(random.Random(f"{salt}:{group}").sample(sorted(names), per_group))
    return chosen


def split_demo(concepts: list[ConceptRecord], holdout_per_group: int, val_holdout_per_group: int,
               val_fraction: float, seed: int) -> dict[str, list[ConceptRecord]]:
    """The train split and the four evaluation subsets (``SUBSETS``) of a built dataset (no held-out concepts yet)."""
    test_held = _pick_per_group(concepts, holdout_per_group, f"{seed}:test-holdout")
    rest = [c for c in concepts if c.concept not in test_held]
    val_held = _pick_per_group(rest, val_holdout_per_group, f"{seed}:val-holdout")
    train, val_seen, val_held_out, test_seen, test_held_out = [], [], [], [], []
    for c in concepts:
        if c.concept in test_held:
            test_held_out.append(replace(c, train_images=[], test_images=c.train_images + c.test_images))
        elif c.concept in val_held:
            val_held_out.append(replace(c, train_images=[], test_images=c.train_images))
        else:
            by_id = {im.image: im for im in c.train_images}
            fit, val = split_images(list(by_id), val_fraction, random.Random(f"{seed}:val:{c.concept}"))
            fit_images = [by_id[i] for i in fit]
            train.append(replace(c, train_images=fit_images, test_images=[]))
            val_seen.append(replace(c, train_images=fit_images, test_images=[by_id[i] for i in val]))
            test_seen.append(replace(c, train_images=fit_images))
    return {"train": train, "test_seen": test_seen, "test_held_out": test_held_out, "val_seen": val_seen,
            "val_held_out": val_held_out}


def build_demo_data(out: Path, data: dict, progress: bool) -> tuple[dict[str, Path], dict]:
    """Build the emoji dataset under ``out/data`` and write one MAGIC JSON per split; returns (paths, stats)."""
    data_dir = out / "data"
    built = build_emoji_dataset(data_dir, subgroups=data.get("subgroups"),
                                images_per_subgroup=data["images_per_subgroup"], image_size=data["image_size"],
                                holdout_concepts=0, seed=data["seed"], progress=progress)
    stats = json.loads(built.with_name(built.stem + ".stats.json").read_text(encoding="utf-8"))
    leaks = stats["build"]["leaks"]["count"]
    if leaks:
        raise ClearglassError(f"{built}: {leaks} captions name their own concept: expected none")
    concepts, dropped = drop_concept_word_captions(load_concepts(built))
    splits = split_demo(concepts, data["holdout_per_group"], data["val_holdout_per_group"], data["val_fraction"],
                        data["seed"])
    paths = {}
    for name, records in splits.items():
        paths[name] = data_dir / f"{name}.json"
        save_concepts(records, paths[name])
    summary = {
        "build_leaks": leaks, "concept_word_filter": dropped,
        "concepts": {name: len(recs) for name, recs in splits.items()},
        "train_images": sum(len(c.train_images) for c in splits["train"]),
        "test_images": {name: sum(len(c.test_images) for c in recs) for name, recs in splits.items() if name != "train"},
        "level2_groups": sorted({im.level2 for c in concepts for im in c.train_images + c.test_images if im.level2}),
        "held_out_concepts": {"test": [c.concept for c in splits["test_held_out"]],
                              "val": [c.concept for c in splits["val_held_out"]]},
    }
    return paths, summary


# ----------------------------------------------------------------------------------------------------------------
# image-only concept clustering


def centroid_ranks(encoder: Encoder, train: list[ConceptRecord], test: list[ConceptRecord],
                   image_root: str | os.PathLike, level: int) -> dict[str, Any]:
    """Image-only diagnostic: the strict rank of each test image's true level-``level`` label among the centroids
    (normalised means) of the training images' embeddings per label; labels without training images are skipped."""
    key = f"level{level}"
    members: dict[str, list[Path]] = defaultdict(list)
    for c in train:
        for im in c.train_images:
            if getattr(im, key):
                members[getattr(im, key)].append(resolve_image_path(image_root, im.image))
    labels = sorted(members)
    records = [im for c in test for im in c.test_images if getattr(im, key) in members]
    if len(labels) < 2 or not records:
        raise ClearglassError(f"{key}: image clustering needs 2+ labels with training images and test images of "
                              f"them, found {len(labels)} labels and {len(records)} test images")
    train_paths = [p for x in labels for p in members[x]]
    test_paths = [resolve_image_path(image_root, im.image) for im in records]
    emb = encoder.embed_images(train_paths + test_paths).float()  # (n_train + n_test, D)
    owner = torch.tensor([i for i, x in enumerate(labels) for _ in members[x]])  # (n_train,)
    sums = torch.zeros(len(labels), emb.shape[1]).index_add_(0, owner, emb[:len(train_paths)])
    centroids = torch.nn.functional.normalize(sums, dim=-1)  # (L, D)
    scores = (emb[len(train_paths):] @ centroids.T).numpy()  # (n_test, L)
    truth = np.array([labels.index(getattr(im, key)) for im in records])
    true_score = scores[np.arange(len(records)), truth][:, None]
    return {"rank": (scores >= true_score).sum(axis=1) - 1, "class": truth, "labels": labels,
            "items": [im.image for im in records]}


def add_clustering(results: dict, encoder: Encoder, train: list[ConceptRecord], test: list[ConceptRecord],
                   image_root: Path, levels: list[int], config: EvalConfig) -> None:
    """Append ``image_clustering/level{L}`` rows (accuracy with a bootstrap interval) and per-item ranks to results."""
    for level in levels:
        out = centroid_ranks(encoder, train, test, image_root, level)
        spec = {"stat": "hit", "array": "rank", "k": 1}
        stat = metric_stat(spec, {"rank": out["rank"]})
        n = len(out["rank"])
        low, high = bootstrap(stat, n, config.n_boot, config.seed, config.ci_level)
        unit = f"image_clustering/level{level}"
        results["metrics"].append({"task": "image_clustering", "subset": f"level{level}", "metric": "centroid_acc",
                                   "value": float(stat(np.arange(n)[None])[0]), "ci_low": low, "ci_high": high,
                                   "n": n, "unit": f"{unit}/rank", "stat": spec})
        results["per_item"][unit] = {"items_hash": items_hash([out["items"], out["labels"]]),
                                     "arrays": {"rank": out["rank"].tolist(), "class": out["class"].tolist()}}


def merge_seeds(per_seed: list[dict]) -> dict:
    """One results dict from several seeds' results on the same items: every hit metric becomes the per-item mean
    of hits over seeds (``{"stat": "mean"}``), so intervals resample items of the seed-averaged model."""
    first = per_seed[0]
    merged = {**first, "metrics": [], "per_item": {}, "seeds": len(per_seed)}
    for row in first["metrics"]:
        if row["stat"]["stat"] != "hit":
            continue
        group = row["unit"].rsplit("/", 1)[0]
        name = f"{row['metric']}_hit"
        hits = np.mean([np.asarray(r["per_item"][group]["arrays"][row["stat"]["array"]]) < row["stat"]["k"]
                        for r in per_seed], axis=0)
        spec = {"stat": "mean", "array": name}
        stat = metric_stat(spec, {name: hits})
        cfg = first["config"]
        low, high = bootstrap(stat, len(hits), cfg["n_boot"], cfg["seed"], cfg["ci_level"])
        merged["metrics"].append({**row, "value": float(hits.mean()), "ci_low": low, "ci_high": high,
                                  "unit": f"{group}/{name}", "stat": spec})
        slot = merged["per_item"].setdefault(group, {"items_hash": first["per_item"][group]["items_hash"],
                                                     "arrays": {}})
        slot["arrays"][name] = hits.tolist()
    return merged


# ----------------------------------------------------------------------------------------------------------------
# training, evaluation, report


def train_model(name: str, overrides: dict, common: dict, data: Path, out: Path, seed: int) -> dict:
    """Train one demo model with the shared settings; returns train()'s result plus the wall time."""
    from clearglass.config import apply_override
    from clearglass.train import TrainConfig, train

    raw = json.loads((Path(__file__).parent / "configs" / "train" / "default-grouped.json").read_text("utf-8"))
    for key, value in {**common, **overrides}.items():
        apply_override(raw, f"{key}={json.dumps(value)}")
    raw.update(data=str(data), out=str(out / "runs" / f"{name}-seed{seed}"), seed=seed)
    config = TrainConfig.from_dict(raw, f"demo model {name!r}")
    start = time.perf_counter()
    result = train(config)
    return {**result, "seconds": time.perf_counter() - start, "config": config.to_dict()}


def evaluate_all(bundle: Any, splits: dict[str, list[ConceptRecord]], image_root: Path, config: EvalConfig,
                 name: str) -> dict[str, dict]:
    """Results of one model on every subset, with the image-clustering diagnostic."""
    encoder = ModelEncoder(bundle, batch_size=128, device="cpu")
    out = {}
    for subset in SUBSETS:
        res = evaluate_model(encoder, splits[subset], image_root, config, model=name, data=subset)
        levels = [1, 2] if subset.endswith("seen") else [2]
        add_clustering(res, encoder, splits["train"], splits[subset], image_root, levels, config)
        out[subset] = res
    return out


def _row(results: dict, task: str, subset: str, metric: str) -> dict | None:
    return next((r for r in results["metrics"] if (r["task"], r["subset"], r["metric"]) == (task, subset, metric)),
                None)


def _diff(comparison: dict, model: str, task: str, subset: str, metric: str) -> dict | None:
    return next((d for d in comparison["differences"] if (d["model"], d["task"], d["subset"], d["metric"])
                 == (model, task, subset, metric)), None)


def _verdict(d: dict) -> str:
    if d["ci_low"] > 0:
        return "better"
    if d["ci_high"] < 0:
        return "worse"
    return "no clear difference"


def summary_paragraph(comparisons: dict[str, dict], baseline: str, method: str, seeds: int) -> str:
    """The report's first paragraph, generated from the measured paired differences (method minus baseline)."""
    parts, wins, losses = [], 0, 0
    for subset, task, tsub, metric, label in HEADLINE:
        comp = comparisons[subset]
        d = _diff(comp, method, task, tsub, metric)
        a, b = _row(comp["results"][baseline], task, tsub, metric), _row(comp["results"][method], task, tsub, metric)
        if d is None or a is None or b is None:
            continue
        verdict = _verdict(d)
        wins += verdict == "better"
        losses += verdict == "worse"
        parts.append(f"{label}: {fmt(b['value'])} vs {fmt(a['value'])} (difference {fmt(d['value'])}, 95% CI "
                     f"[{fmt(d['ci_low'])}, {fmt(d['ci_high'])}], {verdict})")
    head = (f"**What the numbers say** ({seeds} seed{'s' if seeds > 1 else ''}; {method} minus {baseline}, paired "
            f"bootstrap over test items): {method} is significantly better on {wins} and significantly worse on "
            f"{losses} of the {len(parts)} headline measures. ")
    text = head + "; ".join(parts) + "."
    seen, held = comparisons["test_seen"]["results"], comparisons["test_held_out"]["results"]
    separated = [label for res, tsub, label in [(seen, "concept_level1", "level-1"), (seen, "concept_level2", "level-2"),
                                                (held, "concept_level1", "held-out level-1")]
                 if _row(res[method], "recognition", tsub, "i2t_R@1")["ci_low"]
                 > _row(res[baseline], "recognition", tsub, "i2t_R@1")["ci_high"]]
    cost = (_row(seen[baseline], "retrieval", "old_captions", "i2t_R@1")["value"]
            - _row(seen[method], "retrieval", "old_captions", "i2t_R@1")["value"])
    met = len(separated) == 3 and cost <= 0.05
    text += (f" Targets (intervals that do not overlap on level-1, level-2 and held-out recognition; at most 5 points "
             f"of caption R@1 lost): {'met' if met else 'NOT met'}: non-overlapping on "
             f"{', '.join(separated) if separated else 'none'}; caption R@1 cost {100 * cost:.1f} points.")
    frozen_m, frozen_b = f"{method}_frozen_text", f"{baseline}_frozen_text"
    results = comparisons["test_seen"]["results"]
    full = _diff(comparisons["test_seen"], method, "recognition", "concept_level1", "i2t_R@1")
    if frozen_m in results and frozen_b in results and full is not None:
        frozen = _diff(compare({frozen_b: results[frozen_b], frozen_m: results[frozen_m]}), frozen_m, "recognition",
                       "concept_level1", "i2t_R@1")
        share = (f"; that is {100 * frozen['value'] / full['value']:.0f}% of the full-model gain"
                 if full["ci_low"] > 0 else "; the full-model gain itself is not significant, so no share is given")
        text += (f" Image side: with the text projection frozen as well (only the image tower learns), the level-1 "
                 f"recognition difference is {fmt(frozen['value'])} (95% CI [{fmt(frozen['ci_low'])}, "
                 f"{fmt(frozen['ci_high'])}], {_verdict(frozen)}){share}.")
    return text


def _key_table(comparisons: dict[str, dict], models: list[str]) -> str:
    lines = ["| measure | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for subset, task, tsub, metric, label in HEADLINE:
        cells = []
        for m in models:
            r = _row(comparisons[subset]["results"][m], task, tsub, metric)
            cells.append(f"{fmt(r['value'])} [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]" if r else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def loss_plot(runs: dict[str, Path], path: Path) -> Path:
    """Training loss per step of each model (its own loss, so levels differ between losses)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, metrics in runs.items():
        rows = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line]
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss (seed 0)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_demo_report(out: Path, comparisons: dict[str, dict], summary: dict) -> Path:
    """report.md: the generated first paragraph, the headline table, every subset's tables, the search, plots."""
    config = summary["config"]
    models = list(comparisons["test_seen"]["results"])
    seeds = len(summary["seeds"])
    parts = ["# clearglass demo: CLEAR GLASS vs the CLIP loss on emoji concepts\n",
             summary_paragraph(comparisons, config["baseline"], config["method"], seeds) + "\n",
             "## Headline measures (test split, value [95% CI])\n", _key_table(comparisons, models)]
    data = summary["data"]
    parts.append(
        "## Set-up\n\n"
        f"Emoji MAGIC dataset built offline with the `truth` labeler: level1 = emoji subgroup, level2 = emoji group "
        f"({len(data['level2_groups'])} groups). Build leaks (captions naming their own concept): "
        f"{data['build_leaks']}. Training captions naming any concept word of the dataset removed: "
        f"{data['concept_word_filter']['captions_removed']} (images left without a caption: "
        f"{data['concept_word_filter']['images_dropped']}). Concepts per split: {data['concepts']}; training images: "
        f"{data['train_images']}; evaluation images: {data['test_images']}. Held-out test concepts: "
        f"{', '.join(data['held_out_concepts']['test'])}. Held-out validation concepts: "
        f"{', '.join(data['held_out_concepts']['val'])}.\n\n"
        f"Every model starts from the same initialisation of `default` (seed s), trains the same number of steps "
        f"({config['train']['steps']}) with the same optimiser, lr schedule and seeds, batch M*N = "
        f"{config['train']['groups_per_batch']}x{config['train']['pairs_per_group']} unless a model's settings below "
        f"change it; `init` is the untrained "
        f"initialisation. Models and their settings: "
        + "; ".join(f"`{m}`: {json.dumps(o)}" for m, o in config["models"].items())
        + f". Seeds: {summary['seeds']}. Wall time: {summary['seconds']:.0f} s.\n")
    search = summary.get("search")
    if search:
        parts.append("## Hyperparameter search (validation split only)\n\n" + search["description"] + "\n\n"
                     + "| loss | setting | " + " | ".join(search["metrics"]) + " | score |\n|---|---|"
                     + "---|" * (len(search["metrics"]) + 1) + "\n"
                     + "".join(f"| {r['loss']} | `{json.dumps(r['setting'])}` | "
                               + " | ".join(fmt(r["scores"][m]) for m in search["metrics"])
                               + f" | {fmt(r['score'])} |\n" for r in search["results"])
                     + f"\nChosen: {json.dumps(search['chosen'])}.\n")
    else:
        parts.append("## Hyperparameter search\n\nNone recorded (no `configs/demo/<config>.search.json`): both losses "
                     "use the settings above, which differ only in the loss. `clearglass demo --search "
                     "configs/demo/search-grid.json` runs the equal-effort grid on the validation split.\n")
    for subset in SUBSETS:
        comp = comparisons[subset]
        parts.append(f"## {subset}\n\n" + markdown_table(comp["results"]))
        parts.append(f"Paired differences on {subset}:\n\n" + differences_table(comp["differences"]))
    parts.append("## Plots\n\n" + "\n".join(f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in summary["plots"])
                 + "\n")
    path = out / "report.md"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


SEARCH_METRICS = [("val_seen", "recognition", "concept_level1", "i2t_R@1"),
                  ("val_seen", "recognition", "concept_level2", "i2t_R@1"),
                  ("val_held_out", "recognition", "concept_level1", "i2t_R@1")]


def run_search(out: str | os.PathLike, grid_path: str | os.PathLike, config_name: str = "default") -> dict:
    """Equal-effort grid on the validation split: every setting of every loss is trained (same steps, seed, data)
    and scored by the mean of ``SEARCH_METRICS``; each result is appended to ``out/search.jsonl`` as it lands and
    the best setting per loss is chosen. Writes ``out/search.json`` (the layout the report reads)."""
    config = load_demo_config(config_name)
    grid = json.loads(Path(grid_path).read_text(encoding="utf-8"))
    unknown = sorted(set(grid["settings"]) - set(config["models"]))
    if unknown:
        raise ClearglassError(f"{grid_path}: settings for unknown models {unknown}: expected {sorted(config['models'])}")
    sizes = {loss: len(settings) for loss, settings in grid["settings"].items()}
    if len(set(sizes.values())) != 1:
        raise ClearglassError(f"{grid_path}: every loss needs the same number of settings (equal effort), got {sizes}")
    out = Path(out)
    paths, _ = build_demo_data(out, config["data"], progress=False)
    splits = {name: load_concepts(p) for name, p in paths.items()}
    eval_config = EvalConfig(k=config["eval"]["k"], fields=["concept_level1", "concept_level2"], levels=[1, 2],
                             n_boot=config["eval"]["n_boot"], seed=config["eval"]["seed"], tasks=["recognition"])
    from clearglass.models import load_model

    names = ["/".join(m[:3]) + "/" + m[3] for m in SEARCH_METRICS]
    results = []
    for loss, settings in grid["settings"].items():
        for i, setting in enumerate(settings):
            tag = f"search-{loss}-{i}"
            trained = train_model(tag, {**config["models"][loss], **setting}, config["train"], paths["train"], out,
                                  config["train"]["seed"])
            encoder = ModelEncoder(load_model(trained["checkpoint"]), batch_size=128)
            by_subset = {subset: evaluate_model(encoder, splits[subset], paths["train"].parent, eval_config, model=tag)
                         for subset in dict.fromkeys(m[0] for m in SEARCH_METRICS)}
            scores = {name: _row(by_subset[subset], task, tsub, metric)["value"]
                      for name, (subset, task, tsub, metric) in zip(names, SEARCH_METRICS)}
            record = {"loss": loss, "setting": setting, "scores": scores, "score": float(np.mean(list(scores.values()))),
                      "seconds": trained["seconds"], "final_loss": trained["metrics"]["loss"]}
            results.append(record)
            with open(out / "search.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
    chosen = {loss: max((r for r in results if r["loss"] == loss), key=lambda r: r["score"])["setting"]
              for loss in grid["settings"]}
    summary = {"description": grid["description"], "metrics": names, "results": results, "chosen": chosen}
    write_json_atomic(summary, out / "search.json")
    return summary


def run_demo(out: str | os.PathLike, seeds: int = 1, config_name: str = "default", progress: bool = True) -> dict:
    """Build, train, evaluate and report; returns the summary written to ``out/results.json``."""
    if seeds < 1:
        raise ClearglassError(f"seeds = {seeds}: expected at least 1")
    config = load_demo_config(config_name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    paths, data_summary = build_demo_data(out, config["data"], progress)
    splits = {name: load_concepts(p) for name, p in paths.items()}
    image_root = paths["train"].parent
    eval_config = EvalConfig(k=config["eval"]["k"], fields=["concept_level1", "concept_level2"], levels=[1, 2],
                             n_boot=config["eval"]["n_boot"], seed=config["eval"]["seed"])
    from clearglass.checkpoints import read_checkpoint_metadata, save_checkpoint
    from clearglass.models import load_model

    seed_list = list(range(config["train"]["seed"], config["train"]["seed"] + seeds))
    per_model: dict[str, list[dict[str, dict]]] = defaultdict(list)
    training: dict[str, list[dict]] = defaultdict(list)
    checkpoints: dict[str, str] = {}
    for seed in seed_list:
        torch.manual_seed(seed)  # train() seeds the same way before building the model: init == the trained start
        per_model["init"].append(evaluate_all(load_model("default"), splits, image_root, eval_config, "init"))
        for name, overrides in config["models"].items():
            result = train_model(name, overrides, config["train"], paths["train"], out, seed)
            training[name].append({k: result[k] for k in ("step", "metrics", "seconds", "checkpoint", "metrics_path")})
            bundle = load_model(result["checkpoint"])
            per_model[name].append(evaluate_all(bundle, splits, image_root, eval_config, name))
            if seed == seed_list[0]:
                meta = read_checkpoint_metadata(result["checkpoint"])
                checkpoints[name] = str(save_checkpoint(bundle, out / "checkpoints" / f"{name}.pt",
                                                        train_config=meta["train_config"],
                                                        dataset_sha256=meta["dataset_sha256"], metrics=meta["metrics"]))
    order = ["init", config["baseline"], config["method"]]
    order += [m for m in config["models"] if m not in order]
    comparisons = {}
    for subset in SUBSETS:
        by_model = {m: (per_model[m][0][subset] if seeds == 1 else merge_seeds([r[subset] for r in per_model[m]]))
                    for m in order}
        # differences against the baseline: put it first for compare(), keep init in the tables
        ordered = {config["baseline"]: by_model[config["baseline"]],
                   **{m: r for m, r in by_model.items() if m != config["baseline"]}}
        comparison = compare(ordered)
        comparisons[subset] = {**comparison, "models": order, "results": {m: by_model[m] for m in order}}
    plots = []
    for subset in ("test_seen", "test_held_out"):
        for p in write_plots(comparisons[subset]["results"], out / "plots" / subset):
            plots.append(p)
    plots.append(loss_plot({m: Path(training[m][0]["metrics_path"]) for m in config["models"]},
                           out / "plots" / "training_loss.png"))
    search_path = CONFIG_DIR / f"{config_name}.search.json"  # the recorded --search output for this config
    summary = {
        "command": f"clearglass demo --out {out} --seeds {seeds}" + (" --quick" if config_name == "quick" else ""),
        "config_name": config_name, "config": config, "seeds": seed_list, "data": data_summary,
        "training": training, "checkpoints": checkpoints,
        "search": json.loads(search_path.read_text(encoding="utf-8")) if search_path.is_file() else None,
        "comparisons": comparisons, "plots": plots, "seconds": time.perf_counter() - start,
    }
    report = write_demo_report(out, comparisons, summary)
    summary["report"] = str(report)
    summary["plots"] = [str(p) for p in plots]
    write_json_atomic(summary, out / "results.json")
    summary["key_table"] = _key_table(comparisons, list(comparisons["test_seen"]["results"]))
    return summary

