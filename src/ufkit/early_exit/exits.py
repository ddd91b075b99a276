"""Exit rules applied to every branch's logits at once: simulate exits, accuracy/FLOPs curves, speed calibration.

One pass of :meth:`~ufkit.early_exit.model.EarlyExitModel.predict_all_layers` gives every branch's logits; the
functions here apply the entropy (FastBERT), patience (PABEE) and truncation rules to them, so a fine grid of
settings costs no more than a coarse one.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .branches import EarlyExitError, _check_patience, _check_speed, normalized_entropy
from .model import EarlyExitModel


def simulate_exits(all_logits: np.ndarray, *, speed: float = 0.0, patience: int | None = None,
                   top_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The exit rule of :meth:`EarlyExitModel.forward` applied to precomputed logits of every branch.

    Args:
        all_logits: float array of shape ``(num_hidden_layers, n, num_labels)`` (:meth:`~ufkit.early_exit.model.EarlyExitModel.predict_all_layers`).
        speed, patience, top_k: as in :meth:`EarlyExitModel.forward`.

    Returns:
        ``(labels, exit_layer)``: int arrays of shape ``(n,)``; ``exit_layer`` is 1-based.

    Raises:
        EarlyExitError: bad ``speed``, ``patience`` or ``top_k``.
    """
    speed = _check_speed(speed)
    n_layers = all_logits.shape[0]
    patience = _check_patience(patience)
    logits = torch.as_tensor(all_logits)
    n = logits.shape[1]
    exit_layer = np.full(n, n_layers, dtype=np.int64)
    undecided = np.ones(n, dtype=bool)
    streak = np.zeros(n, dtype=np.int64)
    last = np.full(n, -1, dtype=np.int64)
    if speed > 0 or patience is not None:
        for i in range(n_layers - 1):
            done = np.zeros(n, dtype=bool)
            if speed > 0:
                done |= (normalized_entropy(logits[i], top_k) < speed).numpy()
            if patience is not None:
                pred = logits[i].argmax(-1).numpy()
                streak = np.where(pred == last, streak + 1, 0)
                last = pred
                done |= streak >= patience
            newly = done & undecided
            exit_layer[newly] = i + 1
            undecided &= ~done
    labels = all_logits[exit_layer - 1, np.arange(n)].argmax(-1)
    return labels, exit_layer


def exit_curves(model: "EarlyExitModel", all_logits: np.ndarray, n_tokens, labels, *,
                speeds: Sequence[float] = tuple(np.round(np.linspace(0, 1, 51), 2)),
                patiences: Sequence[int] = (1, 2, 3, 4), top_k: int | None = None):
    """Accuracy and FLOPs of three exit rules from one pass of every branch's logits.

    Rules: ``entropy`` (FastBERT, one row per speed), ``patience`` (PABEE, one row per patience) and ``truncate``
    (keep the first ``k`` layers and always answer with branch ``k``: the same classifiers without adaptivity).

    Args:
        all_logits, n_tokens: from :meth:`EarlyExitModel.predict_all_layers`.
        labels: int array ``(n,)``.

    Returns:
        `pandas.DataFrame` with ``rule``, ``setting`` (speed, patience or k), ``accuracy`` (%), ``flops`` (mean per
        sample), ``flops_speedup`` (against the full model, no students) and ``mean_exit_layer``.
    """
    import pandas as pd

    y = np.asarray(labels)
    n_layers = model.num_hidden_layers
    full = model.analytic_flops(n_tokens, np.full(len(y), n_layers), students=False).mean()
    rows = []

    def add(rule, setting, pred, exits, flops):
        rows.append({"rule": rule, "setting": setting, "accuracy": 100.0 * np.mean(pred == y), "flops": flops,
                     "flops_speedup": full / flops, "mean_exit_layer": float(np.mean(exits))})

    for s in speeds:
        pred, ex = simulate_exits(all_logits, speed=s, top_k=top_k)
        add("entropy", float(s), pred, ex, model.analytic_flops(n_tokens, ex, students=s > 0).mean())
    for t in patiences:
        pred, ex = simulate_exits(all_logits, patience=t)
        add("patience", int(t), pred, ex, model.analytic_flops(n_tokens, ex).mean())
    n = np.asarray(n_tokens)
    for k in range(1, n_layers + 1):
        flops = k * model.layer_flops(n) + model.branch_flops(n, teacher=k == n_layers)
        add("truncate", k, all_logits[k - 1].argmax(-1), np.full(len(y), k), flops.mean())
    return pd.DataFrame(rows)


def calibrate_speed(model: EarlyExitModel, data, labels=None, *, budget: float = 1.0,
                    speeds: Sequence[float] | None = None, patience: int | None = None, top_k: int | None = None,
                    tokenizer=None, batch_size: int = 64):
    """The largest speed whose accuracy drop on held-out data is at most ``budget`` points.

    One pass computes every branch's logits (:meth:`EarlyExitModel.predict_all_layers`); each speed's exits are
    then simulated (:func:`simulate_exits`), so a fine grid costs no more than a coarse one. The reference is the
    full model's accuracy (speed 0) on the same data. Accuracy need not fall monotonically with speed; the speed
    returned is the largest on the grid that meets the budget, and the table shows the whole curve.

    Args:
        data: held-out texts (not the ones reported on), as a list or a `datasets.Dataset` with ``text``/``label``.
        labels: their labels when ``data`` is a list.
        budget: allowed accuracy drop in percentage points (≥ 0).
        speeds: grid to search (default ``0, 0.01, ..., 1``).

    Returns:
        ``(speed, table)``: the chosen speed and a `pandas.DataFrame` with ``speed``, ``accuracy``, ``drop``,
        ``mean_exit_layer``, ``flops`` (mean per sample) and ``flops_speedup``.

    Raises:
        EarlyExitError: a negative budget, missing labels, or a speed outside ``[0, 1]`` in the grid.
    """
    import pandas as pd

    if not budget >= 0:
        raise EarlyExitError(f"budget must be a non-negative number of accuracy points, got {budget}")
    grid = np.round(np.linspace(0, 1, 101), 4) if speeds is None else np.asarray(list(speeds), dtype=float)
    for s in grid:
        _check_speed(s)
    ds = EarlyExitModel._as_dataset(data, labels)
    y = np.asarray(ds["label"])
    if len(y) == 0 or (y < 0).any():
        raise EarlyExitError("calibrate_speed needs labeled held-out data (found no rows or label -1)")
    all_logits, n_tok = model.predict_all_layers(ds, tokenizer, batch_size=batch_size)
    full = all_logits[-1].argmax(-1)
    ref_acc = 100.0 * np.mean(full == y)
    ref_flops = model.analytic_flops(n_tok, np.full(len(y), model.num_hidden_layers), students=False).mean()
    rows = []
    for s in sorted(set(grid.tolist()) | {0.0}):
        pred, ex = simulate_exits(all_logits, speed=s, patience=patience, top_k=top_k)
        students = s > 0 or patience is not None
        fl = model.analytic_flops(n_tok, ex, students=students).mean()
        acc = 100.0 * np.mean(pred == y)
        rows.append({"speed": s, "accuracy": acc, "drop": ref_acc - acc, "mean_exit_layer": ex.mean(),
                     "flops": fl, "flops_speedup": ref_flops / fl})
    table = pd.DataFrame(rows)
    ok = table[table["drop"] <= budget + 1e-9]
    return float(ok["speed"].max()), table


