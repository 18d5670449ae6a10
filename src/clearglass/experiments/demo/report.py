"""The demo's report: ``report.md`` leads with the targets (met or missed) and a table of the headline measures of
every model with the paired difference of the method minus the baseline, then at most three plain sentences, how
to read them, the set-up, every subset's tables, the plots and, as an appendix, the search record it used.
``report.html`` is the same report in the same order, with a gallery of test pictures before the appendix. Every
number comes from the results JSON."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clearglass.errors import ClearglassError
from clearglass.evaluate import Encoder, level_labels
from clearglass.experiments.demo.evaluation import DemoEvaluator
from clearglass.gallery import SCRIPT as GALLERY_SCRIPT
from clearglass.gallery import STYLE as GALLERY_STYLE
from clearglass.gallery import gallery_html, gallery_picks, sample_gallery, split_trials, table_hits
from clearglass.io import read_text, write_text_atomic
from clearglass.magic.schema import ConceptRecord
from clearglass.models import load_model
from clearglass.page import markdown_html, write_page
from clearglass.report import (
    Measure,
    differences_table,
    fmt_pct,
    markdown_table,
    md_code,
    md_text,
    verdict_sentences,
    write_plots,
)
from clearglass.report import headline_table as report_table
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
GALLERY_KINDS = {"test_seen": "base", "test_novel": "novel", "test_held_out": "novel, unseen object"}  # badges
PICTURES = ("Pictures: [report.html](report.html), this report with a gallery of test pictures: each model's pick "
            "among the K candidates the recognition table gave each picture.\n")


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


def loss_plot(runs: dict[str, Path], families: dict[str, str], colours: dict[str, str], path: Path) -> Path:
    """Training loss per step, one panel per loss family (the CLIP loss and the grouped loss are on different
    scales), and the validation score of every model that logged one in a panel of its own (seed 0); each model
    keeps its colour (``colours``) in every panel, named once in a legend below them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = {name: [json.loads(line) for line in read_text(metrics, "metrics file").splitlines() if line]
            for name, metrics in runs.items()}
    panels = list(dict.fromkeys(families[name] for name in runs))
    validated = [name for name in runs if any("val/score" in r for r in rows[name])]
    count = len(panels) + bool(validated)
    fig, axes = plt.subplots(1, count, figsize=(4.2 * count, 3.8), squeeze=False)
    for ax, family in zip(axes[0], panels):
        for name in (n for n in runs if families[n] == family):
            train = [r for r in rows[name] if "loss" in r]
            ax.plot([r["step"] for r in train], [r["loss"] for r in train], color=colours[name], linewidth=1)
        ax.set(xlabel="step", ylabel="training loss", title=f"{family} loss (seed 0)")
    if validated:
        ax = axes[0][-1]
        for name in validated:
            val = [r for r in rows[name] if "val/score" in r]
            ax.plot([r["step"] for r in val], [100 * r["val/score"] for r in val], marker="o", ms=3,
                    color=colours[name])
        ax.set(xlabel="step", ylabel="%", title="validation: base-concept recognition")
    fig.legend([Line2D([], [], color=colours[name]) for name in runs], list(runs), loc="lower center",
               ncol=min(len(runs), 5), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _setup(summary: dict) -> str:
    config, data = summary["config"], summary["data"]
    cross = data.get("cross_style", {})
    models = "; ".join(f"{md_code(m)} ({md_text(o['family'])}, WiSE-FT w {o['wise_ft']:g}): "
                       f"{md_text(json.dumps(o['train']))}"
                       for m, o in summary["models"].items())
    return ("## Set-up\n\n"
            f"Base: {md_code(config['base'])}"
            + (" (untrained: random weights, so its own scores are chance level)"
               if summary.get("base_untrained") else "")
            + ", fine-tuned by every model with the same steps, optimiser, schedule, seeds and "
            f"data order. Emoji MAGIC dataset built offline with the `truth` labeler (level1 = emoji subgroup, "
            f"level2 = emoji group; {len(data['level2_groups'])} groups); build leaks {data['build_leaks']}; "
            f"training captions "
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


def demo_gallery(comparisons: dict, concepts: dict[str, list[ConceptRecord]], models: list[str],
                 load: Callable[[str], Encoder], image_root: Path, per_kind: int, seed: int) -> str:
    """The gallery section of report.html: up to ``per_kind`` pictures of each test split (base, novel, novel of
    unseen objects), dealt over right and wrong cases, with each model's pick (``models`` in the table's order,
    each loaded by ``load`` when its picks are made, one at a time: the first seed's model of each) and the table's
    hits (its per-item outcomes, merged over seeds)."""
    splits = [s for s in GALLERY_KINDS if s in comparisons]
    trials = {s: split_trials(s, concepts[s], comparisons[s]["results"][models[0]]["config"]) for s in splits}
    hits = {s: {m: table_hits(trials[s], comparisons[s]["results"][m]) for m in models} for s in splits}
    items = sample_gallery(list(trials.values()), per_kind, seed, hits)
    picks = {m: gallery_picks(load(m), items, trials, image_root) for m in models}
    return gallery_html(items, picks, trials, hits, {s: GALLERY_KINDS[s] for s in splits}, image_root)


def write_demo_page(out: Path, sections: list[str], gallery: str, appendix: str, fold: list[str]) -> Path:
    """report.html: report.md's sections in its order (those headed by a name in ``fold``, the per-split tables,
    collapsed; the plots embedded), the gallery, then the appendix."""
    title = sections[0].splitlines()[0].lstrip("# ").replace("`", "")
    body = markdown_html("\n".join(sections), out, fold) + "\n" + gallery + "\n" + markdown_html(appendix, out)
    return write_page(out / "report.html", title, body, GALLERY_STYLE, GALLERY_SCRIPT)


def report_parts(summary: dict, plots: list[Path], out: Path) -> tuple[list[str], str]:
    """report.md's sections in order (targets, headline table of every model, verdict, how to read it, set-up,
    per-split tables, plots) and its appendix (the search), from the summary."""
    config, comparisons = summary["config"], summary["comparisons"]
    baseline, method = config["baseline"], config["method"]
    models = comparisons["test_seen"]["models"]
    goals = targets(comparisons, baseline, method, models[0])
    sentence = verdict_sentences(comparisons, baseline, method, measures(comparisons),
                                 [(g["target"], g["met"]) for g in goals if g["measured"]])
    seeds = len(summary["seeds"])
    k = config["eval"]["k"]
    parts = [f"# clearglass demo: CLEAR GLASS vs the CLIP loss, fine-tuning {md_code(config['base'])}\n",
             "**Targets** (test split; " + f"{seeds} seed{'s' if seeds > 1 else ''}):\n",
             "\n".join(f"- {status(g)}: {md_text(g['target'])}" for g in goals) + "\n",
             f"## Headline measures (% [95% CI]; the last columns are {md_text(method)} minus {md_text(baseline)}, "
             "paired)\n",
             headline_table(comparisons, models, baseline, method), md_text(sentence) + "\n",
             HOW_TO_READ.format(k=k, chance=round(100 / k)), _setup(summary)]
    for subset, comp in comparisons.items():
        parts.append(f"## {subset}\n\n" + markdown_table(comp["results"]))
        ci_level = comp["results"][baseline]["config"]["ci_level"]
        parts.append(f"Paired differences on {subset}:\n\n" + differences_table(comp["differences"], ci_level))
    parts.append("## Plots\n\n" + "\n".join(f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in plots) + "\n")
    return parts, "# Appendix: " + _search(summary["search"]).removeprefix("## ")


def write_demo_report(out: Path, summary: dict, evaluator: DemoEvaluator) -> dict[str, Any]:
    """Write report.md, the plots and report.html (the report with its gallery); returns what the summary records
    of them (targets, paths, key table)."""
    config, comparisons = summary["config"], summary["comparisons"]
    baseline, method = config["baseline"], config["method"]
    models = comparisons["test_seen"]["models"]
    colours = {m: f"C{i % 10}" for i, m in enumerate(models)}  # the bar plots' colours, in the same order
    splits = [s for s in SPLIT_NAMES if s in comparisons]
    labels = {s: {f"level{lv}": len(level_labels(evaluator.concepts(s), lv)) for lv in (1, 2)} for s in splits}
    plots = [p for s in splits for p in write_plots(comparisons[s]["results"], out / "plots" / s, SPLIT_NAMES[s],
                                                    labels[s])]
    plots.append(loss_plot({m: Path(runs[0]["metrics_path"]) for m, runs in summary["training"].items()},
                           {m: o["family"] for m, o in summary["models"].items()}, colours,
                           out / "plots" / "training_loss.png"))
    sections, appendix = report_parts(summary, plots, out)
    report = write_text_atomic("\n".join([*sections, PICTURES, appendix]), out / "report.md")
    specs = {m: config["base"] if m == models[0] else summary["checkpoints"][m][0] for m in models}
    gallery = demo_gallery(comparisons, {s: evaluator.concepts(s) for s in GALLERY_KINDS if s in comparisons},
                           models, lambda m: evaluator.encoder(load_model(specs[m])),
                           evaluator.paths["test_seen"].parent, config["eval"]["gallery_per_kind"],
                           config["eval"]["seed"])
    page = write_demo_page(out, sections, gallery, appendix, list(comparisons))
    return {"targets": targets(comparisons, baseline, method, models[0]), "report": str(report),
            "gallery": str(page), "plots": [str(p) for p in plots],
            "key_table": headline_table(comparisons, models, baseline, method)}


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
