"""What a chapter reports about its measurements: values glued for the book's pages, the machine's load, and the
rows other machines measured.

The book's pages quote numbers only through MyST-NB's ``glue`` (the notebook computes, the page refers); these
helpers keep that one line per number and say in the notebook's output when a timing cannot be trusted.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from .machine import machine_summary
from .store import ResultsStore
from .timing import MAX_OTHER_CORES


def put(key: str, value) -> None:
    """Glue ``value`` under ``key`` for the chapter's page (MyST-NB ``glue``, not displayed in the notebook).

    numpy scalars become Python numbers, so that the page's format specs (``{glue:text}`key:.2f```) apply.

    Raises:
        ImportError: myst-nb is not installed (it comes with the ``book`` extra).
    """
    from myst_nb import glue

    glue(key, value.item() if isinstance(value, np.generic) else value, display=False)


def _describe(row) -> str:
    return f"{row['name']}, batch {row['batch_size']}" if "name" in row and "batch_size" in row else "a timing"


def busy_note(rows: pd.DataFrame, what: str, label: Callable[[pd.Series], str] = _describe) -> str:
    """Print a visible warning for every row timed while other processes loaded the machine; return a sentence
    for the page about the load during all of ``rows``' timings.

    Args:
        rows: result rows with the load columns ``busy`` and ``other_cores`` (:func:`ufkit.measure.timing.time_calls`).
        what: what was timed, for the warning ("the baseline's latency").
        label: names one row in the warning (default: its ``name`` and ``batch_size``).

    Returns:
        e.g. ``"no timing was flagged busy: ..."`` or ``"2 of 6 timings ran while other processes loaded ..."``.
    """
    if "busy" not in rows.columns:
        return "these rows were stored before ufkit checked the machine's load"
    busy = rows["busy"].astype(str).str.lower().eq("true")
    for _, r in rows[busy].iterrows():
        print(f"WARNING: {what} ({label(r)}) was timed while other processes took {float(r['other_cores']):.2f} "
              f"cores of this machine: its latency is too high and its spread too wide.")
    if busy.any():
        most = float(pd.to_numeric(rows.loc[busy, "other_cores"], errors="coerce").max())
        return (f"{int(busy.sum())} of {len(rows)} timings ran while other processes loaded the machine (up to "
                f"{most:.2f} cores besides this one), so those latencies are upper bounds")
    return (f"no timing was flagged busy: other processes took at most {MAX_OTHER_CORES} of a core during every "
            f"timing long enough to judge")


def other_machines(store: ResultsStore, table: str, **match) -> pd.DataFrame:
    """Rows of a results table measured on machines other than this one, each labelled in a ``machine`` column
    (:func:`ufkit.measure.machine.machine_summary`); empty when there are none.

    Args:
        store: the results store.
        table: the table's name.
        match: column=value filters, as :meth:`ResultsStore.read` takes them.
    """
    rows = store.read(table, **match)
    if rows.empty:
        return rows
    mine = set(store.read(table, machine="current")["machine_id"])
    rows = rows[~rows["machine_id"].isin(mine)].copy()
    if not rows.empty:
        rows.insert(0, "machine", [machine_summary(r) for r in rows.to_dict("records")])
    return rows
