"""Which variants can run well on this machine: the CPU features that make them fast, and their optional packages.

:func:`skip_reason` says why a variant is skipped here (None when it runs); :func:`check_runnable` raises
:class:`~ufkit.quantization.common.VariantSkipped` with that reason. :func:`~ufkit.quantization.variants.quantize`,
:func:`~ufkit.quantization.variants.load_variant`, :func:`~ufkit.quantization.variants.evaluate_variants` and
:func:`~ufkit.quantization.variants.benchmark_variants` ask it before they make or run a variant, and record the
reason in their ``skipped`` column (and ``report.json``) rather than skip silently.

======================================  ==========================================================================
``pytorch_bf16``,                       native bf16 arithmetic, ``avx512_bf16`` or ``amx_bf16``
``torch_compile_bf16``                  (:func:`ufkit.measure.machine.native_bf16`). Without it PyTorch emulates
                                        bf16 by converting to fp32 around every op, which is slower than fp32.
``torch_compile_fp32``,                 a C++ compiler: inductor's CPU backend writes and compiles C++ (``$CXX``,
``torch_compile_bf16``                  ``g++``, ``c++`` or ``clang++`` on ``PATH``).
``torchao_int8``,                       ``avx512_vnni``. torchao's int8 linear calls ``torch._int_mm``, whose CPU
``torchao_int8_compiled``               kernel (ATen ``_int_mm_out_cpu``, aten/src/ATen/native/LinearAlgebra.cpp)
                                        calls oneDNN only when ``at::cpu::is_avx512_vnni_supported()``; otherwise
                                        it runs a scalar reference triple loop. AVX-VNNI (256-bit) does not count.
                                        ``torch.compile`` does not help by itself: inductor lowers ``_int_mm`` on
                                        CPU to the same ATen kernel (torch/_inductor/kernel/mm.py,
                                        ``tuned_int_mm``).
``openvino_fp32``, ``openvino_int8``    the ``openvino`` package (``pip install 'ufkit[openvino]'``); making
                                        ``openvino_int8`` needs ``nncf`` as well.
``ctranslate2_int8``                    the ``ctranslate2`` package (``pip install 'ufkit[ctranslate2]'``) with
                                        int8 CPU kernels (``ctranslate2.get_supported_compute_types("cpu")``).
======================================  ==========================================================================

The CPU rules are about speed, not correctness: a user may *force* a variant past them (``force=``, or
``--force NAME`` on the command line) to measure it anyway. A missing package cannot be forced.

Why torchao was slow: issue 13 measured ``torchao_int8`` about 10 times slower than fp32 on a 2-core AVX2-only EPYC.
A microbenchmark of one MiniLM feedforward matrix (16 tokens x 384 -> 1536, one thread) on an AVX512-VNNI CPU,
with oneDNN switched off (``torch.backends.mkldnn.enabled = False``) to take the same fallback, ran
``torch._int_mm`` more than 100 times slower than with oneDNN, and the torchao linear more than 10 times slower
than the fp32 one: the fallback loop alone accounts for the issue's measurement.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from typing import Iterable

from ..measure import machine
from .common import COMPILED, VARIANTS, VariantSkipped

#: The optional extra that installs each variant's backend.
EXTRAS: dict[str, str] = {"openvino_fp32": "openvino", "openvino_int8": "openvino", "ctranslate2_int8": "ctranslate2"}


def is_forced(variant: str, force: bool | Iterable[str] | None) -> bool:
    """True when ``force`` is True or names ``variant``."""
    if force is None or force is False:
        return False
    if force is True:
        return True
    return variant in set(force)


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def cxx_compiler() -> str | None:
    """The C++ compiler inductor would use: ``$CXX``, else ``g++``, ``c++`` or ``clang++`` on ``PATH``; else None."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _missing(package: str, extra: str) -> str:
    return f"the {package} package is not installed (pip install 'ufkit[{extra}]')"


def _cpu_reason(variant: str) -> str | None:
    """Why this CPU would run ``variant`` slowly (a forceable reason), or None."""
    if variant in ("pytorch_bf16", "torch_compile_bf16") and not machine.native_bf16():
        return (f"this CPU ({machine.isa_description()}) has no native bf16 (avx512_bf16 or amx_bf16): PyTorch "
                "would emulate bf16, which is slower than fp32")
    if variant in ("torchao_int8", COMPILED) and not machine.has_cpu_flags("avx512_vnni"):
        return (f"this CPU ({machine.isa_description()}) has no AVX512-VNNI: torch._int_mm, which torchao's int8 "
                "linear calls, then runs ATen's scalar reference loop instead of oneDNN (about 10x slower than "
                "fp32 on an AVX2 EPYC, issue 13)")
    return None


def skip_reason(variant: str, *, force: bool | Iterable[str] | None = None, writing: bool = False) -> str | None:
    """Why ``variant`` is skipped on this machine, in one sentence; None when it can run.

    Args:
        variant: a name from :data:`~ufkit.quantization.common.VARIANTS` (or ``torchao_int8_compiled``).
        force: True, or names of variants to run even where the CPU lacks what makes them fast (a missing
            package or compiler is never forced; forcing ``torchao_int8`` forces its compiled row too).
        writing: also check what making the variant needs (``nncf`` for ``openvino_int8``).

    Returns:
        the reason, or None. Unknown names return None (the callers reject them with their own message).
    """
    if variant in ("torch_compile_fp32", "torch_compile_bf16") and cxx_compiler() is None:
        return "torch.compile's inductor CPU backend needs a C++ compiler (g++ or clang++ on PATH, or $CXX)"
    if variant in ("openvino_fp32", "openvino_int8") and not _has_module("openvino"):
        return _missing("openvino", "openvino")
    if variant == "openvino_int8" and writing and not _has_module("nncf"):
        return _missing("nncf", "openvino")
    if variant == "ctranslate2_int8":
        if not _has_module("ctranslate2"):
            return _missing("ctranslate2", "ctranslate2")
        import ctranslate2

        if "int8" not in ctranslate2.get_supported_compute_types("cpu"):
            return "this CTranslate2 build has no int8 kernels for this CPU"
    reason = _cpu_reason(variant)
    forced = is_forced(variant, force) or (variant == COMPILED and is_forced("torchao_int8", force))
    if reason is not None and not forced:
        return f"{reason}; force it to measure anyway"
    return None


def check_runnable(variant: str, *, force: bool | Iterable[str] | None = None, writing: bool = False) -> None:
    """Raise :class:`~ufkit.quantization.common.VariantSkipped` when :func:`skip_reason` gives a reason.

    Raises:
        VariantSkipped: the variant cannot run well here (CPU) or at all (package, compiler).
    """
    reason = skip_reason(variant, force=force, writing=writing)
    if reason is not None:
        raise VariantSkipped(variant, reason)


def support_table(variants: Iterable[str] | None = None, *, force: bool | Iterable[str] | None = None) -> dict:
    """``{variant: reason or None}`` for ``variants`` (default: every one in :data:`VARIANTS`) on this machine."""
    return {v: skip_reason(v, force=force) for v in (VARIANTS if variants is None else variants)}
