"""OpenVINO: convert the ONNX export to OpenVINO IR, quantize it to int8 with NNCF, run it like a classifier.

:func:`convert_openvino` reads the unfused ``onnx_fp32`` graph that :func:`~ufkit.quantization.variants.quantize`
has already written and checked against PyTorch (OpenVINO's ONNX front end reads the standard ops; the ORT-fused
graph's ``com.microsoft`` ops are ORT's own), keeps ``batch`` and ``sequence`` dynamic and saves ``model.xml`` +
``model.bin`` in fp32 (``compress_to_fp16=False``; ``save_model`` would otherwise store fp16 weights). With
calibration sentences it runs NNCF's post-training quantization (``nncf.quantize``, ``ModelType.TRANSFORMER``:
symmetric int8 activations, SmoothQuant, the ops that lose accuracy in int8 left in float) first.

:class:`OpenVinoClassifier` compiles the IR for the CPU with

* ``INFERENCE_PRECISION_HINT = f32``: on CPUs with native bf16 (AVX512-BF16, AMX) OpenVINO's CPU plugin runs
  float layers in bf16 by default; the hint keeps fp32 (and the float parts of the int8 graph) fp32, so the
  variant measures what its name says and its accuracy does not depend on the machine.
* ``INFERENCE_NUM_THREADS = threads``, ``NUM_STREAMS = 1``, ``PERFORMANCE_HINT = LATENCY``: one request at a time
  on the same number of threads as every other backend.

The CPU plugin prepares kernels for each new input shape at its first call (the shapes stay dynamic, so nothing
is recompiled from scratch, but the first call of a shape is slower); :attr:`OpenVinoClassifier.warmup_per_shape`
tells the benchmark to call every batch shape once before timing.

Sources: OpenVINO's documentation (``openvino.convert_model``, ``save_model``, CPU device properties and its
default bf16 inference precision on bf16-capable CPUs); NNCF's post-training quantization guide.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .common import QuantizeError, input_feeds

#: The IR file of an OpenVINO variant (its weights are the ``.bin`` beside it).
OPENVINO_FILE = "model.xml"


@contextlib.contextmanager
def _quiet_nncf():
    """NNCF logs at INFO and draws rich progress bars on stdout; keep the command's output its own."""
    import nncf

    logger = logging.getLogger("nncf")
    old = logger.level
    nncf.set_log_level(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        nncf.set_log_level(old or logging.INFO)


def convert_openvino(onnx_path: str | os.PathLike, dst: str | os.PathLike, *, tokenizer=None,
                     calibration_texts: Sequence[str] | None = None, batch_size: int = 8) -> dict:
    """Convert an fp32 ONNX classifier to OpenVINO IR in ``dst``; int8 when calibration sentences are given.

    Args:
        onnx_path: the ``onnx_fp32`` graph (inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` of shape
            ``(batch, sequence)``, int64; output ``logits``).
        dst: folder to write ``model.xml`` and ``model.bin`` into.
        tokenizer: builds the calibration batches (required with ``calibration_texts``).
        calibration_texts: real sentences for NNCF's activation ranges, in padded batches of ``batch_size``;
            None writes the fp32 IR.

    Returns:
        ``{"precision": "f32" | "int8", "inputs": [...], "n_calibration"?, "fake_quantize"?}`` (the number of
        int8 quantization points NNCF inserted).

    Raises:
        QuantizeError: the ONNX file is missing or OpenVINO cannot read it, or int8 without a tokenizer or
            with no calibration sentences.
    """
    import openvino as ov

    onnx_path, dst = Path(onnx_path), Path(dst)
    if not onnx_path.is_file():
        raise QuantizeError(f"ONNX file {str(onnx_path)!r} does not exist")
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as e:  # OpenVINO raises its own exception types
        raise QuantizeError(f"OpenVINO cannot read {str(onnx_path)!r}: {str(e).splitlines()[0]}") from None
    names = [i.get_any_name() for i in model.inputs]
    model.reshape({name: ov.PartialShape([-1, -1]) for name in names})
    info = {"precision": "f32", "inputs": names}
    if calibration_texts is not None:
        import nncf

        texts = list(calibration_texts)
        if not texts or tokenizer is None:
            raise QuantizeError("OpenVINO int8 needs calibration sentences and the tokenizer")
        items = []
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=128,
                            return_tensors="np")
            items.append({n: np.asarray(enc[n], dtype=np.int64) if n in enc else
                          np.zeros_like(enc["input_ids"], dtype=np.int64) for n in names})
        with _quiet_nncf():
            model = nncf.quantize(model, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(texts))
        info.update(precision="int8", n_calibration=len(texts),
                    fake_quantize=sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops()))
    dst.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(dst / OPENVINO_FILE), compress_to_fp16=False)
    return info


class OpenVinoClassifier:
    """An OpenVINO CPU model that is called like a Hugging Face classifier.

    ``clf(input_ids=..., attention_mask=..., token_type_ids=...)`` (or ``clf(batch_dict)``) takes
    ``torch.LongTensor`` or numpy arrays of shape ``(batch, seq_len)`` and returns an object whose ``.logits`` is a
    float32 ``torch.Tensor`` of shape ``(batch, num_labels)``.

    Args:
        path: the IR's ``model.xml``.
        threads: ``INFERENCE_NUM_THREADS`` (default :func:`ufkit.config.bench_threads`).
        precision: ``INFERENCE_PRECISION_HINT`` for the float layers: ``"f32"`` (default) or ``"bf16"``.

    Raises:
        QuantizeError: the file is missing, OpenVINO cannot compile it, or ``threads`` is not positive.
    """

    #: The first call of each new input shape prepares kernels: call every shape once before timing.
    warmup_per_shape = True

    def __init__(self, path: str | os.PathLike, threads: int | None = None, precision: str = "f32"):
        import openvino as ov

        from .. import config

        self.path = Path(path)
        if not self.path.is_file():
            raise QuantizeError(f"OpenVINO model {str(self.path)!r} does not exist")
        self.threads = config.bench_threads() if threads is None else int(threads)
        if self.threads < 1:
            raise QuantizeError(f"threads must be a positive integer, got {threads!r}")
        if precision not in ("f32", "bf16"):
            raise QuantizeError(f"precision must be 'f32' or 'bf16', got {precision!r}")
        self.precision = precision
        core = ov.Core()
        try:
            self.compiled = core.compile_model(str(self.path), "CPU", {
                "INFERENCE_NUM_THREADS": self.threads, "INFERENCE_PRECISION_HINT": precision,
                "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"})
        except Exception as e:  # OpenVINO raises its own exception types
            raise QuantizeError(f"OpenVINO cannot compile {str(self.path)!r}: {str(e).splitlines()[0]}") from None
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        self._request = self.compiled.create_infer_request()

    @property
    def size_mb(self) -> float:
        """The IR's files (``.xml`` and ``.bin``) in MB."""
        return sum(p.stat().st_size for p in (self.path, self.path.with_suffix(".bin")) if p.is_file()) / 1e6

    def __call__(self, batch: dict | None = None, **inputs):
        import torch
        from transformers.modeling_outputs import SequenceClassifierOutput

        batch = {**(batch or {}), **inputs}
        if "attention_mask" not in batch:
            raise QuantizeError(f"the OpenVINO model needs input_ids and attention_mask, got {sorted(batch)}")
        feeds = input_feeds(batch, self.input_names, "OpenVINO")
        self._request.infer(feeds)
        logits = np.array(self._request.get_output_tensor(0).data, dtype=np.float32)  # a copy: the buffer is reused
        return SequenceClassifierOutput(logits=torch.from_numpy(logits))

    def __repr__(self) -> str:
        return f"OpenVinoClassifier({str(self.path)!r}, threads={self.threads}, precision={self.precision!r})"
