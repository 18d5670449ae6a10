"""docs/ARCHITECTURE.md names the tests of every module: each module under ``src/clearglass`` and
``src/clearglass_testing`` has a row, and one without a test file of its name has a row that names the tests that
cover it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
HEADING = "## Which test covers each module"


def modules() -> list[str]:
    """Every module, as its path under src/."""
    return sorted(str(p.relative_to(SRC)) for package in ("clearglass", "clearglass_testing")
                  for p in (SRC / package).rglob("*.py"))


def own_test(module: str) -> Path:
    """The test file of a module's name: ``clearglass/magic/leak.py`` -> ``tests/test_magic_leak.py``; a package's
    ``__init__.py`` -> ``tests/test_<package>.py``."""
    parts = list(Path(module).with_suffix("").parts)
    parts = parts[1:] if parts[0] == "clearglass" else parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ROOT / "tests" / f"test_{'_'.join(parts)}.py"


def table() -> dict[str, list[str]]:
    """The rows of the architecture doc's table: module -> the test files its row names."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `([^`]+\.py)` \|(.*)\|$", line)
        if match:
            assert match[1] not in rows, f"{match[1]}: two rows"
            rows[match[1]] = re.findall(r"`(test_\w+\.py)`", match[2])
    return rows


def problems(rows: dict[str, list[str]], mods: list[str]) -> list[str]:
    """What the table gets wrong about the modules ``mods``."""
    tests = ROOT / "tests"
    return ([f"{m}: no row in {HEADING!r}" for m in mods if m not in rows]
            + [f"{m}: no {own_test(m).name} and its row names no test" for m in mods
               if m in rows and not rows[m] and not own_test(m).is_file()]
            + [f"{m}: a row for a module that does not exist" for m in rows if m not in mods]
            + [f"{m}: names {t}, which does not exist" for m, ts in rows.items() for t in ts
               if not (tests / t).is_file()])


def test_every_module_has_a_row_naming_the_tests_that_cover_it() -> None:
    assert problems(table(), modules()) == []


def test_the_check_sees_a_missing_row_a_row_without_tests_and_stale_rows() -> None:
    assert own_test("clearglass/magic/sources/csv.py") == ROOT / "tests" / "test_magic_sources_csv.py"
    assert own_test("clearglass/train/__init__.py") == ROOT / "tests" / "test_train.py"
    rows = {"clearglass/cli/demo.py": [], "clearglass/losses.py": [], "clearglass/gone.py": ["test_losses.py"],
            "clearglass/models.py": ["test_nothing_here.py"]}
    found = problems(rows, ["clearglass/cli/demo.py", "clearglass/losses.py", "clearglass/models.py",
                            "clearglass/new.py"])
    assert found == [f"clearglass/new.py: no row in {HEADING!r}",
                     "clearglass/cli/demo.py: no test_cli_demo.py and its row names no test",
                     "clearglass/gone.py: a row for a module that does not exist",
                     "clearglass/models.py: names test_nothing_here.py, which does not exist"]
