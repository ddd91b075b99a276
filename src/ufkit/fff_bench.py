"""Benchmarks of fast feedforward layers against dense feedforward layers of the same width.

The sweep of UltraFastBERT's Table 1 (Belcak & Wattenhofer 2023, arXiv:2311.10770): backend x (K, D) over the
ladder 3072x0 ... 1x11 x batch of tokens at ``hidden_size`` 768, fixed threads, warm-up, and for comparison
the dense layer Linear -> GELU -> Linear at I = 3072 (BERT-base) and I = 4095 (as many neurons as 1x11).

Inputs are realistic, not zeros: hidden states are standard normal and then normalised per token, as a
LayerNorm output is; weights are normal with std 0.02 (BERT's initializer_range), biases likewise. Every timed
call sees a different input from a pool of ``n_inputs`` redrawn ones, so routing varies between calls as it
does between sentences.

Timings are ``mean_ms``/``std_ms`` over ``n_iters`` calls, each a full forward that allocates its output
(as the dense layer does). Rows are appended to SQLite (table ``fff_bench``) and returned as a DataFrame.
"""

from __future__ import annotations

import time
from typing import Iterable, Sequence

import pandas as pd
import torch

from ufkit import config
from ufkit.fff import n_nodes

__all__ = ["LADDER", "DENSE_BACKENDS", "FFF_BACKENDS", "bench_fff", "speedups", "measure_ceilings"]

#: UltraFastBERT's (n_trees, depth) ladder: each keeps K*(2**(D+1)-1) close to BERT-base's 3,072 neurons.
LADDER = [(3072, 0), (1536, 1), (512, 2), (256, 3), (128, 4), (64, 5), (32, 6), (16, 7), (8, 8), (4, 9), (2, 10),
          (1, 11)]
#: Dense baselines: torch Linear -> GELU -> Linear (oneDNN/MKL GEMM) and the same on MKL cblas_sgemm directly.
DENSE_BACKENDS = ("dense_torch", "dense_mkl")
FFF_BACKENDS = ("torch_gather", "native", "mkl", "cuda")
TABLE = "fff_bench"


def _hidden(batch: int, hidden_size: int, gen: torch.Generator, device) -> torch.Tensor:
    x = torch.randn(batch, hidden_size, generator=gen)  # (batch, hidden_size)
    x = torch.nn.functional.layer_norm(x, (hidden_size,))  # what a BERT layer's FF sees
    return x.to(device)


def _weights(width: int, h_in: int, h_out: int, gen: torch.Generator, device):
    w_in = torch.randn(width, h_in, generator=gen) * 0.02  # (width, h_in)
    b_in = torch.randn(width, generator=gen) * 0.02
    w_out = torch.randn(h_out, width, generator=gen) * 0.02  # (h_out, width)
    b_out = torch.randn(h_out, generator=gen) * 0.02
    return [t.to(device) for t in (w_in, b_in, w_out, b_out)]


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, inputs, n_warmup: int, n_iters: int, device, max_seconds: float | None = None) -> dict:
    """mean, std, median and min in ms of ``fn(x)`` over n_iters calls, cycling through ``inputs``; with
    ``max_seconds``, stop early once that much time is spent and at least 3 calls are timed."""
    for i in range(n_warmup):
        fn(inputs[i % len(inputs)])
    _sync(device)
    times = []
    start = time.perf_counter()
    for i in range(n_iters):
        if max_seconds is not None and i >= 3 and time.perf_counter() - start > max_seconds:
            break
        x = inputs[i % len(inputs)]
        _sync(device)
        t0 = time.perf_counter()
        fn(x)
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    s = pd.Series(times)
    return {"n_iters": len(times), "mean_ms": float(s.mean()),
            "std_ms": float(s.std(ddof=1)) if len(times) > 1 else 0.0,
            "median_ms": float(s.median()), "min_ms": float(s.min())}


def _dense_fn(backend, w_in, b_in, w_out, b_out):
    if backend == "dense_torch":
        def fn(x):
            return torch.nn.functional.linear(torch.nn.functional.gelu(torch.nn.functional.linear(x, w_in, b_in)),
                                              w_out, b_out)
        return fn
    from ufkit.kernels import load_extension

    mod = load_extension("mkl")
    return lambda x: mod.dense_ff(x, w_in, b_in, w_out, b_out)


def _machine(threads: int, device) -> dict:
    from ufkit.bench import machine_info

    info = machine_info(threads)
    flags = set(info.get("cpu_flags", "").split(","))
    info["avx512f"] = "avx512f" in flags
    info["avx512_vnni"] = "avx512_vnni" in flags
    info["device"] = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "cpu"
    return info


def bench_fff(
    backends: Sequence[str] = ("native", "mkl", "torch_gather", "dense_torch", "dense_mkl"),
    configs: Sequence[tuple[int, int]] = ((1, 11),),
    batches: Sequence[int] = (1, 128, 2048, 16384),
    hidden_size: int = 768,
    threads: int | None = None,
    n_warmup: int = 2,
    n_iters: int = 10,
    db_path: str | None = None,
    *,
    dense_widths: Iterable[int] = (3072, 4095),
    device: str = "cpu",
    n_inputs: int = 3,
    seed: int = 0,
    max_seconds: float | None = None,
    save: bool = True,
) -> pd.DataFrame:
    """Time FFF backends and dense baselines over (n_trees, depth) configs and batches of tokens.

    Args:
        backends: any of ``"torch_gather"``, ``"native"``, ``"mkl"``, ``"cuda"`` (FFF, see
            :func:`ufkit.kernels.fff_forward`) and ``"dense_torch"``, ``"dense_mkl"`` (dense baselines).
            A backend that cannot be built is skipped with a warning.
        configs: (n_trees, depth) pairs, e.g. :data:`LADDER`; FFF backends run each.
        batches: numbers of tokens per call (a call's input is `(batch, hidden_size)`).
        hidden_size: H_in = H_out.
        threads: torch intra-op threads for the sweep (default :func:`ufkit.config.bench_threads`); restored after.
        n_warmup, n_iters: untimed and timed calls per row.
        db_path: SQLite file to append to (default :func:`ufkit.config.results_db`, table ``fff_bench``).
        dense_widths: intermediate sizes of the dense baselines (3072 = BERT-base, 4095 = 1x11's neuron count).
        device: ``"cpu"`` or a CUDA device (then ``dense_torch`` is cuBLAS and ``cuda`` is the FFF kernel).
        n_inputs: distinct random inputs cycled through per row.
        seed: seed of weights and inputs.
        max_seconds: time budget per row: stop timing once it is spent and at least 3 calls are timed
            (``n_iters`` in the row says how many were); None times all ``n_iters``.
        save: append to the database (False: only return the DataFrame).

    Returns:
        `pandas.DataFrame`, one row per (backend, config or dense width, batch), columns ``backend``,
        ``hidden_size``, ``width`` (K*N, or I for dense), ``depth`` and ``n_trees`` (NA for dense), ``batch``,
        ``threads``, ``n_iters``, ``mean_ms``, ``std_ms``, ``median_ms``, ``min_ms`` (the last two are robust
        on a machine that other work shares), ``tokens_per_s``, ``gflops`` (useful FLOP/s:
        2*H*(K*(D+1))*2 per token for FFF, 2*H*I*2 for dense), ``gbytes_per_s`` (weight rows + x + y moved, at
        most: a lower bound on traffic for dense), and the machine: ``cpu_model``, ``cpu_flags``, ``avx512f``,
        ``avx512_vnni``, ``device``, ``torch_version``, ``platform``, ``date``.

    Raises:
        ValueError: an unknown backend, an empty ``configs``/``batches`` or a non-positive size.
    """
    import warnings

    known = FFF_BACKENDS + DENSE_BACKENDS
    for b in backends:
        if b not in known:
            raise ValueError(f"backends must be among {known}, got {b!r}")
    if not batches or any(int(b) < 1 for b in batches):
        raise ValueError(f"batches must be positive token counts, got {batches!r}")
    if any(b in FFF_BACKENDS for b in backends) and not configs:
        raise ValueError("configs must list at least one (n_trees, depth)")
    if hidden_size < 1 or n_iters < 1 or n_warmup < 0 or n_inputs < 1:
        raise ValueError("hidden_size, n_iters and n_inputs must be positive and n_warmup non-negative")
    threads = int(threads or config.bench_threads())
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    from ufkit.kernels import fff_forward, load_extension

    usable = []
    for b in backends:
        need = {"native": "native", "mkl": "mkl", "dense_mkl": "mkl", "cuda": "cuda"}.get(b)
        try:
            if need:
                load_extension(need)
            usable.append(b)
        except RuntimeError as exc:
            warnings.warn(f"skipping {b}: {exc}", RuntimeWarning, stacklevel=2)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    machine = _machine(threads, device)
    H = hidden_size
    try:
        with torch.no_grad():
            for batch in batches:
                inputs = [_hidden(batch, H, gen, device) for _ in range(n_inputs)]
                for b in usable:
                    if b in DENSE_BACKENDS:
                        plan = [(I, None, None) for I in dense_widths]
                    else:
                        plan = [(k * n_nodes(d), k, d) for k, d in configs]
                    for width, k, d in plan:
                        w_in, b_in, w_out, b_out = _weights(width, H, H, gen, device)
                        if b in DENSE_BACKENDS:
                            fn = _dense_fn(b, w_in, b_in, w_out, b_out)
                            used = width
                        else:
                            def fn(x, b=b, k=k, d=d, w_in=w_in, b_in=b_in, w_out=w_out):
                                return fff_forward(x, w_in, b_in, w_out, d, k, backend=b)
                            used = k * (d + 1)
                        t = _time(fn, inputs, n_warmup, n_iters, device, max_seconds)
                        mean_ms = t["mean_ms"]
                        flops = 2 * 2 * H * used * batch
                        traffic = 4 * (2 * H * min(used * batch, width) + 2 * H * batch)  # rows once + x + y
                        rows.append({
                            "backend": b, "hidden_size": H, "width": width,
                            "depth": d, "n_trees": k, "batch": batch, "threads": threads,
                            **t,
                            "tokens_per_s": batch / (mean_ms / 1e3),
                            "gflops": flops / (mean_ms / 1e3) / 1e9,
                            "gbytes_per_s": traffic / (mean_ms / 1e3) / 1e9,
                            **{c: machine[c] for c in ("cpu_model", "cpu_flags", "avx512f", "avx512_vnni", "device",
                                                       "torch_version", "platform", "date")},
                        })
                        del w_in, b_in, w_out, b_out
    finally:
        torch.set_num_threads(old_threads)
    df = pd.DataFrame(rows)
    if len(df):
        df["depth"] = df["depth"].astype("Int64")
        df["n_trees"] = df["n_trees"].astype("Int64")
    if save and len(df):
        from ufkit.bench import append_results

        append_results(df, db_path or config.results_db(), TABLE)
    return df


def speedups(df: pd.DataFrame, dense_backend: str = "dense_torch", dense_width: int = 4095,
             stat: str = "mean_ms") -> pd.DataFrame:
    """Each FFF row's speedup over the dense baseline at the same batch (and threads): ``dense stat / stat``.

    ``stat`` is ``"mean_ms"``, ``"median_ms"`` or ``"min_ms"``. Returns the FFF rows of ``df`` with a column
    ``speedup`` added (NaN where the baseline is missing).
    """
    keys = ["batch", "threads"] if "threads" in df else ["batch"]
    dense = df[(df.backend == dense_backend) & (df.width == dense_width)].groupby(keys, as_index=False)[stat].mean()
    out = df[~df.backend.isin(DENSE_BACKENDS)].copy()
    dense_ms = out[keys].merge(dense.rename(columns={stat: "_dense"}), on=keys, how="left")["_dense"]
    out["speedup"] = dense_ms.to_numpy() / out[stat].to_numpy()
    return out


def measure_ceilings(threads: int | None = None, size_mb: int = 256, n: int = 1024, repeats: int = 3) -> dict:
    """This machine's ceilings, measured: memory bandwidth (GB/s, a large tensor copy: read + write) and
    matrix-multiply throughput (GFLOP/s, torch float32 ``n x n`` matmul). Best of ``repeats``."""
    threads = int(threads or config.bench_threads())
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(size_mb * 2**20 // 4)
        b = torch.empty_like(a)
        b.copy_(a)
        best = min(_timeit(lambda: b.copy_(a)) for _ in range(repeats))
        bw = 2 * a.numel() * 4 / best / 1e9
        m1, m2 = torch.randn(n, n), torch.randn(n, n)
        m1 @ m2
        best = min(_timeit(lambda: m1 @ m2) for _ in range(repeats))
        gf = 2 * n**3 / best / 1e9
    finally:
        torch.set_num_threads(old)
    return {"mem_gbytes_per_s": bw, "matmul_gflops": gf, "threads": threads}


def _timeit(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
