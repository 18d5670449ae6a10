"""The base-to-novel figure of merit (CoOp, KgCoOp, PromptSRC): the harmonic mean HM = 2·B·N / (B + N) of a metric on
base concepts (fine-tuned) and on novel ones (never fine-tuned), with a percentile bootstrap interval that resamples
both subsets' items, and paired differences between models (the same resamples for both models).

Inputs are ``evaluate_model`` results (or seed-merged ones): each metric row names its per-item statistic, so the
harmonic mean of any metric of both subsets comes out of the same per-item outcomes as the metric itself.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from clearglass.errors import ClearglassError
from clearglass.evaluate import metric_stat
from clearglass.results import MetricKey, Results

TASK = "harmonic_mean"  # the task name of the rows made here: (harmonic_mean, task subset, metric)
Key = tuple[str, str, str]  # (task, task subset, metric) of the metric whose harmonic mean is taken


def harmonic_mean(base: np.ndarray | float, novel: np.ndarray | float) -> np.ndarray:
    """Elementwise 2·b·n / (b + n); 0 where both are 0."""
    b, n = np.asarray(base, dtype=float), np.asarray(novel, dtype=float)
    total = b + n
    return np.divide(2 * b * n, total, out=np.zeros_like(total), where=total > 0)


def _statistic(results: dict, key: Key, which: str) -> tuple[Callable[[np.ndarray], np.ndarray], int, str]:
    """The per-resample statistic of one metric of a results dict, its item count and its items' identity."""
    table, metric = Results.of(results), MetricKey(*key)
    if table.row(metric) is None:
        raise ClearglassError(f"harmonic mean: the {which} results of model {results.get('model', '?')!r} have no "
                              f"metric {metric}")
    out = table.outcomes(metric)
    return metric_stat(out.spec, out.arrays), out.n, out.items_hash


def _resamples(n_base: int, n_novel: int, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap indices (n_boot, n_base) and (n_boot, n_novel), drawn in that order from one seeded generator."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_base, size=(n_boot, n_base)), rng.integers(0, n_novel, size=(n_boot, n_novel))


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def harmonic_comparison(base: dict[str, dict], novel: dict[str, dict], keys: list[Key],
                        pairs: list[tuple[str, str]], n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Per model (``base`` and ``novel`` map model -> results on the base and the novel subset) and per key: the
    harmonic-mean row with its interval; per ``(model, baseline)`` pair the paired difference. Shaped like
    ``clearglass.report.compare``'s output (``models``, ``results``, ``differences``), task ``harmonic_mean``."""
    if set(base) != set(novel) or not base:
        raise ClearglassError(f"harmonic mean: models on the base subset {sorted(base)} and on the novel subset "
                              f"{sorted(novel)} must be the same, at least one")
    models = list(base)
    results: dict[str, dict] = {m: {"model": m, "metrics": [], "config": {"n_boot": n_boot, "seed": seed,
                                                                          "ci_level": level}} for m in models}
    differences = []
    for key in keys:
        stats = {m: (_statistic(base[m], key, "base"), _statistic(novel[m], key, "novel")) for m in models}
        (_, n_b, hash_b), (_, n_n, hash_n) = stats[models[0]]
        for m, ((_, nb, hb), (_, nn, hn)) in stats.items():
            if (nb, hb, nn, hn) != (n_b, hash_b, n_n, hash_n):
                raise ClearglassError(f"harmonic mean of {'/'.join(key)}: model {m!r} saw other items than "
                                      f"{models[0]!r}; cannot pair them")
        idx_b, idx_n = _resamples(n_b, n_n, n_boot, seed)
        every, boot = {}, {}
        for m, ((stat_b, _, _), (stat_n, _, _)) in stats.items():
            b, n = float(stat_b(np.arange(n_b)[None])[0]), float(stat_n(np.arange(n_n)[None])[0])
            every[m], boot[m] = float(harmonic_mean(b, n)), harmonic_mean(stat_b(idx_b), stat_n(idx_n))
            low, high = _interval(boot[m], level)
            results[m]["metrics"].append({"task": TASK, "subset": key[1], "metric": key[2], "of": key[0],
                                          "value": every[m], "ci_low": low, "ci_high": high, "n": n_b + n_n,
                                          "n_base": n_b, "n_novel": n_n, "base": b, "novel": n})
        for model, baseline in pairs:
            if model not in every or baseline not in every:
                raise ClearglassError(f"harmonic mean: pair {model}-{baseline} names a model not among {models}")
            low, high = _interval(boot[model] - boot[baseline], level)
            differences.append({"model": model, "baseline": baseline, "task": TASK, "subset": key[1],
                                "metric": key[2], "value": every[model] - every[baseline], "ci_low": low,
                                "ci_high": high, "n": n_b + n_n})
    return {"models": models, "results": results, "differences": differences}
