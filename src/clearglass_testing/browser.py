"""Headless Chromium for the tests that open report.html: the browser, its flags, one run on a page, and a
screenshot (also how the README's picture of a report is made)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from clearglass.errors import ClearglassError

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--virtual-time-budget=5000"]


def chromium() -> str:
    """The headless browser's executable: chromium (or Chrome) on the PATH."""
    found = next((p for name in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(name))), None)
    if found is None:
        raise ClearglassError("no chromium on the PATH: install it (apt-get install chromium) to check or "
                              "screenshot report.html")
    return found


def run_chromium(page: Path, profile: Path, width: int, height: int, *flags: str) -> subprocess.CompletedProcess:
    """Headless Chromium on the page file ``page`` in a ``width`` x ``height`` window, with its profile in
    ``profile`` and ``flags`` added (what it should do: ``--dump-dom``, ``--screenshot=FILE``); its exit status,
    stdout and stderr."""
    return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                           *flags, page.as_uri()], capture_output=True, text=True, timeout=180, check=False)


def screenshot(html: str | os.PathLike, png: str | os.PathLike, width: int = 1280, height: int = 800) -> Path:
    """A PNG of the top ``width`` x ``height`` pixels of the page ``html``, as headless Chromium draws it."""
    html, png = Path(html).resolve(), Path(png).resolve()
    if not html.is_file():
        raise ClearglassError(f"{html}: no such page to screenshot")
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "shot.png"
        run = run_chromium(html, Path(tmp) / "profile", width, height, f"--screenshot={shot}")
        if run.returncode != 0 or not shot.is_file():
            last = (run.stderr.strip().splitlines() or ["no message"])[-1]
            raise ClearglassError(f"{html}: chromium could not screenshot the page (exit {run.returncode}: {last})")
        shutil.move(shot, png)
    return png
