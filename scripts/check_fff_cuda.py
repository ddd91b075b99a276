"""Check and time the CUDA FFF kernels on a GPU: conformance with the reference, then a benchmark.

Run on a machine with an NVIDIA GPU, a CUDA build of torch and nvcc (the kernels in cuda/ are compiled with
nvcc -c and linked into the torch binding cpp/fff_cuda.cpp on first use):

    python scripts/check_fff_cuda.py            # full: conformance + 1x11 and the ladder, 1..16384 tokens
    UFKIT_SMOKE=1 python scripts/check_fff_cuda.py

It prints the conformance summary (every version of the kernel against ufkit.fff.fff_reference on random
cases with odd sizes, n_trees 1..4, depth 0..11) and exits non-zero on a failure; then it times the cuda
kernels (v1 thread per token, v2 warp per token), torch_gather and the dense cuBLAS feedforward at
I = 3072 and 4095 (all through ufkit.measure.timing.time_calls, synchronising after every call), and writes
results/fff_bench_cuda.csv, which the chapter reads and labels with the GPU and the date.
Belcak & Wattenhofer 2023, arXiv:2311.10770.
"""

from __future__ import annotations

import random
import sys
import time

import pandas as pd
import torch

from ufkit import config
from ufkit.fff import conformance, n_nodes
from ufkit.fff.bench import LADDER, bench_fff, speedups
from ufkit.fff.kernels import fff_forward, load_extension
from ufkit.measure.timing import summarize, time_calls


def check_conformance(n_cases: int, device: str) -> bool:
    rng = random.Random(0)
    worst, failures = 0.0, 0
    for _ in range(n_cases):
        depth, n_trees = rng.randrange(0, 12), rng.randrange(1, 5)
        small = [1, 3, 5, 7, 13, 17, 31, 33]
        h_in = rng.choice(small if depth >= 9 else small + [67, 100, 129, 768])
        h_out = rng.choice(small if depth >= 9 else small + [67, 100, 129, 768])
        batch = rng.choice([0, 1, 2, 3, 31, 32, 33, 1000, 5000])
        g = torch.Generator().manual_seed(rng.randrange(1 << 30))
        width = n_trees * n_nodes(depth)
        x = torch.randn(batch, h_in, generator=g)
        w_in = torch.randn(width, h_in, generator=g) * (2.0 / h_in**0.5)
        b_in = torch.randn(width, generator=g) * 0.1
        w_out = torch.randn(h_out, width, generator=g) * 0.05
        for version in (1, 2):
            y, route = fff_forward(*(t.to(device) for t in (x, w_in, b_in, w_out)), depth, n_trees, "cuda",
                                   version=version, return_route=True)
            c = conformance(y, route, x, w_in, b_in, w_out, depth, n_trees)
            worst = max(worst, c["max_rel_err"])
            if c["non_tie_mismatches"] or c["max_rel_err"] > 1e-5:
                failures += 1
                print(f"FAIL v{version} depth={depth} n_trees={n_trees} H={h_in}->{h_out} B={batch}: {c}")
    print(f"conformance: {2 * n_cases} runs, {failures} failures, worst relative error {worst:.2e}")
    return failures == 0


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check (the CUDA sources are compile-tested by tests/test_fff.py)")
        return 2
    device = "cuda"
    load_extension("cuda", verbose=True)
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    ok = check_conformance(config.pick(200, 20), device)
    t0 = time.time()
    configs = config.pick(LADDER, [(1, 11)])
    batches = config.pick((1, 128, 2048, 16384), (1, 128))
    # the sweep times the default kernel (v2, a warp per token) beside torch_gather and cuBLAS dense
    df = bench_fff(backends=("cuda", "torch_gather", "dense_torch"), configs=configs, batches=batches,
                   device=device, n_warmup=config.pick(5, 1), n_iters=config.pick(50, 3))
    # v1 (a thread per token) for comparison: same sweep at 1x11 only
    import ufkit.fff.kernels as K

    gen = torch.Generator().manual_seed(0)
    H = 768
    w_in = (torch.randn(4095, H, generator=gen) * 0.02).to(device)
    b_in = (torch.randn(4095, generator=gen) * 0.02).to(device)
    w_out = (torch.randn(H, 4095, generator=gen) * 0.02).to(device)
    v1 = []
    for batch in batches:
        x = torch.nn.functional.layer_norm(torch.randn(batch, H, generator=gen), (H,)).to(device)
        timing = time_calls({"cuda_v1": lambda x: K.fff_forward(x, w_in, b_in, w_out, 11, 1, "cuda", version=1)},
                            [x] * config.pick(50, 3), n_warmup=3, sync=torch.cuda.synchronize)
        row = df[(df.backend == "cuda") & (df.batch == batch) & (df.depth == 11)].iloc[0].to_dict()
        stats = summarize(timing.times_ms["cuda_v1"], batch)
        stats.pop("throughput_seq_per_s")
        row.update(backend="cuda_v1", **stats, **timing.load_columns(),
                   tokens_per_s=batch / (stats["latency_ms_mean"] / 1e3))
        v1.append(row)
    df = pd.concat([df, pd.DataFrame(v1)], ignore_index=True)
    out = config.results_dir() / "fff_bench_cuda.csv"
    df.to_csv(out, index=False)
    sp = speedups(df)
    print(sp[sp.depth == 11][["backend", "batch", "latency_ms_mean", "speedup"]].to_string(index=False))
    print(f"benchmark: {time.time() - t0:.0f} s, written to {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
