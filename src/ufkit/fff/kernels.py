"""Inference-form kernels of a fast feedforward layer, behind one function: :func:`fff_forward`.

Backends (Belcak & Wattenhofer 2023, arXiv:2311.10770, for the method; ``torch_gather`` mirrors its "PyTorch
BMM" implementation and ``native`` is the fused native implementation it proposes):

``torch_gather``
    PyTorch only: per level, gather each token's row of ``w_in`` and take a batched dot product (``bmm``);
    at the end one batched product with the gathered output rows. Any device, any float dtype.
``native``
    C++ (ATen + OpenMP through torch's thread pool), fused: routing, GELU and the output sum in one pass
    (``cpp/fff_native.cpp``). float32, CPU; optionally bfloat16 weights (``weight_dtype=torch.bfloat16``).
    One build holds several *CPU paths* of its vector routines, ``"scalar"``, ``"avx2"`` (AVX2+FMA),
    ``"avx512"`` (AVX-512 F/BW/VL/DQ) and, for bfloat16 weights, ``"avx512_bf16"`` (dot products on
    ``vdpbf16ps``); at run time it takes the widest the CPU supports (:func:`cpu_path`), or the one named by
    ``fff_forward(isa=...)`` or the environment variable ``UFKIT_FFF_ISA``.
``mkl``
    C++ calling Intel MKL from the PyPI ``mkl`` package (``cpp/fff_mkl.cpp``). float32, CPU.
``cuda``
    CUDA kernels in ``cuda/*.cu`` (plain CUDA, compiled by ``nvcc``), bound to torch in ``cpp/fff_cuda.cpp``.
    float32, CUDA tensors.
``auto``
    The fastest backend available for the tensors' device; if a JIT build fails it falls back to
    ``torch_gather`` with one warning.

C++ and CUDA sources (``cpp/`` and ``cuda/`` of the source checkout, so the compiled backends need ufkit to run
from one, e.g. an editable install) are JIT-compiled on first use with ``torch.utils.cpp_extension.load``
(ninja) and cached in :func:`build_dir` (environment variable ``UFKIT_BUILD_DIR``, default
``$UFKIT_HOME/.cache/build/...``). ``UFKIT_CUDA_ARCH`` (e.g. ``sm_90``) picks the GPU target of ``nvcc``;
by default the visible GPU's, else nvcc's default.
"""

from __future__ import annotations

import glob
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import torch

from .. import config
from .reference import check_fff_args, n_nodes

__all__ = [
    "BACKENDS",
    "CPU_PATHS",
    "cpu_path",
    "cpu_paths",
    "fff_forward",
    "available_backends",
    "build_dir",
    "load_extension",
    "transposed_weight",
    "bfloat16_weights",
]

BACKENDS = ("torch_gather", "native", "mkl", "cuda")
#: The native kernel's CPU paths, narrowest first (see :func:`cpu_path`); ``avx512_bf16`` is for bfloat16 weights.
CPU_PATHS = ("scalar", "avx2", "avx512", "avx512_bf16")
#: Weight dtypes of the native kernel (x and the output are float32 with either).
WEIGHT_DTYPES = (torch.float32, torch.bfloat16)
#: Environment variable that forces a CPU path of the native kernel (``auto`` or a name of :data:`CPU_PATHS`).
ISA_ENV = "UFKIT_FFF_ISA"
ROOT = Path(__file__).resolve().parents[3]  # the source checkout: cpp/ and cuda/ live here
CPP_DIR = ROOT / "cpp"
CUDA_DIR = ROOT / "cuda"

_lock = threading.Lock()
_modules: dict[str, object] = {}
_failed: dict[str, str] = {}
_warned: set[str] = set()


# ---- building ------------------------------------------------------------------------------------------


def build_dir() -> Path:
    """Where JIT builds are cached: ``UFKIT_BUILD_DIR`` or ``$UFKIT_HOME/.cache/build/<torch>-<python>-<machine>``.

    The torch and Python versions are in the default name because an extension is only valid for the ones it
    was built against.
    """
    env = os.environ.get("UFKIT_BUILD_DIR")
    if env:
        path = Path(env).expanduser()
    else:
        tag = f"torch{torch.__version__.replace('+', '_')}-py{sys.version_info[0]}{sys.version_info[1]}-{platform.machine()}"
        path = config.home() / ".cache" / "build" / tag
    path.mkdir(parents=True, exist_ok=True)
    return path


def _mkl_paths() -> tuple[Path, Path]:
    """(include dir with mkl.h, libmkl_rt shared library) from the PyPI ``mkl-devel``/``mkl`` packages."""
    prefixes = [Path(sys.prefix), Path(sysconfig.get_paths()["data"])]
    for prefix in prefixes:
        inc = prefix / "include"
        libs = sorted(glob.glob(str(prefix / "lib" / "libmkl_rt.so*")))
        if (inc / "mkl.h").is_file() and libs:
            return inc, Path(libs[-1])  # e.g. libmkl_rt.so.3: PyPI ships no unversioned link
    raise RuntimeError("Intel MKL not found: pip install mkl-devel (needs mkl.h and libmkl_rt.so.* under sys.prefix)")


def _nvcc() -> str | None:
    nvcc = shutil.which("nvcc")
    if nvcc is None and os.environ.get("CUDA_HOME"):
        cand = Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc"
        nvcc = str(cand) if cand.is_file() else None
    return nvcc


def _cuda_home() -> Path | None:
    """The CUDA toolkit root: ``CUDA_HOME``/``CUDA_PATH``, else ``/usr/local/cuda``, else nvcc's grandparent."""
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env):
            return Path(os.environ[env])
    if Path("/usr/local/cuda/bin/nvcc").is_file():
        return Path("/usr/local/cuda")
    nvcc = shutil.which("nvcc")
    return Path(nvcc).resolve().parents[1] if nvcc else None


def _compile_cuda_objects(out: Path, verbose: bool) -> list[str]:
    """``nvcc -c`` every ``cuda/*.cu`` into ``out``; returns the object paths (rebuilt when a source changes)."""
    nvcc = _nvcc()
    if nvcc is None:
        raise RuntimeError("nvcc not found: the cuda backend needs the CUDA toolkit")
    arch = os.environ.get("UFKIT_CUDA_ARCH")
    if not arch and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        arch = f"sm_{major}{minor}"
    objs = []
    for src in sorted(CUDA_DIR.glob("*.cu")):
        key = src.read_bytes() + (CUDA_DIR / "fff_cuda.h").read_bytes() + (arch or "").encode()
        obj = out / f"{src.stem}-{hashlib.sha1(key).hexdigest()[:12]}.o"
        if not obj.is_file():
            cmd = [nvcc, "-c", "-O3", "-Xcompiler", "-fPIC", "-std=c++17", "-o", str(obj), str(src)]
            if arch:
                cmd[2:2] = [f"-arch={arch}"]
            if verbose:
                print(" ".join(cmd))
            subprocess.run(cmd, check=True, capture_output=not verbose)
        objs.append(str(obj))
    return objs


def load_extension(backend: str, verbose: bool = False):
    """Build (first call) or load (later calls) the compiled module of ``backend`` (``"native"``, ``"mkl"``,
    ``"cuda"``): the op namespace ``torch.ops.ufkit_<backend>``. Raises ``RuntimeError`` when the build
    fails; the failure is remembered for the process."""
    if backend not in ("native", "mkl", "cuda"):
        raise ValueError(f"backend must be 'native', 'mkl' or 'cuda' to have an extension, got {backend!r}")
    with _lock:
        if backend in _modules:
            return _modules[backend]
        if backend in _failed:
            raise RuntimeError(_failed[backend])
        from torch.utils.cpp_extension import load

        out = build_dir() / backend
        out.mkdir(parents=True, exist_ok=True)
        cflags = ["-O3", "-fopenmp"]
        ldflags = ["-fopenmp"]  # links libgomp.so.1, the one torch has already loaded
        includes = [str(CPP_DIR)]
        sources = []
        try:
            if backend == "native":
                sources = [str(CPP_DIR / "fff_native.cpp"), str(CPP_DIR / "leaf_fff.cpp")]
            elif backend == "mkl":
                inc, _ = _mkl_paths()
                includes.append(str(inc))
                sources = [str(CPP_DIR / "fff_mkl.cpp")]
            else:
                includes.append(str(CUDA_DIR))
                objs = _compile_cuda_objects(out, verbose)
                cuda_home = _cuda_home()
                libdirs = [p for p in (cuda_home / "lib64", cuda_home / "lib") if p.is_dir()]
                ldflags += objs + [f"-L{p}" for p in libdirs] + ["-lcudart"]
                sources = [str(CPP_DIR / "fff_cuda.cpp")]
            # The sources register torch ops (TORCH_LIBRARY, ATen headers only, no pybind11): they build
            # in seconds and appear as torch.ops.ufkit_<backend>.*.
            load(
                name=f"ufkit_fff_{backend}",
                sources=sources,
                extra_cflags=cflags,
                extra_ldflags=ldflags,
                extra_include_paths=includes,
                build_directory=str(out),
                verbose=verbose,
                is_python_module=False,
            )
            mod = getattr(torch.ops, f"ufkit_{backend}")
            if backend == "mkl":
                mod.init(str(_mkl_paths()[1]))  # dlopen MKL, select the GNU OpenMP threading layer
        except Exception as exc:  # noqa: BLE001 - any build error means "backend unavailable"
            _failed[backend] = f"building the {backend} backend failed: {type(exc).__name__}: {exc}"
            raise RuntimeError(_failed[backend]) from exc
        _modules[backend] = mod
        return mod


def available_backends(device: str | torch.device = "cpu", build: bool = True) -> list[str]:
    """Backends that run on ``device``; with ``build=True`` the compiled ones are built (or loaded) to check."""
    device = torch.device(device)
    names = ["torch_gather"]
    wanted = ("native", "mkl") if device.type == "cpu" else (("cuda",) if device.type == "cuda" else ())
    for b in wanted:
        if b == "cuda" and not torch.cuda.is_available():
            continue
        if not build:
            names.append(b)
            continue
        try:
            load_extension(b)
            names.append(b)
        except RuntimeError:
            pass
    return names


# ---- CPU paths of the native kernel ------------------------------------------------------------------

_flags: list[tuple[str, ...]] = []


def _cpu_flags() -> tuple[str, ...]:
    """The CPU flags the native kernel's dispatcher sees (cpuid through libgcc, ``/proc/cpuinfo`` names).

    Tests replace this function to mock a CPU; the kernel itself always checks the real flags too.
    """
    if not _flags:
        _flags.append(tuple(load_extension("native").cpu_features()))
    return _flags[0]


_picked: dict[tuple[str, tuple[str, ...], bool], str] = {}


def _weight_dtype(weight_dtype) -> torch.dtype:
    dtype = torch.float32 if weight_dtype is None else weight_dtype
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype must be torch.float32 or torch.bfloat16, got {weight_dtype!r}")
    return dtype


def cpu_path(isa: str | None = None, weight_dtype: torch.dtype | None = None) -> str:
    """The CPU path the native kernel runs: ``"avx512_bf16"`` (bfloat16 weights only), ``"avx512"``, ``"avx2"``
    or ``"scalar"``.

    Args:
        isa: ``"auto"`` (the widest path the CPU supports), or a path of :data:`CPU_PATHS` to force; None reads
            the environment variable ``UFKIT_FFF_ISA``, default ``"auto"``.
        weight_dtype: ``torch.float32`` (default) or ``torch.bfloat16``, the weights the kernel is given.

    Raises:
        ValueError: an unknown name, ``avx512_bf16`` with float32 weights, or a path whose CPU flags this CPU
            lacks (the message names them).
        RuntimeError: the native extension cannot be built (the choice is made by its dispatcher).
    """
    bf16 = _weight_dtype(weight_dtype) == torch.bfloat16
    source = "isa"
    if isa is None:
        isa, source = os.environ.get(ISA_ENV) or "auto", ISA_ENV
    requested = isa.strip().lower()
    flags = _cpu_flags()
    key = (requested, flags, bf16)
    path = _picked.get(key)
    if path is None:
        try:
            path = load_extension("native").pick_isa(requested, list(flags), bf16)
        except ValueError as exc:
            raise ValueError(f"{source}={isa!r}: {exc}") from None
        _picked[key] = path
    return path


def cpu_paths(weight_dtype: torch.dtype | None = None) -> list[str]:
    """The native kernel's CPU paths this CPU supports for ``weight_dtype`` (default float32), narrowest
    first: a subset of :data:`CPU_PATHS`."""
    ok = []
    for p in CPU_PATHS:
        try:
            ok.append(cpu_path(p, weight_dtype))
        except ValueError:
            pass
    return ok


# ---- prepacked weights ---------------------------------------------------------------------------------

_packed: OrderedDict[tuple, tuple] = OrderedDict()
#: Bytes of prepacked copies the cache keeps (least recently used dropped first): enough for every layer of a
#: 16- or 24-layer model with one 1x11 tree per layer (12.6 MB per 768 x 4,095 copy), which a count limit below the
#: layer count would re-pack on every call.
PACKED_MAX_BYTES = 512 << 20


def _prepacked(w: torch.Tensor, kind: str, make) -> torch.Tensor:
    """``make(w)``, cached per (``w``, ``kind``) while ``w`` is unchanged (see :func:`transposed_weight`)."""
    key = (kind, w.data_ptr(), tuple(w.shape), tuple(w.stride()), w.dtype, w.device)
    hit = _packed.get(key)
    if hit is not None and hit[0] is w and hit[1] == w._version:
        _packed.move_to_end(key)
        return hit[2]
    packed = make(w.detach())
    _packed.pop(key, None)
    _packed[key] = (w, w._version, packed)
    held = sum(e[2].numel() * e[2].element_size() for e in _packed.values())
    while held > PACKED_MAX_BYTES and len(_packed) > 1:
        _, (_, _, old) = _packed.popitem(last=False)
        held -= old.numel() * old.element_size()
    return packed


def transposed_weight(w_out: torch.Tensor) -> torch.Tensor:
    """``w_out.t().contiguous()`` (shape `(K*N, H_out)`), cached while ``w_out`` is unchanged.

    A node's output weights are a column of ``w_out``; the kernels want them as one contiguous row. The cache
    keeps a reference to ``w_out`` (so its memory cannot be reused by another tensor) and its version counter
    (so an in-place update such as an optimizer step invalidates the copy). At most
    :data:`PACKED_MAX_BYTES` of copies, least recently used dropped first.
    """
    return _prepacked(w_out, "t", lambda w: w.t().contiguous())  # (K*N, H_out)


def bfloat16_weights(w_in: torch.Tensor, w_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The native kernel's bfloat16 weights: ``w_in`` `(K*N, H_in)` and ``w_out`` transposed, `(K*N, H_out)`,
    rounded to nearest even; cached like :func:`transposed_weight`."""
    wi = _prepacked(w_in, "bf16", lambda w: w.to(torch.bfloat16).contiguous())
    wt = _prepacked(w_out, "t-bf16", lambda w: w.t().to(torch.bfloat16).contiguous())
    return wi, wt


# ---- backends ------------------------------------------------------------------------------------------


def _torch_gather(x2, w_in, b_in, w_out, depth, n_trees, route):
    """Per level: gather each token's row and bmm; then one bmm with the gathered output rows."""
    B, H_in = x2.shape
    N = n_nodes(depth)
    wt = transposed_weight(w_out)  # (K*N, H_out)
    y = x2.new_empty(B, w_out.shape[0])
    # tokens per chunk: the gathered output rows are chunk * K*(D+1) * H_out floats; keep them near 64 MB
    chunk = max(1, min(4096, (16 << 20) // (n_trees * (depth + 1) * max(H_in, w_out.shape[0]))))
    offset = torch.arange(n_trees, device=x2.device) * N  # (K,)
    for s in range(0, B, chunk):
        xc = x2[s : s + chunk]  # (b, H_in)
        b = xc.shape[0]
        node = torch.zeros(b, n_trees, dtype=torch.long, device=x2.device)
        rows, acts = [], []
        for _ in range(depth + 1):
            row = node + offset  # (b, K) global rows
            w = w_in[row]  # (b, K, H_in)
            z = torch.bmm(w, xc.unsqueeze(-1)).squeeze(-1) + b_in[row]  # (b, K)
            rows.append(row)
            acts.append(torch.nn.functional.gelu(z))
            node = 2 * node + 1 + (z > 0).long()
        rows = torch.stack(rows, dim=-1).reshape(b, -1)  # (b, K*(D+1)), tree-major
        acts = torch.stack(acts, dim=-1).reshape(b, 1, -1)  # (b, 1, K*(D+1))
        y[s : s + b] = torch.bmm(acts, wt[rows]).squeeze(1)  # (b, 1, L) @ (b, L, H_out)
        if route is not None:
            route[s : s + b] = rows.to(route.dtype)
    return y


def _compiled(backend, x2, w_in, b_in, w_out, depth, n_trees, route, version=None, out=None, isa=None,
              weight_dtype=torch.float32):
    mod = load_extension(backend)
    r = route if route is not None else torch.empty(0, 0, dtype=torch.int32, device=x2.device)
    version = 0 if version is None else version
    if weight_dtype == torch.bfloat16:
        wi, wt = bfloat16_weights(w_in, w_out)
        return mod.forward(x2, wi, b_in.contiguous(), wt, depth, n_trees, version, r, out, cpu_path(isa, weight_dtype))
    wt = transposed_weight(w_out)
    args = (x2, w_in.contiguous(), b_in.contiguous(), wt, depth, n_trees)
    if backend == "native":
        return mod.forward(*args, version, r, out, cpu_path(isa))
    if backend == "mkl":
        return mod.forward(*args, version, r, out)
    stream = torch.cuda.current_stream(x2.device).cuda_stream
    return mod.forward(*args, version, r, out, stream)


def _auto(device: torch.device, dtype: torch.dtype) -> str:
    if dtype != torch.float32:
        return "torch_gather"
    wanted = ["native", "mkl"] if device.type == "cpu" else (["cuda"] if device.type == "cuda" else [])
    for b in wanted:
        try:
            load_extension(b)
            return b
        except RuntimeError as exc:
            if b not in _warned:
                _warned.add(b)
                warnings.warn(f"{exc}; using a slower backend", RuntimeWarning, stacklevel=3)
    return "torch_gather"


def fff_forward(x, w_in, b_in, w_out, depth: int, n_trees: int, backend: str = "auto", *,
                version: int | None = None, return_route: bool = False, out: torch.Tensor | None = None,
                isa: str | None = None, weight_dtype: torch.dtype | None = None):
    """Inference form of a FFF layer: touch only the K*(D+1) visited neurons of each token.

    Args:
        x: `torch.FloatTensor` of shape `(..., H_in)`, e.g. `(batch_size, sequence_length, hidden_size)`;
            any strides.
        w_in: `linear_in.weight`, `(n_trees * N, H_in)` with N = 2**(depth+1) - 1.
        b_in: `linear_in.bias`, `(n_trees * N,)`.
        w_out: `linear_out.weight`, `(H_out, n_trees * N)`; its transpose is prepacked once and cached
            (:func:`transposed_weight`).
        depth, n_trees: D and K.
        backend: ``"auto"``, ``"torch_gather"``, ``"native"``, ``"mkl"`` or ``"cuda"`` (module docstring).
        version: kernel version of a compiled backend (``native``: 1 plain loop, 2 SIMD per token, 3 token
            blocks grouped by node, 4 the same in two passes over a sub-tree that fits L2, for deep trees and
            large batches; ``mkl``: 1; ``cuda``: 1 a thread per token, 2 a warp per token); ``None`` is the
            fastest for the shapes (the native kernel picks 3 or 4).
        return_route: also return the visited nodes.
        out: optional contiguous tensor of shape `(..., H_out)` (x's dtype and device) to write the result
            into, as ``torch.matmul(..., out=)``: saves allocating (and page-faulting) a fresh output.
        isa: CPU path of the ``native`` backend's vector routines (versions 2-4): ``"auto"``, ``"scalar"``,
            ``"avx2"``, ``"avx512"`` or (bfloat16 weights) ``"avx512_bf16"``; None reads ``UFKIT_FFF_ISA``
            (default ``"auto"``, see :func:`cpu_path`). Other backends ignore it.
        weight_dtype: ``torch.float32`` (default) or ``torch.bfloat16``, ``native`` backend only (``"auto"``
            then means ``native``): the kernel reads ``w_in`` and ``w_out`` rounded to bfloat16
            (:func:`bfloat16_weights`, cached) and rounds x to bfloat16 for the routing dot products, whose
            products are summed in float32; b_in, the GELU values and the output sum stay float32. Half the
            weight bytes: for the memory-bound small batches. The result equals :func:`fff_reference` of
            ``x``, ``w_in`` and ``w_out`` rounded to bfloat16 up to float32 rounding (not the float32 layer's
            result: that differs by the weights' rounding, ~0.4 % relative, and a route can differ where a
            pre-activation is that close to 0).

    Returns:
        `torch.FloatTensor` of shape `(..., H_out)` equal to :func:`ufkit.fff.reference.fff_reference` (up to float
        rounding; routing can differ only where a pre-activation is within rounding of 0). With
        ``return_route=True`` a pair ``(y, route)``, route a `torch.IntTensor` `(..., n_trees * (depth + 1))`
        of global node indices, tree by tree, root first.

    Raises:
        ValueError: bad shapes, dtypes (compiled backends need float32), devices, a weight size that does not
            match (n_trees, depth), an unknown backend, (``native``) an ``isa`` this CPU does not support, or a
            ``weight_dtype`` other than float32 and bfloat16 (bfloat16 with a backend other than native).
        RuntimeError: an explicitly requested compiled backend cannot be built.
    """
    if backend not in ("auto",) + BACKENDS:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {backend!r}")
    weight_dtype = _weight_dtype(weight_dtype)
    if weight_dtype == torch.bfloat16:
        if backend not in ("auto", "native"):
            raise ValueError(f"weight_dtype=torch.bfloat16 needs the native backend, got backend={backend!r}")
        backend = "native"
    check_fff_args(x, w_in, b_in, w_out, depth, n_trees, require_float32=backend in ("native", "mkl", "cuda"))
    if backend == "auto":
        backend = _auto(x.device, x.dtype)
    if backend in ("native", "mkl") and x.device.type != "cpu":
        raise ValueError(f"x is on {x.device} but the {backend} backend runs on the CPU")
    if backend == "cuda" and x.device.type != "cuda":
        raise ValueError(f"x is on {x.device} but the cuda backend needs CUDA tensors")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if backend != "torch_gather":
        x2 = x2.contiguous()
    L = n_trees * (depth + 1)
    out2 = None
    if out is not None:
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (*lead, w_out.shape[0]):
            raise ValueError(f"out must be a tensor of shape {(*lead, w_out.shape[0])}")
        if out.dtype != x.dtype or out.device != x.device or not out.is_contiguous():
            raise ValueError(f"out must be contiguous with dtype {x.dtype} on {x.device}")
        out2 = out.view(-1, w_out.shape[0])
    route = torch.empty(x2.shape[0], L, dtype=torch.int32, device=x.device) if return_route else None
    if backend == "torch_gather":
        y = _torch_gather(x2, w_in, b_in, w_out, depth, n_trees, route)
        if out2 is not None:
            y = out2.copy_(y)
    else:
        y = _compiled(backend, x2, w_in, b_in, w_out, depth, n_trees, route, version, out2, isa, weight_dtype)
    y = y.reshape(*lead, w_out.shape[0])
    if return_route:
        return y, route.reshape(*lead, L)
    return y
