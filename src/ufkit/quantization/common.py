"""What the quantization modules share: the variant names, the marker file, the error type, a quiet ORT."""

from __future__ import annotations

import contextlib
import logging
import warnings

from .. import UfkitError

#: The file that makes a folder a complete variant; written last.
MARKER = "ufkit_variant.json"
#: The ONNX graph of an ONNX variant.
ONNX_FILE = "model.onnx"

#: The variants :func:`~ufkit.quantization.variants.quantize` can write: name -> description.
VARIANTS: dict[str, str] = {
    "pytorch_fp32": "PyTorch fp32 (eager)",
    "torchao_int8": "torchao int8 dynamic (eager)",
    "onnx_fp32": "ONNX fp32 (ORT)",
    "onnx_optimized": "ONNX fp32, ORT-optimized",
    "onnx_int8_dynamic": "ORT int8 dynamic, per tensor",
    "onnx_int8_dynamic_per_channel": "ORT int8 dynamic, per channel",
    "onnx_int8_static": "ORT int8 static (calibrated)",
    "onnx_int8_auto": "ORT int8 dynamic + fp32 fallback",
}
#: a timing-only row: the ``torchao_int8`` folder loaded with ``torch.compile``.
COMPILED = "torchao_int8_compiled"


class QuantizeError(UfkitError, ValueError):
    """A model that cannot be quantized, or an output folder that cannot be written."""


@contextlib.contextmanager
def _quiet_ort():
    """ORT's Python tools log hints at WARNING level through the root logger; keep notebooks readable."""
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(old)
