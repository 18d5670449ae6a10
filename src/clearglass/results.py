"""The results contract: a metric is a ``MetricKey(task, subset, metric)``, printed and parsed as
``task/subset/metric``; a ``Results`` table answers ``value``, ``interval`` and the paired ``difference`` of a key
for every report, search and plot.

Both are views over the JSON that ``clearglass.evaluate.evaluate_model`` and ``clearglass.report.compare`` write
(``results.json`` keeps its shape): a results dict holds metric rows ``{task, subset, metric, value, ci_low, ci_high,
n, unit, stat}`` and, per ``task/subset``, the per-item outcomes (``per_item``) the rows were computed from; a
comparison holds several models' results dicts and the paired differences ``{model, baseline, task, subset, metric,
value, ci_low, ci_high, n}`` between them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from clearglass.errors import ClearglassError


@dataclass(frozen=True, order=True)
class MetricKey:
    """One metric of one task on one subset, e.g. ``recognition/concept_level1/i2t_R@1``."""

    task: str
    subset: str
    metric: str

    def __str__(self) -> str:
        return f"{self.task}/{self.subset}/{self.metric}"

    @classmethod
    def parse(cls, text: str) -> MetricKey:
        """``task/subset/metric`` -> MetricKey; anything else is an error naming the text."""
        parts = text.split("/") if isinstance(text, str) else []
        if len(parts) != 3 or not all(parts):
            raise ClearglassError(f"metric {text!r}: expected 'task/subset/metric', e.g. "
                                  "recognition/concept_level1/i2t_R@1")
        return cls(*parts)

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> MetricKey:
        """The key of a metric row or a paired difference (its ``task``, ``subset`` and ``metric``)."""
        return cls(row["task"], row["subset"], row["metric"])

    @property
    def unit(self) -> str:
        """``task/subset``: the per-item outcomes of a results dict that hold this metric's items."""
        return f"{self.task}/{self.subset}"


@dataclass(frozen=True)
class MetricSpec:
    """How a metric row's value follows from its per-item outcomes (stored as the row's ``stat``): ``hit``:
    mean(array < k); ``mean``: mean(array); ``class_recall``: the mean over ``classes`` of each class's
    mean(array < k); a task of ``clearglass.evaluate.TASKS`` may add its own statistic."""

    stat: str
    array: str
    k: int | None = None
    classes: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The row's ``stat`` JSON: the fields that are set."""
        return {name: value for name, value in asdict(self).items() if value is not None}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> MetricSpec:
        """A row's ``stat`` JSON -> MetricSpec."""
        return cls(raw["stat"], raw["array"], raw.get("k"), raw.get("classes"))


@dataclass(frozen=True)
class Outcomes:
    """The per-item outcomes behind one metric row: its spec, the arrays, the item count and the items' identity."""

    spec: MetricSpec
    arrays: dict[str, np.ndarray]
    n: int
    items_hash: str


class Results:
    """A results table over one or more models' results dicts, with their paired differences.

    ``Results.of`` reads ``evaluate_model``'s dict (one model) or ``compare``'s output (its differences and, in
    the demo, ``vs_base`` too). ``model=None`` names the first model (the only one of one results dict).
    """

    def __init__(self, by_model: Mapping[str, dict], differences: Sequence[dict] = ()) -> None:
        self.by_model = dict(by_model)
        self._rows = {m: {MetricKey.of(r): r for r in res["metrics"]} for m, res in self.by_model.items()}
        self._differences = {(d["model"], d["baseline"], MetricKey.of(d)): d for d in differences}

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Results:
        """A ``compare`` output (``results`` by model, ``differences``, ``vs_base``) or one results dict."""
        if "results" in data and "differences" in data:
            return cls(data["results"], [*data["differences"], *data.get("vs_base", [])])
        return cls({data.get("model") or "model": data})

    @property
    def models(self) -> list[str]:
        """The models, in order."""
        return list(self.by_model)

    def _model(self, model: str | None) -> str:
        if model is None:
            if not self.by_model:
                raise ClearglassError("an empty results table has no models")
            return next(iter(self.by_model))
        if model not in self.by_model:
            raise ClearglassError(f"no results of model {model!r}, expected one of {self.models}")
        return model

    def keys(self, model: str | None = None) -> list[MetricKey]:
        """The metrics of a model, in the order of its rows."""
        return list(self._rows[self._model(model)])

    def row(self, key: MetricKey, model: str | None = None) -> dict | None:
        """The metric row of ``key``, or None when the model has no such metric."""
        return self._rows[self._model(model)].get(key)

    def _required(self, key: MetricKey, model: str | None) -> dict:
        row = self.row(key, model)
        if row is None:
            raise ClearglassError(f"model {self._model(model)!r} has no metric {key}")
        return row

    def value(self, key: MetricKey, model: str | None = None) -> float:
        """The value of ``key`` (a fraction); an error when the model has no such metric."""
        return self._required(key, model)["value"]

    def interval(self, key: MetricKey, model: str | None = None) -> tuple[float, float]:
        """The bootstrap interval ``(ci_low, ci_high)`` of ``key``."""
        row = self._required(key, model)
        return row["ci_low"], row["ci_high"]

    def difference(self, key: MetricKey, model: str, baseline: str) -> dict | None:
        """The paired difference ``model - baseline`` of ``key`` (value, ci_low, ci_high, n), or None."""
        return self._differences.get((model, baseline, key))

    def outcomes(self, key: MetricKey, model: str | None = None) -> Outcomes:
        """The per-item outcomes behind ``key`` (what a paired or derived statistic resamples)."""
        row = self._required(key, model)
        items = self.by_model[self._model(model)]["per_item"][key.unit]
        return Outcomes(MetricSpec.from_dict(row["stat"]), {k: np.asarray(v) for k, v in items["arrays"].items()},
                        row["n"], items["items_hash"])
