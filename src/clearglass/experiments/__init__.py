"""Experiments built on the library: the embedded demo, the hierarchy ablation and the clearglass-mini pretraining
recipe. They live apart from the library (`clearglass` never imports `clearglass.experiments`)."""
