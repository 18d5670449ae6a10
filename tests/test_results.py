"""The results contract: MetricKey prints and parses as task/subset/metric; Results answers value, interval,
difference and the per-item outcomes of a key, on a hand-made comparison."""

from __future__ import annotations

import numpy as np
import pytest

from clearglass.errors import ClearglassError
from clearglass.evaluate import metric_stat
from clearglass.report import compare
from clearglass.results import MetricKey, MetricSpec, Results

KEY = MetricKey("recognition", "concept_level1", "i2t_R@1")


def test_metric_key_prints_and_parses_round_trip():
    assert str(KEY) == "recognition/concept_level1/i2t_R@1" and KEY.unit == "recognition/concept_level1"
    assert MetricKey.parse(str(KEY)) == KEY
    for key in (MetricKey("zero_shot", "level2", "mean_class_recall"),
                MetricKey("retrieval", "old_captions", "t2i_R@10")):
        assert MetricKey.parse(str(key)) == key
    assert MetricKey.of({"task": "a", "subset": "b", "metric": "c", "value": 1.0}) == MetricKey("a", "b", "c")
    for bad in ("recognition/concept_level1", "a/b/c/d", "a//c", ""):
        with pytest.raises(ClearglassError, match="expected 'task/subset/metric'"):
            MetricKey.parse(bad)
    with pytest.raises(AttributeError):
        KEY.task = "x"  # frozen


def test_metric_spec_keeps_the_rows_stat_json():
    for raw in ({"stat": "hit", "array": "i2t_rank", "k": 1}, {"stat": "mean", "array": "precision"},
                {"stat": "class_recall", "array": "rank", "k": 1, "classes": "class"}):
        assert MetricSpec.from_dict(raw).to_dict() == raw


def _results(model: str, ranks: list[int]) -> dict:
    """One model's results dict with one hit metric over ``ranks`` (hand-set interval)."""
    hits = float(np.mean(np.array(ranks) < 1))
    return {"model": model, "test_set_hash": "t", "config": {"n_boot": 200, "seed": 0, "ci_level": 0.95},
            "metrics": [{"task": KEY.task, "subset": KEY.subset, "metric": KEY.metric, "value": hits,
                         "ci_low": hits - 0.1, "ci_high": hits + 0.1, "n": len(ranks), "unit": f"{KEY.unit}/i2t_rank",
                         "stat": {"stat": "hit", "array": "i2t_rank", "k": 1}}],
            "per_item": {KEY.unit: {"items_hash": "h", "arrays": {"i2t_rank": ranks}}}}


def test_results_lookups_on_a_hand_computed_comparison():
    a, b = _results("a", [0, 1, 0, 2]), _results("b", [0, 0, 0, 1])  # hits 2/4 and 3/4
    table = Results.of(compare({"a": a, "b": b}))
    assert table.models == ["a", "b"] and table.keys("b") == [KEY]
    assert table.value(KEY, "a") == 0.5 and table.value(KEY, "b") == 0.75 and table.value(KEY) == 0.5
    assert table.interval(KEY, "b") == pytest.approx((0.65, 0.85))
    d = table.difference(KEY, "b", "a")
    assert d["value"] == pytest.approx(0.25) and d["n"] == 4 and d["ci_low"] <= 0.25 <= d["ci_high"]
    assert table.difference(KEY, "a", "b") is None  # only the pairs compare() made
    out = table.outcomes(KEY, "b")
    assert out.spec == MetricSpec("hit", "i2t_rank", 1) and out.n == 4 and out.items_hash == "h"
    assert metric_stat(out.spec, out.arrays)(np.arange(4)[None]).tolist() == [0.75]
    # one results dict is a one-model table; the same lookups
    one = Results.of(a)
    assert one.models == ["a"] and one.value(KEY) == 0.5 and one.row(MetricKey("x", "y", "z")) is None
    with pytest.raises(ClearglassError, match="model 'a' has no metric x/y/z"):
        one.value(MetricKey("x", "y", "z"))
    with pytest.raises(ClearglassError, match="no results of model 'c'"):
        table.value(KEY, "c")


def test_a_demo_comparison_reads_vs_base_differences_too():
    comp = compare({"a": _results("a", [0, 1, 0, 2]), "b": _results("b", [0, 0, 0, 1])})
    vs_base = [{**comp["differences"][0], "model": "b", "baseline": "base", "value": 0.1}]
    assert Results.of({**comp, "vs_base": vs_base}).difference(KEY, "b", "base")["value"] == 0.1
