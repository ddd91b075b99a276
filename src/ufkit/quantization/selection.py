"""Pick the variant to deploy on this machine: the fastest whose accuracy drop against fp32 stays within a budget.

:func:`select_variant` evaluates every variant of a :func:`~ufkit.quantization.variants.quantize` folder on
labeled sentences (:func:`~ufkit.quantization.variants.evaluate_variants`), times them on this machine at one
batch size (:func:`~ufkit.quantization.variants.benchmark_variants`, same threads for every backend), keeps those
whose accuracy drop against ``pytorch_fp32`` is at most the budget, and picks the one with the lowest median
latency (``objective="latency"``, batch 1 by default) or the highest throughput (``"throughput"``, batch 32). It
writes ``selection.json`` into the folder: the choice, why, and the whole table it came from, skipped variants
(and their reasons) included.

The labeled sentences should be the ones ``quantize`` keeps ``onnx_int8_auto``'s budget on (``ufkit quantize``'s
``--validation-split``): a held-out slice of the training data keeps the dev split for the final report.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..cache import json_default
from .common import VARIANTS, QuantizeError
from .variants import benchmark_variants, evaluate_variants, read_report

#: The file :func:`select_variant` writes into the variants folder.
SELECTION_FILE = "selection.json"
#: objective -> (default batch size, benchmark column, True when larger is better).
OBJECTIVES: dict[str, tuple[int, str, bool]] = {"latency": (1, "latency_ms_p50", False),
                                                 "throughput": (32, "throughput_seq_per_s", True)}


def check_selection(budget: float, objective: str) -> None:
    """Check :func:`select_variant`'s settings.

    Raises:
        QuantizeError: ``budget`` is not a positive number of accuracy points, or ``objective`` is not one of
            :data:`OBJECTIVES`.
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0 or budget != budget:
        raise QuantizeError(f"budget must be a positive number of accuracy points, got {budget!r}")
    if objective not in OBJECTIVES:
        raise QuantizeError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None or value != value else format(value, spec)


def select_variant(folder: str | os.PathLike, dataset, texts: Sequence[str] | None = None, *, budget: float = 1.0,
                   objective: str = "latency", batch_size: int | None = None,
                   variants: Sequence[str] | None = None, threads: int | None = None, n_warmup: int = 10,
                   n_iters: int = 50, max_seconds: float | None = 20.0, force: bool | Iterable[str] | None = None,
                   write: bool = True, progress: bool = True) -> dict:
    """The fastest variant on this machine whose accuracy drop against ``pytorch_fp32`` is within ``budget``.

    Args:
        folder: a :func:`~ufkit.quantization.variants.quantize` output folder.
        dataset (`datasets.Dataset`): labeled sentences (``text``, ``label``) for the accuracy drop.
        texts: sentences to time on (default: ``dataset``'s).
        budget: the largest accuracy drop allowed, in percentage points (> 0).
        objective: ``"latency"`` (lowest median latency, ms per call) or ``"throughput"`` (most sequences/s).
        batch_size: the batch size timed (default 1 for latency, 32 for throughput).
        variants: the variants to consider (default: every one in ``folder``).
        threads: the thread count every backend runs on (default :func:`ufkit.config.bench_threads`).
        n_warmup, n_iters, max_seconds: the timing settings of
            :func:`~ufkit.quantization.variants.benchmark_variants`.
        force: True, or names of variants to run even where this CPU lacks what makes them fast.
        write: write ``selection.json`` into ``folder``.

    Returns:
        ``{"choice", "description", "objective", "metric", "batch_size", "budget", "why" (one sentence),
        "threads", "n_sentences", "reference", "created", "table"}``; ``table`` has one record per variant:
        ``variant``, ``description``, ``latency_ms_mean``, ``latency_ms_p50``, ``throughput_seq_per_s``,
        ``accuracy`` (percent), ``accuracy_drop`` (points), ``agreement`` (percent), ``within_budget``,
        ``skipped`` (None or the reason: this machine, a missing package, or ``quantize`` did not make it).

    Raises:
        QuantizeError: a bad budget or objective, a folder without variants, or no variant within the budget.
    """
    from .. import config

    check_selection(budget, objective)
    threads = config.bench_threads() if threads is None else int(threads)
    default_batch, metric, larger_better = OBJECTIVES[objective]
    batch_size = default_batch if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise QuantizeError(f"batch_size must be a positive integer, got {batch_size}")
    folder = Path(folder)
    texts = list(dataset["text"]) if texts is None else list(texts)
    acc = evaluate_variants(folder, dataset, variants=variants, threads=threads, force=force, progress=progress)
    bench = benchmark_variants(folder, texts, batch_sizes=[batch_size], variants=variants, threads=threads,
                               n_warmup=n_warmup, n_iters=n_iters, max_seconds=max_seconds, force=force,
                               progress=progress).set_index("variant")
    def reason_of(value):
        return value if isinstance(value, str) else None

    ran = [n for n in acc.index if reason_of(acc.loc[n, "skipped"]) is None]
    reference = "pytorch_fp32" if "pytorch_fp32" in ran else ran[0]  # evaluate_variants's reference
    rows = []
    for name in acc.index:
        b = bench.loc[name] if name in bench.index else pd.Series(dtype=object)
        reason = reason_of(acc.loc[name, "skipped"]) or reason_of(b.get("skipped"))
        drop = acc.loc[name, "accuracy_drop"]
        rows.append({"variant": name, "description": VARIANTS.get(name, name),
                     "latency_ms_mean": b.get("latency_ms_mean"), "latency_ms_p50": b.get("latency_ms_p50"),
                     "throughput_seq_per_s": b.get("throughput_seq_per_s"), "size_mb": b.get("size_mb"),
                     "compile_s": b.get("compile_s"),
                     "accuracy": acc.loc[name, "accuracy"], "accuracy_drop": drop,
                     "agreement": acc.loc[name, "agreement"],
                     "within_budget": bool(reason is None and drop == drop and drop <= budget + 1e-9),
                     "skipped": reason})
    listed = {r["variant"] for r in rows}
    for entry in read_report(folder).get("variants", []):  # variants quantize did not make, with its reason
        if entry.get("status") == "skipped" and entry["variant"] not in listed and \
                (variants is None or entry["variant"] in variants):
            rows.append({"variant": entry["variant"], "description": VARIANTS.get(entry["variant"]),
                         "within_budget": False, "skipped": f"not made by quantize: {entry.get('reason')}"})
    table = pd.DataFrame(rows)
    table = table.astype({c: float for c in ("latency_ms_mean", "latency_ms_p50", "throughput_seq_per_s",
                                             "size_mb", "compile_s", "accuracy", "accuracy_drop", "agreement")
                          if c in table})
    candidates = table[table["within_budget"] & table[metric].notna()]
    if candidates.empty:
        raise QuantizeError(f"no variant in {str(folder)!r} is within the budget of {budget:g} accuracy points")
    best = candidates.loc[candidates[metric].idxmax() if larger_better else candidates[metric].idxmin()]
    ref_row = table.set_index("variant").loc[reference]
    unit = "ms (median)" if objective == "latency" else "sequences/s"
    speedup = (ref_row[metric] / best[metric]) if objective == "latency" else (best[metric] / ref_row[metric])
    faster = table[~table["within_budget"] & table[metric].notna() & table["skipped"].isna()]
    faster = faster[faster[metric] > best[metric]] if larger_better else faster[faster[metric] < best[metric]]
    why = (f"{best['variant']} is the {'fastest' if objective == 'latency' else 'highest-throughput'} variant "
           f"within {budget:g} accuracy point(s) of {reference} at batch {batch_size} on {threads} thread(s): "
           f"{_fmt(best[metric], '.2f')} {unit}, {_fmt(speedup, '.2f')}x {reference}'s "
           f"{_fmt(ref_row[metric], '.2f')}, accuracy drop {_fmt(best['accuracy_drop'], '.2f')} points on "
           f"{len(dataset)} sentences")
    if len(faster):
        why += "; faster but over budget: " + ", ".join(
            f"{r.variant} (drop {_fmt(r.accuracy_drop, '.2f')})" for r in faster.itertuples())
    n_skipped = int(table["skipped"].notna().sum())
    if n_skipped:
        why += f"; {n_skipped} skipped (see table)"
    from ..measure.machine import machine_info

    selection = {"choice": best["variant"], "description": best["description"], "objective": objective,
                 "metric": metric, "batch_size": batch_size, "budget": budget, "why": why,
                 "threads": threads, "n_sentences": len(dataset), "reference": reference,
                 "machine": machine_info(threads), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "table": [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
                           for r in table.to_dict("records")]}
    if write:
        tmp = folder / f".{SELECTION_FILE}.tmp"
        tmp.write_text(json.dumps(selection, indent=2, default=json_default))
        os.replace(tmp, folder / SELECTION_FILE)
    return selection

