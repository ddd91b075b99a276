"""Progress of long work, shown where the person waiting for it looks: every progress bar of ufkit comes from here.

:func:`progress_bar` is a tqdm bar (rate and ETA included). By default it behaves as ``tqdm.auto`` does: a widget
in Jupyter, a line on stderr in a terminal. When the environment variable ``UFKIT_PROGRESS_FILE`` names a file,
bars and :func:`announce`'s lines are appended to that file instead, flushed as they are written, and nothing goes
to stderr. ``make book`` uses this: the notebooks' output in the book stays clean, while ``tail -F`` on the file
shows in the terminal which step of which chapter runs and how long it has left.
"""

from __future__ import annotations

import os
import time
from typing import IO, Iterable

#: The environment variable naming the file that progress goes to instead of stderr.
PROGRESS_FILE_ENV = "UFKIT_PROGRESS_FILE"

_handles: dict[str, IO[str]] = {}


def progress_file() -> str | None:
    """The file named by ``UFKIT_PROGRESS_FILE``, or None when the variable is unset or empty."""
    return os.environ.get(PROGRESS_FILE_ENV) or None


def _open(path: str) -> IO[str]:
    """One append-mode handle per file and process, opened on first use (several kernels may append to one file)."""
    fp = _handles.get(path)
    if fp is None or fp.closed:
        fp = _handles[path] = open(path, "a", encoding="utf-8", buffering=1)
    return fp


def progress_bar(iterable: Iterable | None = None, *, total: int | float | None = None, desc: str | None = None,
                 disable: bool = False, **kwargs):
    """A tqdm progress bar with its rate and ETA, written to ``UFKIT_PROGRESS_FILE`` when that is set.

    Use it as ``tqdm`` is used: wrap an iterable, or give ``total`` and call ``update``.

    Args:
        iterable: what to iterate over, or None for a bar driven by ``update``.
        total: the number of steps (default: ``len(iterable)`` where it has one).
        desc: what runs, e.g. ``"fine-tuning"`` or ``"latency table"``; it starts the bar's line.
        disable: no bar at all (e.g. on processes other than the main one).
        **kwargs: passed to ``tqdm`` (``leave``, ``unit``, ``mininterval``...).

    Returns:
        A ``tqdm`` instance. With ``UFKIT_PROGRESS_FILE`` set it is a plain-text bar on that file, refreshed at
        most once a second (``mininterval``), flushed at every refresh; otherwise a ``tqdm.auto`` bar.
    """
    path = progress_file()
    if path is None or disable:
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, disable=disable, **kwargs)
    from tqdm import tqdm

    kwargs.setdefault("mininterval", 1.0)
    kwargs.setdefault("ncols", 100)
    kwargs.setdefault("ascii", False)
    return tqdm(iterable, total=total, desc=desc, file=_open(path), dynamic_ncols=False, **kwargs)


def announce(text: str) -> None:
    """Write one line, e.g. a chapter's name and the step it starts, where the progress bars go.

    To ``UFKIT_PROGRESS_FILE`` when it is set (prefixed with the time of day), else to stderr.

    Args:
        text: the line, without a newline.
    """
    path = progress_file()
    line = f"[{time.strftime('%H:%M:%S')}] {text}"
    if path is None:
        import sys

        print(line, file=sys.stderr, flush=True)
        return
    from tqdm import tqdm

    fp = _open(path)
    tqdm.write(line, file=fp)  # clears this process's bars on the file, writes the line, redraws them
    fp.flush()
