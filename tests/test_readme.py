"""The README's Python example runs as written (on two pictures drawn here), so the first code a library user copies
works."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

README = Path(__file__).resolve().parents[1] / "README.md"


def api_example() -> str:
    """The python block under the README's API EXAMPLE marker."""
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- API EXAMPLE[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert found, "README.md: no ```python block under <!-- API EXAMPLE ... -->"
    return found.group(1)


def test_the_readme_api_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    for name, shape in (("a.png", "ellipse"), ("b.png", "rectangle")):
        image = Image.new("RGB", (64, 64), "white")
        getattr(ImageDraw.Draw(image), shape)((12, 12, 52, 52), fill="red")
        image.save(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(api_example(), str(README), "exec"), scope)  # noqa: S102 - the README's own code
    assert scope["images"].shape[0] == 2 and scope["texts"].shape == scope["images"].shape
    assert scope["img"].grad is not None and scope["out"]["loss"].ndim == 0
    printed = capsys.readouterr().out
    assert all(word in printed for word in ("celebration", "nourishment", "wildlife"))
