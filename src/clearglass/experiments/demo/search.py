"""The equal-effort search, ``clearglass demo --search GRID``: every setting of every family is trained once (same
steps, seed, data and base) and scored on the validation split at every WiSE-FT weight of the grid; the record it
writes (``out/search.json``, rows as they land in ``out/search.jsonl``) is the one the demo config names and its
report quotes. Nothing is scored on a test split.

Score: the mean over levels 1 and 2 of the harmonic mean of base-concept (``val_seen``) and novel-concept
(``val_novel``) recognition on validation (``SEARCH_METRICS``), the base-to-novel figure of merit.
Among the rows whose retention (the base's validation item names, image->caption R@1) fell by at most
``max_retention_drop`` from the base's, each family's best score is chosen; when no row keeps it, the best row
overall is chosen and the record says so.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from clearglass.base_to_novel import harmonic_mean
from clearglass.errors import ClearglassError
from clearglass.experiments.demo.config import DemoConfig, SearchGrid
from clearglass.experiments.demo.data import build_demo_data
from clearglass.experiments.demo.evaluation import DemoEvaluator
from clearglass.interpolate import interpolate
from clearglass.io import write_json_atomic
from clearglass.models import load_model
from clearglass.results import MetricKey, Results
from clearglass.train import train

SEARCH_METRICS = [(subset, "recognition", f"concept_level{lv}", "i2t_R@1") for lv in (1, 2)
                  for subset in ("val_seen", "val_novel")]
RETENTION_METRIC = ("retention_val", "retrieval", "old_captions", "i2t_R@1")


def metric_value(results: dict, subset: str, task: str, task_subset: str, metric: str) -> float:
    """One metric value of a results-by-subset dict."""
    try:
        return Results.of(results[subset]).value(MetricKey(task, task_subset, metric))
    except ClearglassError as e:
        raise ClearglassError(f"{subset}: {e}") from None


def search_score(scores: dict[str, float]) -> float:
    """The mean over levels of the harmonic mean of base (val_seen) and novel (val_novel) recognition."""
    return float(np.mean([harmonic_mean(scores["/".join(base)], scores["/".join(novel)])
                          for base, novel in zip(SEARCH_METRICS[::2], SEARCH_METRICS[1::2])]))


def _scores(evaluator: DemoEvaluator, bundle: object, tag: str, retention: bool) -> dict[str, float]:
    subsets = tuple(dict.fromkeys(m[0] for m in SEARCH_METRICS)) + (("retention_val",) if retention else ())
    results = evaluator.evaluate(bundle, tag, subsets)
    metrics = SEARCH_METRICS + ([RETENTION_METRIC] if retention else [])
    return {"/".join(m): metric_value(results, *m) for m in metrics}


def family_model(config: DemoConfig, family: str) -> str:
    """The demo model a family's settings are searched for: the baseline or the method."""
    for name in (config.baseline, config.method):
        if config.models[name].family == family:
            return name
    raise ClearglassError(f"no demo model (baseline or method) has family {family!r}")


def choose(rows: list[dict], family: str, base_retention: float | None, max_drop: float | None) -> dict:
    """The family's best-scoring row among those that keep retention (see the module docstring)."""
    mine = [r for r in rows if r["family"] == family]
    kept = mine if base_retention is None or max_drop is None else \
        [r for r in mine if base_retention - r["scores"]["/".join(RETENTION_METRIC)] <= max_drop]
    best = max(kept or mine, key=lambda r: r["score"])
    return {"setting": best["setting"], "wise_ft": best["wise_ft"], "score": best["score"],
            "retention_kept": bool(kept)}


def run_search(out: str | os.PathLike, grid_path: str | os.PathLike, config_name: str = "default") -> dict:
    """Train and score the grid; writes ``out/search.jsonl`` row by row and ``out/search.json`` (the record)."""
    config, grid = DemoConfig.load(config_name), SearchGrid.load(grid_path)
    out = Path(out)
    paths, _ = build_demo_data(out, config, progress=False)
    evaluator = DemoEvaluator(paths, config.eval.k, config.eval.n_boot, config.eval.seed)
    base_scores = _scores(evaluator, load_model(config.base), "base", config.retention)
    base_retention = base_scores.get("/".join(RETENTION_METRIC))
    seed = config.first_seed
    rows = []
    (out / "search.jsonl").unlink(missing_ok=True)  # a search run again into its folder starts its rows afresh
    for family, settings in grid.settings.items():
        name = family_model(config, family)
        for i, setting in enumerate(settings):
            start = time.perf_counter()
            train_config = config.train_config(name, setting, str(paths["train"]), out / "search" / f"{family}-{i}",
                                               seed)
            trained = train(train_config, overwrite=True)
            seconds = time.perf_counter() - start
            for w in grid.wise_ft:
                tuned = load_model(trained["checkpoint"])
                bundle = tuned if w == 1.0 else interpolate(load_model(config.base), tuned, w)
                scores = _scores(evaluator, bundle, f"{family}-{i}-w{w:g}", config.retention)
                row = {"family": family, "setting": setting, "wise_ft": w, "scores": scores,
                       "score": search_score(scores),
                       "train_seconds": seconds, "final_loss": trained["metrics"]["loss"]}
                rows.append(row)
                with open(out / "search.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
    record = {"description": grid.description, "grid": grid.to_dict(), "config_name": config_name,
              "config_identity": config.identity(), "command": f"clearglass demo --search {grid_path} --out {out}",
              "metrics": ["/".join(m) for m in SEARCH_METRICS],
              "score": "mean over levels 1, 2 of the harmonic mean of val_seen and val_novel recognition",
              "retention_metric": "/".join(RETENTION_METRIC),
              "base_scores": base_scores, "results": rows,
              "chosen": {f: choose(rows, f, base_retention, grid.max_retention_drop) for f in grid.settings}}
    write_json_atomic(record, out / "search.json")
    return record
