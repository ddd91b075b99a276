"""Text-classification data: SST-2 by default, any local file or Hugging Face dataset otherwise.

Every split comes back as a :class:`datasets.Dataset` with two columns, ``text`` (str) and ``label`` (int id,
``-1`` for an unlabeled split), inside a :class:`datasets.DatasetDict`; the label names and their number travel
in :class:`TaskData`.

Where the default task (GLUE SST-2, Socher et al. 2013; Wang et al. 2019) is looked for, in order:

1. an explicit path, or the folder in ``UFKIT_DATA``;
2. ``../shared/data/sst2`` beside the checkout;
3. the Hugging Face Hub (``glue``, ``sst2``), when it can be reached.

Tokenisation keeps sequences unpadded; :func:`make_dataloader` pads each batch to its own longest sequence and
groups sentences of similar length into a batch (SST-2 phrases average 13 tokens: padding all to 128 would
make every step ten times dearer).
"""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from . import UfkitError, config

SPLIT_ALIASES = {
    "train": ("train",),
    "validation": ("validation", "dev", "valid", "val"),
    "test": ("test", "test_unlabeled"),
}
FILE_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json")


class DataError(UfkitError, ValueError):
    """Data that cannot be read as a text-classification task: missing files, columns, texts or labels."""


class LabelError(DataError):
    """Labels that do not fit the label set asked for: a label outside it, or a data set that declares
    another number of labels.

    Attributes:
        reason (`str`): what does not fit, without the advice on how to call the loader that the message adds.
    """

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


@dataclass
class TaskData:
    """A text-classification task.

    Attributes:
        splits (`datasets.DatasetDict`): ``train``, ``validation`` and optionally ``test``; columns ``text``
            (str) and ``label`` (int in ``[0, num_labels)``, or ``-1`` where the split has no labels).
        label_names (`list[str]`): name of each label id.
        source (`str`): where the data came from (a path or a hub name).
    """

    splits: "datasets.DatasetDict"  # noqa: F821
    label_names: list[str]
    source: str
    skipped: dict[str, list[int]] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.label_names)}

    def __getitem__(self, split: str):
        if split not in self.splits:
            raise DataError(f"split {split!r} not found; available: {', '.join(self.splits)}")
        return self.splits[split]

    def with_label_names(self, label_names: Sequence[str]) -> "TaskData":
        """This task in another numbering of the same label set, e.g. a classifier's ``config.id2label``.

        For data that declares its label set (SST-2, a hub dataset's ``ClassLabel``): the same names in another
        order are renumbered by name; other names, as many of them, keep their ids (``0``/``1`` of SST-2 are
        ``NEGATIVE``/``POSITIVE`` or ``LABEL_0``/``LABEL_1`` to a classifier). To read a file whose labels are
        a subset of a classifier's, pass ``label_names`` to :func:`load_local` or :func:`load_task` instead.

        Returns:
            a :class:`TaskData` whose ``label_names`` is ``label_names`` (``self`` when they are equal).

        Raises:
            LabelError: ``label_names`` has another number of labels than the task.
        """
        names = [str(n) for n in label_names]
        if names == self.label_names:
            return self
        if len(names) != self.num_labels:
            reason = (f"{self.source} has {self.num_labels} labels {self.label_names}, not the {len(names)} "
                      f"labels {names}")
            raise LabelError(reason)
        if sorted(names) == sorted(self.label_names):
            new_id = [names.index(n) for n in self.label_names]
            splits = self.splits.map(lambda b: {"label": [new_id[i] if i >= 0 else i for i in b["label"]]},
                                     batched=True, desc=None)
        else:
            splits = self.splits
        return TaskData(splits, names, self.source, self.skipped)


# ----------------------------------------------------------------------------------------------- reading files


def _read_table(path: Path) -> pd.DataFrame:
    """Read a TSV/CSV/JSONL file as strings; keeps each row's 1-based line number in ``__line__``."""
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv"):
        # QUOTE_NONE for TSV: GLUE's sentences contain bare quotes that are not field delimiters.
        quoting = csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL
        try:
            df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", quoting=quoting, dtype=str,
                             keep_default_na=False, na_values=[], on_bad_lines="error", engine="python")
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
            raise DataError(f"{path}: cannot parse as {suffix[1:].upper()}: {str(e).strip().splitlines()[0]}") from None
        df["__line__"] = range(2, len(df) + 2)  # line 1 is the header
        return df
    if suffix in (".jsonl", ".json"):
        rows = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {lineno} is not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}: line {lineno} is not a JSON object")
                row["__line__"] = lineno
                rows.append(row)
        return pd.DataFrame(rows)
    raise DataError(f"{path}: unsupported file type {suffix!r}; expected one of {', '.join(FILE_SUFFIXES)}")


def _find_split_files(folder: Path) -> dict[str, Path]:
    """Map split names to files in ``folder`` (``train.tsv``, ``dev.tsv`` or ``validation.csv``, ...)."""
    found = {}
    for split, names in SPLIT_ALIASES.items():
        for name in names:
            hits = [folder / f"{name}{s}" for s in FILE_SUFFIXES if (folder / f"{name}{s}").is_file()]
            if hits:
                found[split] = hits[0]
                break
    return found


def _line_list(lines: Sequence[int], limit: int = 10) -> str:
    shown = ", ".join(str(n) for n in lines[:limit])
    return shown + (f" and {len(lines) - limit} more" if len(lines) > limit else "")


def _clean_frame(df: pd.DataFrame, *, where: str, text_column: str, label_column: str | None,
                 labeled: bool) -> tuple[list[str], list, list[int], list[int]]:
    """Pull texts and raw labels; return (texts, labels, line numbers, lines with a missing text)."""
    if text_column not in df.columns:
        cols = [c for c in df.columns if c != "__line__"]
        raise DataError(f"{where}: text column {text_column!r} not found; columns are {cols} "
                        f"(choose one with text_column=... / --text-column)")
    if labeled and label_column not in df.columns:
        cols = [c for c in df.columns if c != "__line__"]
        raise DataError(f"{where}: label column {label_column!r} not found; columns are {cols} "
                        f"(choose one with label_column=... / --label-column)")
    texts = df[text_column].tolist()
    lines = df["__line__"].tolist() if "__line__" in df.columns else list(range(1, len(df) + 1))
    labels = df[label_column].tolist() if labeled else [None] * len(df)
    missing = [ln for ln, t in zip(lines, texts) if t is None or (isinstance(t, float) and pd.isna(t))
               or not str(t).strip()]
    return [("" if t is None or (isinstance(t, float) and pd.isna(t)) else str(t)) for t in texts], \
        labels, lines, missing


def _label_key(value) -> str | None:
    """Canonical string form of a raw label ('1', 1, 1.0 -> '1'); None for a missing label."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    s = str(value).strip()
    return s or None


def infer_label_names(values: Iterable) -> list[str]:
    """Sorted label names from raw labels: integers sort numerically, anything else as strings.

    Integer labels ``0..n-1`` keep their ids (``label_names[i] == str(i)``).
    """
    keys = {k for k in (_label_key(v) for v in values) if k is not None}
    if not keys:
        raise DataError("no labels found: every row's label is missing")
    if all(k.lstrip("-").isdigit() for k in keys):
        return [str(k) for k in sorted(int(k) for k in keys)]
    return sorted(keys)


def _is_integer(name: str) -> bool:
    return name.lstrip("-").isdigit()


def _quoted(values: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def _to_dataset(texts, label_ids):
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"text": texts, "label": label_ids}, features=features)


def _build_splits(frames: dict[str, tuple[str, pd.DataFrame]], *, source: str, text_column: str,
                  label_column: str, label_names: Sequence[str] | None, on_bad_rows: str) -> TaskData:
    """Turn per-split frames into a TaskData, mapping labels to ids and reporting bad rows by line.

    Given ``label_names``, a label is its position among them; when none of them is an integer (a model's
    ``LABEL_0``, ``NEGATIVE``, ...), an integer label ``k`` is the id ``k`` too.
    """
    import datasets

    if on_bad_rows not in ("raise", "skip"):
        raise DataError(f"on_bad_rows must be 'raise' or 'skip', got {on_bad_rows!r}")
    pulled = {}
    for split, (where, df) in frames.items():
        labeled = label_column in df.columns or split != "test"
        pulled[split] = (where, *_clean_frame(df, where=where, text_column=text_column,
                                              label_column=label_column, labeled=labeled), labeled)
    given = label_names is not None
    if not given:
        source_split = "train" if "train" in pulled else next(iter(pulled))
        label_names = infer_label_names(pulled[source_split][2])
    label_names = [str(n) for n in label_names]
    if len(label_names) < 2:
        raise DataError(f"a classification task needs at least 2 labels, found {label_names}")
    name_to_id = {n: i for i, n in enumerate(label_names)}
    if given and not any(_is_integer(n) for n in label_names):
        name_to_id.update({str(i): i for i in range(len(label_names))})

    out, skipped, problems = {}, {}, []
    unknown_labels = False
    for split, (where, texts, labels, lines, missing, labeled) in pulled.items():
        no_label, unknown, unknown_keys = [], [], []
        ids = []
        for ln, lab in zip(lines, labels):
            if not labeled:
                ids.append(-1)
                continue
            key = _label_key(lab)
            if key is None:
                no_label.append(ln)
                ids.append(None)
            elif key not in name_to_id:
                unknown.append(ln)
                unknown_keys.append(key)
                ids.append(None)
            else:
                ids.append(name_to_id[key])
        bad = sorted(set(missing) | set(no_label) | set(unknown))
        if missing:
            problems.append(f"{where}: missing text on line(s) {_line_list(missing)}")
        if no_label:
            problems.append(f"{where}: missing label on line(s) {_line_list(no_label)}")
        if unknown:
            unknown_labels = True
            unknown_keys = list(dict.fromkeys(unknown_keys))  # each label once, in file order
            problems.append(f"{where}: unknown label{'s' if len(unknown_keys) > 1 else ''} "
                            f"{_quoted(unknown_keys)} on line(s) {_line_list(unknown)} (known labels: {label_names})")
        if bad:
            skipped[split] = bad
            bad_set = set(bad)
            keep = [i for i, ln in enumerate(lines) if ln not in bad_set]
            texts = [texts[i] for i in keep]
            ids = [ids[i] for i in keep]
        out[split] = _to_dataset(texts, ids)
    if problems:
        message = "; ".join(problems)
        if on_bad_rows == "raise":
            advice = " (fix the rows, or pass on_bad_rows='skip' to leave them out)"
            if unknown_labels:
                raise LabelError(message + advice, reason=message)
            raise DataError(message + advice)
        warnings.warn("left out bad rows: " + message, stacklevel=3)
    return TaskData(datasets.DatasetDict(out), label_names, source, skipped)


# ------------------------------------------------------------------------------------------------ public API


def load_local(path: str | Path, *, text_column: str = "sentence", label_column: str = "label",
               label_names: Sequence[str] | None = None, validation_fraction: float = 0.1, seed: int = 0,
               on_bad_rows: str = "raise") -> TaskData:
    """Load a text-classification task from a local folder or file.

    Args:
        path: a folder with split files (``train.tsv``, ``dev.tsv``/``validation.tsv``, ``test.tsv``, or the same
            in ``.csv``/``.jsonl``), as GLUE ships SST-2; or one file, whose rows are split at random (``seed``)
            into ``train`` and ``validation``.
        text_column, label_column: the columns (JSON keys) that hold the text and the label.
        label_names: the labels in id order, e.g. a classifier's ``config.id2label`` (then the data may hold
            a subset of them, and string labels are numbered as the classifier numbers them); inferred from the
            training split when None (integers sort numerically, strings alphabetically). When none of the given
            names is an integer (``LABEL_0``, ``NEGATIVE``, ...), an integer label ``k`` in the data is id ``k``.
        validation_fraction: the share of a single file's rows that goes to ``validation``, in ``(0, 1]``;
            ``1.0`` puts every row in ``validation`` and makes no ``train`` split (a file to evaluate whole).
        on_bad_rows: ``"raise"`` (default) raises :class:`DataError` naming the line numbers of rows with a
            missing text or a missing/unknown label; ``"skip"`` leaves them out with a warning that names them.

    Returns:
        :class:`TaskData`; ``label_names`` is the given list when one was given.

    Raises:
        DataError: the path does not exist, holds no split files, lacks a column, or has bad rows.
        LabelError: (a :class:`DataError`) some labels are not among ``label_names``; the message names them
            and their lines.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"data path {str(path)!r} does not exist")
    if path.is_dir():
        files = _find_split_files(path)
        if "train" not in files and "validation" not in files:
            raise DataError(f"no split files in {path}: expected train/dev/validation/test with suffix "
                            f"{', '.join(FILE_SUFFIXES)}")
        frames = {split: (str(f), _read_table(f)) for split, f in files.items()}
    else:
        if not 0.0 < validation_fraction <= 1.0:
            raise DataError(f"validation_fraction must be in (0, 1], got {validation_fraction}")
        df = _read_table(path)
        if validation_fraction == 1.0:
            frames = {"validation": (str(path), df)}
        else:
            shuffled = df.sample(frac=1.0, random_state=seed)
            n_val = max(1, int(round(len(df) * validation_fraction)))
            frames = {"train": (str(path), shuffled.iloc[n_val:]),
                      "validation": (str(path), shuffled.iloc[:n_val])}
    return _build_splits(frames, source=str(path), text_column=text_column, label_column=label_column,
                         label_names=label_names, on_bad_rows=on_bad_rows)


def load_hub(name: str, subset: str | None = None, *, text_column: str = "sentence",
             label_column: str = "label", label_names: Sequence[str] | None = None,
             on_bad_rows: str = "raise") -> TaskData:
    """Load a text-classification dataset from the Hugging Face Hub (``load_hub("glue", "sst2")``).

    Label names come from the dataset's ``ClassLabel`` feature when it has one. Rows whose label is ``-1``
    (GLUE's unlabeled test split) are kept with label ``-1`` in a ``test`` split.

    Args:
        label_names: the labels in id order, e.g. a classifier's; a dataset with a ``ClassLabel`` is
            renumbered as :meth:`TaskData.with_label_names` says, one without is read as :func:`load_local`
            reads a file with ``label_names``.

    Raises:
        DataError: the dataset cannot be loaded (no network, unknown name) or lacks a column.
        LabelError: its labels do not fit ``label_names``.
    """
    import datasets

    try:
        dd = datasets.load_dataset(name, subset)
    except Exception as e:  # the hub raises many kinds; the user needs the cause in one line
        raise DataError(f"cannot load {name!r}{' / ' + repr(subset) if subset else ''} from the Hugging Face Hub: "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    declared = None
    first = next(iter(dd.values()))
    feat = first.features.get(label_column)
    if isinstance(feat, datasets.ClassLabel):
        declared = list(feat.names)
    frames = {}
    for split, ds in dd.items():
        key = next((k for k, names in SPLIT_ALIASES.items() if split in names), split)
        df = ds.to_pandas()
        df["__line__"] = range(1, len(df) + 1)
        if label_column in df.columns and (df[label_column] == -1).all():
            df = df.drop(columns=[label_column])
            key = "test"
        if declared is not None and label_column in df.columns:
            df[label_column] = [declared[i] if 0 <= i < len(declared) else i for i in df[label_column]]
        frames[key] = (f"hub:{name}/{subset or ''}:{split}", df)
    task = _build_splits(frames, source=f"hub:{name}" + (f"/{subset}" if subset else ""),
                         text_column=text_column, label_column=label_column,
                         label_names=declared if declared is not None else label_names, on_bad_rows=on_bad_rows)
    if declared is not None and label_names is not None:
        task = task.with_label_names(label_names)
    return task


def load_sst2(path: str | Path | None = None, *, hub: bool = True) -> TaskData:
    """Load GLUE SST-2 (binary sentiment, ``label_names == ['0', '1']``: 0 negative, 1 positive).

    Looks in ``path``, then ``UFKIT_DATA``, then ``../shared/data/sst2`` beside the checkout, then the Hub.

    Raises:
        DataError: SST-2 was found nowhere; the message lists every place looked at and how to fix it.
    """
    looked = []
    candidates = [Path(path).expanduser()] if path is not None else config.data_candidates()
    for folder in candidates:
        if (folder / "train.tsv").is_file() or (folder / "dev.tsv").is_file():
            return load_local(folder, text_column="sentence", label_column="label", label_names=["0", "1"])
        looked.append(str(folder))
    if hub and path is None:
        try:
            return load_hub("glue", "sst2")
        except DataError as e:
            looked.append(f"the Hugging Face Hub (glue/sst2): {e}")
    raise DataError("SST-2 not found. Looked in: " + "; ".join(looked) +
                    ". Fix: set UFKIT_DATA to a folder with train.tsv and dev.tsv (GLUE layout), put the data in "
                    "../shared/data/sst2 beside the checkout, or connect to the Hugging Face Hub.")


def load_task(source: str | Path | None = None, *, subset: str | None = None, text_column: str = "sentence",
              label_column: str = "label", label_names: Sequence[str] | None = None,
              validation_fraction: float = 0.1, on_bad_rows: str = "raise") -> TaskData:
    """Load any text-classification task: SST-2 when ``source`` is None, else a local path or a hub name.

    Args:
        source: None or ``"sst2"`` for the default task; an existing file or folder; otherwise a Hugging Face
            dataset name (``"imdb"``, ``"glue"`` with ``subset="sst2"``).
        subset: the hub dataset's configuration name.
        label_names: the labels in id order, e.g. those of the classifier the data is for: a local file may
            hold a subset of them (see :func:`load_local`); SST-2 and hub datasets with a ``ClassLabel`` must
            have as many (see :meth:`TaskData.with_label_names`).
        validation_fraction: for a single local file (see :func:`load_local`); ``1.0`` keeps it whole.

    Raises:
        DataError: see :func:`load_local`, :func:`load_hub` and :func:`load_sst2`.
        LabelError: the data's labels do not fit ``label_names``.
    """
    if source is None or str(source).lower() in ("sst2", "sst-2", "glue/sst2"):
        task = load_sst2()
        return task if label_names is None else task.with_label_names(label_names)
    if Path(source).expanduser().exists():
        return load_local(source, text_column=text_column, label_column=label_column, label_names=label_names,
                          validation_fraction=validation_fraction, on_bad_rows=on_bad_rows)
    if str(source).startswith((".", "/", "~")) or Path(str(source)).suffix.lower() in FILE_SUFFIXES:
        raise DataError(f"data path {str(source)!r} does not exist")
    return load_hub(str(source), subset, text_column=text_column, label_column=label_column,
                    label_names=label_names, on_bad_rows=on_bad_rows)


def subset(ds, n: int | None, seed: int = 0):
    """The first ``n`` rows of ``ds`` after a seeded shuffle (all of it when ``n`` is None or ≥ its length)."""
    if n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(n))


def word_counts(texts: Iterable[str]):
    """Whitespace-separated words per text, a ``numpy`` int array."""
    import numpy as np

    return np.fromiter((len(str(t).split()) for t in texts), dtype=np.int64)


def length_matched(ds, like: Iterable[str], n: int, seed: int = 0, bins: int = 10) -> list[int]:
    """Indices of ``n`` rows of ``ds`` drawn without replacement so that their word counts follow those of
    ``like`` (importance resampling over ``bins`` quantile bins of ``like``'s word counts).

    SST-2's training split is mostly short phrases from the treebank's parse trees (about 9 words on average),
    its dev split whole sentences (about 19): accuracy on random training rows runs several points above dev.
    Held-out rows drawn to look like the reported split make an accuracy budget kept on them an honest
    estimate of the drop there. Only the texts' lengths of ``like`` are read, never its labels.

    Args:
        ds (`datasets.Dataset`): the pool, with a ``text`` column.
        like: texts whose length distribution to follow.
        n: rows to draw, at most the pool's size.
        bins: quantile bins of ``like``'s word counts.

    Returns:
        ``n`` distinct row indices of ``ds``.

    Raises:
        DataError: ``n`` larger than the pool, or ``like`` empty.
    """
    import numpy as np

    ref = word_counts(like)
    if ref.size == 0:
        raise DataError("length_matched: `like` holds no texts to match")
    if not 0 <= n <= len(ds):
        raise DataError(f"length_matched: n must be in [0, {len(ds)}] (the pool's rows), got {n}")
    pool = word_counts(ds["text"])
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    ref_bin, pool_bin = np.searchsorted(edges, ref, side="right"), np.searchsorted(edges, pool, side="right")
    k = len(edges) + 1
    want = np.bincount(ref_bin, minlength=k) / ref.size
    have = np.bincount(pool_bin, minlength=k).astype(float)
    weight = want[pool_bin] / have[pool_bin]  # every pool row's bin holds at least that row
    if (weight > 0).sum() < n:  # too few rows in the reference's bins: fill from the rest, uniformly
        weight = weight + (weight == 0) * (weight[weight > 0].min() * 1e-3 if (weight > 0).any() else 1.0)
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(len(ds), size=n, replace=False, p=weight / weight.sum()).tolist())


def holdout(ds, n_heldout: int, n_calibration: int = 0, n_train: int | None = None, *, seed: int = 0,
            like: Iterable[str] | None = None):
    """Split a labeled training split into ``(train, heldout, calibration)``, disjoint.

    ``heldout`` (where an accuracy budget is kept) and ``calibration`` (where a step calibrates, e.g. an exit
    speed) are drawn first: at random, or to follow the word counts of ``like`` (:func:`length_matched`; pass
    the texts of the split the results are reported on). ``train`` is a seeded subset of ``n_train`` of the rest
    (all of it when None).

    Raises:
        DataError: an unlabeled row, or fewer rows than ``n_heldout + n_calibration + 1``.
    """
    import numpy as np

    labels = np.asarray(ds["label"])
    if len(labels) == 0 or (labels < 0).any():
        raise LabelError("holdout: the split has unlabeled rows; held-out accuracy needs labels")
    need = n_heldout + n_calibration
    if len(ds) < need + 1:
        raise DataError(f"holdout: the split has {len(ds)} rows, fewer than the {need} held out (n_heldout "
                        f"{n_heldout} + n_calibration {n_calibration}) plus one to train on")
    if like is None:
        order = np.random.default_rng(seed).permutation(len(ds))
        held = order[:need]
    else:
        held = np.random.default_rng(seed).permutation(length_matched(ds, like, need, seed=seed))
    taken = np.zeros(len(ds), dtype=bool)
    taken[held] = True
    rest = np.random.default_rng(seed + 1).permutation(np.flatnonzero(~taken))
    if n_train is not None:
        rest = rest[:n_train]
    return (ds.select(rest.tolist()), ds.select(held[:n_heldout].tolist()),
            ds.select(held[n_heldout:].tolist()))


# ------------------------------------------------------------------------------------------------ tokenising


def tokenize(ds, tokenizer, max_length: int = 128):
    """Tokenise a split without padding; adds ``input_ids``, ``attention_mask`` (and ``token_type_ids``).

    Args:
        ds (`datasets.Dataset`): columns ``text`` and ``label``.
        max_length: longer texts are truncated to this many tokens.
    """
    if max_length < 2:
        raise DataError(f"max_length must be at least 2, got {max_length}")
    return ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=max_length),
                  batched=True, desc=None)


class LengthBucketBatchSampler:
    """Batches of indices whose sequences have similar lengths, in a seeded random order.

    Indices are shuffled, cut into chunks of ``batch_size * bucket_batches``, sorted by length inside each
    chunk and cut into batches; the batches are then shuffled. Order is fixed by ``seed`` and the epoch
    (:meth:`set_epoch`), so distributed processes agree.

    Args:
        lengths: sequence length of each example.
        batch_size: examples per batch (the last batch may be smaller unless ``drop_last``).
        shuffle: False keeps a deterministic length-sorted order (evaluation).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 bucket_batches: int = 50, drop_last: bool = False):
        if batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.bucket_batches, self.drop_last, self.epoch = bucket_batches, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        import random

        n = len(self.lengths)
        if not self.shuffle:
            order = sorted(range(n), key=lambda i: self.lengths[i])
            return [order[i:i + self.batch_size] for i in range(0, n, self.batch_size)]
        rng = random.Random(self.seed + self.epoch)
        order = list(range(n))
        rng.shuffle(order)
        chunk = self.batch_size * self.bucket_batches
        batches = []
        for start in range(0, n, chunk):
            part = sorted(order[start:start + chunk], key=lambda i: self.lengths[i])
            batches += [part[i:i + self.batch_size] for i in range(0, len(part), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        rng.shuffle(batches)
        return batches

    def __iter__(self):
        return iter(self._batches())

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def make_dataloader(tokenized, tokenizer, batch_size: int = 32, *, shuffle: bool = False, seed: int = 0,
                    extra_columns: Sequence[str] = ()):
    """A DataLoader of dynamically padded, length-bucketed batches.

    Args:
        tokenized (`datasets.Dataset`): output of :func:`tokenize`.
        shuffle: True for training (random bucketed order), False for evaluation (sorted by length; use
            ``loader.batch_sampler`` to map rows back, or :func:`ufkit.evaluate.predict_logits`, which does).
        extra_columns: further columns of one number per row to pass through, each a tensor of shape
            ``(batch_size,)`` under its own name (e.g. a row index that finds precomputed teacher logits).

    Returns:
        `torch.utils.data.DataLoader` yielding dicts of ``input_ids``, ``attention_mask``,
        (``token_type_ids``) of shape ``(batch_size, longest_in_batch)``, ``labels`` of shape ``(batch_size,)``
        and the ``extra_columns``.

    Raises:
        DataError: a bad ``batch_size``, or an extra column that ``tokenized`` lacks.
    """
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding

    if not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    missing = [c for c in extra_columns if c not in tokenized.column_names]
    if missing:
        raise DataError(f"extra_columns {missing} not found; columns are {tokenized.column_names}")
    keep = [c for c in ("input_ids", "attention_mask", "token_type_ids", "label") if c in tokenized.column_names]
    keep += [c for c in extra_columns if c not in keep]
    ds = tokenized.select_columns(keep).with_format("python")
    lengths = [len(x) for x in ds["input_ids"]]
    sampler = LengthBucketBatchSampler(lengths, batch_size, shuffle=shuffle, seed=seed)
    return DataLoader(ds, batch_sampler=sampler, collate_fn=DataCollatorWithPadding(tokenizer))
