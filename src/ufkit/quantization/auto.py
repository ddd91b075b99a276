"""The safety net against int8 accuracy collapse: per-node sensitivity and an fp32 fallback within a budget.

:func:`sensitivity` quantizes one node at a time and measures the accuracy drop; :func:`auto_quantize` keeps the
most sensitive nodes in fp32 until the drop on a validation split is within a budget. anuk909/fast-bert reported
int8 accuracy collapse on some models; this is its cure, measured in chapter 5.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from .common import QuantizeError
from .onnx import OnnxClassifier, quantizable_nodes, quantize_onnx_dynamic



def _tokenized(dataset, tokenizer):
    from ..data import tokenize

    return dataset if "input_ids" in dataset.column_names else tokenize(dataset, tokenizer)


def _logits(clf, tokenized, tokenizer, batch_size: int = 32) -> np.ndarray:
    from ..evaluate import predict_logits

    return predict_logits(clf, tokenized, tokenizer, batch_size)


def sensitivity(optimized: str | os.PathLike, tokenizer, dataset, *, per_channel: bool = False,
                threads: int | None = None, work_dir: str | os.PathLike | None = None, progress: bool = True
                ) -> pd.DataFrame:
    """Per-layer quantization sensitivity: quantize one node at a time, everything else fp32.

    For every node of :func:`quantizable_nodes` the graph is dynamically quantized with only that node in int8 and
    run over ``dataset``; the result is compared with the fp32 graph.

    Args:
        optimized: the fp32 ``.onnx`` (normally ``onnx_optimized``).
        dataset (`datasets.Dataset`): labeled sentences (``text``, ``label``) or already tokenised.

    Returns:
        DataFrame, one row per node, sorted most sensitive first: ``node``, ``op_type``, ``layer``, ``accuracy``
        (percent), ``accuracy_drop`` (points, fp32 minus int8-node), ``agreement`` (percent of predictions equal to
        fp32's), ``logit_mae`` and ``logit_max_err`` (absolute logit error), ``rank``.
    """
    from ..progress import progress_bar

    tokenized = _tokenized(dataset, tokenizer)
    labels = np.asarray(tokenized["label"])
    base = _logits(OnnxClassifier(optimized, threads), tokenized, tokenizer)
    base_acc = 100.0 * (base.argmax(-1) == labels).mean()
    nodes = quantizable_nodes(optimized)
    rows = []
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        for _, node in progress_bar(list(nodes.iterrows()), desc="sensitivity", disable=not progress):
            dst = Path(tmp) / "one.onnx"
            quantize_onnx_dynamic(optimized, dst, per_channel=per_channel, nodes_to_quantize=[node["node"]])
            got = _logits(OnnxClassifier(dst, threads), tokenized, tokenizer)
            acc = 100.0 * (got.argmax(-1) == labels).mean()
            rows.append({**node.to_dict(), "accuracy": acc, "accuracy_drop": base_acc - acc,
                         "agreement": 100.0 * (got.argmax(-1) == base.argmax(-1)).mean(),
                         "logit_mae": float(np.abs(got - base).mean()),
                         "logit_max_err": float(np.abs(got - base).max())})
    df = pd.DataFrame(rows).sort_values(["accuracy_drop", "logit_mae"], ascending=False).reset_index(drop=True)
    df["rank"] = np.arange(1, len(df) + 1)
    df.attrs["fp32_accuracy"] = base_acc
    return df


def auto_quantize(optimized: str | os.PathLike, dst: str | os.PathLike, tokenizer, dataset, *,
                  budget: float = 1.0, per_channel: bool = False, sensitivity_df: pd.DataFrame | None = None,
                  threads: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Dynamic int8 with an fp32 fallback: keep the most sensitive nodes in fp32 until the accuracy drop fits.

    Starting from every node in int8, the nodes are returned to fp32 one at a time in order of
    :func:`sensitivity` (most sensitive first) until the accuracy on ``dataset`` is at most ``budget`` points
    below the fp32 graph's. The last model tried is written to ``dst``.

    Args:
        budget: the largest accuracy drop allowed, in percentage points (default 1.0).
        sensitivity_df: a :func:`sensitivity` result to reuse (computed if None).

    Returns:
        the search as a DataFrame, one row per attempt: ``n_fp32`` (nodes kept in fp32), ``kept_fp32`` (their
        readable names, most sensitive first), ``accuracy``, ``accuracy_drop``, ``agreement``, ``within_budget``.
        ``attrs`` holds ``fp32_accuracy``, ``budget``, ``chosen`` (the row written) and the sensitivity table.

    Raises:
        QuantizeError: a negative budget.
    """
    from ..progress import progress_bar

    if budget < 0:
        raise QuantizeError(f"budget must be a non-negative number of accuracy points, got {budget}")
    tokenized = _tokenized(dataset, tokenizer)
    labels = np.asarray(tokenized["label"])
    if sensitivity_df is None:
        sensitivity_df = sensitivity(optimized, tokenizer, tokenized, per_channel=per_channel, threads=threads,
                                     progress=progress)
    base = _logits(OnnxClassifier(optimized, threads), tokenized, tokenizer)
    base_acc = 100.0 * (base.argmax(-1) == labels).mean()
    order = list(sensitivity_df["node"])
    names = dict(zip(sensitivity_df["node"], sensitivity_df["layer"]))
    rows = []
    dst = Path(dst)
    bar = progress_bar(total=len(order) + 1, desc="fp32 fallback", disable=not progress)
    for k in range(len(order) + 1):
        keep = order[:k]
        quantize_onnx_dynamic(optimized, dst, per_channel=per_channel, nodes_to_exclude=keep)
        got = _logits(OnnxClassifier(dst, threads), tokenized, tokenizer)
        acc = 100.0 * (got.argmax(-1) == labels).mean()
        rows.append({"n_fp32": k, "kept_fp32": [names[n] for n in keep], "accuracy": acc,
                     "accuracy_drop": base_acc - acc,
                     "agreement": 100.0 * (got.argmax(-1) == base.argmax(-1)).mean(),
                     "within_budget": bool(base_acc - acc <= budget + 1e-9)})
        bar.update()
        if rows[-1]["within_budget"]:
            break
    bar.close()
    report = pd.DataFrame(rows)
    report.attrs.update(fp32_accuracy=base_acc, budget=budget, chosen=int(report.index[-1]),
                        sensitivity=sensitivity_df)
    return report


