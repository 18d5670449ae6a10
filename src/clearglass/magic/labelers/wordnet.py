"""The `wordnet` labeler: caption nouns -> WordNet hypernym chains, offline.

WordNet 3.0 comes from the Debian files in /usr/share/wordnet. nltk's reader needs a ``lexnames`` file (Debian
ships none) and only reads from folders in ``nltk.data.path``, so `wordnet_reader` builds
``cache_root()/nltk_data/corpora/wordnet/`` with copies of the Debian files (nltk rejects symlinks that leave
its root) plus the standard 45-line ``lexnames`` (and an empty ``index.sense`` that nltk's OMW version map opens) and
adds ``cache_root()/nltk_data`` to ``nltk.data.path``.

Rule, deterministic (no tagger models are available offline, so tokens are tried as nouns):
1. tokens = lower-case letter runs of every caption, minus function words and `SKIP_WORDS`;
   a token is a noun if ``morphy(token, NOUN)`` exists and its most frequent sense (first synset)
   descends from physical_entity.n.01; when that sense is a plant or plant part (under `PLANT_ROOTS`) and the word
   also has a sense under `FOOD_ROOT` (solid food), the first such food sense is taken instead: in photographs,
   a banana, broccoli or carrot is food, not a herb (a dog stays a dog: its first sense is no plant);
2. the head noun is the most frequent such noun over the image's captions (ties: first seen);
3. its ancestors along its longest hypernym path through `FOOD_ROOT` if it has one (an apple is edible fruit,
   not a pome), else its longest hypernym path (ties: smaller list of synset names), nearest first, minus those of
   depth < `MIN_DEPTH` (entity, physical entity, object/matter/...), give a[0..n-1]; level k (k = 0..3) is
   a[round(k (n - 1) / 3)], consecutive repeats dropped, padded with None (dog -> canine, mammal, animal, whole);
   a token counts as a physical thing if any hypernym path of its first sense passes physical_entity.n.01;
4. concept names are the synsets' first lemmas with spaces; new captions are the captions with every level word
   removed; hard negatives are the siblings (other hyponyms of level1's parent on its longest path) then cousins
   (grandparent's grandchildren), by name, at most `MAX_NEGATIVES` (the builder keeps those that are concepts of the
   dataset).
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from functools import lru_cache
from pathlib import Path

from clearglass.errors import ClearglassError
from clearglass.io import write_bytes_atomic, write_text_atomic
from clearglass.magic import cache_root
from clearglass.magic.labelers import ConceptLabel, LabelFailure, concept_level_captions
from clearglass.magic.leak import FUNCTION_WORDS
from clearglass.magic.sources import SourceItem

WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv", "index.noun", "index.verb", "index.adj",
                 "index.adv", "noun.exc", "verb.exc", "adj.exc", "adv.exc")
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition "
    "noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object "
    "noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape "
    "noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication verb.competition "
    "verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession "
    "verb.social verb.stative verb.weather adj.ppl"
).split()
_POS_NUMBER = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
MIN_DEPTH = 3
PLANT_ROOTS = ("plant.n.02", "plant_part.n.01")
FOOD_ROOT = "food.n.02"
MAX_NEGATIVES = 20
SKIP_WORDS = frozenset("is are was be it its there this that picture image photo photograph view background "
                        "top front side left right middle center plain next some two three several one just "
                        "very other".split())


def lexnames_text() -> str:
    """The standard WordNet lexnames file: 'NN<TAB>name<TAB>pos-number' for the 45 lexicographer files."""
    return "".join(f"{i:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


def wordnet_data_dir(source: str | os.PathLike = WORDNET_DIR, cache: Path | None = None) -> Path:
    """Make (once) the nltk data folder: corpora/wordnet with copies of the WordNet files and a lexnames file."""
    source = Path(source)
    root = (cache_root() if cache is None else cache) / "nltk_data"
    corpus = root / "corpora" / "wordnet"
    corpus.mkdir(parents=True, exist_ok=True)
    for name in WORDNET_FILES:
        target = source / name
        if not target.is_file():
            raise ClearglassError(f"{target}: WordNet file missing (install wordnet-base, or pass its folder)")
        copy = corpus / name
        if copy.is_symlink() or not copy.is_file() or copy.stat().st_size != target.stat().st_size:
            write_bytes_atomic(target.read_bytes(), copy)
    lexnames = corpus / "lexnames"
    if not lexnames.exists():
        write_text_atomic(lexnames_text(), lexnames)
    (corpus / "index.sense").touch()  # read by nltk's Open-Multilingual-Wordnet version map; no OMW data here
    return root


@lru_cache(maxsize=2)
def wordnet_reader(source: str = str(WORDNET_DIR)):
    """An nltk WordNetCorpusReader over the offline WordNet files."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    root = wordnet_data_dir(source)
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))
    with warnings.catch_warnings():  # "multilingual functions are not available": no Open Multilingual Wordnet here
        warnings.simplefilter("ignore", UserWarning)
        return WordNetCorpusReader(nltk.data.find("corpora/wordnet"), None)


def main_path(synset, through=None) -> list:
    """The synset's longest hypernym path, root first (ties: the smaller list of synset names; nltk's order varies);
    among the paths through synset `through` when there are any."""
    paths = synset.hypernym_paths()
    paths = [p for p in paths if through in p] or paths
    return max(paths, key=lambda path: (len(path), [x.name() for x in path]))


def concept_name(synset) -> str:
    """The first lemma of a synset with spaces: edible_fruit.n.01 -> 'edible fruit'."""
    return synset.lemmas()[0].name().replace("_", " ")


class WordNetLabeler:
    """Labels an image with the hypernym chain of its captions' head noun."""

    name = "wordnet"

    def __init__(self, wordnet_dir: str | os.PathLike = WORDNET_DIR) -> None:
        self.wn = wordnet_reader(str(wordnet_dir))
        self.physical = self.wn.synset("physical_entity.n.01")
        self.plants = {self.wn.synset(name) for name in PLANT_ROOTS}
        self.food = self.wn.synset(FOOD_ROOT)

    @lru_cache(maxsize=100_000)
    def noun_synset(self, token: str):
        """The first sense of a token read as a noun if it is a physical thing (a plant yields to a food sense); else
        None."""
        if token in FUNCTION_WORDS or token in SKIP_WORDS or len(token) < 3:
            return None
        lemma = self.wn.morphy(token, self.wn.NOUN)
        senses = self.wn.synsets(lemma, self.wn.NOUN) if lemma else []
        paths = senses[0].hypernym_paths() if senses else []
        if not any(self.physical in path for path in paths):
            return None
        if any(self.plants & set(path) for path in paths):
            food = [s for s in senses if any(self.food in path for path in s.hypernym_paths())]
            return food[0] if food else senses[0]
        return senses[0]

    def head(self, captions: list[str]):
        """The most frequent physical noun sense of the captions (ties: first seen), or None."""
        counts: Counter = Counter()
        first: dict = {}
        for caption in captions:
            for token in re.findall(r"[a-z]+", caption.lower()):
                synset = self.noun_synset(token)
                if synset is not None:
                    counts[synset] += 1
                    first.setdefault(synset, len(first))
        return min(counts, key=lambda s: (-counts[s], first[s])) if counts else None

    def chain(self, synset) -> list:
        """Up to four ancestors of increasing generality (rule 3 of the module docstring)."""
        path = main_path(synset, self.food)  # root -> synset
        ancestors = [s for s in reversed(path[:-1]) if s.min_depth() >= MIN_DEPTH]
        if not ancestors:
            return []
        n = len(ancestors)
        picked = [ancestors[round(k * (n - 1) / 3)] for k in range(4)]
        return [s for i, s in enumerate(picked) if i == 0 or s != picked[i - 1]]

    def negatives(self, level1) -> list[str]:
        """Siblings then cousins of level1 along its longest hypernym path, by name, without level1's own name."""
        path = main_path(level1, self.food)
        own = concept_name(level1)
        out: list[str] = []
        if len(path) >= 2:
            siblings = {concept_name(s) for s in path[-2].hyponyms()}
            out += sorted(siblings - {own})
        if len(path) >= 3:
            cousins = {concept_name(c) for s in path[-3].hyponyms() if s != path[-2] for c in s.hyponyms()}
            out += sorted(cousins - {own} - set(out))
        return out[:MAX_NEGATIVES]

    def label(self, item: SourceItem) -> ConceptLabel | LabelFailure:
        """The label of one image, or a failure naming why."""
        head = self.head(item.captions)
        if head is None:
            return LabelFailure(item.image, "no caption word is a WordNet noun for a physical thing")
        chain = self.chain(head)
        if not chain:
            return LabelFailure(item.image, f"{head.name()} has no ancestor of depth >= {MIN_DEPTH}")
        levels = tuple(concept_name(s) for s in chain) + (None,) * (4 - len(chain))
        captions = concept_level_captions(item, levels)
        if not captions:
            return LabelFailure(item.image, "every caption consists only of concept words")
        return ConceptLabel(levels=levels, new_captions=captions, hard_negatives=self.negatives(chain[0]))

    def label_many(self, items: list[SourceItem]) -> list[ConceptLabel | LabelFailure]:
        """One label or failure per item, in order."""
        return [self.label(item) for item in items]
