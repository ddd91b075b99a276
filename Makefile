# Two entry points: `make book` (full-size book in _build/html) and `make test` (unit tests + notebooks at
# smoke size under nbval). Both create the virtual environment and install everything on first use.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ufkit-installed

.PHONY: install book test clean

# torch first and pinned: 2.13.0 is the CPU wheel on this machine's disk; an unpinned torch would pull a
# multi-GB CUDA build. The package's own ranges then admit the installed torch and install nothing more.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e ".[all]"
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

book: install
	$(VENV)/bin/jupyter-book build .
	test -f _build/html/index.html

# testpaths are tests/ and notebooks/; with --nbval-lax the root conftest.py converts each notebooks/*.py
# (py:percent) to a temporary .ipynb and nbval runs it in this environment's kernel.
test: install
	UFKIT_SMOKE=1 $(PY) -m pytest --nbval-lax -p no:cacheprovider

clean:
	rm -rf _build .nbval
