"""Conformance of every FFF backend with the reference (ufkit.fff, ufkit.fff.kernels), boundary checks, and the
CUDA sources compiling with nvcc. Benchmarks live in ufkit.fff.bench, not here."""

from __future__ import annotations

import random
import shutil
import subprocess
import warnings
import zlib
from pathlib import Path

import pytest
import torch

from ufkit.fff import kernels
from ufkit.fff import FFF, conformance, fff_reference, fff_route, fff_training_form, n_nodes, node_usage
from ufkit.fff.kernels import fff_forward

CPU_BACKENDS = ["torch_gather", "native", "mkl"]
COMPILED = ["native", "mkl"]


def need(backend: str) -> None:
    """Build (or load the cached) extension of a compiled backend; skip only if its toolchain is absent.

    A build error with the toolchain present fails the test: CI must notice a kernel that stopped compiling.
    """
    if backend not in COMPILED:
        return
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler")
    if backend == "mkl":
        try:
            kernels._mkl_paths()
        except RuntimeError as exc:
            pytest.skip(str(exc))
    kernels.load_extension(backend)
ODD = [1, 3, 5, 7, 13, 17, 31, 33, 67, 100, 129]


def make_case(rng: random.Random, depth: int, n_trees: int, h_in: int, h_out: int, batch: int, scale=None):
    g = torch.Generator().manual_seed(rng.randrange(1 << 30))
    width = n_trees * n_nodes(depth)
    s = scale if scale is not None else rng.choice([0.02, 0.1, 1.0]) / max(1.0, h_in**0.5) * 4
    x = torch.randn(batch, h_in, generator=g)
    w_in = torch.randn(width, h_in, generator=g) * s
    b_in = torch.randn(width, generator=g) * s
    w_out = torch.randn(h_out, width, generator=g) * 0.05
    return x, w_in, b_in, w_out


def assert_conforms(y, route, x, w_in, b_in, w_out, depth, n_trees, rtol=1e-5):
    """Routes identical except at near-ties, and relative error <= rtol (see :func:`ufkit.fff.conformance`)."""
    assert y.shape == (x.shape[0], w_out.shape[0]) and y.dtype == x.dtype
    c = conformance(y, route, x, w_in, b_in, w_out, depth, n_trees)
    assert c["non_tie_mismatches"] == 0, c
    assert c["max_rel_err"] <= rtol, c


def random_cases(n: int, seed: int):
    rng = random.Random(seed)
    for i in range(n):
        depth = rng.randrange(0, 12)
        n_trees = rng.randrange(1, 5)
        if depth >= 9:  # keep the weights small: up to 4 * 4095 rows
            h_in, h_out = rng.choice(ODD[:8]), rng.choice(ODD[:8])
        else:
            h_in, h_out = rng.choice(ODD), rng.choice(ODD)
        batch = rng.choice([0, 1, 2, 3, 5, 17, 63, 64, 65, 130])
        yield rng, depth, n_trees, h_in, h_out, batch


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_conformance_random(backend):
    """200 random cases: odd H, n_trees 1..4, depth 0..11, batch 0..130."""
    need(backend)
    for rng, depth, n_trees, h_in, h_out, batch in random_cases(200, seed=zlib.crc32(backend.encode())):
        x, w_in, b_in, w_out = make_case(rng, depth, n_trees, h_in, h_out, batch)
        y, route = fff_forward(x, w_in, b_in, w_out, depth, n_trees, backend=backend, return_route=True)
        assert_conforms(y, route, x, w_in, b_in, w_out, depth, n_trees)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("depth,n_trees,h,batch", [(11, 1, 768, 3000), (7, 3, 101, 2500), (11, 2, 33, 1)])
def test_conformance_large(backend, depth, n_trees, h, batch):
    """Real width (1x11 at H=768) and large batches: every kernel path (blocks, buckets, threads)."""
    need(backend)
    x, w_in, b_in, w_out = make_case(random.Random(depth), depth, n_trees, h, h, batch, scale=0.02)
    y, route = fff_forward(x, w_in, b_in, w_out, depth, n_trees, backend=backend, return_route=True)
    assert_conforms(y, route, x, w_in, b_in, w_out, depth, n_trees)


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_native_versions(version):
    need("native")
    for rng, depth, n_trees, h_in, h_out, batch in random_cases(40, seed=version):
        x, w_in, b_in, w_out = make_case(rng, depth, n_trees, h_in, h_out, batch)
        y, route = fff_forward(x, w_in, b_in, w_out, depth, n_trees, "native", version=version, return_route=True)
        assert_conforms(y, route, x, w_in, b_in, w_out, depth, n_trees)


# ---- CPU paths of the native kernel: one build, dispatched on cpuid --------------------------------------

AVX2_ONLY = ("avx2", "fma")
AVX512 = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq")
AVX512_BF16 = AVX512 + ("avx512_bf16",)
BF16 = torch.bfloat16
FP32_PATHS = [p for p in kernels.CPU_PATHS if p != "avx512_bf16"]
#: (path, weight dtype) pairs the native kernel has: every path with float32 weights, and with bfloat16 ones.
PATH_CASES = [(p, torch.float32) for p in FP32_PATHS] + [(p, BF16) for p in kernels.CPU_PATHS]
PATH_IDS = [f"{p}-{'bf16' if d == BF16 else 'fp32'}" for p, d in PATH_CASES]


def need_path(path: str, weight_dtype=torch.float32) -> None:
    """Skip, saying so, when this CPU cannot run the native kernel's ``path``; the skip reason names the
    missing CPU flags (``pytest -rs`` lists the paths that were not run)."""
    need("native")
    try:
        kernels.cpu_path(path, weight_dtype)
    except ValueError as exc:
        pytest.skip(f"CPU path {path!r} not run on this CPU: {exc}")


def rounded(x, w_in, b_in, w_out, weight_dtype):
    """The inputs as the kernel sees them: with bfloat16 weights, x, w_in and w_out rounded to bfloat16."""
    if weight_dtype != BF16:
        return x, w_in, b_in, w_out
    return x.bfloat16().float(), w_in.bfloat16().float(), b_in, w_out.bfloat16().float()


def run_path(x, w_in, b_in, w_out, depth, n_trees, path, weight_dtype, **kw):
    """The native kernel on one path; returns (y, route) and checks them against the reference."""
    y, route = fff_forward(x, w_in, b_in, w_out, depth, n_trees, "native", isa=path, weight_dtype=weight_dtype,
                           return_route=True, **kw)
    assert_conforms(y, route, *rounded(x, w_in, b_in, w_out, weight_dtype), depth, n_trees)
    return y, route


@pytest.mark.parametrize("path,weight_dtype", PATH_CASES, ids=PATH_IDS)
@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_cpu_path_conformance(path, weight_dtype, version):
    """Every version on every CPU path and weight dtype (v1 is the plain loop whatever the path): odd H
    (masked and scalar tails), batches 0..130, 1..4 trees, depth 0..11."""
    need_path(path, weight_dtype)
    seed = zlib.crc32(f"{path}{weight_dtype}{version}".encode())
    for rng, depth, n_trees, h_in, h_out, batch in random_cases(30, seed=seed):
        x, w_in, b_in, w_out = make_case(rng, depth, n_trees, h_in, h_out, batch)
        run_path(x, w_in, b_in, w_out, depth, n_trees, path, weight_dtype, version=version)


@pytest.mark.parametrize("path,weight_dtype", PATH_CASES, ids=PATH_IDS)
def test_cpu_path_vector_edges(path, weight_dtype):
    """H on both sides of every vector width and strip (8, 16, 32, 64, 128 elements), with runs of >= 4
    tokens at a node (the multi-token dot) and without."""
    need_path(path, weight_dtype)
    for h in (1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 144, 200, 257):
        for batch in (1, 70):
            x, w_in, b_in, w_out = make_case(random.Random(h * 1000 + batch), 3, 2, h, h, batch)
            run_path(x, w_in, b_in, w_out, 3, 2, path, weight_dtype)


@pytest.mark.parametrize("path,weight_dtype", PATH_CASES, ids=PATH_IDS)
@pytest.mark.parametrize("depth,n_trees,h,batch", [(11, 1, 768, 3000), (7, 3, 101, 2500), (11, 2, 33, 1)])
def test_cpu_path_large(path, weight_dtype, depth, n_trees, h, batch):
    """1x11 at H = 768 over 3000 tokens takes the two-pass kernel with streamed stores into a huge-page output."""
    need_path(path, weight_dtype)
    x, w_in, b_in, w_out = make_case(random.Random(depth), depth, n_trees, h, h, batch, scale=0.02)
    y, _ = run_path(x, w_in, b_in, w_out, depth, n_trees, path, weight_dtype)
    out = torch.empty_like(y)  # the same through out=, which need not be 64-byte aligned
    fff_forward(x, w_in, b_in, w_out, depth, n_trees, "native", isa=path, weight_dtype=weight_dtype, out=out)
    torch.testing.assert_close(out, y, rtol=0, atol=0)


@pytest.mark.parametrize("path,weight_dtype", PATH_CASES, ids=PATH_IDS)
def test_cpu_path_ties_go_left(path, weight_dtype):
    need_path(path, weight_dtype)
    x, w_in, b_in, w_out = make_case(random.Random(0), 4, 2, 19, 5, 9)
    x.zero_()
    b_in.zero_()
    y, route = fff_forward(x, w_in, b_in, w_out, 4, 2, "native", isa=path, weight_dtype=weight_dtype,
                           return_route=True)
    left = [2**level - 1 for level in range(5)]
    assert (route == torch.tensor([t * n_nodes(4) + i for t in range(2) for i in left], dtype=route.dtype)).all()
    assert torch.equal(y, torch.zeros_like(y))


@pytest.mark.parametrize(
    "flags,want,want_bf16",
    [((), "scalar", "scalar"), (AVX2_ONLY, "avx2", "avx2"), (AVX512, "avx512", "avx512"),
     (AVX512_BF16, "avx512", "avx512_bf16"),
     (tuple(f for f in AVX512 if f != "avx512bw"), "avx2", "avx2"),  # F without BW (Knights Landing): not ours
     (AVX2_ONLY + ("avx512_bf16",), "avx2", "avx2"),  # BF16 alone is not enough
     (("avx2",), "scalar", "scalar")],  # AVX2 without FMA
    ids=["none", "avx2-only", "avx512", "avx512-bf16", "avx512-no-bw", "avx2-bf16", "avx2-no-fma"],
)
def test_dispatcher_picks_a_path_the_cpu_supports(monkeypatch, flags, want, want_bf16):
    """The dispatcher with the CPU flags mocked: the widest supported path, never one the flags lack; forcing
    a missing path is an error naming the missing flags. The kernel then runs the pick where the real CPU can,
    and refuses it where it cannot (its own cpuid check)."""
    need("native")
    monkeypatch.setattr(kernels, "_cpu_flags", lambda: flags)
    monkeypatch.delenv(kernels.ISA_ENV, raising=False)
    for dtype, pick, names in ((torch.float32, want, FP32_PATHS), (BF16, want_bf16, list(kernels.CPU_PATHS))):
        assert kernels.cpu_path(weight_dtype=dtype) == pick == kernels.cpu_path("auto", dtype)
        n = names.index(pick) + 1
        assert kernels.cpu_paths(dtype) == names[:n]
        for path in names[n:]:
            with pytest.raises(ValueError, match=f"the {path} path needs the CPU flags [a-z0-9_, ]+, which this CPU"):
                kernels.cpu_path(path, dtype)
    with pytest.raises(ValueError, match="the avx512_bf16 path is for bfloat16 weights only"):
        kernels.cpu_path("avx512_bf16")
    x, w_in, b_in, w_out = make_case(random.Random(6), 5, 2, 40, 24, 70)
    for dtype, pick in ((torch.float32, want), (BF16, want_bf16)):
        if pick in real_paths(dtype):
            y, route = fff_forward(x, w_in, b_in, w_out, 5, 2, "native", weight_dtype=dtype, return_route=True)
            assert_conforms(y, route, *rounded(x, w_in, b_in, w_out, dtype), 5, 2)
        else:
            with pytest.raises(ValueError, match=f"the {pick} path needs"):
                fff_forward(x, w_in, b_in, w_out, 5, 2, "native", weight_dtype=dtype)


def real_paths(weight_dtype=torch.float32) -> list[str]:
    """The paths of the real CPU (cpuid), whatever a test mocks."""
    mod = kernels.load_extension("native")
    bf16 = weight_dtype == BF16
    return [p for p in kernels.CPU_PATHS if _supported(mod, p, bf16)]


def _supported(mod, path, bf16):
    try:
        mod.pick_isa(path, mod.cpu_features(), bf16)
        return True
    except ValueError:
        return False


def test_dispatcher_real_cpu_and_environment(monkeypatch):
    """On the real CPU: auto is the widest supported path; UFKIT_FFF_ISA forces one, isa= beats it; unknown
    names are refused, by the Python wrapper and by the op itself."""
    need("native")
    monkeypatch.delenv(kernels.ISA_ENV, raising=False)
    paths = real_paths()
    assert paths[0] == "scalar" and kernels.cpu_paths() == paths and kernels.cpu_path() == paths[-1]
    assert kernels.cpu_paths(BF16) == real_paths(BF16)
    x, w_in, b_in, w_out = make_case(random.Random(8), 6, 1, 48, 16, 33)
    ref = fff_reference(x, w_in, b_in, w_out, 6, 1)
    for path in paths:
        monkeypatch.setenv(kernels.ISA_ENV, path)
        assert kernels.cpu_path() == path and kernels.cpu_path("scalar") == "scalar"
        torch.testing.assert_close(fff_forward(x, w_in, b_in, w_out, 6, 1, "native"), ref, rtol=1e-5, atol=1e-6)
    monkeypatch.setenv(kernels.ISA_ENV, "avx1024")
    with pytest.raises(ValueError, match="UFKIT_FFF_ISA='avx1024': isa must be"):
        kernels.cpu_path()
    with pytest.raises(ValueError, match="UFKIT_FFF_ISA"):
        fff_forward(x, w_in, b_in, w_out, 6, 1, "native")
    fff_forward(x, w_in, b_in, w_out, 6, 1, "torch_gather")  # only the native backend reads it
    mod = kernels.load_extension("native")
    wt = kernels.transposed_weight(w_out)
    no_route = torch.empty(0, 0, dtype=torch.int32)
    with pytest.raises(ValueError, match="isa must be"):
        mod.forward(x, w_in, b_in, wt, 6, 1, 0, no_route, None, "sse")
    for path in set(FP32_PATHS) - set(paths):  # the op's own guard, on a CPU without AVX-512 or AVX2
        with pytest.raises(ValueError, match=f"the {path} path needs"):
            mod.forward(x, w_in, b_in, wt, 6, 1, 0, no_route, None, path)
    for path in set(kernels.CPU_PATHS) - set(real_paths(BF16)):
        with pytest.raises(ValueError, match=f"the {path} path needs"):
            mod.forward(x, w_in.bfloat16(), b_in, wt.bfloat16(), 6, 1, 0, no_route, None, path)


def test_cpu_paths_agree():
    """Every supported path on one real-size input: the same routes, outputs within float32 rounding."""
    need("native")
    x, w_in, b_in, w_out = make_case(random.Random(9), 11, 1, 768, 768, 300, scale=0.02)
    for dtype in (torch.float32, BF16):
        paths = real_paths(dtype)
        outs = {p: fff_forward(x, w_in, b_in, w_out, 11, 1, "native", isa=p, weight_dtype=dtype, return_route=True)
                for p in paths}
        y0, r0 = outs[paths[-1]]
        for p in paths:
            assert torch.equal(outs[p][1], r0), p
            torch.testing.assert_close(outs[p][0], y0, rtol=1e-4, atol=1e-5)


def test_bf16_weights_arguments_and_cache():
    need("native")
    x, w_in, b_in, w_out = make_case(random.Random(10), 4, 2, 24, 12, 9)
    with pytest.raises(ValueError, match="weight_dtype must be"):
        fff_forward(x, w_in, b_in, w_out, 4, 2, "native", weight_dtype=torch.float16)
    with pytest.raises(ValueError, match="needs the native backend"):
        fff_forward(x, w_in, b_in, w_out, 4, 2, "torch_gather", weight_dtype=BF16)
    with pytest.raises(ValueError, match="float32"):  # bf16 weights are made from float32 ones
        fff_forward(x, w_in.bfloat16(), b_in, w_out.bfloat16(), 4, 2, "native", weight_dtype=BF16)
    mod = kernels.load_extension("native")
    wi, wt = kernels.bfloat16_weights(w_in, w_out)
    assert wi.dtype == wt.dtype == BF16 and wt.shape == (w_out.shape[1], w_out.shape[0])
    with pytest.raises(ValueError, match="wt_out must be bfloat16"):
        mod.forward(x, wi, b_in, wt.float(), 4, 2, 0, torch.empty(0, 0, dtype=torch.int32), None, "auto")
    y = fff_forward(x, w_in, b_in, w_out, 4, 2, weight_dtype=BF16)  # auto: native
    torch.testing.assert_close(y, fff_reference(*rounded(x, w_in, b_in, w_out, BF16), 4, 2), rtol=1e-5, atol=1e-6)
    w_out.mul_(2.0)  # the cached bf16 copy follows an in-place update
    y2 = fff_forward(x, w_in, b_in, w_out, 4, 2, "native", weight_dtype=BF16)
    torch.testing.assert_close(y2, 2 * y, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not on PATH")
def test_native_build_runs_on_any_x86_64():
    """One build for every CPU: outside the routines the dispatcher guards (named *avx2* / *avx512*), the
    compiled extension has no AVX instruction at all (none VEX/EVEX-encoded, no ymm/zmm/mask register), so
    a CPU without AVX-512 (or AVX) never meets one unless its cpuid said yes."""
    need("native")
    so = next((kernels.build_dir() / "native").glob("ufkit_fff_native*.so"))
    asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", str(so)], capture_output=True, text=True,
                         check=True).stdout
    vector_fns, offenders, fn = set(), set(), "?"
    for line in asm.splitlines():
        if line.endswith(">:"):
            fn = line.split("<", 1)[1][:-2]
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        insn = parts[1].strip()
        if insn.startswith("v") or any(r in insn for r in ("%ymm", "%zmm", "%k1", "%k2", "%k3", "%k4", "%k5")):
            (vector_fns if "avx" in fn else offenders).add(fn)
    assert not offenders, sorted(offenders)[:5]
    assert any("avx512" in f for f in vector_fns) and any("avx2" in f for f in vector_fns)


def test_bench_records_the_cpu_path():
    """The fff bench names the path of every row; isa="all" times each supported native path, for float32
    and for bfloat16 weights (beside the bfloat16 dense baseline)."""
    need("native")
    from ufkit.fff.bench import bench_fff

    df = bench_fff(("native", "native_bf16", "torch_gather", "dense_torch", "dense_torch_bf16"), configs=((1, 3),),
                   batches=(5,), hidden_size=17, threads=1, n_warmup=0, n_iters=1, dense_widths=(15,), isa="all")
    assert list(df[df.backend == "native"].cpu_path) == real_paths()
    assert list(df[df.backend == "native_bf16"].cpu_path) == real_paths(BF16)
    others = df[~df.backend.str.startswith("native")]
    assert len(others) == 3 and others.cpu_path.str.startswith("torch-").all()
    assert (df[df.backend == "native_bf16"].gbytes_per_s > 0).all()
    df = bench_fff(("native", "native_bf16"), configs=((1, 3),), batches=(5,), hidden_size=17, threads=1,
                   n_warmup=0, n_iters=1)
    assert list(df.cpu_path) == [kernels.cpu_path(), kernels.cpu_path(weight_dtype=BF16)]
    with pytest.raises(ValueError, match="isa must be"):
        bench_fff(("native",), configs=((1, 3),), batches=(5,), hidden_size=17, n_iters=1, isa="avx1024")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_exact_ties_go_left(backend):
    """x = 0 and b = 0 give z = 0 exactly at every node: every tree walks its left spine 0, 1, 3, 7, ..."""
    need(backend)
    depth, n_trees = 4, 2
    x, w_in, b_in, w_out = make_case(random.Random(0), depth, n_trees, 9, 5, 4)
    x.zero_()
    b_in.zero_()
    y, route = fff_forward(x, w_in, b_in, w_out, depth, n_trees, backend=backend, return_route=True)
    left = [2**level - 1 for level in range(depth + 1)]
    want = torch.tensor([t * n_nodes(depth) + i for t in range(n_trees) for i in left], dtype=route.dtype)
    assert (route == want).all()
    assert torch.equal(y, torch.zeros_like(y))  # GELU(0) = 0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_noncontiguous_and_3d(backend):
    need(backend)
    rng = random.Random(1)
    _, w_in, b_in, w_out = make_case(rng, 6, 2, 17, 13, 1)
    base = torch.randn(3, 40, 2 * 17)
    x = base[:, :, ::2]  # (3, 40, 17), stride 2 in the hidden dimension
    assert not x.is_contiguous()
    y, route = fff_forward(x, w_in, b_in, w_out, 6, 2, backend=backend, return_route=True)
    assert y.shape == (3, 40, 13) and route.shape == (3, 40, 14)
    assert_conforms(y.reshape(120, 13), route.reshape(120, 14), x.reshape(120, 17), w_in, b_in, w_out, 6, 2)
    xt = torch.randn(17, 50).t()  # (50, 17), transposed
    w_out_t = torch.randn(w_out.shape[1], 13).t()  # (13, 254), a non-contiguous weight
    w_in_t = torch.randn(17, w_in.shape[0]).t() * 0.2  # (254, 17)
    for wi, wo in ((w_in, w_out), (w_in, w_out_t), (w_in_t, w_out_t)):
        y, route = fff_forward(xt, wi, b_in, wo, 6, 2, backend=backend, return_route=True)
        assert_conforms(y, route, xt, wi, b_in, wo, 6, 2)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_out_argument(backend):
    need(backend)
    x, w_in, b_in, w_out = make_case(random.Random(2), 5, 1, 31, 7, 20)
    out = torch.full((20, 7), float("nan"))
    y = fff_forward(x, w_in, b_in, w_out, 5, 1, backend=backend, out=out)
    assert y.data_ptr() == out.data_ptr()
    torch.testing.assert_close(out, fff_reference(x, w_in, b_in, w_out, 5, 1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="out"):
        fff_forward(x, w_in, b_in, w_out, 5, 1, backend=backend, out=torch.empty(20, 8))


def test_prepacked_weight_follows_inplace_updates():
    """The cached transpose of w_out must not go stale after an in-place update (e.g. an optimizer step)."""
    x, w_in, b_in, w_out = make_case(random.Random(3), 3, 1, 8, 6, 5)
    fff_forward(x, w_in, b_in, w_out, 3, 1, backend="torch_gather")
    w_out.mul_(2.0)
    torch.testing.assert_close(
        fff_forward(x, w_in, b_in, w_out, 3, 1, backend="torch_gather"), fff_reference(x, w_in, b_in, w_out, 3, 1)
    )


def test_prepacked_cache_keeps_every_layer_of_a_deep_model(monkeypatch):
    """16 layers' transposes stay cached (a 16-layer model must not re-pack every layer on every call); past
    PACKED_MAX_BYTES the least recently used copy goes first."""
    made = []

    def count(w):
        made.append(w)
        return w.t().contiguous()
    monkeypatch.setattr(kernels, "_packed", type(kernels._packed)())
    weights = [torch.randn(4, 7) for _ in range(16)]  # 112 bytes per copy
    for _ in range(3):
        for w in weights:
            kernels._prepacked(w, "t", count)
    assert len(made) == 16
    monkeypatch.setattr(kernels, "PACKED_MAX_BYTES", 3 * 112)
    kernels._packed.clear()
    made.clear()
    for w in weights[:3]:
        kernels._prepacked(w, "t", count)  # room for exactly these three
    kernels._prepacked(weights[0], "t", count)  # a hit: 0 is now the most recent
    kernels._prepacked(weights[3], "t", count)  # evicts 1, the least recent
    assert len(made) == 4 and len(kernels._packed) == 3
    kernels._prepacked(weights[0], "t", count)
    kernels._prepacked(weights[2], "t", count)
    assert len(made) == 4
    kernels._prepacked(weights[1], "t", count)
    assert len(made) == 5


@pytest.mark.parametrize("backend", ["auto"] + CPU_BACKENDS)
def test_training_form_equals_inference_form(backend):
    need(backend)
    torch.manual_seed(0)
    layer = FFF(23, 19, depth=5, n_trees=3, backend=backend)
    x = torch.randn(4, 11, 23)
    y_train = layer.train()(x)
    y_train.sum().backward()  # the training form is differentiable
    assert layer.linear_in.weight.grad is not None and layer.linear_out.weight.grad is not None
    y_eval = layer.eval()(x)
    torch.testing.assert_close(y_eval, y_train.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        fff_training_form(x, *[p.detach() for p in (layer.linear_in.weight, layer.linear_in.bias)],
                          layer.linear_out.weight.detach(), 5, 3),
        fff_reference(x, layer.linear_in.weight, layer.linear_in.bias, layer.linear_out.weight, 5, 3).detach(),
        rtol=1e-5, atol=1e-6,
    )


def test_float64_reference_and_torch_gather():
    x, w_in, b_in, w_out = (t.double() for t in make_case(random.Random(4), 4, 2, 13, 9, 33))
    torch.testing.assert_close(
        fff_forward(x, w_in, b_in, w_out, 4, 2, backend="auto"), fff_reference(x, w_in, b_in, w_out, 4, 2)
    )


def test_routing_introspection():
    torch.manual_seed(0)
    layer = FFF(16, 16, depth=3, n_trees=2)
    x = torch.randn(5, 7, 16)
    visited = layer.visited_nodes(x)
    assert visited.shape == (5, 7, 2, 4)
    n = n_nodes(3)
    assert (visited[..., 0, 0] == 0).all() and (visited[..., 1, 0] == n).all()  # roots
    within = visited - torch.tensor([0, n]).view(2, 1)  # index within each tree
    assert ((within[..., 1:] == 2 * within[..., :-1] + 1) | (within[..., 1:] == 2 * within[..., :-1] + 2)).all()
    usage = layer.node_usage(x)
    assert usage.shape == (2, n)
    for level in range(4):
        assert (usage[:, 2**level - 1 : 2 ** (level + 1) - 1].sum(dim=1) == 35).all()  # every token, every level
    assert torch.equal(usage, node_usage(x, layer.linear_in.weight, layer.linear_in.bias, 3, 2))
    assert torch.equal(visited, fff_route(x, layer.linear_in.weight, layer.linear_in.bias, 3, 2))
    assert layer.flops_per_token()["dense"] / layer.flops_per_token()["fff"] == n / 4


def test_1x11_uses_12_of_4095():
    layer = FFF(768, 768, depth=11, n_trees=1)
    assert layer.width == 4095
    f = layer.flops_per_token()
    assert round(f["dense"] / f["fff"], 2) == 341.25


# ---- boundary checks ---------------------------------------------------------------------------------


def _good():
    x, w_in, b_in, w_out = make_case(random.Random(5), 2, 2, 6, 4, 3)
    return dict(x=x, w_in=w_in, b_in=b_in, w_out=w_out, depth=2, n_trees=2)


@pytest.mark.parametrize("backend", ["auto"] + CPU_BACKENDS)
@pytest.mark.parametrize(
    "change,match",
    [
        (dict(w_in=torch.randn(13, 6)), "w_in"),  # 2 trees of depth 2 need 14 rows
        (dict(w_in=torch.randn(14, 5)), "w_in"),
        (dict(b_in=torch.randn(13)), "b_in"),
        (dict(w_out=torch.randn(4, 15)), "w_out"),
        (dict(w_out=torch.randn(56)), "w_out"),
        (dict(depth=3), "w_in"),  # weights sized for depth 2
        (dict(n_trees=3), "w_in"),
        (dict(depth=-1), "depth"),
        (dict(n_trees=0), "n_trees"),
        (dict(x=torch.randn(3, 6, dtype=torch.float64)), "dtype"),
        (dict(x=torch.ones(3, 6, dtype=torch.int64)), "x"),
        (dict(x=torch.randn(3, 6, device="meta")), "device|on meta"),
        (dict(x=torch.tensor(1.0)), "x"),
        (dict(w_in="weights"), "w_in"),
    ],
)
def test_value_errors(backend, change, match):
    need(backend)
    args = _good()
    args.update(change)
    with pytest.raises(ValueError, match=match):
        fff_forward(**args, backend=backend)
    if backend == "auto":
        with pytest.raises(ValueError, match=match):
            fff_reference(**args)


def test_value_errors_backend_and_module():
    args = _good()
    with pytest.raises(ValueError, match="backend"):
        fff_forward(**args, backend="fast")
    for backend in COMPILED:  # compiled backends are float32-only
        need(backend)
        with pytest.raises(ValueError, match="float32"):
            fff_forward(**{k: (v.double() if torch.is_tensor(v) else v) for k, v in args.items()}, backend=backend)
    with pytest.raises(ValueError, match="depth"):
        FFF(8, 8, depth=-2)
    with pytest.raises(ValueError, match="n_trees"):
        FFF(8, 8, depth=2, n_trees=0)


def test_auto_falls_back_with_one_warning(monkeypatch):
    def broken(backend, verbose=False):
        raise RuntimeError(f"building the {backend} backend failed: simulated")

    monkeypatch.setattr(kernels, "load_extension", broken)
    monkeypatch.setattr(kernels, "_warned", set())
    args = _good()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y1 = fff_forward(**args)
        y2 = fff_forward(**args)
    assert len([w for w in caught if "simulated" in str(w.message)]) == 2  # one per compiled CPU backend, once
    torch.testing.assert_close(y1, fff_reference(**args))
    torch.testing.assert_close(y2, y1)


def test_auto_prefers_native_on_cpu():
    need("native")
    assert kernels._auto(torch.device("cpu"), torch.float32) == "native"


def test_mkl_is_the_pypi_library_and_dense_baseline_matches():
    need("mkl")
    mod = kernels.load_extension("mkl")
    assert "libmkl_rt" in Path(mod.library()).name
    torch.manual_seed(0)
    l1, l2 = torch.nn.Linear(35, 61), torch.nn.Linear(61, 29)
    x = torch.randn(70, 35)
    with torch.no_grad():
        ref = l2(torch.nn.functional.gelu(l1(x)))
    torch.testing.assert_close(mod.dense_ff(x, l1.weight, l1.bias, l2.weight, l2.bias), ref, rtol=1e-5, atol=1e-5)


# ---- CUDA ------------------------------------------------------------------------------------------------


CUDA_SOURCES = sorted(kernels.CUDA_DIR.glob("*.cu"))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=[p.name for p in CUDA_SOURCES])
def test_cuda_sources_compile(source, tmp_path):
    """Every .cu compiles alone with nvcc -c (no GPU and no torch headers needed)."""
    out = tmp_path / (source.stem + ".o")
    proc = subprocess.run(
        ["nvcc", "-c", "-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-o", str(out), str(source)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0


def test_cuda_sources_exist():
    assert CUDA_SOURCES, "no cuda/*.cu sources"
    for src in CUDA_SOURCES:
        includes = [line for line in src.read_text().splitlines() if line.lstrip().startswith("#include")]
        assert not [i for i in includes if "torch" in i or "ATen" in i or "c10" in i], f"{src.name} includes torch"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_cuda_binding_builds_and_checks_devices():
    """The binding links against the CUDA objects with any torch wheel and rejects CPU tensors."""
    mod = kernels.load_extension("cuda")
    with pytest.raises(ValueError, match="x must be a CUDA tensor"):
        mod.forward(torch.randn(2, 3), torch.randn(3, 3), torch.randn(3), torch.randn(3, 3), 0, 3, 0,
                    torch.empty(0), None, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_conformance():
    for rng, depth, n_trees, h_in, h_out, batch in random_cases(100, seed=7):
        x, w_in, b_in, w_out = (t.cuda() for t in make_case(rng, depth, n_trees, h_in, h_out, batch))
        for version in (1, 2):
            y, route = fff_forward(x, w_in, b_in, w_out, depth, n_trees, "cuda", version=version, return_route=True)
            assert_conforms(y.cpu(), route.cpu(), x.cpu(), w_in.cpu(), b_in.cpu(), w_out.cpu(), depth, n_trees)
