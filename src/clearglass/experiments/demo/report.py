"""The demo's report: ``report.md`` leads with the targets (met or missed) and a table of the headline measures with
the paired difference of the method minus the baseline, then at most three plain sentences, then the set-up, the
search record it used, every subset's tables and the plots. Every number comes from the results JSON."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from clearglass.errors import ClearglassError
from clearglass.experiments.demo.evaluation import DemoEvaluator
from clearglass.io import read_text, write_text_atomic
from clearglass.gallery import gallery_predictions, sample_gallery_images, write_gallery
from clearglass.models import load_model
from clearglass.report import (Measure, differences_table, fmt_pct, headline_cells, headline_table as report_table,
                               markdown_table, verdict_sentences, write_plots)
from clearglass.results import MetricKey, Results

# (subset, task, task subset, metric, label): the report's first table, in this order
HEADLINE = [
    ("harmonic_mean", "harmonic_mean", "concept_level1", "i2t_R@1", "level 1: harmonic mean of base and novel"),
    ("harmonic_mean", "harmonic_mean", "concept_level2", "i2t_R@1", "level 2: harmonic mean of base and novel"),
    ("test_seen", "recognition", "concept_level1", "i2t_R@1", "level 1, base concepts (fine-tuned; the paper's claim)"),
    ("test_seen", "recognition", "concept_level2", "i2t_R@1", "level 2, base concepts"),
    ("test_novel", "recognition", "concept_level1", "i2t_R@1", "level 1, novel concepts (objects the base knows)"),
    ("test_novel", "recognition", "concept_level2", "i2t_R@1", "level 2, novel concepts"),
    ("test_held_out", "recognition", "concept_level1", "i2t_R@1", "level 1, novel concepts of unseen objects"),
    ("test_held_out", "recognition", "concept_level2", "i2t_R@1", "level 2, novel concepts of unseen objects"),
    ("cross_seen", "recognition", "concept_level1", "i2t_R@1", "level 1, cross-style, base concepts"),
    ("cross_novel", "recognition", "concept_level1", "i2t_R@1", "level 1, cross-style, novel concepts"),
    ("test_seen", "retrieval", "old_captions", "i2t_R@1", "caption retrieval, image->text R@1"),
    ("retention_test", "retrieval", "old_captions", "i2t_R@1", "retention: base's held-out names, image->caption R@1"),
    ("retention_test", "zero_shot", "level1", "top1", "retention: base's held-out names, zero-shot top-1"),
    ("test_seen", "image_clustering", "level1", "centroid_acc", "image-only nearest concept centroid, level 1"),
]
RECOGNITION = [h for h in HEADLINE if h[1] == "recognition"]
SPLIT_NAMES = {"test_seen": "base concepts, test", "test_novel": "novel concepts, test",
               "test_held_out": "novel concepts of unseen objects, test"}


def measures(comparisons: dict) -> list[Measure]:
    """The headline measures present in these comparisons, as `clearglass.report` measures."""
    return [Measure(MetricKey(task, tsub, metric), label, subset) for subset, task, tsub, metric, label in HEADLINE
            if subset in comparisons]


def targets(comparisons: dict, baseline: str, method: str, base: str) -> list[dict]:
    """The demo's targets: name, met, the numbers that decide it, and whether there were any (``measured``)."""
    tables = {subset: Results.of(comp) for subset, comp in comparisons.items()}
    out = []

    def diff(subset: str, model: str, against: str, task: str, tsub: str, metric: str = "i2t_R@1") -> dict | None:
        return tables[subset].difference(MetricKey(task, tsub, metric), model, against) if subset in tables else None

    hm = diff("harmonic_mean", method, baseline, "harmonic_mean", "concept_level1")
    out.append({"target": f"{method} beats {baseline} on the level-1 harmonic mean of base and novel recognition "
                          "(paired 95% interval above 0)", "met": bool(hm and hm["ci_low"] > 0),
                "evidence": [hm] if hm else []})
    novel = [d for lv in (1, 2) if (d := diff("test_novel", method, base, "recognition", f"concept_level{lv}"))]
    out.append({"target": f"{method}'s novel-concept recognition not below the base's (levels 1 and 2: the paired "
                          "interval's upper end at or above 0)",
                "met": bool(novel) and all(d["ci_high"] >= 0 for d in novel), "evidence": novel})
    seen = diff("test_seen", method, baseline, "recognition", "concept_level1")
    out.append({"target": f"the paper's claim: {method} beats {baseline} on level-1 recognition of base (fine-tuned) "
                          "concepts (paired 95% interval above 0)", "met": bool(seen and seen["ci_low"] > 0),
                "evidence": [seen] if seen else []})
    kept = [d for task, tsub, metric in (("retrieval", "old_captions", "i2t_R@1"), ("zero_shot", "level1", "top1"))
            if (d := diff("retention_test", method, base, task, tsub, metric))]
    out.append({"target": f"retention of {method} within 5 points of the base's (its own held-out item names)",
                "met": bool(kept) and all(d["value"] >= -0.05 for d in kept), "evidence": kept})
    cap = diff("test_seen", method, baseline, "retrieval", "old_captions")
    out.append({"target": f"caption R@1 of {method} within 3 points of {baseline}",
                "met": bool(cap and cap["value"] >= -0.03), "evidence": [cap] if cap else []})
    return [{**g, "measured": bool(g["evidence"])} for g in out]


def status(goal: dict) -> str:
    """MET, MISSED, or NOT MEASURED (a config without the subsets the target needs, e.g. no retention sets)."""
    return "NOT MEASURED" if not goal["measured"] else "MET" if goal["met"] else "MISSED"


def headline_table(comparisons: dict, models: list[str], baseline: str, method: str) -> str:
    """Markdown: each headline measure in % [95% CI] per model, then method - baseline [paired CI] and a verdict."""
    return report_table(comparisons, baseline, method, measures(comparisons), models,
                        header=["measure", *models, f"{method} - {baseline}", "verdict"])


def loss_plot(runs: dict[str, Path], families: dict[str, str], path: Path) -> Path:
    """Training loss per step, one panel per loss family (the CLIP loss and the grouped loss are on different
    scales), and the validation score of every model that logged one in a panel of its own (seed 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {name: [json.loads(line) for line in read_text(metrics, "metrics file").splitlines() if line]
            for name, metrics in runs.items()}
    panels = list(dict.fromkeys(families[name] for name in runs))
    validated = [name for name in runs if any("val/score" in r for r in rows[name])]
    count = len(panels) + bool(validated)
    fig, axes = plt.subplots(1, count, figsize=(4.2 * count, 3.4), squeeze=False)
    for ax, family in zip(axes[0], panels):
        for name in (n for n in runs if families[n] == family):
            train = [r for r in rows[name] if "loss" in r]
            ax.plot([r["step"] for r in train], [r["loss"] for r in train], label=name, linewidth=1)
        ax.set(xlabel="step", ylabel="training loss", title=f"{family} loss (seed 0)")
        ax.legend(fontsize=7)
    if validated:
        ax = axes[0][-1]
        for name in validated:
            val = [r for r in rows[name] if "val/score" in r]
            ax.plot([r["step"] for r in val], [100 * r["val/score"] for r in val], marker="o", ms=3, label=name)
        ax.set(xlabel="step", ylabel="%", title="validation: base-concept recognition")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _setup(summary: dict) -> str:
    config, data = summary["config"], summary["data"]
    cross = data.get("cross_style", {})
    models = "; ".join(f"`{m}` ({o['family']}, WiSE-FT w {o['wise_ft']:g}): {json.dumps(o['train'])}"
                       for m, o in summary["models"].items())
    return ("## Set-up\n\n"
            f"Base: `{config['base']}`"
            + (" (untrained: random weights, so its own scores are chance level)" if summary.get("base_untrained") else "")
            + ", fine-tuned by every model with the same steps, optimiser, schedule, seeds and "
            f"data order. Emoji MAGIC dataset built offline with the `truth` labeler (level1 = emoji subgroup, level2 = "
            f"emoji group; {len(data['level2_groups'])} groups); build leaks {data['build_leaks']}; training captions "
            f"naming a concept word removed: {data['concept_word_filter']['captions_removed']}. Concepts per split: "
            f"{data['concepts']}; training images {data['train_images']}; evaluation images {data['test_images']}. "
            f"Base concepts (fine-tuned): {', '.join(data['kinds']['base'])}. Novel test concepts (never fine-tuned; "
            f"the base's corpus showed their emoji by name): {', '.join(data['kinds']['novel_test'])}; novel "
            f"validation concepts: {', '.join(data['kinds']['novel_val'])}. Novel concepts of unseen objects (their "
            f"emoji excluded from the base's corpus): {', '.join(data['kinds']['held_out'])}. Against the base's model "
            f"card: held-out emoji it showed {len(data['base_corpus']['held_out_emoji_seen'])}, novel emoji it did not "
            f"show {len(data['base_corpus']['novel_emoji_unseen'])}. Cross-style set: {cross.get('images', 0)} "
            f"scenes of "
            f"{cross.get('concepts', 0)} concepts in {cross.get('font', '-')} (left out: "
            f"{', '.join(cross.get('left_out', [])) or 'none'}). Models: {models}. Seeds: {summary['seeds']}. "
            f"Wall time: {summary['seconds']:.0f} s.\n")


def _search(record: dict | None) -> str:
    if record is None:
        return ("## Hyperparameter search\n\nNone recorded for this config: every model uses its settings as "
                "written, with no interpolation.\n")
    lines = [f"## Hyperparameter search (validation split only; `{record['command']}`)\n", record["description"] + "\n",
             "| family | setting | WiSE-FT w | score | " + " | ".join(record["metrics"] + [record["retention_metric"]])
             + " |", "|---|---|---|---|" + "---|" * (len(record["metrics"]) + 1)]
    for r in record["results"]:
        cells = [fmt_pct(r["scores"][m]) if m in r["scores"] else "-" for m in record["metrics"] +
                 [record["retention_metric"]]]
        lines.append(f"| {r['family']} | `{json.dumps(r['setting'])}` | {r['wise_ft']:g} | {fmt_pct(r['score'])} | "
                     + " | ".join(cells) + " |")
    chosen = "; ".join(f"{f}: `{json.dumps(c['setting'])}`, w {c['wise_ft']:g} (score {fmt_pct(c['score'])}"
                       + ("" if c["retention_kept"] else ", no setting kept retention") + ")"
                       for f, c in record["chosen"].items())
    return "\n".join(lines) + f"\n\nChosen: {chosen}.\n"


HOW_TO_READ = """## How to read this

**Recognition** (the paper's protocol): for a test picture, the model ranks its true concept's name against the
names of {k} - 1 hard-negative concepts (siblings in the hierarchy first); a hit is the true name ranked first. K =
{k}, so chance is {chance}%. Level 1 is the specific concept (the emoji subgroup, e.g. "fruit"), level 2 its group
(e.g. "food and drink"). **Base** concepts were fine-tuned (tested on new pictures); **novel** concepts were never
fine-tuned, but the base saw their objects in pretraining; **novel concepts of unseen objects** were never fine-tuned
and their objects were left out of pretraining. The **harmonic mean** 2·B·N / (B + N) of base (B) and novel (N)
recognition is high only when both are. Intervals are 95% bootstrap intervals over test items; a difference is
"better" or "worse" only when its paired interval excludes 0.
"""


def write_demo_gallery(out: Path, summary: dict, evaluator: DemoEvaluator, section: dict) -> Path:
    """report.html: a seeded sample of seen and held-out test images with the base's and both fine-tunes' (seed 0)
    top-3 concepts per level, the true one marked, under the headline table."""
    config = summary["config"]
    tests = {s: evaluator.concepts(s) for s in ("test_seen", "test_novel", "test_held_out")}
    items = sample_gallery_images(tests, config["eval"]["gallery_per_held_out_concept"], config["eval"]["gallery_seen"],
                                  config["eval"]["seed"])
    labels = {lv: sorted({v for cs in tests.values() for c in cs for im in c.test_images
                          if (v := getattr(im, f"level{lv}"))}) for lv in (1, 2)}
    root = evaluator.paths["test_seen"].parent
    specs = {"base": config["base"], **{m: summary["checkpoints"][m][0] for m in (config["baseline"], config["method"])}}
    predictions = {name: gallery_predictions(evaluator.encoder(load_model(spec)), items, root, labels,
                                             evaluator.concept_config.template) for name, spec in specs.items()}
    return write_gallery(out / "report.html", f"clearglass demo: {config['method']} vs {config['baseline']}, "
                         f"fine-tuning {config['base']}", [section], items, predictions, root)


def write_demo_report(out: Path, summary: dict, evaluator: DemoEvaluator) -> dict[str, Any]:
    """Write report.md and the plots; returns what the summary records of them (targets, paths, key table)."""
    config, comparisons = summary["config"], summary["comparisons"]
    baseline, method = config["baseline"], config["method"]
    models = comparisons["test_seen"]["models"]
    goals = targets(comparisons, baseline, method, models[0])
    plots = [p for subset in ("test_seen", "test_novel", "test_held_out") if subset in comparisons
             for p in write_plots(comparisons[subset]["results"], out / "plots" / subset, SPLIT_NAMES[subset])]
    plots.append(loss_plot({m: Path(runs[0]["metrics_path"]) for m, runs in summary["training"].items()},
                           {m: o["family"] for m, o in summary["models"].items()}, out / "plots" / "training_loss.png"))
    table = headline_table(comparisons, models, baseline, method)
    sentence = verdict_sentences(comparisons, baseline, method, measures(comparisons),
                                 [(g["target"], g["met"]) for g in goals if g["measured"]])
    seeds = len(summary["seeds"])
    k = config["eval"]["k"]
    parts = [f"# clearglass demo: CLEAR GLASS vs the CLIP loss, fine-tuning `{config['base']}`\n",
             "**Targets** (test split; " + f"{seeds} seed{'s' if seeds > 1 else ''}):\n",
             "\n".join(f"- {status(g)}: {g['target']}" for g in goals) + "\n",
             f"## Headline measures (% [95% CI]; the last columns are {method} minus {baseline}, paired)\n", table,
             sentence + "\n", HOW_TO_READ.format(k=k, chance=round(100 / k)), _setup(summary)]
    for subset, comp in comparisons.items():
        parts.append(f"## {subset}\n\n" + markdown_table(comp["results"]))
        ci_level = comp["results"][baseline]["config"]["ci_level"]
        parts.append(f"Paired differences on {subset}:\n\n" + differences_table(comp["differences"], ci_level))
    parts.append("## Plots\n\n" + "\n".join(f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in plots) + "\n")
    parts.append("Pictures: [report.html](report.html), a gallery of test images with each model's top-3 concepts.\n")
    parts.append("# Appendix: " + _search(summary["search"]).removeprefix("## "))
    report = write_text_atomic("\n".join(parts), out / "report.md")
    section = {"heading": "", "table": headline_cells(comparisons, baseline, method, measures(comparisons)),
               "verdict": sentence}
    gallery = write_demo_gallery(out, summary, evaluator, section)
    return {"targets": goals, "report": str(report), "gallery": str(gallery), "plots": [str(p) for p in plots],
            "key_table": table}


PUBLISHED = ("report.md", "report.html", "results.json", "plots")  # what `publish` copies, its links all relative


def publish(out: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy a finished demo's report, gallery, results JSON and plots from ``out`` into folder ``dest`` (its old
    copies of them replaced); returns ``dest``."""
    out, dest = Path(out), Path(dest)
    missing = [name for name in PUBLISHED if not (out / name).exists()]
    if missing:
        raise ClearglassError(f"{out}: no {', '.join(missing)}: publish copies a finished demo's output")
    if dest.resolve() == out.resolve():
        raise ClearglassError(f"--publish {dest}: the demo's own output folder; name another folder")
    dest.mkdir(parents=True, exist_ok=True)
    for name in PUBLISHED:
        target = dest / name
        if target.is_dir():
            shutil.rmtree(target)
        if (out / name).is_dir():
            shutil.copytree(out / name, target)
        else:
            shutil.copyfile(out / name, target)
    return dest
