"""Results of several training seeds on the same items, merged into one results dict."""

from __future__ import annotations

import numpy as np

from clearglass.evaluate import metric_row
from clearglass.results import MetricKey, MetricSpec


def merge_seeds(per_seed: list[dict]) -> dict:
    """One results dict from several seeds' results on the same items: every hit metric becomes the per-item mean
    of hits over seeds (``{"stat": "mean"}``), so intervals resample items of the seed-averaged model."""
    first = per_seed[0]
    merged = {**first, "metrics": [], "per_item": {}, "seeds": len(per_seed)}
    cfg = first["config"]
    for row in first["metrics"]:
        hit, key = MetricSpec.from_dict(row["stat"]), MetricKey.of(row)
        if hit.stat != "hit":
            continue
        name = f"{key.metric}_hit"
        hits = np.mean([np.asarray(r["per_item"][key.unit]["arrays"][hit.array]) < hit.k for r in per_seed], axis=0)
        merged["metrics"].append(metric_row(key, MetricSpec("mean", name), {name: hits}, cfg["n_boot"], cfg["seed"],
                                            cfg["ci_level"]))
        slot = merged["per_item"].setdefault(key.unit, {"items_hash": first["per_item"][key.unit]["items_hash"],
                                                        "arrays": {}})
        slot["arrays"][name] = hits.tolist()
    return merged
