"""Comparisons of several models' results, markdown tables and plots.

Numbers in the markdown come from the same JSON values through one formatter (``fmt``), so the report and
the results JSON always agree.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from clearglass.errors import ClearglassError
from clearglass.evaluate import bootstrap, metric_stat
from clearglass.io import write_json_atomic, write_text_atomic


def fmt(x: float) -> str:
    """The one number format of reports: 4 decimals."""
    return f"{x:.4f}"


def _key(row: dict) -> tuple[str, str, str]:
    return (row["task"], row["subset"], row["metric"])


def compare(results_by_model: dict[str, dict], n_boot: int | None = None, seed: int | None = None) -> dict:
    """Side-by-side results, and per metric the paired difference of each model minus the first (same items
    resampled for both) with its bootstrap interval."""
    if len(results_by_model) < 1:
        raise ClearglassError("compare needs at least one model's results")
    names = list(results_by_model)
    base_name, base = names[0], results_by_model[names[0]]
    n_boot = n_boot if n_boot is not None else base["config"]["n_boot"]
    seed = seed if seed is not None else base["config"]["seed"]
    level = base["config"]["ci_level"]
    differences = []
    for name in names[1:]:
        other = results_by_model[name]
        if other["test_set_hash"] != base["test_set_hash"]:
            raise ClearglassError(f"model {name!r} was evaluated on test set {other['test_set_hash']}, "
                                  f"{base_name!r} on {base['test_set_hash']}: compare needs the same test set")
        theirs = {_key(r): r for r in other["metrics"]}
        for row in base["metrics"]:
            if _key(row) not in theirs:
                continue
            group = f"{row['task']}/{row['subset']}"
            a_items, b_items = base["per_item"][group], other["per_item"][group]
            if a_items["items_hash"] != b_items["items_hash"]:
                raise ClearglassError(f"{group}: model {name!r} saw different items than {base_name!r} "
                                      "(different k, seed, template or data); cannot pair them")
            stat_a = metric_stat(row["stat"], {k: np.asarray(v) for k, v in a_items["arrays"].items()})
            stat_b = metric_stat(row["stat"], {k: np.asarray(v) for k, v in b_items["arrays"].items()})

            def diff(idx: np.ndarray, stat_a=stat_a, stat_b=stat_b) -> np.ndarray:
                return stat_b(idx) - stat_a(idx)

            value = theirs[_key(row)]["value"] - row["value"]
            low, high = bootstrap(diff, row["n"], n_boot, seed, level)
            differences.append({"model": name, "baseline": base_name, "task": row["task"], "subset": row["subset"],
                                "metric": row["metric"], "value": value, "ci_low": low, "ci_high": high,
                                "n": row["n"]})
    return {"models": names, "results": results_by_model, "differences": differences}


def markdown_table(results_by_model: dict[str, dict]) -> str:
    """Markdown table: one row per (task, subset, metric), one column per model, ``value [ci_low, ci_high]``."""
    names = list(results_by_model)
    rows: dict[tuple, dict[str, dict]] = {}
    for name in names:
        for r in results_by_model[name]["metrics"]:
            rows.setdefault(_key(r), {})[name] = r
    lines = ["| task | subset | metric | n | " + " | ".join(names) + " |",
             "|---|---|---|---|" + "---|" * len(names)]
    for key, cells in rows.items():
        n = next(iter(cells.values()))["n"]
        values = [f"{fmt(c['value'])} [{fmt(c['ci_low'])}, {fmt(c['ci_high'])}]" if (c := cells.get(m)) else "-"
                  for m in names]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {n} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def differences_table(differences: list[dict]) -> str:
    """Markdown table of paired differences (model minus baseline) with intervals."""
    lines = ["| model - baseline | task | subset | metric | n | difference [95% CI] |", "|---|---|---|---|---|---|"]
    for d in differences:
        lines.append(f"| {d['model']} - {d['baseline']} | {d['task']} | {d['subset']} | {d['metric']} | {d['n']} | "
                     f"{fmt(d['value'])} [{fmt(d['ci_low'])}, {fmt(d['ci_high'])}] |")
    return "\n".join(lines) + "\n"


def _bar_plot(path: Path, title: str, groups: list[str], results_by_model: dict[str, dict],
              pick: dict[str, dict[str, dict]]) -> None:
    """Grouped bars with asymmetric error bars; ``pick[model][group]`` is the metric row drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results_by_model)
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(groups) * max(1, len(names)) / 2), 3.6))
    x = np.arange(len(groups))
    for i, name in enumerate(names):
        rows = [pick[name].get(g) for g in groups]
        vals = np.array([r["value"] if r else np.nan for r in rows])
        err = np.array([[r["value"] - r["ci_low"], r["ci_high"] - r["value"]] if r else [0, 0] for r in rows]).T
        ax.bar(x + (i - (len(names) - 1) / 2) * width, vals, width, yerr=err, capsize=3, label=name)
    ax.set_xticks(x, groups, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(results_by_model: dict[str, dict], out_dir: str | os.PathLike) -> list[Path]:
    """PNG plots: recognition accuracy by field (i2t and t2i) and zero-shot top-1 by level, per model, with error bars."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for task, metric, title, stem in [
        ("recognition", "i2t_R@1", "Concept recognition, image->text R@1", "recognition_i2t"),
        ("recognition", "t2i_R@1", "Concept recognition, text->image R@1", "recognition_t2i"),
        ("zero_shot", "top1", "Zero-shot top-1 by concept level", "zero_shot_by_level"),
    ]:
        pick = {m: {r["subset"]: r for r in res["metrics"] if r["task"] == task and r["metric"] == metric}
                for m, res in results_by_model.items()}
        groups = list(dict.fromkeys(g for rows in pick.values() for g in rows))
        if groups:
            path = out_dir / f"{stem}.png"
            _bar_plot(path, title, groups, results_by_model, pick)
            paths.append(path)
    return paths


def _shown_path(path: str, out_dir: Path) -> str:
    """`path` relative to the report's folder when it lies inside it (a portable report), else as given."""
    try:
        return Path(path).resolve().relative_to(out_dir.resolve()).as_posix()
    except ValueError:
        return path


def write_report(results: dict, out_dir: str | os.PathLike, title: str = "clearglass evaluation",
                 intro: str = "") -> dict[str, Path]:
    """Write ``results.json``, ``report.md`` and the plots for one results dict, or for a ``compare`` output."""
    out_dir = Path(out_dir)
    comparison = results if "differences" in results else compare({results["model"] or "model": results})
    by_model = comparison["results"]
    json_path = out_dir / "results.json"
    write_json_atomic(comparison, json_path)
    plots = write_plots(by_model, out_dir)
    first = next(iter(by_model.values()))
    cfg = first["config"]
    parts = [f"# {title}\n"]
    if intro:
        parts.append(intro.strip() + "\n")
    parts.append(f"Data: `{_shown_path(first['data'], out_dir)}` (test set hash `{first['test_set_hash']}`); k={cfg['k']}, template "
                 f"`{cfg['template']}`, seed {cfg['seed']}, {cfg['n_boot']} bootstrap resamples, "
                 f"{round(cfg['ci_level'] * 100)}% percentile intervals.\n")
    skipped = {what: why for res in by_model.values() for what, why in res.get("skipped", {}).items()}
    if skipped:
        parts.append("Skipped: " + "; ".join(f"{what} ({why})" for what, why in skipped.items()) + ".\n")
    parts.append("## Results\n\n" + markdown_table(by_model))
    if comparison["differences"]:
        parts.append("## Paired differences vs the first model\n\n" + differences_table(comparison["differences"]))
    if plots:
        parts.append("## Plots\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n")
    md_path = out_dir / "report.md"
    write_text_atomic("\n".join(parts), md_path)
    return {"json": json_path, "markdown": md_path, **{p.stem: p for p in plots}}
