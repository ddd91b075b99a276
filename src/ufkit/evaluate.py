"""Classification metrics on a dataset split: accuracy, precision, recall, F1 (macro and weighted).

Metrics come from scikit-learn; this module runs the model over a split in length-sorted batches and puts
the numbers into a pandas row, so that results from many models stack into one table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import UfkitError


def predict_logits(model, tokenized, tokenizer, batch_size: int = 64):
    """Logits for every row of a tokenised split, in the split's row order.

    Args:
        model: a sequence classifier, or any callable taking the batch's tensors as keyword arguments and
            returning an object with ``.logits`` or a tensor/array of logits.
        tokenized (`datasets.Dataset`): output of :func:`ufkit.data.tokenize`.

    Returns:
        `numpy.ndarray` of shape ``(n_rows, num_labels)``, float32.
    """
    import torch

    from .data import make_dataloader

    if len(tokenized) == 0:
        raise UfkitError("cannot predict on an empty split")
    loader = make_dataloader(tokenized, tokenizer, batch_size, shuffle=False)
    order = [i for batch in loader.batch_sampler for i in batch]
    chunks = []
    with torch.inference_mode():
        for batch in loader:
            batch.pop("labels", None)
            out = model(**batch)
            logits = out.logits if hasattr(out, "logits") else out
            chunks.append(np.asarray(logits.float() if hasattr(logits, "float") else logits, dtype=np.float32))
    logits = np.concatenate(chunks)
    result = np.empty_like(logits)
    result[np.asarray(order)] = logits
    return result


def compute_metrics(labels, predictions, num_labels: int | None = None) -> dict[str, float]:
    """Accuracy, precision/recall/F1 (macro and weighted) in percent.

    Args:
        labels, predictions: integer label ids of shape ``(n,)``.
        num_labels: the label set is ``range(num_labels)`` (default: the labels present).

    Raises:
        UfkitError: the two arrays differ in length or are empty.
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape or labels.ndim != 1:
        raise UfkitError(f"labels and predictions must be 1-D of the same length, got {labels.shape} and "
                         f"{predictions.shape}")
    if len(labels) == 0:
        raise UfkitError("cannot compute metrics on zero examples")
    ids = list(range(num_labels)) if num_labels else sorted(set(labels.tolist()) | set(predictions.tolist()))
    out = {"n": int(len(labels)), "accuracy": 100.0 * accuracy_score(labels, predictions)}
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(labels, predictions, labels=ids, average=avg, zero_division=0)
        out.update({f"precision_{avg}": 100.0 * p, f"recall_{avg}": 100.0 * r, f"f1_{avg}": 100.0 * f})
    return out


def evaluate(model, tokenizer, dataset, *, batch_size: int = 64, name: str = "model",
             max_length: int = 128) -> pd.Series:
    """Evaluate a classifier on a split; return one pandas row.

    Args:
        dataset (`datasets.Dataset`): columns ``text`` and ``label`` (raw), or already tokenised.
        name: the row's name (``Series.name``), e.g. the model variant.

    Returns:
        `pandas.Series` with ``n``, ``accuracy``, ``precision_macro``, ``recall_macro``, ``f1_macro``,
        ``precision_weighted``, ``recall_weighted``, ``f1_weighted`` (percent).

    Raises:
        UfkitError: the split has no labels (``-1``) or is empty.
    """
    from .data import tokenize

    tokenized = dataset if "input_ids" in dataset.column_names else tokenize(dataset, tokenizer, max_length)
    labels = np.asarray(tokenized["label"])
    if len(labels) and (labels < 0).any():
        raise UfkitError("the split has unlabeled rows (label -1); evaluate on a labeled split such as 'validation'")
    logits = predict_logits(model, tokenized, tokenizer, batch_size)
    num_labels = logits.shape[1]
    return pd.Series(compute_metrics(labels, logits.argmax(-1), num_labels), name=name)


def confusion_matrix(labels, predictions, label_names: list[str]) -> pd.DataFrame:
    """Confusion matrix as a DataFrame: rows are true labels, columns predicted labels (counts)."""
    from sklearn.metrics import confusion_matrix as sk_confusion

    ids = list(range(len(label_names)))
    m = sk_confusion(np.asarray(labels), np.asarray(predictions), labels=ids)
    return pd.DataFrame(m, index=pd.Index(label_names, name="true"), columns=pd.Index(label_names, name="predicted"))
