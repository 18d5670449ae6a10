"""Experiments (pretraining recipes, searches): they use the library, and the library never imports them."""
