"""Seed merging: per-item means of hits over seeds."""

from __future__ import annotations

import pytest

from clearglass.experiments.seeds import merge_seeds


def test_merge_seeds_averages_hits_per_item() -> None:
    def res(ranks: list[int]) -> dict:
        spec = {"stat": "hit", "array": "rank", "k": 1}
        return {"config": {"n_boot": 100, "seed": 0, "ci_level": 0.95},
                "metrics": [{"task": "t", "subset": "s", "metric": "m", "value": 0.0, "n": 4, "unit": "t/s/rank",
                             "stat": spec}],
                "per_item": {"t/s": {"items_hash": "h", "arrays": {"rank": ranks}}}}

    merged = merge_seeds([res([0, 1, 0, 2]), res([0, 0, 3, 2]), res([1, 0, 0, 2])])
    row = merged["metrics"][0]
    assert merged["per_item"]["t/s"]["arrays"]["m_hit"] == pytest.approx([2 / 3, 2 / 3, 2 / 3, 0.0])
    assert row["value"] == pytest.approx(0.5) and row["ci_low"] <= 0.5 <= row["ci_high"]
    assert row["stat"] == {"stat": "mean", "array": "m_hit"} and row["unit"] == "t/s/m_hit"
