"""The summary of a MAGIC dataset: a JSON-serialisable dict and a human-readable rendering of it."""

from __future__ import annotations

from collections import Counter
from typing import Any

from clearglass.errors import ClearglassError
from clearglass.magic.schema import LEVELS, SPLITS, ConceptRecord, escaped

GROUP_SIZE_BINS = (1, 2, 5, 10, 20, 50, 100, 1000)


def _bin(n: int) -> str:
    """The histogram bin label of a group size: bins start at GROUP_SIZE_BINS, the last is open."""
    lower = max(b for b in (0,) + GROUP_SIZE_BINS if b <= n)
    upper = next((b for b in GROUP_SIZE_BINS if b > n), None)
    if lower == 0:
        return "0"
    return f"{lower}+" if upper is None else (f"{lower}" if upper == lower + 1 else f"{lower}-{upper - 1}")


def dataset_stats(concepts: list[ConceptRecord], source: str = "<memory>") -> dict[str, Any]:
    """Counts per split, group-size histogram (images per concept), hard-negative coverage, distinct concepts per
    level. A concept named by two records would be counted twice: that is an error naming ``source`` and both."""
    first: dict[str, int] = {}
    for r, c in enumerate(concepts):
        if c.concept in first:
            raise ClearglassError(f"{source}: concept records {first[c.concept]} and {r} are both {c.concept!r}: "
                                  "expected unique concepts (clearglass validate lists every problem)")
        first[c.concept] = r
    names = set(first)
    per_split = {}
    for split in SPLITS:
        images = [im for c in concepts for im in c.images(split)]
        per_split[split] = {
            "concepts": sum(1 for c in concepts if c.images(split)),
            "images": len(images),
            "old_captions": sum(len(im.old_captions) for im in images),
            "new_captions": sum(len(im.new_captions) for im in images),
        }
    sizes = [len(c.train_images) + len(c.test_images) for c in concepts]
    histogram = Counter(_bin(n) for n in sizes)
    order = ["0"] + [_bin(b) for b in GROUP_SIZE_BINS]
    all_images = [im for c in concepts for split in SPLITS for im in c.images(split)]
    with_negatives = sum(1 for c in concepts if any(n in names for n in c.hard_negative))
    return {
        "concepts": len(concepts),
        "held_out_concepts": sum(1 for c in concepts if not c.train_images),
        "splits": per_split,
        "group_size": {
            "min": min(sizes, default=0),
            "max": max(sizes, default=0),
            "mean": sum(sizes) / len(sizes) if sizes else 0.0,
            "histogram": {b: histogram[b] for b in order if histogram[b]},
        },
        "hard_negatives": {
            "concepts_with_any": with_negatives,
            "coverage": with_negatives / len(concepts) if concepts else 0.0,
            "mean_per_concept": sum(len(c.hard_negative) for c in concepts) / len(concepts) if concepts else 0.0,
        },
        "distinct_per_level": {lv: len({getattr(im, lv) for im in all_images if getattr(im, lv)}) for lv in LEVELS},
    }


def format_stats(stats: dict[str, Any]) -> str:
    """A few readable lines of a stats dict (build counts included when present)."""
    lines = [f"concepts: {stats['concepts']} ({stats['held_out_concepts']} held out)"]
    for split, s in stats["splits"].items():
        lines.append(f"{split}: {s['concepts']} concepts, {s['images']} images, "
                     f"{s['old_captions']} old / {s['new_captions']} new captions")
    g = stats["group_size"]
    hist = ", ".join(f"{b}: {n}" for b, n in g["histogram"].items())
    lines.append(f"group size: min {g['min']}, mean {g['mean']:.1f}, max {g['max']}; histogram {{{hist}}}")
    h = stats["hard_negatives"]
    lines.append(f"hard negatives: {h['concepts_with_any']} concepts covered ({h['coverage']:.0%}), "
                 f"{h['mean_per_concept']:.1f} per concept")
    lines.append("distinct concepts per level: "
                 + ", ".join(f"{k} {v}" for k, v in stats["distinct_per_level"].items()))
    build = stats.get("build")
    if build:
        lines.append(f"build: {build['images_in']} images in, {build['bad_images']['count']} bad images skipped, "
                     f"{build['label_failures']['count']} label failures, "
                     f"{build['chains_relabelled']} chains relabelled, "
                     f"{len(build['merged_concepts'])} concepts merged, {len(build['dropped_small_concepts'])} dropped")
        if build.get("cleaned_texts", {}).get("count"):
            lines.append(f"cleaned: {build['cleaned_texts']['count']} captions or concepts held control, bidi or "
                         "zero-width characters (removed)")
        leaks = build["leaks"]
        lines.append(f"leaks: {leaks['count']} captions name a concept word"
                     + (f" (filtered; {leaks['images_dropped']} images dropped)" if leaks["filtered"] else ""))
        lines.extend(f"  leak: {escaped(e['image'])}: {e['caption']!r} names {e['words']}"
                     for e in leaks["examples"][:3])
    return "\n".join(lines)
