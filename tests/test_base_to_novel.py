"""The harmonic mean of base and novel recognition, its bootstrap interval and paired differences, against a slow
loop over the same resamples."""

from __future__ import annotations

import numpy as np
import pytest

from clearglass.base_to_novel import harmonic_comparison, harmonic_mean
from clearglass.errors import ClearglassError

KEY = ("recognition", "concept_level1", "i2t_R@1")


def _results(model: str, ranks: list[int], items: str) -> dict:
    row = {"task": KEY[0], "subset": KEY[1], "metric": KEY[2], "value": float(np.mean(np.array(ranks) < 1)),
           "n": len(ranks), "stat": {"stat": "hit", "array": "i2t_rank", "k": 1}}
    return {"model": model, "metrics": [row],
            "per_item": {f"{KEY[0]}/{KEY[1]}": {"items_hash": items, "arrays": {"i2t_rank": ranks}}}}


def _slow(base: dict[str, list[int]], novel: dict[str, list[int]], model: str, baseline: str | None,
          n_boot: int, seed: int) -> tuple[float, float, float]:
    """The value and 95% interval by explicit loops, drawing the resamples in the documented order."""
    def hm(b: float, n: float) -> float:
        return 0.0 if b + n == 0 else 2 * b * n / (b + n)

    def of(m: str, ib: np.ndarray, i_n: np.ndarray) -> float:
        b = sum(1 for i in ib if base[m][i] == 0) / len(ib)
        n = sum(1 for i in i_n if novel[m][i] == 0) / len(i_n)
        return hm(b, n)

    rng = np.random.default_rng(seed)
    idx_b = rng.integers(0, len(base[model]), size=(n_boot, len(base[model])))
    idx_n = rng.integers(0, len(novel[model]), size=(n_boot, len(novel[model])))
    every_b, every_n = np.arange(len(base[model])), np.arange(len(novel[model]))
    values = []
    for i in range(n_boot):
        v = of(model, idx_b[i], idx_n[i])
        values.append(v - of(baseline, idx_b[i], idx_n[i]) if baseline else v)
    point = of(model, every_b, every_n) - (of(baseline, every_b, every_n) if baseline else 0.0)
    low, high = np.percentile(values, [2.5, 97.5])
    return point, float(low), float(high)


def test_harmonic_mean_values() -> None:
    assert float(harmonic_mean(0.75, 0.5)) == pytest.approx(0.6)
    assert float(harmonic_mean(0.0, 0.0)) == 0.0 and float(harmonic_mean(1.0, 0.0)) == 0.0
    np.testing.assert_allclose(harmonic_mean(np.array([0.5, 0.2]), np.array([0.5, 0.8])), [0.5, 0.32])


def test_interval_and_paired_difference_match_the_slow_loop() -> None:
    rng = np.random.default_rng(3)
    base = {m: rng.integers(0, 3, size=23).tolist() for m in ("clip", "cg")}
    novel = {m: rng.integers(0, 3, size=31).tolist() for m in ("clip", "cg")}
    out = harmonic_comparison({m: _results(m, r, "B") for m, r in base.items()},
                              {m: _results(m, r, "N") for m, r in novel.items()}, [KEY], [("cg", "clip")],
                              n_boot=300, seed=5)
    for m in ("clip", "cg"):
        row = out["results"][m]["metrics"][0]
        value, low, high = _slow(base, novel, m, None, 300, 5)
        assert (row["value"], row["ci_low"], row["ci_high"]) == pytest.approx((value, low, high))
        assert row["n_base"] == 23 and row["n_novel"] == 31
        assert row["value"] == pytest.approx(float(harmonic_mean(row["base"], row["novel"])))
    d = out["differences"][0]
    value, low, high = _slow(base, novel, "cg", "clip", 300, 5)
    assert (d["model"], d["baseline"], d["task"]) == ("cg", "clip", "harmonic_mean")
    assert (d["value"], d["ci_low"], d["ci_high"]) == pytest.approx((value, low, high))


def test_models_on_other_items_are_not_paired() -> None:
    with pytest.raises(ClearglassError, match="saw other items"):
        harmonic_comparison({"a": _results("a", [0, 1], "B"), "b": _results("b", [0, 1], "other")},
                            {"a": _results("a", [0], "N"), "b": _results("b", [0], "N")}, [KEY], [("b", "a")])
    with pytest.raises(ClearglassError, match="no metric"):
        harmonic_comparison({"a": _results("a", [0], "B")}, {"a": {"model": "a", "metrics": [], "per_item": {}}},
                            [KEY], [])
