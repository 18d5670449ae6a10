"""The clearglass-mini recipe, ``clearglass pretrain``: build the offline corpus (`corpus`) with nothing of the
demo's held-out concepts in it, pretrain the default architecture (``clearglass:scratch``) on it with the CLIP
loss until held-out retrieval stops improving, and write the pretrained tag: weights (image tower and projections;
the frozen MiniLM comes from its package), a model card, the validation curve and a small shipped slice of the
held-out item names on which the card's figures are measured (the demo's retention sets).

Leak rules (counted in the corpus stats): no caption names a level-1 or level-2 concept word of the demo's dataset;
no emoji of the demo concepts `corpus_held_out` picks appears in any source; no emoji of the demo is drawn by a
monochrome font, so the demo's cross-style pictures are new to the base.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from clearglass.config import Config
from clearglass.errors import ClearglassError
from clearglass.evaluate import EvalConfig, ModelEncoder, evaluate_model
from clearglass.experiments.demo.config import DemoConfig
from clearglass.experiments.demo.data import build_concepts, concept_emoji, demo_emoji
from clearglass.experiments.demo.splits import concept_vocabulary, concepts_by_group
from clearglass.experiments.mini.card import curve_plot, write_card
from clearglass.experiments.mini.corpus import CorpusConfig, build_corpus
from clearglass.io import file_sha256, read_json, read_text, write_json_atomic
from clearglass.magic.schema import ConceptRecord, load_concepts, save_concepts
from clearglass.models import PRETRAINED_DIR, load_model
from clearglass.results import MetricKey, Results
from clearglass.train import TrainConfig, train

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "pretrain"
WORK_FOLDERS = ("corpus", "demo", "run")  # what run_pretrain writes under its work folder besides the tag
CARD_METRICS = ["retrieval/old_captions/i2t_R@1", "retrieval/old_captions/t2i_R@1", "retrieval/old_captions/i2t_R@5",
                "zero_shot/level1/top1", "zero_shot/level1/top5"]


@dataclass
class PretrainRecipe(Config):
    """What ``clearglass pretrain`` builds: the tag, the demo config the corpus must not leak into, the corpus
    settings (`CorpusConfig` fields), the train config and its overrides, and how many held-out names ship."""

    description: str = ""
    tag: str = "clearglass-mini"
    demo: str = "default"
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    train_config: str = "mini-pretrain"
    train: list[str] = field(default_factory=list)
    ship_per_split: int = 600
    seed: int = 0
    config_dir: ClassVar[Path] = CONFIG_DIR

    def validate(self) -> None:
        """The tag is not one of the work folder's own folders; at least 10 held-out names ship per split."""
        if self.tag in WORK_FOLDERS:
            raise ClearglassError(f"tag = {self.tag!r}: the work folder uses that name ({', '.join(WORK_FOLDERS)}); "
                                  "choose another")
        if self.ship_per_split < 10:
            raise ClearglassError(f"ship_per_split = {self.ship_per_split}: expected >= 10")


def _pick_per_group(names_by_group: dict[str, list[str]], per_group: int, salt: str) -> set[str]:
    """``per_group`` seeded names of every group."""
    return {n for group, names in names_by_group.items()
            for n in random.Random(f"{salt}:{group}").sample(names, min(per_group, len(names)))}


def corpus_held_out(concepts: list[ConceptRecord], per_group: int, seed: int) -> set[str]:
    """The demo concepts whose emoji the corpus leaves out: per level2 group ``per_group`` seeded picks, then one
    more among the rest (the draw the shipped clearglass-mini was built with). The demo's split reads the result back
    from the card: it holds out some of these for its test and fine-tunes the others."""
    by_group = concepts_by_group(concepts)
    first = _pick_per_group(by_group, per_group, f"{seed}:test-holdout")
    rest = {g: [n for n in names if n not in first] for g, names in by_group.items()}
    return first | _pick_per_group(rest, 1, f"{seed}:val-holdout")


def leak_rules(demo: DemoConfig, out: Path, progress: bool) -> dict[str, Any]:
    """The demo's concept words, the emoji of the concepts the corpus leaves out and all its emoji (see the module
    docstring)."""
    concepts, _ = build_concepts(out, demo.data, progress)
    held = corpus_held_out(concepts, demo.data.holdout_per_group, demo.data.seed)
    emoji = concept_emoji(demo.data)
    return {"forbidden_words": concept_vocabulary(concepts),
            "excluded_chars": {e for c in held for e in emoji[c]}, "excluded_monochrome_chars": demo_emoji(demo.data)}


def ship_slice(corpus: Path, split: str, n: int, seed: int, folder: Path) -> Path:
    """``n`` seeded held-out item names of a corpus split, one render each, copied with their images under
    ``folder`` as a MAGIC file ``{split}.json``."""
    concepts = load_concepts(corpus / f"{split}.json")
    firsts = {}
    for c in concepts:
        for im in c.test_images:
            firsts.setdefault(im.level1, (c, im))
    names = sorted(firsts)
    chosen = set(random.Random(f"{seed}:ship:{split}").sample(names, min(n, len(names))))
    records: dict[str, ConceptRecord] = {}
    for name in sorted(chosen):
        concept, image = firsts[name]
        target = folder / image.image
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(corpus / image.image, target)
        records.setdefault(concept.concept, ConceptRecord(concept.concept)).test_images.append(image)
    path = folder / f"{split}.json"
    save_concepts(list(records.values()), path)
    return path


def card_figures(model: str | ModelEncoder, data: Path) -> dict[str, dict[str, float]]:
    """The card's figures of a model (a spec, or its encoder) on a held-out file: value and 95% interval per
    ``CARD_METRICS`` name."""
    config = EvalConfig(tasks=["retrieval", "zero_shot"], levels=[1], retrieval_ks=[1, 5])
    encoder = model if isinstance(model, ModelEncoder) else ModelEncoder(load_model(model), batch_size=256,
                                                                         progress=False)
    table = Results.of(evaluate_model(encoder, load_concepts(data), data.parent, config))
    rows = {m: table.row(MetricKey.parse(m)) for m in CARD_METRICS}
    return {m: {k: row[k] for k in ("value", "ci_low", "ci_high", "n")} for m, row in rows.items()}


def train_seconds(rows: list[dict]) -> float:
    """The training loop's wall time over every invocation of a run: a row's ``time`` counts from the start of its
    invocation, so each drop starts a new part and the parts' last times add up."""
    total, last = 0.0, 0.0
    for row in rows:
        if row["time"] < last:
            total += last
        last = row["time"]
    return total + last


def recipe_corpus(out: Path, recipe: PretrainRecipe, progress: bool) -> tuple[Path, dict]:
    """The recipe's corpus built (renders reused) in ``out/corpus`` under its demo's leak rules, and its stats."""
    rules = leak_rules(DemoConfig.load(recipe.demo), out / "demo", progress)
    corpus = out / "corpus"
    return corpus, build_corpus(corpus, recipe.corpus, rules["forbidden_words"], rules["excluded_chars"],
                                rules["excluded_monochrome_chars"], progress)


def remeasure_card(tag: Path, out: Path, recipe: PretrainRecipe, command: str, progress: bool = True) -> dict:
    """Measure a written tag's figures again with today's evaluation, on its shipped slice and on the corpus test
    split rebuilt in ``out/corpus`` (it must be the split the card names, by sha256), and rewrite its card."""
    card = read_json(tag / "card.json", "model card", dict)
    corpus, _ = recipe_corpus(out, recipe, progress)
    found = file_sha256(corpus / "test.json")
    if found != card["corpus"]["test_sha256"]:
        raise ClearglassError(f"{corpus / 'test.json'}: sha256 {found}, but {tag / 'card.json'} was measured on "
                              f"{card['corpus']['test_sha256']}: the recipe {recipe.tag!r} does not rebuild its "
                              "test split")
    encoder = ModelEncoder(load_model(str(tag / "model.pt")), batch_size=256, progress=False)
    card["figures"] = {"shipped_test": card_figures(encoder, tag / card["shipped"]["test"]["file"]),
                       "corpus_test": card_figures(encoder, corpus / "test.json")}
    card["figures_command"] = command
    write_json_atomic(card, tag / "card.json")
    write_card(card, tag / "MODEL_CARD.md")
    return card


def run_pretrain(out: Path, recipe: PretrainRecipe, overrides: list[str], ship: bool, command: str,
                 progress: bool = True) -> dict:
    """Build the corpus, pretrain (resuming a run in ``out``), measure, write the tag under ``out/<tag>`` and, with
    ``ship``, copy it into the package's ``pretrained/`` folder; returns the card data."""
    start = time.perf_counter()
    corpus, corpus_stats = recipe_corpus(out, recipe, progress)
    config = TrainConfig.load(recipe.train_config, [
        f"data={corpus / 'train.json'}", f"eval_data={corpus / 'val.json'}", f"out={out / 'run'}",
        f"text_cache_file={out / 'text-cache.pt'}", f"seed={recipe.seed}", *recipe.train, *overrides])
    if not (config.keep_best and config.eval_every > 0):
        raise ClearglassError(f"train config {recipe.train_config} with overrides {overrides}: the tag ships the best "
                              "validation checkpoint, so keep_best=true and eval_every > 0 are needed")
    result = train(config, resume="auto")
    rows = [json.loads(line) for line in read_text(Path(result["metrics_path"]), "metrics file").splitlines() if line]
    best = Path(config.out) / "checkpoints" / "best.pt"
    tag = out / recipe.tag
    if tag.exists():
        shutil.rmtree(tag)
    heldout = {split: ship_slice(corpus, split, recipe.ship_per_split, recipe.seed, tag / "heldout")
               for split in ("val", "test")}
    for suffix in (".pt", ".json"):
        shutil.copyfile(best.with_suffix(suffix), tag / f"model{suffix}")
    encoder = ModelEncoder(load_model(str(tag / "model.pt")), batch_size=256, progress=False)
    card = {
        "tag": recipe.tag, "command": command, "recipe": recipe.to_dict(), "overrides": overrides,
        "train_config": config.to_dict(), "corpus": {**read_json(corpus / "corpus.json", "corpus record", dict),
                                                     "stats": corpus_stats},
        "steps": result["step"], "best": result["best"], "stopped_early": result["stopped_early"],
        "figures": {"shipped_test": card_figures(encoder, heldout["test"]),
                    "corpus_test": card_figures(encoder, corpus / "test.json")},
        "shipped": {split: {"file": f"heldout/{p.name}", "sha256": file_sha256(p)} for split, p in heldout.items()},
        "weights_bytes": (tag / "model.pt").stat().st_size, "seconds": time.perf_counter() - start,
        "train_seconds": train_seconds(rows),
        "machine": f"{os.cpu_count()} CPU cores" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available()
                                                     else ""),
    }
    curve_plot(rows, tag / "validation_curve.png")
    write_json_atomic(card, tag / "card.json")
    write_card(card, tag / "MODEL_CARD.md")
    if ship:
        target = PRETRAINED_DIR / recipe.tag
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(tag, target)
        card["shipped_to"] = str(target)
    return card
