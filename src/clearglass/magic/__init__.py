"""MAGIC grouped datasets: schema, sources, concept labelers and the builder."""

import os
from pathlib import Path


def cache_root() -> Path:
    """The folder for clearglass caches (WordNet data dir, concept-name embeddings): $CLEARGLASS_CACHE or
    ~/.cache/clearglass."""
    return Path(os.environ.get("CLEARGLASS_CACHE") or Path.home() / ".cache" / "clearglass")
