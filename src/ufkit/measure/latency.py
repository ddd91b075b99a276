"""Latency of models on real sentences: :func:`benchmark` (a pool of batches) and :func:`measure_latency`
(every sentence of a split, for models whose cost depends on the input).

Both time through :func:`ufkit.measure.timing.time_calls` (thread count, warm-up, interleaving, the busy-machine
check) and return rows of one schema: ``name``, ``batch_size``, ``seq_len``, ``latency_ms_mean``,
``latency_ms_std``, ``latency_ms_p50``, ``latency_ms_p95``, ``latency_ms_min``, ``n_calls``,
``throughput_seq_per_s``, ``size_mb``, the load columns (``busy``, ``other_cores``, ``attempts``) and the machine
columns (:func:`ufkit.measure.machine.machine_info`, with ``machine_id``). Given a ``table``, rows are appended to
the results store (:class:`ufkit.measure.store.ResultsStore`).
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .. import UfkitError
from .inputs import make_batches, model_size_mb, sample_texts
from .machine import machine_info
from .store import ResultsStore
from .timing import summarize, time_calls


class _PeakRSS:
    """Samples the process's resident set size in a background thread; ``peak_mb`` is the rise above start."""

    def __init__(self, interval_s: float = 0.002):
        import psutil

        self._proc, self._interval = psutil.Process(), interval_s
        self._stop = threading.Event()
        self.start_rss = self.peak_rss = self._proc.memory_info().rss

    def _run(self):
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return (self.peak_rss - self.start_rss) / 1e6


def as_callable(model) -> Callable[[dict], object]:
    """A callable taking a batch dict: ``model(**batch)`` for a torch module (put in eval mode), else ``model``.

    Raises:
        UfkitError: ``model`` is neither a module nor callable.
    """
    import torch

    if isinstance(model, torch.nn.Module):
        model.eval()
        return lambda batch: model(**batch)
    if callable(model):
        return model
    raise UfkitError(f"model must be a torch.nn.Module or a callable taking a batch dict, got {type(model).__name__}")


def _threads(threads):
    from .. import config

    threads = config.bench_threads() if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise UfkitError(f"threads must be a positive integer, got {threads!r}")
    return int(threads)


def _store_rows(df: pd.DataFrame, table: str | None, store: ResultsStore | None) -> pd.DataFrame:
    if table is not None:
        (store or ResultsStore()).append(table, df)
    return df


def benchmark(model, tokenizer, texts: Sequence[str] | None = None, *, name: str = "model",
              batch_size: int = 1, seq_len: int | None = None, n_warmup: int = 10, n_iters: int = 50,
              threads: int | None = None, size_mb: float | None = None, table: str | None = None,
              store: ResultsStore | None = None, extra: dict | None = None) -> pd.DataFrame:
    """Time a model's forward pass on real sentences; return one result row (and append it to ``table``).

    The timed calls cycle through a pool of up to 8 batches drawn from ``texts`` (:func:`make_batches`).

    Args:
        model: a ``torch.nn.Module`` called as ``model(**batch)`` under ``torch.inference_mode``, or any callable
            taking the batch dict (an ONNX Runtime session wrapper, say).
        tokenizer: builds the inputs.
        texts: real sentences (default: 512 SST-2 validation sentences).
        batch_size: sequences per call.
        seq_len: tokens per sequence (None: natural lengths, padded per batch).
        n_warmup, n_iters: untimed and timed calls.
        threads: torch intra-op threads for the run (default :func:`ufkit.config.bench_threads`); restored after.
        size_mb: the model's size when it is not a torch module (e.g. an ONNX file's size).
        table: results-store table to append the row to (None: do not store); ``store`` picks the store.
        extra: more columns for the row (variant names, settings, ``model_id``).

    Returns:
        one-row `pandas.DataFrame` with the module docstring's columns, plus ``n_warmup``, ``peak_mem_mb``
        (rise of the process's resident memory during the first call: activations and workspace) and
        ``peak_rss_mb`` (the process's resident memory at that peak, model and libraries included).

    Raises:
        UfkitError: non-positive ``batch_size``, ``n_iters`` or ``threads``.
    """
    import torch

    if not isinstance(n_iters, int) or n_iters < 1:
        raise UfkitError(f"n_iters must be a positive integer, got {n_iters!r}")
    if not isinstance(n_warmup, int) or n_warmup < 0:
        raise UfkitError(f"n_warmup must be a non-negative integer, got {n_warmup!r}")
    threads = _threads(threads)
    texts = sample_texts() if texts is None else list(texts)
    batches = make_batches(tokenizer, texts, batch_size, seq_len, n_batches=min(8, max(1, n_iters)))
    fn = as_callable(model)
    with torch.inference_mode():
        # The first call runs under the memory sampler (so sampling cannot skew the timed runs) and before any
        # warm-up, so that the memory it allocates for activations shows as a rise in RSS.
        with _PeakRSS() as mem:
            fn(batches[0])
    timing = time_calls({name: fn}, [batches[i % len(batches)] for i in range(n_iters)], n_warmup=n_warmup,
                        threads=threads)
    lengths = [b["input_ids"].shape[1] for b in batches]
    row = {
        "name": name, "batch_size": batch_size,
        "seq_len": seq_len if seq_len is not None else float(np.mean(lengths)),
        "n_warmup": n_warmup, **summarize(timing.times_ms[name], batch_size),
        "size_mb": float(size_mb) if size_mb is not None else model_size_mb(model),
        "peak_mem_mb": mem.peak_mb, "peak_rss_mb": mem.peak_rss / 1e6,
        **timing.load_columns(), **(extra or {}), **machine_info(threads),
    }
    return _store_rows(pd.DataFrame([row]), table, store)


def measure_latency(runners: dict[str, Callable[[dict], object]], tokenizer, texts: Sequence[str], *,
                    batch_size: int = 1, n_warmup: int = 5, rounds: int = 1, threads: int | None = None,
                    max_length: int = 128, seed: int = 0, table: str | None = None,
                    store: ResultsStore | None = None, extra: dict | None = None) -> pd.DataFrame:
    """Wall-clock latency of several models over *every* text, in consecutive batches, interleaved.

    An adaptive model's cost depends on its input (an early-exit model leaves at a layer that depends on the
    sentence), so :func:`benchmark`'s pool of eight batches would time eight sentences' exits. Here every text is
    run once per round (seeded shuffle, then consecutive batches of ``batch_size``, each padded to its own longest
    sentence), and each batch goes through every runner before the next batch (:func:`time_calls`).

    Args:
        runners: name -> a ``torch.nn.Module`` (called as ``model(**batch)``) or a callable taking the batch dict
            (``input_ids``, ``attention_mask``, ``token_type_ids``).
        texts: real sentences (e.g. the dev split).
        rounds: passes over the texts per runner; the reported mean is over all timed calls.
        threads: torch intra-op threads (default :func:`ufkit.config.bench_threads`); restored after.
        table: results-store table to append the rows to (None: do not store).

    Returns:
        `pandas.DataFrame`, one row per runner: the module docstring's columns (latencies per call), plus
        ``n_texts``, ``ms_per_seq`` and ``throughput_seq_per_s`` over all texts.

    Raises:
        UfkitError: no texts, no runners, or a non-positive ``batch_size``/``rounds``.
    """
    if not len(texts):
        raise UfkitError("texts is empty")
    if not runners:
        raise UfkitError("runners is empty")
    if not isinstance(batch_size, int) or batch_size < 1 or not isinstance(rounds, int) or rounds < 1:
        raise UfkitError(f"batch_size and rounds must be positive integers, got {batch_size!r} and {rounds!r}")
    threads = _threads(threads)
    order = np.random.default_rng(seed).permutation(len(texts))
    batches = [dict(tokenizer([texts[j] for j in order[i:i + batch_size]], padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt"))
               for i in range(0, len(texts), batch_size)]
    calls = {name: as_callable(fn) for name, fn in runners.items()}
    timing = time_calls(calls, batches, n_warmup=min(n_warmup, len(batches)), rounds=rounds, threads=threads)
    rows = []
    for name, t in timing.times_ms.items():
        rows.append({"name": name, "batch_size": batch_size, "n_texts": len(texts),
                     **summarize(t, batch_size),
                     "ms_per_seq": t.sum() / (rounds * len(texts)),
                     "throughput_seq_per_s": rounds * len(texts) * 1e3 / t.sum(),
                     **timing.load_columns(), **(extra or {}), **machine_info(threads)})
    return _store_rows(pd.DataFrame(rows), table, store)
