"""The package's architecture, kept by machine: layers (import-linter), no import cycles, one training loop."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ufkit"


def test_layer_contract_holds():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    r = subprocess.run([exe], cwd=SRC.parents[1], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_no_import_cycles():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("ufkit")
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain and module != "ufkit" and imported != "ufkit":
                cycles.append(" -> ".join((module, *chain)))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_one_training_loop():
    """Every optimizer step in the package goes through ufkit.training.train_loop."""
    steps = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py")
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"\b(optimizer|opt)\.step\(\)", line)]
    assert steps == ["training.py:" + steps[0].split(":")[1]] and len(steps) == 1, steps


def test_every_module_has_a_docstring():
    missing = []
    for p in SRC.rglob("*.py"):
        if p.name == "__main__.py":
            continue
        text = p.read_text().lstrip()
        if not text.startswith(('"""', "'''")):
            missing.append(str(p.relative_to(SRC)))
    assert not missing, missing
