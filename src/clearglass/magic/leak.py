"""Concept-word leaks: a caption leaks when it names a word of its image's concept chain.

A concept's words are its name's words minus a few function words ("food and drink" -> food, drink).
A word matches case-insensitively at word boundaries, in its simple singular and plural forms
(fruit ~ fruits, berry ~ berries, glass ~ glasses, animals ~ animal).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

FUNCTION_WORDS = frozenset({"a", "an", "and", "the", "of", "or", "with", "in", "on", "for", "to", "at", "by"})
_WORD = re.compile(r"[a-z0-9]+(?:['’][a-z]+)?")


def concept_words(name: str) -> set[str]:
    """The content words of a concept name, lower case."""
    return {w for w in _WORD.findall(name.lower()) if w not in FUNCTION_WORDS}


def word_forms(word: str) -> set[str]:
    """Simple singular and plural forms of a word: w, ws, wes, y<->ies, and w minus a final s/es."""
    forms = {word, word + "s", word + "es"}
    if word.endswith("y"):
        forms.add(word[:-1] + "ies")
    if word.endswith("ies"):
        forms.add(word[:-3] + "y")
    if word.endswith("es"):
        forms.add(word[:-2])
    if word.endswith("s") and len(word) > 3:
        forms.add(word[:-1])
    return forms


@lru_cache(maxsize=4096)
def _chain_pattern(words: frozenset[str]) -> re.Pattern[str] | None:
    forms = sorted({f for w in words for f in word_forms(w)}, key=lambda f: (-len(f), f))
    if not forms:
        return None
    return re.compile(r"(?<![a-z0-9])(?:" + "|".join(map(re.escape, forms)) + r")(?![a-z0-9])", re.IGNORECASE)


def chain_words(levels: Iterable[str | None]) -> frozenset[str]:
    """All concept words of a concept chain (None levels are skipped)."""
    return frozenset(w for level in levels if level for w in concept_words(level))


def leaked_words(caption: str, levels: Iterable[str | None]) -> list[str]:
    """The concept words of `levels` that `caption` names (as written in the caption, lower case), in order."""
    pattern = _chain_pattern(chain_words(levels))
    return [] if pattern is None else [m.group(0).lower() for m in pattern.finditer(caption)]


def strip_words(caption: str, levels: Iterable[str | None]) -> str:
    """The caption with every concept word of `levels` removed and white space collapsed."""
    pattern = _chain_pattern(chain_words(levels))
    text = caption if pattern is None else pattern.sub(" ", caption)
    return " ".join(text.split())
