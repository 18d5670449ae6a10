"""clearglass: grouped contrastive learning for abstract concepts in CLIP-family models.

The library API, imported on first use (``import clearglass`` itself loads neither torch nor open_clip)::

    from clearglass import load_model, encode_images, encode_texts, score_concepts, GroupedContrastiveLoss

    bundle = load_model("clearglass-mini")  # eval mode, its frozen text transformer frozen
    score_concepts(bundle, "photo.png", ["celebration", "sport", "travel"])  # [(concept, cosine), ...] best first
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "clearglass.models",
    "lock_towers": "clearglass.models",
    "ModelBundle": "clearglass.models",
    "encode_images": "clearglass.inference",
    "encode_texts": "clearglass.inference",
    "score_concepts": "clearglass.inference",
    "GroupedContrastiveLoss": "clearglass.losses",
    "make_loss": "clearglass.losses",
    "EvalConfig": "clearglass.evaluate",
    "evaluate_model": "clearglass.evaluate",
    "ModelEncoder": "clearglass.evaluate",
    "load_concepts": "clearglass.magic.schema",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """The exported name from its module, imported on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'clearglass' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    """The module's names with the lazily imported exports."""
    return sorted({*globals(), *_EXPORTS})
