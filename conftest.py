"""`pytest --nbval` (or `--nbval-lax`) also runs the chapter notebooks, straight from their py:percent files.

The chapters live in git as jupytext py:percent files (``notebooks/*.py``); nbval runs ``.ipynb`` files. With
``--nbval`` or ``--nbval-lax``, every ``.py`` file that starts with a jupytext header is converted at collection
time into an ``.ipynb`` in a temporary folder (removed at the end of the run) and handed to nbval's own collector,
so the ``.py`` as it is on disk is what runs:

    pytest --nbval-lax                                 # unit tests + every chapter (testpaths: tests, notebooks)
    pytest --nbval-lax notebooks/00_baseline.py        # one chapter; its cells are
                                                       # notebooks/00_baseline.py::00_baseline.ipynb::Cell <n>

With either flag, ``UFKIT_SMOKE`` defaults to ``1`` (smoke size) and the kernel is the Python running pytest
(nbval's ``--nbval-current-env``) unless ``--nbval-kernel-name`` names another. The converted notebooks hold no
stored outputs, so ``--nbval`` and ``--nbval-lax`` both check that every cell runs without an exception.

Without either flag, notebooks are never collected: not by a directory walk, and not as Python test modules
when named on the command line (that would run the whole chapter at import); naming one reports a skip that
says which flag to add.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_CONVERTED = pytest.StashKey[Path]()  # the run's temporary folder of converted notebooks


def _nbval_active(config) -> bool:
    return bool(getattr(config.option, "nbval", False) or getattr(config.option, "nbval_lax", False))


def is_jupytext_notebook(path: Path) -> bool:
    """True for a ``.py`` file that starts with a jupytext header (``# ---`` ... ``jupytext:`` ... ``# ---``)."""
    if path.suffix != ".py":
        return False
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    lines = head.splitlines()
    if not lines or lines[0].rstrip() != "# ---":
        return False
    for line in lines[1:]:
        if line.rstrip() == "# ---":
            return False  # end of the YAML header without a jupytext entry
        if line.lstrip("# ").startswith("jupytext:"):
            return True
    return False


def pytest_configure(config):
    if not _nbval_active(config):
        return
    os.environ.setdefault("UFKIT_SMOKE", "1")  # before any test or kernel starts; the kernels inherit it
    if not config.option.nbval_kernel_name:
        config.option.nbval_current_env = True
    config.stash[_CONVERTED] = Path(tempfile.mkdtemp(prefix="ufkit-nbval-"))
    config.pluginmanager.register(_CellNames(), "ufkit-nbval-cell-names")


def pytest_unconfigure(config):
    folder = config.stash.get(_CONVERTED, None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


class JupytextNotebook(pytest.File):
    """A py:percent notebook: converted to a temporary ``.ipynb`` whose cells nbval collects and runs."""

    def collect(self):
        if not _nbval_active(self.config):
            pytest.skip("a jupytext notebook: run it with --nbval or --nbval-lax")
        import jupytext
        from nbval.plugin import IPyNbFile

        # One folder per notebook: it is the kernel's working directory, and two chapters never share it.
        folder = Path(tempfile.mkdtemp(prefix=f"{self.path.stem}-", dir=self.config.stash[_CONVERTED]))
        ipynb = folder / f"{self.path.stem}.ipynb"
        jupytext.write(jupytext.read(self.path), ipynb)
        yield IPyNbFile.from_parent(self, path=ipynb, name=ipynb.name)


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path: Path, parent):
    """Replace whatever the other plugins made of a notebook (pytest's Python plugin makes a ``Module`` of any
    ``.py`` named on the command line) by one :class:`JupytextNotebook`, under ``--nbval``/``--nbval-lax`` or
    when it was named on the command line (to report a skip), else by nothing."""
    collected = yield
    if not is_jupytext_notebook(file_path):
        return collected
    kept = [c for c in collected if not isinstance(c, pytest.Module)]
    if _nbval_active(parent.config) or parent.session.isinitpath(file_path):
        kept.append(JupytextNotebook.from_parent(parent, path=file_path))
    return kept


class _CellNames:
    """Name a notebook cell by its ``.py`` in reports (``notebooks/00_baseline.py::Cell 3``), not by the temporary
    copy. A plugin object, registered for the run: this file's own hooks do not reach the cells, because
    conftest hooks apply by path and the cells' path is the copy, outside the repository."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        notebook = item.getparent(JupytextNotebook)
        if notebook is not None:
            report.location = (notebook.nodeid, None, f"{notebook.nodeid}::{item.name}")
        return report
