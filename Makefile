# Two entry points: `make book` (full-size book in _build/html) and `make test` (unit tests + notebooks at
# smoke size under nbval). Both create the virtual environment and install everything on first use.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ufkit-installed
PROGRESS_LOG := .progress.log

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

# The book hides the notebooks' stderr. Their progress (ufkit.progress: each step's bar with its rate and ETA)
# goes to $(PROGRESS_LOG) instead, which `tail -F` copies to the terminal while jupyter-book runs (jupyter-book
# itself prints which notebook it executes); tail is stopped however the build ends.
book: install
	: > $(PROGRESS_LOG)
	tail -n +1 -F $(PROGRESS_LOG) 2>/dev/null & tail_pid=$$!; \
	trap 'sleep 1; kill $$tail_pid 2>/dev/null' EXIT; trap 'exit 130' INT TERM; \
	UFKIT_PROGRESS_FILE="$(CURDIR)/$(PROGRESS_LOG)" $(VENV)/bin/jupyter-book build .
	test -f _build/html/index.html

# testpaths are tests/ and notebooks/; with --nbval-lax the root conftest.py converts each notebooks/*.py
# (py:percent) to a temporary .ipynb and nbval runs it in this environment's kernel.
test: install
	UFKIT_SMOKE=1 $(PY) -m pytest --nbval-lax -p no:cacheprovider

clean:
	rm -rf _build .nbval $(PROGRESS_LOG)
