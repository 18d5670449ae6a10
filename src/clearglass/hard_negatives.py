"""Synthetic hard negatives: minimally edited captions (caption level) and hierarchy-ranked concepts (concept level).

Caption level. A caption's *concept-bearing words* are its content words (letters only, at least 3 of them, not a
function or filler word) that are specific to its group: more than ``specificity`` of the train captions
containing the word belong to that group (at the default 0.5 a word is specific to at most one group; template
words such as "picture" or "left" are shared by every group and never qualify). A negative replaces every
concept-bearing word of the caption:

- ``wordnet``: with a co-hyponym of the word's first WordNet noun sense (another hyponym of one of its hypernyms,
  named by its first lemma), excluding co-hyponyms that are a word of the group's own captions or that descend
  from a synset named like the group's level1 concept (apple -> banana in group "fruit" is not a negative);
  only captions whose every concept-bearing word has a co-hyponym (so no concept word survives the edit);
- ``groups``: with the *objects* of one of the group's hard-negative groups, the words of that group's captions
  that are specific to it (as above) and absent from this group's captions ("a red apple next to a banana" ->
  "a red bus next to a taxi" when "land vehicle" is a hard negative of "fruit");
- ``both``: each negative draws its source (among those that have a candidate for this caption) at random.

An article before a replaced word follows the new word (a/an). A negative never equals (case-insensitively) any
caption, new or original, of the same concept. Choices come from ``random.Random`` seeded with the run seed and
the pair's key, so a batch's negatives are a function of (seed, batch). Every pair of a batch yields exactly
``per_caption`` negatives: a caption without a concept-bearing word that has a candidate borrows from a seeded
other caption of its group (counted in ``stats['borrowed']``); a group with no caption that yields one is an error
at construction.

Concept level. `fill_hard_negatives` gives every train concept whose ``hard_negative`` list is empty the
hierarchy-ranked concepts of `clearglass.magic.builder.rank_negatives`: siblings (same level2), then cousins
(same level3), then the others, each part in MiniLM cosine order of the names.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal

import torch

from clearglass.config import Config
from clearglass.data import GroupIndex, PairKey
from clearglass.errors import ClearglassError
from clearglass.magic.builder import embed_names, rank_negatives
from clearglass.magic.labelers.wordnet import SKIP_WORDS, WORDNET_DIR, concept_name, wordnet_reader
from clearglass.magic.leak import FUNCTION_WORDS
from clearglass.magic.schema import ConceptRecord

SOURCES = ("wordnet", "groups", "both")
MAX_TRIES = 32
_WORD = re.compile(r"[A-Za-z]+")


@dataclass
class SyntheticNegativesConfig(Config):
    """Synthetic hard negatives of a training run (see the module docstring).

    caption: add ``per_caption`` edited captions per pair as extra text negatives of the outer loss, from
    ``source``; concepts: fill empty ``hard_negative`` lists with ``concepts_per_group`` hierarchy-ranked concepts.
    """

    caption: bool = False
    per_caption: int = 1
    source: Literal["wordnet", "groups", "both"] = "both"
    specificity: float = 0.5
    concepts: bool = False
    concepts_per_group: int = 3

    def validate(self) -> None:
        """per_caption >= 1, concepts_per_group >= 1, 0 <= specificity < 1, a known source."""
        if self.source not in SOURCES:
            raise ClearglassError(f"synthetic_negatives.source {self.source!r}: expected one of {SOURCES}")
        if self.per_caption < 1 or self.concepts_per_group < 1 or not 0.0 <= self.specificity < 1.0:
            raise ClearglassError(f"synthetic_negatives: expected per_caption >= 1, concepts_per_group >= 1 and "
                                  f"0 <= specificity < 1, got {self}")


def fill_hard_negatives(concepts: list[ConceptRecord], k: int, embed: Callable[[list[str]], torch.Tensor] = embed_names
                        ) -> tuple[list[ConceptRecord], list[str]]:
    """Concepts with every empty train ``hard_negative`` filled (siblings, cousins, others), and the filled names."""
    train = [c for c in concepts if c.train_images]
    names = [c.concept for c in train]
    chains = {c.concept: Counter(im.levels() for im in c.train_images).most_common(1)[0][0] for c in train}
    parents = {c: chains[c][1] for c in names}
    grandparents = {c: chains[c][2] for c in names}
    empty = [c.concept for c in train if not c.hard_negative]
    if not empty:
        return list(concepts), []
    ranked = rank_negatives(names, parents, {c: Counter() for c in names}, k, embed, grandparents)
    filled = set(empty)
    return [replace(c, hard_negative=ranked[c.concept]) if c.concept in filled else c for c in concepts], empty


def _content(token: str) -> bool:
    return len(token) >= 3 and token not in FUNCTION_WORDS and token not in SKIP_WORDS


def _with_article(previous: str, word: str) -> str:
    """The article ``previous`` ('a'/'an', any case) made to fit ``word``."""
    article = "an" if word[:1].lower() in "aeiou" else "a"
    return article.capitalize() if previous[:1].isupper() else article


def substitute(caption: str, replacements: dict[int, str]) -> str:
    """The caption with its word number i (``[A-Za-z]+`` runs) replaced by ``replacements[i]``, articles fixed."""
    words = list(_WORD.finditer(caption))
    pieces: list[str] = []
    end = 0
    for i, m in enumerate(words):
        pieces.append(caption[end:m.start()])
        text = replacements.get(i, m.group(0))
        nxt = replacements.get(i + 1)
        if nxt is not None and m.group(0).lower() in ("a", "an"):
            text = _with_article(m.group(0), nxt)
        pieces.append(text)
        end = m.end()
    pieces.append(caption[end:])
    return "".join(pieces)


class CaptionNegatives:
    """Seeded synthetic negative captions for the pairs of a `GroupIndex` (caption level, see the module docstring)."""

    def __init__(self, index: GroupIndex, concepts: list[ConceptRecord], source: str = "both", per_caption: int = 1,
                 seed: int = 0, specificity: float = 0.5, wordnet_dir: str = str(WORDNET_DIR)) -> None:
        SyntheticNegativesConfig(caption=True, per_caption=per_caption, source=source, specificity=specificity)
        self.index, self.source, self.per_caption, self.seed = index, source, per_caption, seed
        self.wn = wordnet_reader(wordnet_dir) if source in ("wordnet", "both") else None
        self.stats = Counter()
        field = index.caption_field
        record = {c.concept: c for c in concepts}
        self.captions = [[getattr(im, field) for im in g.images] for g in index.groups]  # [group][image][caption]
        self.real: list[set[str]] = []  # every caption of the concept, lower case
        for g in index.groups:
            rec = record[g.concept]
            self.real.append({c.lower() for im in rec.train_images + rec.test_images
                              for c in im.new_captions + im.old_captions})
        self.vocab: list[set[str]] = []  # content words of the group's train captions
        containing: Counter = Counter()  # word -> captions containing it, over all groups
        per_group: list[Counter] = []
        for caps in self.captions:
            counts: Counter = Counter()
            for caption in (c for image in caps for c in image):
                counts.update({w.lower() for w in _WORD.findall(caption) if _content(w.lower())})
            per_group.append(counts)
            containing.update(counts)
            self.vocab.append(set(counts))
        self.specific = [{w for w, n in counts.items() if n > specificity * containing[w]} for counts in per_group]
        self.objects = {(g, h): sorted(self.specific[h] - self.vocab[g])
                        for g, group in enumerate(index.groups) for h in group.hard_negatives}
        self.donors = [[c for image in caps for c in image if self.sources(g, c)]
                       for g, caps in enumerate(self.captions)]
        barren = [index.groups[g].concept for g, d in enumerate(self.donors) if not d]
        if barren:
            hint = "" if source == "both" else " (try synthetic_negatives.source 'both')"
            raise ClearglassError(f"synthetic caption negatives ({source}): no caption of concept(s) {barren} has a "
                                  f"concept-bearing word with a replacement: expected every train group to yield "
                                  f"one{hint}")

    def bearing(self, group: int, caption: str) -> list[tuple[int, str]]:
        """(word number, lower-case word) of the caption's concept-bearing words."""
        return [(i, m.group(0).lower()) for i, m in enumerate(_WORD.finditer(caption))
                if m.group(0).lower() in self.specific[group]]

    @lru_cache(maxsize=100_000)
    def cohyponyms(self, group: int, word: str) -> tuple[str, ...]:
        """Sorted co-hyponym names of the word's first noun sense that are not of the group's own concept."""
        lemma = self.wn.morphy(word, self.wn.NOUN)
        senses = self.wn.synsets(lemma, self.wn.NOUN) if lemma else []
        if not senses:
            return ()
        sense = senses[0]
        own = {n.lower().replace("_", " ") for n in sense.lemma_names()}
        concept = self.index.groups[group].concept.lower()
        out = set()
        for parent in sense.hypernyms() + sense.instance_hypernyms():
            for other in parent.hyponyms() + parent.instance_hyponyms():
                name = concept_name(other)
                if other == sense or name.lower() in own or not name.replace(" ", "").isalpha():
                    continue
                if any(w.lower() in self.vocab[group] for w in name.split()):
                    continue
                if _descends_from(other, concept):
                    continue
                out.add(name)
        return tuple(sorted(out))

    def sources(self, group: int, caption: str) -> list[str]:
        """The sources that can edit this caption."""
        words = self.bearing(group, caption)
        out = []
        if self.source in ("wordnet", "both") and words and all(self.cohyponyms(group, w) for _, w in words):
            out.append("wordnet")
        if self.source in ("groups", "both") and words and any(self.objects[group, h]
                                                              for h in self.index.groups[group].hard_negatives):
            out.append("groups")
        return out

    def edit(self, group: int, caption: str, rng: random.Random) -> str | None:
        """One negative of the caption, or None when no edit differs from every real caption within `MAX_TRIES`."""
        options = self.sources(group, caption)
        if not options:
            return None
        words = self.bearing(group, caption)
        for _ in range(MAX_TRIES):
            source = rng.choice(options)
            if source == "wordnet":
                swaps = {i: rng.choice(self.cohyponyms(group, w)) for i, w in words}
            else:
                h = rng.choice([h for h in self.index.groups[group].hard_negatives if self.objects[group, h]])
                objects = self.objects[group, h]
                picks = rng.sample(objects, len(words)) if len(objects) >= len(words) else \
                    [rng.choice(objects) for _ in words]
                swaps = {i: o for (i, _), o in zip(words, picks)}
            text = substitute(caption, swaps)
            if text.lower() not in self.real[group]:
                self.stats[source] += 1
                return text
        return None

    def for_key(self, key: PairKey) -> list[str]:
        """``per_caption`` negatives of one pair, seeded by (seed, key); borrowed from the group's donors if needed."""
        caption = self.captions[key.group][key.image][key.caption]
        rng = random.Random(f"{self.seed}:{key.group}:{key.image}:{key.caption}:{key.seed}")
        out = []
        for _ in range(self.per_caption):
            text = self.edit(key.group, caption, rng)
            if text is None:
                for donor in rng.sample(self.donors[key.group], len(self.donors[key.group])):
                    text = self.edit(key.group, donor, rng)
                    if text is not None:
                        self.stats["borrowed"] += 1
                        break
            if text is None:
                raise ClearglassError(f"synthetic caption negatives: no caption of concept "
                                      f"{self.index.groups[key.group].concept!r} yields an edit that differs from "
                                      f"its real captions")
            out.append(text)
        return out

    def for_batch(self, keys: list[PairKey]) -> list[str]:
        """len(keys) * per_caption negatives, pair by pair."""
        return [text for key in keys for text in self.for_key(key)]


@lru_cache(maxsize=100_000)
def _descends_from(synset, name: str) -> bool:
    """True if the synset or an ancestor has a lemma named ``name`` (lower case, spaces)."""
    closure = [synset, *synset.closure(lambda s: s.hypernyms() + s.instance_hypernyms())]
    return any(n.lower().replace("_", " ") == name for s in closure for n in s.lemma_names())
