"""The one results store: a folder of CSV tables, one per kind of result, every row labelled with its machine.

A table is ``<folder>/<table>.csv`` (the book's folder is :func:`ufkit.config.results_dir`, ``results/`` in the
checkout at full size; smoke runs write elsewhere). CSV, not a database, so that results under version control
diff and review like code. Rows carry :func:`ufkit.measure.machine.machine_info`'s columns and ``machine_id``;
rows about a model also carry ``model_id`` (:func:`ufkit.cache.fingerprint`). :meth:`ResultsStore.load_or_measure`
reuses stored rows only when the machine *and* the inputs match; otherwise it measures and appends, and rows
from other machines stay in the table, to be shown beside this machine's, labelled.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pandas as pd

from .. import UfkitError
from .machine import machine_id, machine_info


def _check_table(table: str) -> str:
    if not isinstance(table, str) or not table or not table.replace("_", "").isalnum():
        raise UfkitError(f"table must be letters, digits and '_', got {table!r}")
    return table


def _equal(column: pd.Series, value) -> pd.Series:
    """Rows whose cell equals ``value``: numerically for numbers (a CSV reads 512 back as 512.0), else as text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return pd.to_numeric(column, errors="coerce") == value
    return column.astype(str) == str(value)


def with_machine_ids(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a ``machine_id`` column, computed from each row's machine columns where missing."""
    if df.empty:
        return df
    df = df.copy()
    if "machine_id" not in df.columns:
        df["machine_id"] = None
    missing = df["machine_id"].isna()
    if missing.any():
        df.loc[missing, "machine_id"] = [machine_id(r) for r in df.loc[missing].to_dict("records")]
    return df


class ResultsStore:
    """CSV result tables in one folder.

    Args:
        folder: where the tables live (default :func:`ufkit.config.results_dir`).
    """

    def __init__(self, folder: str | os.PathLike | None = None):
        if folder is None:
            from .. import config

            folder = config.results_dir()
        self.folder = Path(folder).expanduser()

    def path(self, table: str) -> Path:
        """The table's CSV file."""
        return self.folder / f"{_check_table(table)}.csv"

    def read(self, table: str, *, machine: str | None = None, **match) -> pd.DataFrame:
        """Rows of a table (empty DataFrame when it does not exist).

        Args:
            machine: ``"current"`` keeps this machine's rows (at the thread count in ``match["threads"]`` if
                given, else any), a machine id keeps that machine's, None keeps all.
            match: column=value filters, e.g. ``model_id="…"``; a column the table lacks matches nothing.
        """
        path = self.path(table)
        if not path.is_file():
            return pd.DataFrame()
        df = with_machine_ids(pd.read_csv(path))
        if machine == "current":
            info = machine_info()
            ids = {machine_id({**info, "threads": t}) for t in
                   ([match["threads"]] if "threads" in match else df.get("threads", pd.Series(dtype=int)).unique())}
            df = df[df["machine_id"].isin(ids)]
        elif machine is not None:
            df = df[df["machine_id"] == machine]
        for col, value in match.items():
            if col not in df.columns:
                return df.iloc[0:0]
            df = df[_equal(df[col], value)]
        return df.reset_index(drop=True)

    def append(self, table: str, rows: pd.DataFrame) -> pd.DataFrame:
        """Append rows to a table, adding new columns (older rows get blanks there); returns the rows written.

        Rows without machine columns get this machine's (:func:`machine_info`); every row gets a ``machine_id``.
        The file is rewritten through a temporary file and a rename, so an interruption never leaves half a table.
        """
        if rows.empty:
            return rows
        rows = rows.copy()
        if "cpu_model" not in rows.columns:
            for k, v in machine_info().items():
                if k not in rows.columns:
                    rows[k] = v
        rows = with_machine_ids(rows)
        path = self.path(table)
        path.parent.mkdir(parents=True, exist_ok=True)
        old = pd.read_csv(path) if path.is_file() else pd.DataFrame()
        out = pd.concat([old, rows], ignore_index=True) if not old.empty else rows
        tmp = path.with_name(f".{path.name}.tmp")
        out.to_csv(tmp, index=False)
        os.replace(tmp, path)
        return rows

    def drop(self, table: str, *, machine: str | None = None, **match) -> int:
        """Remove the rows :meth:`read` would return with the same filters; returns how many were removed."""
        path = self.path(table)
        if not path.is_file():
            return 0
        df = with_machine_ids(pd.read_csv(path))
        gone = self.read(table, machine=machine, **match)
        if gone.empty:
            return 0
        key = df.astype(str).apply(tuple, axis=1)
        kill = set(gone.astype(str).apply(tuple, axis=1))
        keep = df[~key.isin(kill)]
        keep.to_csv(path, index=False)
        return len(df) - len(keep)

    def load_or_measure(self, table: str, measure: Callable[[], pd.DataFrame], *, remeasure: bool = False,
                        reuse_busy: bool = True, **key) -> pd.DataFrame:
        """This machine's rows of ``table`` whose ``key`` columns match, else ``measure()``'s rows, appended.

        Args:
            measure: makes the rows (it is called only on a miss); ``key`` columns are added to them.
            remeasure: measure even when matching rows exist (the old rows are dropped first).
            reuse_busy: False measures again when a matching row was timed while other processes loaded the
                machine (``busy``), e.g. when a chapter's models were trained beside other work.
            key: what the rows must match besides the machine: the model's fingerprint (``model_id``), the
                settings of the run. A row measured on another machine, or for other model files, never matches.

        Raises:
            UfkitError: ``measure`` returned no rows.
        """
        if not remeasure:
            hit = self.read(table, machine="current", **key)
            busy = "busy" in hit.columns and hit["busy"].astype(str).str.lower().eq("true").any()
            if not hit.empty and (reuse_busy or not busy):
                return hit
            remeasure = not hit.empty
        if remeasure:
            self.drop(table, machine="current", **key)
        from ..progress import announce

        announce(f"measuring {table} on this machine")
        rows = measure()
        if rows is None or rows.empty:
            raise UfkitError(f"measuring {table!r} produced no rows")
        for k, v in key.items():
            rows[k] = v
        return self.append(table, rows).reset_index(drop=True)
