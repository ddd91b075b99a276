"""The root conftest's `pytest --nbval` hook: py:percent notebooks run under nbval, and never run as modules.

Each test runs pytest in a subprocess, in a temporary project that holds a copy of the root conftest.py and a
tiny notebook, so that no chapter runs here.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NOTEBOOK = '''# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A tiny notebook

# %%
import os
from pathlib import Path

Path("ran-as-module.txt").touch() if __name__ != "__main__" else None
x = 1 + 1

# %%
assert os.environ["UFKIT_SMOKE"] == "1", "smoke size is the default under --nbval"
{last_cell}
'''


def project(tmp_path, **notebooks):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    for name, last_cell in notebooks.items():
        (tmp_path / f"{name}.py").write_text(NOTEBOOK.format(last_cell=last_cell))
    return tmp_path


def pytest_in(folder, *args):
    env = {k: v for k, v in os.environ.items() if k != "UFKIT_SMOKE"}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=300)


def test_failing_cell_fails(tmp_path):
    folder = project(tmp_path, nb="raise ValueError('a deliberately failing cell')")
    r = pytest_in(folder, "--nbval", str(folder / "nb.py"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAILED nb.py::nb.ipynb::Cell 1" in r.stdout and "a deliberately failing cell" in r.stdout


def test_passing_notebook_passes_and_only_the_named_one_runs(tmp_path):
    folder = project(tmp_path, nb="assert x == 2", other="raise ValueError('must not run')")
    r = pytest_in(folder, "--nbval-lax", "nb.py")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASSED nb.py::nb.ipynb::Cell 0" in r.stdout and "PASSED nb.py::nb.ipynb::Cell 1" in r.stdout
    assert "2 passed" in r.stdout and "other" not in r.stdout
    assert not list(folder.glob("*.ipynb"))  # the converted copy lives in a temporary folder


def test_edited_notebook_is_what_runs(tmp_path):
    folder = project(tmp_path, nb="assert x == 2")
    assert pytest_in(folder, "--nbval-lax", "nb.py").returncode == 0
    (folder / "nb.py").write_text(NOTEBOOK.format(last_cell="assert x == 3, 'edited'"))
    r = pytest_in(folder, "--nbval-lax", "nb.py")
    assert r.returncode == 1 and "edited" in r.stdout


def test_without_nbval_notebooks_are_never_modules(tmp_path):
    folder = project(tmp_path, nb="assert x == 2")
    r = pytest_in(folder, "nb.py")  # named on the command line: a skip that says what to add
    assert r.returncode == 5, r.stdout + r.stderr
    assert "run it with --nbval or --nbval-lax" in r.stdout
    r = pytest_in(folder)  # a directory walk: nothing
    assert r.returncode == 5 and "collected 0 items" in r.stdout
    assert not (folder / "ran-as-module.txt").exists()


def test_repository_collects_every_chapter_only_with_nbval():
    chapters = sorted(p.stem for p in (ROOT / "notebooks").glob("*.py"))
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
                        "--nbval-lax", "notebooks"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    for stem in chapters:
        assert f"notebooks/{stem}.py::{stem}.ipynb::Cell 0" in r.stdout
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
                        "notebooks"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 5 and "Cell" not in r.stdout
