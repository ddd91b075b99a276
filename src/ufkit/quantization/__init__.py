"""Deployment quantization: torchao int8, ONNX export, ONNX Runtime graph optimization and int8 quantization.

* :mod:`ufkit.quantization.variants`: :func:`~ufkit.quantization.variants.quantize` writes one folder per variant
  (:data:`~ufkit.quantization.common.VARIANTS`); loading, benchmarking and evaluating them.
* :mod:`ufkit.quantization.onnx`: export, the ONNX Runtime classifier, graph optimization, ORT int8.
* :mod:`ufkit.quantization.auto`: per-node sensitivity and the fp32-fallback safety net.
* :mod:`ufkit.quantization.torch_int8`: ``torch.ao`` dynamic int8 of a PyTorch model (chapter 4's deployment).
"""

from .auto import auto_quantize, sensitivity
from .common import COMPILED, MARKER, ONNX_FILE, VARIANTS, QuantizeError
from .onnx import (OnnxClassifier, export_onnx, optimize_onnx, quantizable_nodes, quantize_onnx_dynamic,
                   quantize_onnx_static)
from .torch_int8 import quantize_int8
from .variants import (benchmark_variants, check_classifier, check_writable, evaluate_variants, is_variant_folder,
                       list_variants, load_variant, quantize, variant_info)

__all__ = ["auto_quantize", "sensitivity", "COMPILED", "MARKER", "ONNX_FILE", "VARIANTS", "QuantizeError",
           "OnnxClassifier", "export_onnx", "optimize_onnx", "quantizable_nodes", "quantize_onnx_dynamic",
           "quantize_onnx_static", "quantize_int8", "benchmark_variants", "check_classifier", "check_writable",
           "evaluate_variants", "is_variant_folder", "list_variants", "load_variant", "quantize", "variant_info"]
