"""Results of several training seeds on the same items, merged into one results dict."""

from __future__ import annotations

import numpy as np

from clearglass.evaluate import bootstrap, metric_stat
from clearglass.results import MetricSpec


def merge_seeds(per_seed: list[dict]) -> dict:
    """One results dict from several seeds' results on the same items: every hit metric becomes the per-item mean
    of hits over seeds (``{"stat": "mean"}``), so intervals resample items of the seed-averaged model."""
    first = per_seed[0]
    merged = {**first, "metrics": [], "per_item": {}, "seeds": len(per_seed)}
    for row in first["metrics"]:
        hit = MetricSpec.from_dict(row["stat"])
        if hit.stat != "hit":
            continue
        group = row["unit"].rsplit("/", 1)[0]
        name = f"{row['metric']}_hit"
        hits = np.mean([np.asarray(r["per_item"][group]["arrays"][hit.array]) < hit.k for r in per_seed], axis=0)
        spec = MetricSpec("mean", name)
        stat = metric_stat(spec, {name: hits})
        cfg = first["config"]
        low, high = bootstrap(stat, len(hits), cfg["n_boot"], cfg["seed"], cfg["ci_level"])
        merged["metrics"].append({**row, "value": float(hits.mean()), "ci_low": low, "ci_high": high,
                                  "unit": f"{group}/{name}", "stat": spec.to_dict()})
        slot = merged["per_item"].setdefault(group, {"items_hash": first["per_item"][group]["items_hash"],
                                                     "arrays": {}})
        slot["arrays"][name] = hits.tolist()
    return merged
