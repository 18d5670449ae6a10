"""The `truth` labeler: the concept chain a source carries (`SourceItem.hierarchy`), padded to four levels.

For emoji the chain is (subgroup concept, group concept), so level1 = e.g. "fruit", level2 = "food and drink",
and level3 = level4 = None: no broader level is invented. New captions are the source captions with every word
of the chain removed (for emoji the captions never contain one, so new == old), except captions a template wrote
from the concept (see :func:`concept_level_captions`). An item without a hierarchy is an error: this labeler only
fits sources that know their concepts.
"""

from __future__ import annotations

from clearglass.errors import ClearglassError
from clearglass.magic.labelers import ConceptLabel, LabelFailure, concept_level_captions
from clearglass.magic.sources import SourceItem


class TruthLabeler:
    """Labels an item with its source's own hierarchy."""

    name = "truth"

    def label_many(self, items: list[SourceItem]) -> list[ConceptLabel | LabelFailure]:
        """One label per item: levels = hierarchy + None padding; new captions = captions without chain words."""
        out: list[ConceptLabel | LabelFailure] = []
        for item in items:
            if not item.hierarchy:
                raise ClearglassError(f"image {item.image!r} ({item.path}): the truth labeler needs the source's "
                                      "concept chain: emoji and folder sources carry one, a CSV gives it with "
                                      "--csv-level-keys COL [COL ...] (level1 first); or use --labeler wordnet or llm")
            if len(item.hierarchy) > 4:
                raise ClearglassError(f"image {item.image!r}: hierarchy {item.hierarchy} has more than 4 levels")
            levels = tuple(item.hierarchy) + (None,) * (4 - len(item.hierarchy))
            captions = concept_level_captions(item, levels)
            if not captions:
                out.append(LabelFailure(item.image, "every caption consists only of concept words"))
            else:
                out.append(ConceptLabel(levels=levels, new_captions=captions))
        return out
