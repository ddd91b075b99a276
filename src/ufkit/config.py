"""Run size and paths: the one place that reads ufkit's environment variables.

Every notebook, test and command asks this module how big a run is and where things live, so that one
switch changes the whole project between the book's full runs and the tests' smoke runs.

Environment variables
---------------------
``UFKIT_SMOKE``
    ``1``/``true``/``yes`` selects smoke size (tiny subsets, a few steps) for tests; anything else, or unset,
    selects full size, the default.
``UFKIT_HOME``
    Root for caches and results (default: the source checkout when ufkit runs from one, else
    ``~/.cache/ufkit``).
``UFKIT_DATA``
    Folder of the default task's data (SST-2 in the GLUE layout); overrides the search next to the checkout.
``UFKIT_CACHE``
    Folder for checkpoints and other expensive intermediate results (default ``$UFKIT_HOME/.cache/<size>``).
``UFKIT_RESULTS``
    Folder for the result tables (CSV) that the book shows (default ``$UFKIT_HOME/results`` at full size,
    ``$UFKIT_CACHE/results`` at smoke size, so smoke runs never overwrite the book's numbers).
``UFKIT_THREADS``
    Thread count for benchmarks (default: the number of physical cores torch sees, ``torch.get_num_threads()``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TRUE = {"1", "true", "yes", "on"}


def _source_checkout() -> Path | None:
    """The repository root when ufkit is imported from a source checkout (``src/ufkit``), else None."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "src" / "ufkit").is_dir() else None


def is_smoke() -> bool:
    """True when ``UFKIT_SMOKE`` asks for smoke-size runs."""
    return os.environ.get("UFKIT_SMOKE", "").strip().lower() in _TRUE


def size() -> str:
    """``"smoke"`` or ``"full"``."""
    return "smoke" if is_smoke() else "full"


def pick(full, smoke):
    """Return ``smoke`` at smoke size and ``full`` otherwise: ``n_train = pick(67_349, 256)``."""
    return smoke if is_smoke() else full


def home() -> Path:
    """Root folder for caches and results."""
    env = os.environ.get("UFKIT_HOME")
    if env:
        return Path(env).expanduser()
    return _source_checkout() or Path.home() / ".cache" / "ufkit"


def cache_dir() -> Path:
    """Folder for checkpoints and cached intermediate results, separate for smoke and full size."""
    env = os.environ.get("UFKIT_CACHE")
    path = Path(env).expanduser() if env else home() / ".cache" / size()
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir() -> Path:
    """Folder for the result tables the book shows (:class:`ufkit.measure.store.ResultsStore`); smoke runs write
    elsewhere."""
    env = os.environ.get("UFKIT_RESULTS")
    if env:
        path = Path(env).expanduser()
    else:
        path = cache_dir() / "results" if is_smoke() else home() / "results"
    path.mkdir(parents=True, exist_ok=True)
    return path


def shared_dir() -> Path:
    """The ``shared`` folder beside the source checkout (data and fixtures), or ``UFKIT_SHARED``.

    Falls back to ``../shared`` from the working directory when ufkit is installed rather than run from a checkout.
    The folder may not exist; callers check the file they need and say where they looked.
    """
    env = os.environ.get("UFKIT_SHARED")
    if env:
        return Path(env).expanduser()
    checkout = _source_checkout()
    if checkout is not None:
        return checkout.parent / "shared"
    return Path.cwd().parent / "shared"


def data_candidates() -> list[Path]:
    """Folders searched, in order, for the default task's local data (SST-2, GLUE layout)."""
    out = []
    env = os.environ.get("UFKIT_DATA")
    if env:
        out.append(Path(env).expanduser())
    out.append(shared_dir() / "data" / "sst2")
    out.append(Path.cwd().parent / "shared" / "data" / "sst2")
    seen, unique = set(), []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def bench_threads() -> int:
    """Thread count for benchmarks: ``UFKIT_THREADS`` or torch's default intra-op thread count."""
    env = os.environ.get("UFKIT_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"UFKIT_THREADS must be a positive integer, got {env!r}") from None
        if n < 1:
            raise ValueError(f"UFKIT_THREADS must be a positive integer, got {env!r}")
        return n
    import torch

    return torch.get_num_threads()


@dataclass(frozen=True)
class RunSize:
    """Sizes of the baseline chapter's runs (training subset, evaluation subset, benchmark iterations)."""

    n_train: int | None  # None = the whole training split
    n_eval: int | None
    epochs: float
    bench_warmup: int
    bench_iters: int


def baseline_size() -> RunSize:
    """Run sizes for fine-tuning and benchmarking the baseline at the current size."""
    return pick(
        RunSize(n_train=None, n_eval=None, epochs=1.0, bench_warmup=10, bench_iters=50),
        RunSize(n_train=256, n_eval=64, epochs=1.0, bench_warmup=1, bench_iters=3),
    )
