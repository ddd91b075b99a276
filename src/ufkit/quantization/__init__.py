"""Deployment variants: torchao int8, ONNX Runtime (fp32, optimized, int8), PyTorch bf16 and ``torch.compile``,
OpenVINO (fp32, NNCF int8), CTranslate2 int8; which of them run well on this CPU, and the choice among them.

* :mod:`ufkit.quantization.variants`: :func:`~ufkit.quantization.variants.quantize` writes one folder per variant
  (:data:`~ufkit.quantization.common.VARIANTS`); loading, benchmarking and evaluating them.
* :mod:`ufkit.quantization.support`: which variants this machine runs well (CPU flags, optional packages), and
  why the others are skipped.
* :mod:`ufkit.quantization.selection`: :func:`~ufkit.quantization.selection.select_variant`, the fastest variant
  within an accuracy budget (``ufkit quantize --select fastest``).
* :mod:`ufkit.quantization.onnx`: export, the ONNX Runtime classifier, graph optimization, ORT int8.
* :mod:`ufkit.quantization.auto`: per-node sensitivity and the fp32-fallback safety net.
* :mod:`ufkit.quantization.pytorch`: bf16 autocast and ``torch.compile`` runners.
* :mod:`ufkit.quantization.openvino`: OpenVINO IR conversion, NNCF int8, the OpenVINO classifier (optional
  extra ``openvino``).
* :mod:`ufkit.quantization.ctranslate2`: the CTranslate2 int8 encoder with an fp32 head (optional extra
  ``ctranslate2``).
* :mod:`ufkit.quantization.torch_int8`: ``torch.ao`` dynamic int8 of a PyTorch model (chapter 4's deployment).

The optional backends' packages are imported only when a variant of theirs is made or loaded.
"""

from .auto import auto_quantize, sensitivity
from .common import COMPILED, MARKER, ONNX_FILE, VARIANTS, QuantizeError, VariantSkipped
from .onnx import (OnnxClassifier, export_onnx, optimize_onnx, quantizable_nodes, quantize_onnx_dynamic,
                   quantize_onnx_static)
from .pytorch import TorchClassifier
from .selection import OBJECTIVES, SELECTION_FILE, check_selection, select_variant
from .support import check_runnable, skip_reason
from .torch_int8 import quantize_int8
from .variants import (REPORT_FILE, benchmark_variants, check_classifier, check_writable, evaluate_variants,
                       is_variant_folder, list_variants, load_variant, quantize, read_report, variant_info)

__all__ = ["auto_quantize", "sensitivity", "COMPILED", "MARKER", "ONNX_FILE", "VARIANTS", "QuantizeError",
           "VariantSkipped", "OnnxClassifier", "export_onnx", "optimize_onnx", "quantizable_nodes",
           "quantize_onnx_dynamic", "quantize_onnx_static", "TorchClassifier", "OBJECTIVES", "SELECTION_FILE",
           "check_selection", "select_variant", "check_runnable", "skip_reason", "quantize_int8", "REPORT_FILE",
           "benchmark_variants", "check_classifier", "check_writable", "evaluate_variants", "is_variant_folder",
           "list_variants", "load_variant", "quantize", "read_report", "variant_info"]
