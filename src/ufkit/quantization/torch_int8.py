"""Dynamic int8 quantization of a PyTorch model's linear layers (``torch.ao``), the deployment chapter 4 searches for."""

from __future__ import annotations

import warnings

from torch import nn


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` quantized to int8 (dynamic quantization, fbgemm/x86 engine).

    Weights are int8 per tensor; activations are quantized on the fly per batch (``torch.ao.quantization.
    quantize_dynamic``). This is the deployment that Bigger&Faster searches for. On a 2-core AVX2 EPYC (chapter 4's
    first build) it ran MiniLM-L6 at batch 1 about 1.5x faster than float32, and the smallest sub-models no faster;
    torchao's eager int8 path (``Int8DynamicActivationInt8WeightConfig``) measured about 10x *slower* than float32
    there: its ``torch._int_mm`` calls oneDNN only on CPUs with AVX512-VNNI and otherwise runs ATen's scalar
    reference loop (:mod:`ufkit.quantization.support`), so the deprecated but fast ``torch.ao`` path is used; its
    deprecation warnings are silenced. Chapters 4 and 5 measure both on the build's machine. Embeddings and LayerNorms stay float32.
    """
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=".*are deprecated and will be removed.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        q = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=False)
    return q.eval()
