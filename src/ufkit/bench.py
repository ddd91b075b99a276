"""The latency harness every chapter uses.

A benchmark runs a model on real tokenised sentences (SST-2 by default, never a repeated word), at a fixed
batch size, sequence length and thread count: ``n_warmup`` untimed runs, then ``n_iters`` timed runs, each on
a different batch drawn from a pool, so caches and branch predictors see real variety. It reports latency in
milliseconds (mean, std, p50, p95), throughput in sequences per second, model size in MB and the peak resident
memory during a run, and records the machine (CPU model and flags, threads, torch version) beside every row.
Rows are appended to a SQLite file and returned as a pandas DataFrame.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from . import UfkitError

#: CPU flags that decide which kernels and int8 paths are fast; recorded with every result.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile",
             "amx_int8", "amx_bf16")


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """The CPU's model name and which of :data:`CPU_FLAGS` it has (from ``/proc/cpuinfo`` on Linux)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line:
                    flags = set(line.split(":", 1)[1].split())
                if flags and model:
                    break
    except OSError:
        pass
    return model, [f for f in CPU_FLAGS if f in flags]


def machine_info(threads: int | None = None) -> dict:
    """What a result was measured on.

    Returns:
        dict with ``cpu_model``, ``cpu_flags`` (comma-separated), ``cpu_count`` (logical CPUs), ``threads``
        (torch intra-op threads, or ``threads``), ``torch_version``, ``platform``, ``date`` (ISO, UTC).
    """
    import torch

    model, flags = cpu_model_and_flags()
    return {
        "cpu_model": model,
        "cpu_flags": ",".join(flags),
        "cpu_count": os.cpu_count(),
        "threads": int(threads if threads is not None else torch.get_num_threads()),
        "torch_version": torch.__version__,
        "platform": platform.platform(terse=True),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def machine_summary(info: dict | None = None) -> str:
    """One line naming the machine, for chapter captions: "Intel Xeon ..., 2 threads, avx512_vnni, torch 2.13"."""
    info = info or machine_info()
    return (f"{info['cpu_model']}, {info['threads']} thread(s) of {info['cpu_count']} CPUs, "
            f"flags: {info['cpu_flags'] or 'none of note'}, torch {info['torch_version']}")


def append_results(df: pd.DataFrame, db_path: str | Path, table: str) -> None:
    """Append rows to a SQLite table, adding any new columns first (tables grow as chapters add fields).

    Args:
        df: rows to append; column names become SQL columns.
        db_path: the SQLite file (created with its folder if missing).
        table: table name (letters, digits and ``_``).

    Raises:
        UfkitError: a table name with other characters.
    """
    if not table.replace("_", "").isalnum():
        raise UfkitError(f"table must be letters, digits and '_', got {table!r}")
    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(db_path) as con:
        existing = [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
        if existing:
            for col in df.columns:
                if col not in existing:
                    con.execute(f'ALTER TABLE {table} ADD COLUMN "{col}"')
        df.to_sql(table, con, if_exists="append", index=False)


def read_results(db_path: str | Path, table: str = "bench") -> pd.DataFrame:
    """All rows of a results table (empty DataFrame when the file or table does not exist)."""
    db_path = Path(db_path)
    if not db_path.is_file():
        return pd.DataFrame()
    with sqlite3.connect(db_path) as con:
        if not con.execute("SELECT name FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone():
            return pd.DataFrame()
        return pd.read_sql(f"SELECT * FROM {table}", con)


def sample_texts(n: int = 512, split: str = "validation", seed: int = 0) -> list[str]:
    """``n`` real SST-2 sentences (seeded sample) for benchmark inputs."""
    from .data import load_sst2, subset

    return list(subset(load_sst2()[split], n, seed=seed)["text"])


def make_batches(tokenizer, texts: Sequence[str], batch_size: int, seq_len: int | None = None,
                 n_batches: int = 8, seed: int = 0) -> list[dict]:
    """A pool of input batches made from real sentences.

    Args:
        texts: real sentences to draw from.
        batch_size: sequences per batch.
        seq_len: None keeps each sentence's natural length, padding to the longest in the batch (what serving
            sees); an int makes every row exactly ``seq_len`` tokens of real text, ``[CLS] ... [SEP]``, by
            concatenating consecutive sentences (for latency-vs-length curves).
        n_batches: size of the pool; the timed runs cycle through it.

    Returns:
        list of dicts of ``torch.LongTensor`` of shape ``(batch_size, length)``: ``input_ids``, ``attention_mask``
        (and ``token_type_ids``).

    Raises:
        UfkitError: ``batch_size`` or ``seq_len`` not a positive integer, or no texts.
    """
    import torch

    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise UfkitError(f"batch_size must be a positive integer, got {batch_size!r}")
    if seq_len is not None and (not isinstance(seq_len, (int, np.integer)) or seq_len < 3):
        raise UfkitError(f"seq_len must be an integer ≥ 3 or None, got {seq_len!r}")
    if not texts:
        raise UfkitError("texts is empty: a benchmark needs real sentences")
    rng = np.random.default_rng(seed)
    batches = []
    if seq_len is None:
        for _ in range(n_batches):
            pick = [texts[i] for i in rng.choice(len(texts), size=batch_size, replace=len(texts) < batch_size)]
            batches.append(dict(tokenizer(pick, padding=True, truncation=True, max_length=512,
                                          return_tensors="pt")))
        return batches
    stream = [t for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"] for t in ids]
    body = seq_len - 2
    if len(stream) < body:
        stream = stream * (body // max(1, len(stream)) + 1)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    for _ in range(n_batches):
        starts = rng.integers(0, len(stream) - body + 1, size=batch_size)
        rows = [[cls] + stream[s:s + body] + [sep] for s in starts]
        ids = torch.tensor(rows, dtype=torch.long)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                        "token_type_ids": torch.zeros_like(ids)})
    return batches


def model_size_mb(model=None, path: str | Path | None = None) -> float:
    """Size in MB (10^6 bytes): of the files under ``path`` if given, else of the model's parameters and buffers."""
    if path is not None:
        p = Path(path)
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
        return sum(f.stat().st_size for f in files) / 1e6
    if model is None or not hasattr(model, "parameters"):
        return float("nan")
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total / 1e6


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


def _as_callable(model) -> Callable[[dict], object]:
    import torch

    if isinstance(model, torch.nn.Module):
        model.eval()
        return lambda batch: model(**batch)
    if callable(model):
        return model
    raise UfkitError(f"model must be a torch.nn.Module or a callable taking a batch dict, got {type(model).__name__}")


def benchmark(model, tokenizer, texts: Sequence[str] | None = None, *, name: str = "model",
              batch_size: int = 1, seq_len: int | None = None, n_warmup: int = 10, n_iters: int = 50,
              threads: int | None = None, size_mb: float | None = None, db_path: str | Path | None = None,
              table: str = "bench", extra: dict | None = None) -> pd.DataFrame:
    """Time a model's forward pass on real sentences; return one result row (and append it to SQLite).

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
        db_path: SQLite file to append the row to (None: do not store).
        extra: more columns for the row (variant names, settings).

    Returns:
        one-row `pandas.DataFrame` with ``name``, ``batch_size``, ``seq_len`` (mean tokens per row when natural),
        ``n_warmup``, ``n_iters``, ``latency_ms_mean``, ``latency_ms_std``, ``latency_ms_p50``, ``latency_ms_p95``,
        ``throughput_seq_per_s``, ``size_mb``, ``peak_mem_mb`` (rise of the process's resident memory during the
        first call: activations and workspace), ``peak_rss_mb`` (the process's resident memory at that peak,
        model and libraries included), and the :func:`machine_info` columns.

    Raises:
        UfkitError: non-positive ``batch_size``, ``n_iters`` or ``threads``.
    """
    import torch

    from . import config

    if not isinstance(n_iters, int) or n_iters < 1:
        raise UfkitError(f"n_iters must be a positive integer, got {n_iters!r}")
    if not isinstance(n_warmup, int) or n_warmup < 0:
        raise UfkitError(f"n_warmup must be a non-negative integer, got {n_warmup!r}")
    threads = config.bench_threads() if threads is None else threads
    if not isinstance(threads, int) or threads < 1:
        raise UfkitError(f"threads must be a positive integer, got {threads!r}")
    texts = sample_texts() if texts is None else list(texts)
    batches = make_batches(tokenizer, texts, batch_size, seq_len, n_batches=min(8, max(1, n_iters)))
    fn = _as_callable(model)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            # The first call runs under the memory sampler (so sampling cannot skew the timed runs) and before
            # any warm-up, so that the memory it allocates for activations shows as a rise in RSS.
            with _PeakRSS() as mem:
                fn(batches[0])
            for i in range(n_warmup):
                fn(batches[i % len(batches)])
            times = np.empty(n_iters)
            for i in range(n_iters):
                batch = batches[i % len(batches)]
                t0 = time.perf_counter()
                fn(batch)
                times[i] = (time.perf_counter() - t0) * 1e3
    finally:
        torch.set_num_threads(old_threads)
    lengths = [b["input_ids"].shape[1] for b in batches]
    row = {
        "name": name, "batch_size": batch_size,
        "seq_len": seq_len if seq_len is not None else float(np.mean(lengths)),
        "n_warmup": n_warmup, "n_iters": n_iters,
        "latency_ms_mean": float(times.mean()), "latency_ms_std": float(times.std(ddof=1)) if n_iters > 1 else 0.0,
        "latency_ms_p50": float(np.percentile(times, 50)), "latency_ms_p95": float(np.percentile(times, 95)),
        "throughput_seq_per_s": float(batch_size * 1e3 / times.mean()),
        "size_mb": float(size_mb) if size_mb is not None else model_size_mb(model),
        "peak_mem_mb": mem.peak_mb, "peak_rss_mb": mem.peak_rss / 1e6,
        **(extra or {}),
        **machine_info(threads),
    }
    df = pd.DataFrame([row])
    if db_path is not None:
        append_results(df, db_path, table)
    return df
