"""The Makefile installs what the code reads: every /usr/share path named in src/ or tests/ belongs to a Debian
package that `make test` installs (TEST_APT), the pretraining corpus's to PRETRAIN_APT and the demo's to DEMO_APT.
A package installed by hand would otherwise hide a missing install step until a fresh machine fails."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from clearglass.experiments.mini import corpus_sources

ROOT = Path(__file__).resolve().parents[1]
SHARE_PATH = re.compile(r"/usr/share/[A-Za-z0-9_./+-]+")
# modules whose paths the demo reads, so DEMO_APT must name their packages
DEMO_MODULES = ("src/clearglass/magic/sources/emoji.py", "src/clearglass/experiments/demo/")

pytestmark = pytest.mark.skipif(shutil.which("dpkg") is None or shutil.which("make") is None,
                                reason="needs Debian's dpkg and make")


def make_variable(name: str) -> set[str]:
    """The words of a Makefile variable, as make expands it."""
    out = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "--eval", "print-%: ; @echo $($*)",
                          f"print-{name}"], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def share_paths() -> dict[str, set[str]]:
    """Every /usr/share path literal in src/ and tests/ -> the files (relative to the repo) that name it."""
    found: dict[str, set[str]] = {}
    for folder in ("src", "tests"):
        for file in sorted((ROOT / folder).rglob("*.py")):
            for path in SHARE_PATH.findall(file.read_text(encoding="utf-8")):
                found.setdefault(path.rstrip("./"), set()).add(str(file.relative_to(ROOT)))
    return found


def owners(path: str) -> set[str]:
    """The Debian packages that own a path (`dpkg -S`); empty when none does."""
    result = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True)
    if result.returncode != 0:
        return set()
    return {p.strip().split(":")[0] for line in result.stdout.splitlines() for p in line.rsplit(": ", 1)[0].split(",")}


def test_the_code_names_share_paths_at_all() -> None:
    paths = share_paths()
    assert "/usr/share/unicode/cldr/common/annotations/en.xml" in paths and len(paths) >= 10


def test_every_share_path_belongs_to_a_package_that_make_test_installs() -> None:
    test_apt, pretrain_apt, demo_apt = (make_variable(v) for v in ("TEST_APT", "PRETRAIN_APT", "DEMO_APT"))
    problems = []
    for path, files in sorted(share_paths().items()):
        packages = owners(path)
        if not packages:
            problems.append(f"{path} ({', '.join(sorted(files))}): no installed package owns it; name its package in "
                            "TEST_APT and run `make test`")
            continue
        needs = [("TEST_APT", test_apt)]
        if any(f.startswith("src/clearglass/experiments/mini/") for f in files):
            needs.append(("PRETRAIN_APT", pretrain_apt))
        if any(f.startswith(DEMO_MODULES) for f in files):
            needs.append(("DEMO_APT", demo_apt))
        for name, listed in needs:
            if not packages & listed:
                problems.append(f"{path} ({', '.join(sorted(files))}) belongs to {sorted(packages)}, which {name} "
                                "does not name")
    assert not problems, "\n".join(problems)


def test_the_corpus_sources_name_packages_that_make_pretrain_installs() -> None:
    pretrain_apt, test_apt = make_variable("PRETRAIN_APT"), make_variable("TEST_APT")
    declared = {font.package for font in corpus_sources.ICON_FONTS.values()}
    declared |= {package for _, package in corpus_sources.ICON_THEMES.values()}
    assert declared <= pretrain_apt and declared <= test_apt, declared - (pretrain_apt & test_apt)


def test_owners_reads_dpkg() -> None:
    assert "unicode-data" in owners("/usr/share/unicode/UnicodeData.txt")
    assert owners(str(Path("/usr/share") / "no-such-clearglass-file")) == set()
