"""clearglass: grouped contrastive learning for abstract concepts in CLIP-family models."""

__version__ = "0.1.0"
