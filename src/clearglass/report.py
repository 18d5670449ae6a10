"""Comparisons of several models' results, markdown tables and plots.

Every number a person reads is a percent with one decimal (``fmt_pct``); the JSON keeps full precision. The
numbers in the markdown come from the same JSON values through that one formatter, so the report and the results
JSON always agree. A report leads with the answer: a short headline table (each measure for the baseline and the
method with intervals, the paired difference in points and a verdict word) and at most three plain sentences.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clearglass.errors import ClearglassError
from clearglass.evaluate import bootstrap, metric_stat
from clearglass.io import write_json_atomic, write_text_atomic
from clearglass.results import MetricKey, Results

# headline measures of a report when its caller names none: per task, the metrics shown first
HEADLINE_METRICS = {"recognition": ("i2t_R@1", "t2i_R@1"), "zero_shot": ("top1",),
                    "retrieval": ("i2t_R@1", "t2i_R@1"), "hierarchical": ("precision", "recall")}


@dataclass(frozen=True)
class Measure:
    """A headline measure: a metric, its label, and with ``split`` the comparison of a ``{split: compare() output}``
    mapping it is read from."""

    key: MetricKey
    label: str
    split: str | None = None


def md_text(value: object) -> str:
    """Data (a model name, a title, a reason) as text of report.md, Markdown with inline HTML: ``&`` and ``<`` as
    entities (no tag or entity can start; a lone ``>`` stays, as in "image->text"), ``|`` (a table's column bar), the
    backtick (a code span) and ``*`` (bold) too, and a ``]`` that ``(``, ``[`` or ``:`` follows (where a link, an
    image or a link reference would form; brackets alone stay, as in "54.4 [50.1, 58.7]"), so it never becomes
    markup or a column; line breaks as spaces."""
    text = " ".join(str(value).splitlines()).replace("&", "&amp;").replace("<", "&lt;")
    text = re.sub(r"\](?=[(\[:])", "&#93;", text)
    return text.replace("|", "&#124;").replace("`", "&#96;").replace("*", "&#42;")


def md_code(value: object) -> str:
    """Data as a code span of report.md (shown as is), or as :func:`md_text` where a backtick, a ``|`` or a line
    break would end the span or the table row."""
    text = str(value)
    return md_text(text) if any(c in text for c in "`|\n\r") else f"`{text}`"


def fmt_pct(x: float, signed: bool = False) -> str:
    """A fraction as percent with one decimal (0.5441 -> "54.4"); ``signed`` marks positive values "+3.7"."""
    value = round(100 * x, 1) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{value:+.1f}" if signed and value != 0 else f"{value:.1f}"


def _cell(row: dict, signed: bool = False) -> str:
    return f"{fmt_pct(row['value'], signed)} [{fmt_pct(row['ci_low'], signed)}, {fmt_pct(row['ci_high'], signed)}]"


def compare(results_by_model: dict[str, dict], n_boot: int | None = None, seed: int | None = None,
            pairs: list[tuple[str, str]] | None = None) -> dict:
    """Side-by-side results, and per metric the paired difference of each ``(model, baseline)`` pair, model minus
    baseline (same items resampled for both), with its bootstrap interval. ``pairs`` default: each model against
    the first."""
    if len(results_by_model) < 1:
        raise ClearglassError("compare needs at least one model's results")
    names = list(results_by_model)
    pairs = [(name, names[0]) for name in names[1:]] if pairs is None else [(a, b) for a, b in pairs]
    for model, baseline in pairs:
        if model not in results_by_model or baseline not in results_by_model or model == baseline:
            raise ClearglassError(f"pair {model!r} - {baseline!r}: expected two different models of {names}")
    if len(set(pairs)) != len(pairs):
        raise ClearglassError(f"pairs {pairs}: a pair is listed twice")
    config = results_by_model[names[0]]["config"]
    n_boot = n_boot if n_boot is not None else config["n_boot"]
    seed = seed if seed is not None else config["seed"]
    differences = [d for model, baseline in pairs
                   for d in _differences(results_by_model, model, baseline, n_boot, seed, config["ci_level"])]
    return {"models": names, "results": results_by_model, "differences": differences}


def _differences(results_by_model: dict[str, dict], name: str, base_name: str, n_boot: int, seed: int,
                 level: float) -> list[dict]:
    """Per metric both models have: model ``name`` minus ``base_name`` with its paired bootstrap interval."""
    base, other = results_by_model[base_name], results_by_model[name]
    if other["test_set_hash"] != base["test_set_hash"]:
        raise ClearglassError(f"model {name!r} was evaluated on test set {other['test_set_hash']}, "
                              f"{base_name!r} on {base['test_set_hash']}: compare needs the same test set")
    table = Results({base_name: base, name: other})
    differences = []
    for key in table.keys(base_name):
        if table.row(key, name) is None:
            continue
        mine, theirs = table.outcomes(key, base_name), table.outcomes(key, name)
        if mine.items_hash != theirs.items_hash:
            raise ClearglassError(f"{key.unit}: model {name!r} saw different items than {base_name!r} "
                                  "(different k, seed, template or data); cannot pair them")
        stat_a, stat_b = metric_stat(mine.spec, mine.arrays), metric_stat(theirs.spec, theirs.arrays)

        def diff(idx: np.ndarray, stat_a=stat_a, stat_b=stat_b) -> np.ndarray:
            return stat_b(idx) - stat_a(idx)

        low, high = bootstrap(diff, mine.n, n_boot, seed, level)
        differences.append({"model": name, "baseline": base_name, "task": key.task, "subset": key.subset,
                            "metric": key.metric, "value": table.value(key, name) - table.value(key, base_name),
                            "ci_low": low, "ci_high": high, "n": mine.n})
    return differences


def markdown_table(results_by_model: dict[str, dict]) -> str:
    """Markdown table: one row per (task, subset, metric), one column per model, ``value [ci_low, ci_high]`` in %."""
    table = Results(results_by_model)
    keys = list(dict.fromkeys(k for name in table.models for k in table.keys(name)))
    lines = ["| task | subset | metric | n | " + " | ".join(md_text(m) for m in table.models) + " |",
             "|---|---|---|---|" + "---|" * len(table.models)]
    for key in keys:
        cells = [table.row(key, m) for m in table.models]
        n = next(c for c in cells if c)["n"]
        values = [_cell(c) if c else "-" for c in cells]
        lines.append(f"| {md_text(key.task)} | {md_text(key.subset)} | {md_text(key.metric)} | {n} | "
                     + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def differences_table(differences: list[dict], ci_level: float = 0.95) -> str:
    """Markdown table of paired differences (model minus baseline) with their ``ci_level`` intervals."""
    lines = [f"| model - baseline | task | subset | metric | n | difference, points [{round(ci_level * 100)}% CI] |",
             "|---|---|---|---|---|---|"]
    for d in differences:
        names = " | ".join(md_text(d[k]) for k in ("task", "subset", "metric"))
        lines.append(f"| {md_text(d['model'])} - {md_text(d['baseline'])} | {names} | {d['n']} | "
                     f"{_cell(d, signed=True)} |")
    return "\n".join(lines) + "\n"


def _table(comparison: dict, measure: Measure) -> tuple[Results, dict]:
    """The results table a measure is read from, and its compare() output (with ``split``: that split's)."""
    if measure.split is None:
        return Results.of(comparison), comparison
    if measure.split not in comparison:
        raise ClearglassError(f"headline measure {measure.split}/{measure.key}: no comparison {measure.split!r}, "
                              f"expected one of {list(comparison)}")
    return Results.of(comparison[measure.split]), comparison[measure.split]


def _metric_row(table: Results, model: str, measure: Measure) -> dict:
    if model not in table.by_model:
        raise ClearglassError(f"headline measure {measure.key}: no results of model {model!r}, expected one of "
                              f"{table.models}")
    row = table.row(measure.key, model)
    if row is None:
        raise ClearglassError(f"headline measure {measure.key}: model {model!r} has no such metric")
    return row


def verdict(difference: dict) -> str:
    """The verdict word of a paired difference: better or worse when its interval excludes 0, else
    "no clear difference"."""
    if difference["ci_low"] > 0:
        return "better"
    if difference["ci_high"] < 0:
        return "worse"
    return "no clear difference"


def headline_rows(comparison: dict, baseline: str, method: str | None, measures: list[Measure],
                  models: list[str] | None = None) -> list[dict]:
    """Per measure: its label, the baseline's and the method's metric rows, their paired difference and its verdict
    (``method=None``: the baseline's rows only); under ``models`` the rows of ``models`` (default: the baseline
    and the method), None where a model has no such metric."""
    if not measures:
        raise ClearglassError("a headline table needs at least one measure")
    shown = models or [m for m in (baseline, method) if m is not None]
    rows = []
    for measure in measures:
        table, comp = _table(comparison, measure)
        row = {"label": measure.label, "baseline": _metric_row(table, baseline, measure),
               "ci_level": comp["results"][baseline]["config"]["ci_level"],
               "models": {m: table.row(measure.key, m) if m in table.by_model else None for m in shown}}
        if method is not None:
            d = table.difference(measure.key, method, baseline)
            if d is None:
                raise ClearglassError(f"headline measure {measure.key}: no paired difference of {method!r} minus "
                                      f"{baseline!r}; compare() them with {baseline!r} first")
            row.update(method=_metric_row(table, method, measure), difference=d, verdict=verdict(d))
        rows.append(row)
    return rows


def headline_cells(comparison: dict, baseline: str, method: str | None, measures: list[Measure],
                   models: list[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """The headline table as a header and rows of formatted cells (markdown and the HTML gallery render it): the
    baseline and the method, or with ``models`` a column per model ("-" where one has no such metric), then the
    method minus the baseline and the verdict."""
    rows = headline_rows(comparison, baseline, method, measures, models)
    ci = f"{round(100 * rows[0]['ci_level'])}% CI"
    if method is None:
        return ["measure", f"{baseline}, % [{ci}]"], [[r["label"], _cell(r["baseline"])] for r in rows]
    header = ["measure", *(f"{m}, % [{ci}]" for m in rows[0]["models"]), f"{method} − {baseline}, points [{ci}]",
              "verdict"]
    return header, [[r["label"], *(_cell(c) if c else "-" for c in r["models"].values()),
                     _cell(r["difference"], signed=True), r["verdict"]] for r in rows]


def headline_table(comparison: dict, baseline: str, method: str | None, measures: list[Measure],
                   models: list[str] | None = None, header: list[str] | None = None) -> str:
    """Markdown headline table: per measure the baseline and the method (or each of ``models``) in % with
    intervals, the method minus the baseline in points with its paired interval, and the verdict word;
    ``header`` relabels the columns."""
    default, rows = headline_cells(comparison, baseline, method, measures, models)
    return _markdown(header or default, rows)


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    """A pipe table of plain-text cells (escaped here: they hold model names)."""
    lines = ["| " + " | ".join(map(md_text, header)) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(map(md_text, cells)) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def _listing(rows: list[dict], total: int, most: int = 3) -> str:
    """"on A (+x points); B (+y points)", or for more than ``most`` rows their count and the ``most`` largest."""
    top = sorted(rows, key=lambda r: -abs(r["difference"]["value"]))[:most]
    named = "; ".join(f"{r['label']} ({fmt_pct(r['difference']['value'], signed=True)} points)" for r in top)
    if len(rows) <= most:
        return f"on {named}"
    count = f"all {total}" if len(rows) == total else f"{len(rows)} of the {total}"
    return f"on {count} headline measures, most on {named}"


def verdict_sentences(comparison: dict, baseline: str, method: str, measures: list[Measure],
                      targets: list[tuple[str, bool]] | None = None) -> str:
    """At most three plain sentences: where the method is better, where worse, and whether the targets
    (``(description, met)`` pairs) are met."""
    rows = headline_rows(comparison, baseline, method, measures)
    better = [r for r in rows if r["verdict"] == "better"]
    worse = [r for r in rows if r["verdict"] == "worse"]
    unclear = len(rows) - len(better) - len(worse)
    sentences = [f"{method} is better than {baseline} {_listing(better, len(rows))}." if better else
                 f"{method} is not clearly better than {baseline} on any of the {len(rows)} headline measures."]
    rest = f"; no clear difference on the other {unclear}" if unclear and (better or worse) else ""
    sentences.append(f"It is worse {_listing(worse, len(rows))}{rest}." if worse else f"It is worse on none{rest}.")
    if targets:
        met = [t for t, ok in targets if ok]
        missed = [t for t, ok in targets if not ok]
        sentences.append(f"All {len(targets)} targets are met: {'; '.join(met)}." if not missed else
                         f"None of the {len(targets)} targets is met: {'; '.join(missed)}." if not met else
                         f"Targets met: {'; '.join(met)}; missed: {'; '.join(missed)}.")
    return " ".join(sentences)


def default_measures(results: dict) -> list[Measure]:
    """The headline measures of a results dict: its rows whose metric ``HEADLINE_METRICS`` names for their task."""
    return [Measure(k, f"{k.task}: {k.subset}, {k.metric}") for k in Results.of(results).keys()
            if k.metric in HEADLINE_METRICS.get(k.task, ())]


def _bar_plot(path: Path, title: str, groups: list[str], results_by_model: dict[str, dict],
              pick: dict[str, dict[str, dict]], chance: dict[str, float]) -> None:
    """Grouped bars in percent with asymmetric error bars (``pick[model][group]`` is the metric row drawn), each
    model in its own colour (``C0``, ``C1``, ... in order), a dashed line at each group's ``chance`` and a y-axis
    from just under the lowest of chance and the bars to just above the highest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results_by_model)
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(groups) * max(1, len(names)) / 2), 3.6))
    x = np.arange(len(groups))
    shown = [100 * c for c in chance.values()]
    for i, name in enumerate(names):
        rows = [pick[name].get(g) for g in groups]
        vals = 100 * np.array([r["value"] if r else np.nan for r in rows])
        err = 100 * np.array([[r["value"] - r["ci_low"], r["ci_high"] - r["value"]] if r else [0, 0] for r in rows]).T
        ax.bar(x + (i - (len(names) - 1) / 2) * width, vals, width, yerr=err, capsize=3, label=name, color=f"C{i % 10}")
        shown += [100 * r[k] for r in rows if r for k in ("ci_low", "ci_high")]
    for j, group in enumerate(g for g in groups if g in chance):
        c = 100 * chance[group]
        at = groups.index(group)
        ax.hlines(c, at - 0.45, at + 0.45, colors="black", linestyles="--", linewidth=1,
                  label="chance" if j == 0 else None)
    low, high = (min(shown), max(shown)) if shown else (0.0, 100.0)
    ax.set_ylim(max(0.0, low - 10), min(105.0, high + 8))
    ax.set_xticks(x, groups, rotation=20, ha="right")
    ax.set_ylabel("%")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _label_counts(results_by_model: dict[str, dict]) -> dict[str, int]:
    """Per zero-shot subset, its number of labels, read from the per-item classes of results that keep them."""
    counts = {}
    for res in results_by_model.values():
        for group, outcomes in res.get("per_item", {}).items():
            task, _, subset = group.partition("/")
            if task == "zero_shot" and outcomes["arrays"].get("class"):
                counts[subset] = max(counts.get(subset, 0), max(outcomes["arrays"]["class"]) + 1)
    return counts


def write_plots(results_by_model: dict[str, dict], out_dir: str | os.PathLike, split: str = "",
                labels: dict[str, int] | None = None) -> list[Path]:
    """PNG plots in percent: recognition by field (i2t and t2i, with the 1/K chance line) and zero-shot top-1 by
    level (with its 1/labels chance line; ``labels``: per level subset, e.g. ``level1``, its number of labels,
    default read from the results' per-item classes), per model, with error bars; ``split`` names the test set in
    every title."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    k = next(iter(results_by_model.values()))["config"].get("k")
    labels = labels if labels is not None else _label_counts(results_by_model)
    on = f"\n{split}" if split else ""  # on a line of its own: a long split name never clips the title
    paths, table = [], Results(results_by_model)
    for task, metric, title, stem in [
        ("recognition", "i2t_R@1", f"Concept recognition, image->text R@1, K={k}{on}", "recognition_i2t"),
        ("recognition", "t2i_R@1", f"Concept recognition, text->image R@1, K={k}{on}", "recognition_t2i"),
        ("zero_shot", "top1", f"Zero-shot top-1 by concept level{on}", "zero_shot_by_level"),
    ]:
        pick = {m: {k.subset: table.row(k, m) for k in table.keys(m) if (k.task, k.metric) == (task, metric)}
                for m in table.models}
        groups = list(dict.fromkeys(g for rows in pick.values() for g in rows))
        chance = ({g: 1 / k for g in groups} if task == "recognition" and k else
                  {g: 1 / labels[g] for g in groups if labels.get(g)} if task == "zero_shot" else {})
        if groups:
            path = out_dir / f"{stem}.png"
            _bar_plot(path, title, groups, results_by_model, pick, chance)
            paths.append(path)
    return paths


def _shown_path(path: str, out_dir: Path) -> str:
    """`path` relative to the report's folder when it lies inside it (a portable report), else as given."""
    try:
        return Path(path).resolve().relative_to(out_dir.resolve()).as_posix()
    except ValueError:
        return path


def compared_pairs(comparison: dict) -> list[tuple[str, str]]:
    """The ``(model, baseline)`` pairs of a ``compare`` output, in order."""
    return list(dict.fromkeys((d["model"], d["baseline"]) for d in comparison["differences"]))


def headline_sections(comparison: dict, measures: list[Measure] | None = None) -> list[dict]:
    """What report.md and report.html open with: per compared pair a ``heading`` (empty when there is one pair),
    the headline ``table`` (``headline_cells``) and the ``verdict`` sentences; the first model's table alone when
    nothing is compared. ``measures`` default to ``default_measures`` of the (first) baseline."""
    pairs = compared_pairs(comparison)
    if not pairs:
        first = next(iter(comparison["results"]))
        measures = measures or default_measures(comparison["results"][first])
        return [{"heading": "", "table": headline_cells(comparison, first, None, measures), "verdict": ""}]
    measures = measures or default_measures(comparison["results"][pairs[0][1]])
    return [{"heading": f"{method} vs {baseline}" if len(pairs) > 1 else "",
             "table": headline_cells(comparison, baseline, method, measures),
             "verdict": verdict_sentences(comparison, baseline, method, measures)} for method, baseline in pairs]


def write_report(results: dict, out_dir: str | os.PathLike, title: str = "clearglass evaluation",
                 intro: str = "", measures: list[Measure] | None = None) -> dict[str, Path]:
    """Write ``results.json``, ``report.md`` and the plots for one results dict, or for a ``compare`` output. The
    report leads with the headline table of ``measures`` (default: ``default_measures``) and the verdict per
    compared pair, then ``intro`` (Markdown, taken as written: escape data in it with md_text / md_code) and the
    long tables."""
    out_dir = Path(out_dir)
    comparison = results if "differences" in results else compare({results["model"] or "model": results})
    by_model = comparison["results"]
    json_path = out_dir / "results.json"
    write_json_atomic(comparison, json_path)
    plots = write_plots(by_model, out_dir)
    differences = comparison["differences"]
    baselines = list(dict.fromkeys(baseline for _, baseline in compared_pairs(comparison)))
    first = by_model[baselines[0] if baselines else next(iter(by_model))]
    cfg = first["config"]
    table = Results(by_model)
    d_corr = " (d_corr, a rank correlation, times 100)" if any(
        k.metric == "d_corr" for m in table.models for k in table.keys(m)) else ""
    parts = [f"# {md_text(title)}\n"]
    for section in headline_sections(comparison, measures):
        parts += [f"## {md_text(section['heading'])}\n"] if section["heading"] else []
        parts += [_markdown(*section["table"])] + ([md_text(section["verdict"]) + "\n"] if section["verdict"] else [])
    if intro:
        parts.append(intro.strip() + "\n")
    parts.append(f"Data: {md_code(_shown_path(first['data'], out_dir))} (test set hash "
                 f"{md_code(first['test_set_hash'])}); k={cfg['k']}, template {md_code(cfg['template'])}, seed "
                 f"{cfg['seed']}, {cfg['n_boot']} bootstrap resamples, "
                 f"{round(cfg['ci_level'] * 100)}% percentile intervals. Values in percent{d_corr}, differences "
                 "in percentage points.\n")
    skipped = {what: why for res in by_model.values() for what, why in res.get("skipped", {}).items()}
    if skipped:
        parts.append("Skipped: " + "; ".join(f"{md_text(what)} ({md_text(why)})" for what, why in skipped.items())
                     + ".\n")
    parts.append("## Results\n\n" + markdown_table(by_model))
    if differences:
        against = f" vs {md_text(baselines[0])}" if len(baselines) == 1 else ""
        parts.append(f"## Paired differences{against}\n\n" + differences_table(differences, cfg["ci_level"]))
    if plots:
        parts.append("## Plots\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n")
    md_path = out_dir / "report.md"
    write_text_atomic("\n".join(parts), md_path)
    return {"json": json_path, "markdown": md_path, **{p.stem: p for p in plots}}
