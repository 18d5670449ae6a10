"""Test oracles and fakes shared by `tests/` and `bench/`: slow, obviously-correct twins of the fast paths and a
scripted local LLM server. Not part of the `clearglass` library, which never imports it."""
