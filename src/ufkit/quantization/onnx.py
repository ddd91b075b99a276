"""ONNX: export a classifier, run it with ONNX Runtime, optimize its graph, quantize it to int8.

:class:`OnnxClassifier` wraps an ORT session so that it is called like a Hugging Face classifier;
:func:`export_onnx` (``torch.onnx.export``, checked against PyTorch to 1e-4), :func:`optimize_onnx` (ORT's transformer
optimizer: fused attention, embedding + LayerNorm, skip LayerNorm, bias GELU), :func:`quantize_onnx_dynamic` and
:func:`quantize_onnx_static` (ORT's quantization, onnxruntime.ai/docs/performance/model-optimizations/quantization),
and :func:`quantizable_nodes`.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .common import QuantizeError, _quiet_ort, input_feeds



class OnnxClassifier:
    """An ONNX Runtime session that is called like a Hugging Face classifier.

    ``clf(input_ids=..., attention_mask=..., token_type_ids=...)`` (or ``clf(batch_dict)``) takes ``torch.LongTensor`` or numpy arrays of
    shape ``(batch, seq_len)`` and returns an object whose ``.logits`` is a float32 ``torch.Tensor`` of shape
    ``(batch, num_labels)``, so :func:`ufkit.evaluate.evaluate` and :func:`ufkit.measure.benchmark` take it unchanged.

    Args:
        path: an ``.onnx`` file.
        threads: ONNX Runtime intra-op threads (default :func:`ufkit.config.bench_threads`); inter-op is 1, so that
            a thread count means the same for ORT as for PyTorch.

    Raises:
        QuantizeError: the file is missing or ONNX Runtime cannot load it.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        from .. import config

        self.path = Path(path)
        if not self.path.is_file():
            raise QuantizeError(f"ONNX file {str(self.path)!r} does not exist")
        self.threads = config.bench_threads() if threads is None else int(threads)
        if self.threads < 1:
            raise QuantizeError(f"threads must be a positive integer, got {threads!r}")
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types
            raise QuantizeError(f"ONNX Runtime cannot load {str(self.path)!r}: {str(e).splitlines()[0]}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]

    @property
    def size_mb(self) -> float:
        return self.path.stat().st_size / 1e6

    def __call__(self, batch: dict | None = None, **inputs):
        import torch
        from transformers.modeling_outputs import SequenceClassifierOutput

        batch = {**(batch or {}), **inputs}  # a batch dict (ufkit.bench) or keyword tensors (transformers style)
        feeds = input_feeds(batch, self.input_names, "ONNX")
        logits = self.session.run(None, feeds)[0]
        return SequenceClassifierOutput(logits=torch.from_numpy(logits))

    def __repr__(self) -> str:
        return f"OnnxClassifier({str(self.path)!r}, threads={self.threads})"


# ----------------------------------------------------------------------------------------------------------------
# export, optimization, quantization


def _sample_batch(tokenizer, texts: Sequence[str] | None = None) -> dict:
    texts = list(texts) if texts else ["a quick check of the export", "it is great", "bad"]
    return dict(tokenizer(texts[:4], padding=True, truncation=True, max_length=128, return_tensors="pt"))


def export_onnx(model, tokenizer, path: str | os.PathLike, *, opset: int = 17, texts: Sequence[str] | None = None
                ) -> dict:
    """Export a Hugging Face sequence classifier to ONNX with ``torch.onnx.export`` and check it.

    The graph takes ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the model has them), int64 of
    shape ``(batch, seq_len)`` with both axes dynamic, and returns ``logits`` of shape ``(batch, num_labels)``.
    The export traces the model with eager attention (not SDPA) so that ONNX Runtime's optimizer recognises the
    attention pattern and fuses it; the model's attention setting is restored afterwards.

    Returns:
        ``{"opset", "max_abs_diff"}``: the largest logit difference between ONNX Runtime and PyTorch on a padded
        sample batch.

    Raises:
        QuantizeError: the export fails or the ONNX logits differ from PyTorch's by more than 1e-4.
    """
    import torch

    path = Path(path)
    batch = _sample_batch(tokenizer, texts)
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in batch]
    batch = {n: batch[n] for n in names}
    old_impl = getattr(model.config, "_attn_implementation", None)
    model.eval()
    try:
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("eager")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            # The TorchScript exporter (dynamo=False) writes the op pattern ORT's BERT fusion matches.
            torch.onnx.export(model, (), str(path), kwargs=batch, input_names=names, output_names=["logits"],
                              dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names},
                                            "logits": {0: "batch"}},
                              opset_version=opset, dynamo=False)
            expected = model(**batch).logits.numpy()
    except Exception as e:
        raise QuantizeError(f"ONNX export failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    finally:
        if old_impl is not None and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(old_impl)
    got = OnnxClassifier(path, threads=1)(**batch).logits.numpy()
    diff = float(np.abs(got - expected).max())
    if diff > 1e-4:
        raise QuantizeError(f"the ONNX export's logits differ from PyTorch's by {diff:.2e} (> 1e-4)")
    return {"opset": opset, "max_abs_diff": diff}


def optimize_onnx(src: str | os.PathLike, dst: str | os.PathLike, config) -> dict:
    """ONNX Runtime's transformer optimizer: fuse attention, embedding + LayerNorm, skip LayerNorm and bias GELU.

    Args:
        src, dst: ``.onnx`` files.
        config: the model's ``PretrainedConfig`` (``num_attention_heads``, ``hidden_size``, ``model_type``).

    A structurally pruned model (:mod:`ufkit.structure`) whose layers keep different numbers of heads cannot use
    ORT's fused ``Attention`` op, which takes one head count and width for the whole graph; its attention stays
    unfused (the other fusions still apply). Layers that all keep the same heads fuse with that count.

    Returns:
        the fused-operator counts, e.g. ``{"Attention": 6, "SkipLayerNormalization": 12, ...}``.
    """
    from onnxruntime.transformers import optimizer

    model_type = config.model_type if config.model_type in ("bert", "bart", "gpt2") else "bert"
    num_heads, hidden_size = config.num_attention_heads, config.hidden_size
    kept = (getattr(config, "ufkit_structure", None) or {}).get("num_heads")
    if kept:
        head_dim = config.hidden_size // config.num_attention_heads
        # one count for every layer, or 0: ORT then finds none and leaves attention unfused
        num_heads = kept[0] if len(set(kept)) == 1 else 0
        hidden_size = num_heads * head_dim
    with _quiet_ort():
        opt = optimizer.optimize_model(str(src), model_type=model_type, num_heads=num_heads,
                                       hidden_size=hidden_size)
        opt.save_model_to_file(str(dst))
    return {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}


def quantize_onnx_dynamic(src, dst, *, per_channel: bool = False, nodes_to_quantize: Sequence[str] | None = None,
                          nodes_to_exclude: Sequence[str] | None = None) -> None:
    """ORT dynamic quantization: int8 weights (signed), uint8 activations quantized at run time per call.

    Args:
        per_channel: one weight scale per output channel instead of one per tensor.
        nodes_to_quantize: quantize only these nodes (ONNX node names); None: all supported ones.
        nodes_to_exclude: keep these nodes in fp32.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_ort():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                         nodes_to_quantize=list(nodes_to_quantize or []), nodes_to_exclude=list(nodes_to_exclude or []),
                         # the fused ops' outputs have no inferred type; they are float
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


class _CalibrationReader:
    def __init__(self, batches: list[dict], input_names: list[str]):
        self._it = iter([{n: b[n].numpy() for n in input_names if n in b} for b in batches])

    def get_next(self):
        return next(self._it, None)


def quantize_onnx_static(src, dst, tokenizer, calibration_texts: Sequence[str], *, per_channel: bool = True,
                         batch_size: int = 8, method: str = "minmax") -> dict:
    """ORT static quantization in QDQ format: activation ranges calibrated on real sentences.

    Args:
        src: the fp32 ``.onnx`` file (unfused: ORT fuses the quantized graph when it loads it).
        calibration_texts: real sentences (e.g. from the training split); they are fed in padded batches.
        method: ``"minmax"`` or ``"percentile"`` (99.999th percentile of ``|activation|``; needs batches of one
            length, so the sentences are padded to 128 tokens for it).

    Returns:
        ``{"n_calibration", "method", "per_channel"}``.

    Raises:
        QuantizeError: no calibration sentences or an unknown method.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise QuantizeError(f"method must be one of {sorted(methods)}, got {method!r}")
    texts = list(calibration_texts)
    if not texts:
        raise QuantizeError("static quantization needs calibration sentences, got none")
    padding = "max_length" if method == "percentile" else True
    batches = [dict(tokenizer(texts[i:i + batch_size], padding=padding, truncation=True, max_length=128,
                              return_tensors="pt")) for i in range(0, len(texts), batch_size)]
    names = [i.name for i in onnx.load(str(src), load_external_data=False).graph.input]
    with _quiet_ort():
        quantize_static(str(src), str(dst), _CalibrationReader(batches, names), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method],
                        # only the matrix products: quantizing every activation (Add, Softmax, LayerNorm inputs)
                        # lost 13 accuracy points on MiniLM-L6, against about 1 for this
                        op_types_to_quantize=["MatMul", "Gemm"],
                        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return {"n_calibration": len(texts), "method": method, "per_channel": per_channel}


def quantizable_nodes(path: str | os.PathLike) -> pd.DataFrame:
    """The nodes of an (optimized) ONNX graph that dynamic quantization turns into int8.

    Returns:
        DataFrame with ``node`` (ONNX name), ``op_type`` and ``layer`` (a readable name such as
        ``layer.3.attention.qkv``, ``layer.3.intermediate``, ``pooler``, ``classifier``, ``embeddings``), in graph
        order.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    rows = []
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Attention", "EmbedLayerNormalization"):
            continue
        rows.append({"node": node.name, "op_type": node.op_type, "layer": _readable(node)})
    return pd.DataFrame(rows, columns=["node", "op_type", "layer"])


def _readable(node) -> str:
    if node.op_type == "EmbedLayerNormalization":
        return "embeddings"
    if node.op_type == "Attention":
        m = re.search(r"(\d+)$", node.name)
        return f"layer.{m.group(1)}.attention.qkv" if m else node.name
    m = re.search(r"layer\.(\d+)/(.*)/(MatMul|Gemm)", node.name)
    if m:
        return f"layer.{m.group(1)}.{m.group(2).replace('/dense', '').replace('/', '.')}"
    for part in ("pooler", "classifier", "pre_classifier"):
        if f"/{part}/" in node.name or node.name.startswith(f"{part}/"):
            return part
    return node.name.strip("/")


