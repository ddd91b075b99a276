"""What the quantization modules share: the variant names, the marker file, the error types, a quiet ORT."""

from __future__ import annotations

import contextlib
import logging
import warnings

from .. import UfkitError

#: The file that makes a folder a complete variant; written last.
MARKER = "ufkit_variant.json"
#: The ONNX graph of an ONNX variant.
ONNX_FILE = "model.onnx"

#: The variants :func:`~ufkit.quantization.variants.quantize` can write: name -> description, in the order they
#: are made (a variant comes after those it is built from).
VARIANTS: dict[str, str] = {
    "pytorch_fp32": "PyTorch fp32 (eager)",
    "pytorch_bf16": "PyTorch bf16 autocast (eager)",
    "torch_compile_fp32": "PyTorch fp32, torch.compile (inductor)",
    "torch_compile_bf16": "PyTorch bf16 autocast, torch.compile (inductor)",
    "torchao_int8": "torchao int8 dynamic (eager)",
    "onnx_fp32": "ONNX fp32 (ORT)",
    "onnx_optimized": "ONNX fp32, ORT-optimized",
    "onnx_int8_dynamic": "ORT int8 dynamic, per tensor",
    "onnx_int8_dynamic_per_channel": "ORT int8 dynamic, per channel",
    "onnx_int8_static": "ORT int8 static (calibrated)",
    "onnx_int8_auto": "ORT int8 dynamic + fp32 fallback",
    "openvino_fp32": "OpenVINO fp32",
    "openvino_int8": "OpenVINO int8 (NNCF, calibrated)",
    "ctranslate2_int8": "CTranslate2 int8 encoder + fp32 head",
}
#: a timing-only row: the ``torchao_int8`` folder loaded with ``torch.compile``.
COMPILED = "torchao_int8_compiled"


class QuantizeError(UfkitError, ValueError):
    """A model that cannot be quantized, or an output folder that cannot be written."""


class VariantSkipped(QuantizeError):
    """A variant that cannot run here: this CPU lacks what makes it fast, its optional dependency is missing, or
    its backend cannot convert this model. ``reason`` says which, in one sentence; :func:`~ufkit.quantization.
    variants.quantize`, :func:`~ufkit.quantization.variants.evaluate_variants` and
    :func:`~ufkit.quantization.variants.benchmark_variants` record it in a ``skipped`` column instead of failing.

    Args:
        variant: the variant's name.
        reason: why it is skipped.
    """

    def __init__(self, variant: str, reason: str):
        super().__init__(f"{variant} skipped: {reason}")
        self.variant, self.reason = variant, reason


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


def input_feeds(batch: dict, input_names, runtime: str) -> dict:
    """The int64 numpy inputs a graph runtime (ONNX Runtime, OpenVINO) takes from a batch of tensors.

    Args:
        batch: ``input_ids`` `(batch_size, sequence_length)` and ``attention_mask`` (torch tensors or arrays), and
            ``token_type_ids`` where the graph has them (default zeros, as in transformers).
        input_names: the graph's input names, in order.
        runtime: named in the error.

    Raises:
        QuantizeError: an input the graph needs (other than ``token_type_ids``) is missing.
    """
    import numpy as np

    missing = [n for n in input_names if n not in batch and n != "token_type_ids"]
    if missing or "input_ids" not in batch:
        raise QuantizeError(f"the {runtime} model needs inputs {missing or ['input_ids']}, got {sorted(batch)}")
    shape = tuple(batch["input_ids"].shape)
    feeds = {}
    for name in input_names:
        value = batch.get(name)
        if value is None:  # token_type_ids default to zeros, as in transformers
            value = np.zeros(shape, dtype=np.int64)
        feeds[name] = value.numpy() if hasattr(value, "numpy") else np.asarray(value, dtype=np.int64)
    return feeds
