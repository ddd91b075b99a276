"""Benchmarks of fast feedforward layers against dense feedforward layers of the same width.

The sweep of UltraFastBERT's Table 1 (Belcak & Wattenhofer 2023, arXiv:2311.10770): backend x (K, D) over the
ladder 3072x0 ... 1x11 x batch of tokens at ``hidden_size`` 768, fixed threads, warm-up, and for comparison
the dense layer Linear -> GELU -> Linear at I = 3072 (BERT-base) and I = 4095 (as many neurons as 1x11).

Inputs are realistic, not zeros: hidden states are standard normal and then normalised per token, as a
LayerNorm output is; weights are normal with std 0.02 (BERT's initializer_range), biases likewise. Every timed
call sees a different input from a pool of ``n_inputs`` redrawn ones, so routing varies between calls as it
does between sentences.

Timings go through :func:`ufkit.measure.timing.time_calls` (thread count, warm-up, the busy-machine check) and
carry the result schema's columns (``latency_ms_mean``, ``latency_ms_std``, ``latency_ms_p50``,
``latency_ms_min``, ``n_calls``), each call a full forward that allocates its output (as the dense layer does).
Rows are returned as a DataFrame and, given a ``table``, appended to the results store. Each row names the code
path that ran (``cpu_path``): for the native kernel the CPU path its dispatcher picked or was told to take
(``scalar``, ``avx2``, ``avx512``, ``avx512_bf16``; several can be timed side by side, interleaved).

bfloat16 weights (``native_bf16``, :func:`ufkit.fff.kernels.fff_forward` with ``weight_dtype=torch.bfloat16``)
are compared with the dense layer in bfloat16 (``dense_torch_bf16``), never with a float32 one.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import pandas as pd
import torch

from .. import config
from ..measure.machine import machine_info
from ..measure.timing import num_threads, summarize, time_calls
from .kernels import cpu_path, cpu_paths, fff_forward, load_extension
from .reference import n_nodes

__all__ = ["LADDER", "DENSE_BACKENDS", "FFF_BACKENDS", "bench_fff", "speedups", "measure_ceilings"]

#: UltraFastBERT's (n_trees, depth) ladder: each keeps K*(2**(D+1)-1) close to BERT-base's 3,072 neurons.
LADDER = [(3072, 0), (1536, 1), (512, 2), (256, 3), (128, 4), (64, 5), (32, 6), (16, 7), (8, 8), (4, 9), (2, 10),
          (1, 11)]
#: Dense baselines: torch Linear -> GELU -> Linear (oneDNN/MKL GEMM), the same on MKL cblas_sgemm directly, and
#: torch's in bfloat16 (weights and activations; x is cast in the call, the output stays bfloat16).
DENSE_BACKENDS = ("dense_torch", "dense_mkl", "dense_torch_bf16")
#: FFF backends of :func:`ufkit.fff.kernels.fff_forward`, and ``native_bf16``: native with bfloat16 weights.
FFF_BACKENDS = ("torch_gather", "native", "mkl", "cuda", "native_bf16")
#: The results-store table of the sweep.
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


def _dense_fn(backend, w_in, b_in, w_out, b_out):
    if backend == "dense_torch_bf16":
        w_in, b_in, w_out, b_out = (t.to(torch.bfloat16) for t in (w_in, b_in, w_out, b_out))

        def fn(x):
            h = torch.nn.functional.gelu(torch.nn.functional.linear(x.to(torch.bfloat16), w_in, b_in))
            return torch.nn.functional.linear(h, w_out, b_out)
        return fn
    if backend == "dense_torch":
        def fn(x):
            return torch.nn.functional.linear(torch.nn.functional.gelu(torch.nn.functional.linear(x, w_in, b_in)),
                                              w_out, b_out)
        return fn
    mod = load_extension("mkl")
    return lambda x: mod.dense_ff(x, w_in, b_in, w_out, b_out)


def _code_path(backend: str, device) -> str:
    """What ``cpu_path`` says for a backend other than the native kernel: whose dispatch chose the code."""
    if torch.device(device).type == "cuda":
        return "cuda"
    if backend in ("mkl", "dense_mkl"):
        return "mkl"  # MKL dispatches on the CPU by itself
    # torch: ATen's CPU capability picks its elementwise kernels; its GEMMs (MKL, oneDNN) dispatch by themselves
    return "torch-" + torch.backends.cpu.get_cpu_capability().lower()


def _native_paths(isa, weight_dtype) -> list[str]:
    if isa is None:
        return [cpu_path(None, weight_dtype)]
    if isa == "all":
        return cpu_paths(weight_dtype)
    names = [isa] if isinstance(isa, str) else list(isa)
    if not names:
        raise ValueError("isa must name at least one CPU path")
    return [cpu_path(name, weight_dtype) for name in names]  # ValueError for a path this CPU lacks


def _machine(threads: int, device) -> dict:
    info = machine_info(threads)
    info["device"] = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "cpu"
    return info


def bench_fff(
    backends: Sequence[str] = ("native", "mkl", "torch_gather", "dense_torch", "dense_mkl"),
    configs: Sequence[tuple[int, int]] = ((1, 11),),
    batches: Sequence[int] = (1, 128, 2048, 16384),
    hidden_size: int = 768,
    *,
    threads: int | None = None,
    n_warmup: int = 2,
    n_iters: int = 10,
    table: str | None = None,
    dense_widths: Iterable[int] = (3072, 4095),
    device: str = "cpu",
    n_inputs: int = 3,
    seed: int = 0,
    max_seconds: float | None = None,
    isa: str | Sequence[str] | None = None,
) -> pd.DataFrame:
    """Time FFF backends and dense baselines over (n_trees, depth) configs and batches of tokens.

    Args:
        backends: any of ``"torch_gather"``, ``"native"``, ``"mkl"``, ``"cuda"`` (FFF, see
            :func:`ufkit.fff.kernels.fff_forward`), ``"native_bf16"`` (native with bfloat16 weights), and
            ``"dense_torch"``, ``"dense_mkl"``, ``"dense_torch_bf16"`` (dense baselines, see
            :data:`DENSE_BACKENDS`). A backend that cannot be built is skipped with a warning.
        configs: (n_trees, depth) pairs, e.g. :data:`LADDER`; FFF backends run each.
        batches: numbers of tokens per call (a call's input is `(batch, hidden_size)`).
        hidden_size: H_in = H_out.
        threads: torch intra-op threads for the sweep (default :func:`ufkit.config.bench_threads`); restored after.
        n_warmup, n_iters: untimed and timed calls per row.
        table: results-store table to append the rows to (e.g. :data:`TABLE`; None: only return them).
        dense_widths: intermediate sizes of the dense baselines (3072 = BERT-base, 4095 = 1x11's neuron count).
        device: ``"cpu"`` or a CUDA device (then ``dense_torch`` is cuBLAS and ``cuda`` is the FFF kernel).
        n_inputs: distinct random inputs cycled through per row.
        seed: seed of weights and inputs.
        max_seconds: time budget per row: stop timing once it is spent and at least 3 calls are timed
            (``n_calls`` in the row says how many were); None times all ``n_iters``.
        isa: CPU paths of the ``native`` and ``native_bf16`` backends to time, a row each, interleaved call by
            call (see :func:`ufkit.fff.kernels.cpu_path`): None is the dispatcher's pick (``UFKIT_FFF_ISA``, else
            the widest path this CPU supports for the weight dtype), ``"all"`` every path this CPU supports, or
            names from :data:`~ufkit.fff.kernels.CPU_PATHS` (each must suit every native backend asked for).

    Returns:
        `pandas.DataFrame`, one row per (backend, config or dense width, batch), columns ``backend``,
        ``hidden_size``, ``width`` (K*N, or I for dense), ``depth`` and ``n_trees`` (NA for dense), ``batch``,
        ``threads``, ``latency_ms_mean``, ``latency_ms_std``, ``latency_ms_p50``, ``latency_ms_p95``,
        ``latency_ms_min`` (median and minimum are robust on a machine that other work shares), ``n_calls``,
        ``cpu_path`` (the code path that ran: ``scalar``/``avx2``/``avx512``/``avx512_bf16`` for the native
        kernel; for the torch backends ``torch-<ATen CPU capability>``, e.g. ``torch-avx512`` (its GEMMs, MKL or
        oneDNN, dispatch by themselves); ``mkl`` for the MKL backends, which dispatch by themselves; ``cuda`` on
        a GPU),
        ``tokens_per_s``, ``gflops`` (useful FLOP/s:
        2*H*(K*(D+1))*2 per token for FFF, 2*H*I*2 for dense), ``gbytes_per_s`` (weight rows + x + y moved, at
        most: a lower bound on traffic for dense), the load columns (``busy``, ``other_cores``, ``attempts``) and
        the machine (:func:`ufkit.measure.machine.machine_info`, ``machine_id``, and ``device``).

    Raises:
        ValueError: an unknown backend, an empty ``configs``/``batches``, a non-positive size, or an ``isa``
            path this CPU does not support.
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
    usable = []
    for b in backends:
        need = {"native": "native", "native_bf16": "native", "mkl": "mkl", "dense_mkl": "mkl", "cuda": "cuda"}.get(b)
        try:
            if need:
                load_extension(need)
            usable.append(b)
        except RuntimeError as exc:
            warnings.warn(f"skipping {b}: {exc}", RuntimeWarning, stacklevel=2)
    if "native_bf16" in usable and torch.device(device).type != "cpu":
        raise ValueError("native_bf16 runs on the CPU only")
    on_cpu = torch.device(device).type == "cpu"
    paths = {b: _native_paths(isa, torch.bfloat16 if b == "native_bf16" else torch.float32)
             for b in ("native", "native_bf16") if b in usable and on_cpu}
    gen = torch.Generator().manual_seed(seed)
    rows = []
    machine = _machine(threads, device)
    H = hidden_size
    sync = (lambda: torch.cuda.synchronize(device)) if torch.device(device).type == "cuda" else None
    with num_threads(threads), torch.no_grad():
        if True:
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
                            fns = {_code_path(b, device): _dense_fn(b, w_in, b_in, w_out, b_out)}
                            used = width
                        else:
                            wdtype = torch.bfloat16 if b == "native_bf16" else None

                            def fn(x, b=b, k=k, d=d, w_in=w_in, b_in=b_in, w_out=w_out, isa=None, wdtype=wdtype):
                                return fff_forward(x, w_in, b_in, w_out, d, k, backend=b.removesuffix("_bf16"),
                                                   isa=isa, weight_dtype=wdtype)
                            if b in paths:  # one callable per CPU path, timed interleaved
                                fns = {p: (lambda x, fn=fn, p=p: fn(x, isa=p)) for p in paths[b]}
                            else:
                                fns = {_code_path(b, device): fn}
                            used = k * (d + 1)
                        timing = time_calls(fns, [inputs[i % len(inputs)] for i in range(n_iters)],
                                            n_warmup=n_warmup, sync=sync, max_seconds=max_seconds)
                        for path in fns:
                            t = summarize(timing.times_ms[path], batch)
                            t.pop("throughput_seq_per_s")  # rows are tokens: tokens_per_s below
                            mean_ms = t["latency_ms_mean"]
                            flops = 2 * 2 * H * used * batch
                            wbytes = 2 if b.endswith("_bf16") else 4
                            # rows once + x + y
                            traffic = wbytes * 2 * H * min(used * batch, width) + 4 * 2 * H * batch
                            rows.append({
                                "backend": b, "cpu_path": path, "hidden_size": H, "width": width,
                                "depth": d, "n_trees": k, "batch": batch, "threads": threads,
                                **t, **timing.load_columns(),
                                "tokens_per_s": batch / (mean_ms / 1e3),
                                "gflops": flops / (mean_ms / 1e3) / 1e9,
                                "gbytes_per_s": traffic / (mean_ms / 1e3) / 1e9,
                                **{k: v for k, v in machine.items() if k != "threads"},
                            })
                        del w_in, b_in, w_out, b_out
    df = pd.DataFrame(rows)
    if len(df):
        df["depth"] = df["depth"].astype("Int64")
        df["n_trees"] = df["n_trees"].astype("Int64")
    if table is not None and len(df):
        from ..measure.store import ResultsStore

        ResultsStore().append(table, df)
    return df


def speedups(df: pd.DataFrame, dense_backend: str = "dense_torch", dense_width: int = 4095,
             stat: str = "latency_ms_mean") -> pd.DataFrame:
    """Each FFF row's speedup over the dense baseline at the same batch (and threads): ``dense stat / stat``.

    ``stat`` is ``"latency_ms_mean"``, ``"latency_ms_p50"`` or ``"latency_ms_min"``. Returns the FFF rows of ``df`` with a column
    ``speedup`` added (NaN where the baseline is missing).
    """
    keys = [k for k in ("batch", "threads", "machine_id") if k in df]
    dense = df[(df.backend == dense_backend) & (df.width == dense_width)].groupby(keys, as_index=False)[stat].mean()
    out = df[~df.backend.isin(DENSE_BACKENDS)].copy()
    dense_ms = out[keys].merge(dense.rename(columns={stat: "_dense"}), on=keys, how="left")["_dense"]
    out["speedup"] = dense_ms.to_numpy() / out[stat].to_numpy()
    return out


def measure_ceilings(threads: int | None = None, size_mb: int = 256, n: int = 1024, repeats: int = 3) -> dict:
    """This machine's ceilings, measured: memory bandwidth (GB/s, a large tensor copy: read + write) and
    matrix-multiply throughput (GFLOP/s, torch float32 ``n x n`` matmul), each the fastest of ``repeats`` calls
    (:func:`ufkit.measure.timing.time_calls`).

    Returns:
        dict with ``mem_gbytes_per_s``, ``matmul_gflops``, ``threads``, ``busy`` and ``other_cores``.
    """
    threads = int(threads or config.bench_threads())
    a = torch.randn(size_mb * 2**20 // 4)
    b = torch.empty_like(a)
    m1, m2 = torch.randn(n, n), torch.randn(n, n)
    timing = time_calls({"copy": lambda _: b.copy_(a), "matmul": lambda _: m1 @ m2}, [None] * repeats,
                        n_warmup=1, threads=threads)
    bw = 2 * a.numel() * 4 / (timing.times_ms["copy"].min() / 1e3) / 1e9
    gf = 2 * n**3 / (timing.times_ms["matmul"].min() / 1e3) / 1e9
    return {"mem_gbytes_per_s": bw, "matmul_gflops": gf, "threads": threads, "busy": timing.busy,
            "other_cores": timing.other_cores}
