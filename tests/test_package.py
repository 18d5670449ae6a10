"""The package's shape: the library never imports the experiments, the CLI or the test helpers; importing it has no
side effects; atomic renames live in one place; no function is longer than 80 lines."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
LIBRARY = SRC / "clearglass"
OUTSIDE = ("clearglass.experiments", "clearglass.cli", "clearglass_testing")


def _library_modules() -> list[Path]:
    return [p for p in LIBRARY.rglob("*.py")
            if not {"experiments", "cli"} & set(p.relative_to(LIBRARY).parts) and p.name != "__main__.py"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_the_library_never_imports_experiments_cli_or_test_helpers() -> None:
    modules = _library_modules()
    assert len(modules) > 20 and not any("experiments" in p.parts for p in modules)
    offenders = {str(p.relative_to(SRC)): sorted(n for n in _imports(p) if n.startswith(OUTSIDE)) for p in modules}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_boundary_check_sees_an_offending_import(tmp_path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from clearglass.experiments.demo.run import run_demo\n")
    assert any(n.startswith(OUTSIDE) for n in _imports(bad))


def test_importing_the_library_changes_no_environment_or_third_party_table() -> None:
    modules = sorted({".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
                      for p in _library_modules()})
    code = ("import json, os, open_clip.hf_configs as h\n"
            "before = json.dumps(h.arch_dict['bert'], sort_keys=True)\n"
            f"for m in {modules!r}: __import__(m)\n"
            "print(json.dumps([os.environ.get('HF_HUB_OFFLINE'), before == json.dumps(h.arch_dict['bert'], "
            "sort_keys=True), 'layer_attr' in h.arch_dict['bert']['config_names']]))")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [None, True, False]


def test_atomic_renames_live_in_the_io_module_only() -> None:
    users = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if "os.replace(" in p.read_text("utf-8"))
    assert users == ["clearglass/io.py"]


def test_no_function_is_longer_than_80_lines() -> None:
    long = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})")
    assert long == []
