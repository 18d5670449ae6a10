"""Concept labelers: the captions (and source hierarchy) of one image -> a `ConceptLabel`.

`truth.py` uses the hierarchy the source carries, `wordnet.py` walks WordNet hypernyms offline, `llm.py` asks an
OpenAI-compatible server. `make_labeler(name, **opts)` builds one by name; the `llm` module is imported lazily.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from clearglass.errors import ClearglassError
from clearglass.magic.leak import strip_words
from clearglass.magic.sources import SourceItem

Levels = tuple[str | None, str | None, str | None, str | None]


@dataclass
class ConceptLabel:
    """A labeler's answer for one image: its concept chain level1..level4, concept-level captions, hard negatives."""

    levels: Levels
    new_captions: list[str] = field(default_factory=list)  # captions that never name a level word
    hard_negatives: list[str] = field(default_factory=list)  # hard-negative level1 concepts, if the labeler makes them


def concept_level_captions(item: SourceItem, levels: Levels) -> list[str]:
    """The item's captions with every word of ``levels`` removed (empty ones dropped); captions written from the
    concept itself (``item.names_concept``, a caption template) keep their words, and the build counts them as leaks:
    without the concept word they would be the bare template, the same text for every concept."""
    if item.names_concept:
        return list(item.captions)
    return [c for c in (strip_words(c, levels) for c in item.captions) if c]


@dataclass
class LabelFailure:
    """An image the labeler could not label, with the reason; counted in the build stats, never silently dropped."""

    image: str
    reason: str


@runtime_checkable
class Labeler(Protocol):
    """Labels a batch of source items; the answer list is aligned with the input list."""

    name: str

    def label_many(self, items: list[SourceItem]) -> list[ConceptLabel | LabelFailure]:
        """One `ConceptLabel` or `LabelFailure` per item, in input order."""
        ...


LABELERS = {
    "truth": ("clearglass.magic.labelers.truth", "TruthLabeler"),
    "wordnet": ("clearglass.magic.labelers.wordnet", "WordNetLabeler"),
    "llm": ("clearglass.magic.labelers.llm", "LLMLabeler"),
}


def make_labeler(name: str, **opts: Any) -> Labeler:
    """The labeler called `name` ('truth', 'wordnet' or 'llm'), built with keyword options; imports its module
    lazily."""
    if name not in LABELERS:
        raise ClearglassError(f"unknown labeler {name!r}: expected one of {sorted(LABELERS)}")
    module_name, class_name = LABELERS[name]
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**opts)
