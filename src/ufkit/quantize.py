"""Deployment quantization: torchao int8, ONNX export, ONNX Runtime graph optimization and int8 quantization.

:func:`quantize` writes one folder per model with one sub-folder per *variant*:

=================================  ==================================================================================
``pytorch_fp32``                   the model as given, ``save_pretrained`` (safetensors)
``torchao_int8``                   torchao ``Int8DynamicActivationInt8WeightConfig`` through transformers'
                                   ``TorchAoConfig`` (safetensors); ``load_variant(..., compile=True)`` adds
                                   ``torch.compile``
``onnx_fp32``                      ``torch.onnx.export`` of the classifier (logits within 1e-4 of PyTorch)
``onnx_optimized``                 ONNX Runtime's transformer optimizer (fused attention, embedding + LayerNorm,
                                   skip LayerNorm, bias GELU)
``onnx_int8_dynamic``              ORT dynamic quantization of ``onnx_optimized``: int8 weights per tensor,
                                   activations quantized per call
``onnx_int8_dynamic_per_channel``  the same with one weight scale per output channel
``onnx_int8_static``               ORT static quantization (QDQ) with activation ranges calibrated on real
                                   training sentences
``onnx_int8_auto``                 the safety net: dynamic int8 with the most sensitive layers kept in fp32 until
                                   the accuracy drop on a validation split is within a budget (default 1 point)
=================================  ==================================================================================

Each variant is written to a hidden temporary folder and renamed into place once complete; a folder counts as
a variant only if it holds ``ufkit_variant.json``, which is written last. An interrupted run therefore leaves
nothing that :func:`load_variant` accepts.

Sources: ONNX Runtime's quantization guide (onnxruntime.ai/docs/performance/model-optimizations/quantization)
and transformer optimizer; torchao's ``quantize_`` API; the variant list of anuk909/fast-bert, made fair here
(every backend at the same thread count, real sentences) and given a cure for int8 accuracy collapse
(:func:`sensitivity` and :func:`auto_quantize`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from . import UfkitError

MARKER = "ufkit_variant.json"
ONNX_FILE = "model.onnx"

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


# ----------------------------------------------------------------------------------------------------------------
# input checks and atomic folders


def check_classifier(name_or_path) -> str:
    """Resolve a model id or folder and check that it is a sequence classifier.

    Returns:
        the folder or hub id to load from.

    Raises:
        QuantizeError: the path does not exist, has no readable config, or the checkpoint has no
            sequence-classification head (quantizing a randomly initialised head would report nonsense).
    """
    from transformers import AutoConfig

    from .models import ModelError, _quiet_transformers, resolve_model

    try:
        source = resolve_model(name_or_path)
        with _quiet_transformers():
            cfg = AutoConfig.from_pretrained(source, local_files_only=Path(source).is_dir())
    except ModelError as e:
        raise QuantizeError(f"--model: {e}") from None
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QuantizeError(f"--model {str(name_or_path)!r}: cannot read its config: {first}") from None
    archs = getattr(cfg, "architectures", None) or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise QuantizeError(f"--model {str(name_or_path)!r} is not a sequence-classification model (architectures: "
                            f"{archs or 'none'}); fine-tune it first, e.g. with `ufkit finetune`")
    return source


def check_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and check that files can be written in it.

    Raises:
        QuantizeError: the folder cannot be created or written (naming it).
    """
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise QuantizeError(f"--output {str(folder)!r} is not writable: {e.strerror or e}") from None
    return folder


@contextlib.contextmanager
def _atomic_variant(out: Path, name: str, info: dict):
    """Yield a temporary folder; on success write the marker and rename it to ``out / name``."""
    from .models import atomic_folder

    with atomic_folder(out / name) as tmp:
        yield tmp
        marker = {"variant": name, "description": VARIANTS.get(name, name), **info,
                  "size_mb": _folder_mb(tmp), "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2, default=_json_default))


def _json_default(value):
    return value.item() if hasattr(value, "item") else str(value)  # numpy scalars as numbers


def _folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 1e6


def list_variants(folder: str | os.PathLike) -> list[str]:
    """Names of the complete variants in a :func:`quantize` output folder, in :data:`VARIANTS` order."""
    folder = Path(folder)
    found = [p.name for p in folder.iterdir() if p.is_dir() and (p / MARKER).is_file()] if folder.is_dir() else []
    return sorted(found, key=lambda n: (list(VARIANTS).index(n) if n in VARIANTS else len(VARIANTS), n))


def is_variant_folder(folder: str | os.PathLike) -> bool:
    """True for a :func:`quantize` output folder (one holding at least one complete variant)."""
    return bool(list_variants(folder))


def variant_info(path: str | os.PathLike) -> dict:
    """The ``ufkit_variant.json`` of one variant folder.

    Raises:
        QuantizeError: the folder is not a complete variant (missing, or left by an interrupted run).
    """
    path = Path(path)
    marker = path / MARKER
    if not marker.is_file():
        raise QuantizeError(f"{str(path)!r} is not a complete quantized variant (no {MARKER}; "
                            "an interrupted `ufkit quantize` leaves none)")
    return json.loads(marker.read_text())


# ----------------------------------------------------------------------------------------------------------------
# ONNX Runtime inference


class OnnxClassifier:
    """An ONNX Runtime session that is called like a Hugging Face classifier.

    ``clf(input_ids=..., attention_mask=..., token_type_ids=...)`` (or ``clf(batch_dict)``) takes ``torch.LongTensor`` or numpy arrays of
    shape ``(batch, seq_len)`` and returns an object whose ``.logits`` is a float32 ``torch.Tensor`` of shape
    ``(batch, num_labels)``, so :func:`ufkit.evaluate.evaluate` and :func:`ufkit.bench.benchmark` take it unchanged.

    Args:
        path: an ``.onnx`` file.
        threads: ONNX Runtime intra-op threads (default :func:`ufkit.config.bench_threads`); inter-op is 1, so that
            a thread count means the same for ORT as for PyTorch.

    Raises:
        QuantizeError: the file is missing or ONNX Runtime cannot load it.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        from . import config

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
        missing = [n for n in self.input_names if n not in batch and n != "token_type_ids"]
        if missing:
            raise QuantizeError(f"the ONNX model needs inputs {missing}, got {sorted(batch)}")
        ids = batch["input_ids"]
        feeds = {}
        for name in self.input_names:
            value = batch.get(name)
            if value is None:  # token_type_ids default to zeros, as in transformers
                value = np.zeros(tuple(ids.shape), dtype=np.int64)
            feeds[name] = value.numpy() if hasattr(value, "numpy") else np.asarray(value, dtype=np.int64)
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

    Returns:
        the fused-operator counts, e.g. ``{"Attention": 6, "SkipLayerNormalization": 12, ...}``.
    """
    from onnxruntime.transformers import optimizer

    model_type = config.model_type if config.model_type in ("bert", "bart", "gpt2") else "bert"
    with _quiet_ort():
        opt = optimizer.optimize_model(str(src), model_type=model_type, num_heads=config.num_attention_heads,
                                       hidden_size=config.hidden_size)
        opt.save_model_to_file(str(dst))
    return {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}


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
        method: ``"minmax"`` or ``"percentile"`` (99.999th percentile of |activation|; needs batches of one
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


# ----------------------------------------------------------------------------------------------------------------
# the safety net


def _tokenized(dataset, tokenizer):
    from .data import tokenize

    return dataset if "input_ids" in dataset.column_names else tokenize(dataset, tokenizer)


def _logits(clf, tokenized, tokenizer, batch_size: int = 32) -> np.ndarray:
    from .evaluate import predict_logits

    return predict_logits(clf, tokenized, tokenizer, batch_size)


def sensitivity(optimized: str | os.PathLike, tokenizer, dataset, *, per_channel: bool = False,
                threads: int | None = None, work_dir: str | os.PathLike | None = None, progress: bool = True
                ) -> pd.DataFrame:
    """Per-layer quantization sensitivity: quantize one node at a time, everything else fp32.

    For every node of :func:`quantizable_nodes` the graph is dynamically quantized with only that node in int8 and
    run over ``dataset``; the result is compared with the fp32 graph.

    Args:
        optimized: the fp32 ``.onnx`` (normally ``onnx_optimized``).
        dataset (`datasets.Dataset`): labeled sentences (``text``, ``label``) or already tokenised.

    Returns:
        DataFrame, one row per node, sorted most sensitive first: ``node``, ``op_type``, ``layer``, ``accuracy``
        (percent), ``accuracy_drop`` (points, fp32 minus int8-node), ``agreement`` (percent of predictions equal to
        fp32's), ``logit_mae`` and ``logit_max_err`` (absolute logit error), ``rank``.
    """
    from tqdm.auto import tqdm

    tokenized = _tokenized(dataset, tokenizer)
    labels = np.asarray(tokenized["label"])
    base = _logits(OnnxClassifier(optimized, threads), tokenized, tokenizer)
    base_acc = 100.0 * (base.argmax(-1) == labels).mean()
    nodes = quantizable_nodes(optimized)
    rows = []
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        for _, node in tqdm(list(nodes.iterrows()), desc="sensitivity", disable=not progress):
            dst = Path(tmp) / "one.onnx"
            quantize_onnx_dynamic(optimized, dst, per_channel=per_channel, nodes_to_quantize=[node["node"]])
            got = _logits(OnnxClassifier(dst, threads), tokenized, tokenizer)
            acc = 100.0 * (got.argmax(-1) == labels).mean()
            rows.append({**node.to_dict(), "accuracy": acc, "accuracy_drop": base_acc - acc,
                         "agreement": 100.0 * (got.argmax(-1) == base.argmax(-1)).mean(),
                         "logit_mae": float(np.abs(got - base).mean()),
                         "logit_max_err": float(np.abs(got - base).max())})
    df = pd.DataFrame(rows).sort_values(["accuracy_drop", "logit_mae"], ascending=False).reset_index(drop=True)
    df["rank"] = np.arange(1, len(df) + 1)
    df.attrs["fp32_accuracy"] = base_acc
    return df


def auto_quantize(optimized: str | os.PathLike, dst: str | os.PathLike, tokenizer, dataset, *,
                  budget: float = 1.0, per_channel: bool = False, sensitivity_df: pd.DataFrame | None = None,
                  threads: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Dynamic int8 with an fp32 fallback: keep the most sensitive nodes in fp32 until the accuracy drop fits.

    Starting from every node in int8, the nodes are returned to fp32 one at a time in order of
    :func:`sensitivity` (most sensitive first) until the accuracy on ``dataset`` is at most ``budget`` points
    below the fp32 graph's. The last model tried is written to ``dst``.

    Args:
        budget: the largest accuracy drop allowed, in percentage points (default 1.0).
        sensitivity_df: a :func:`sensitivity` result to reuse (computed if None).

    Returns:
        the search as a DataFrame, one row per attempt: ``n_fp32`` (nodes kept in fp32), ``kept_fp32`` (their
        readable names, most sensitive first), ``accuracy``, ``accuracy_drop``, ``agreement``, ``within_budget``.
        ``attrs`` holds ``fp32_accuracy``, ``budget``, ``chosen`` (the row written) and the sensitivity table.

    Raises:
        QuantizeError: a negative budget.
    """
    from tqdm.auto import tqdm

    if budget < 0:
        raise QuantizeError(f"budget must be a non-negative number of accuracy points, got {budget}")
    tokenized = _tokenized(dataset, tokenizer)
    labels = np.asarray(tokenized["label"])
    if sensitivity_df is None:
        sensitivity_df = sensitivity(optimized, tokenizer, tokenized, per_channel=per_channel, threads=threads,
                                     progress=progress)
    base = _logits(OnnxClassifier(optimized, threads), tokenized, tokenizer)
    base_acc = 100.0 * (base.argmax(-1) == labels).mean()
    order = list(sensitivity_df["node"])
    names = dict(zip(sensitivity_df["node"], sensitivity_df["layer"]))
    rows = []
    dst = Path(dst)
    bar = tqdm(total=len(order) + 1, desc="fp32 fallback", disable=not progress)
    for k in range(len(order) + 1):
        keep = order[:k]
        quantize_onnx_dynamic(optimized, dst, per_channel=per_channel, nodes_to_exclude=keep)
        got = _logits(OnnxClassifier(dst, threads), tokenized, tokenizer)
        acc = 100.0 * (got.argmax(-1) == labels).mean()
        rows.append({"n_fp32": k, "kept_fp32": [names[n] for n in keep], "accuracy": acc,
                     "accuracy_drop": base_acc - acc,
                     "agreement": 100.0 * (got.argmax(-1) == base.argmax(-1)).mean(),
                     "within_budget": bool(base_acc - acc <= budget + 1e-9)})
        bar.update()
        if rows[-1]["within_budget"]:
            break
    bar.close()
    report = pd.DataFrame(rows)
    report.attrs.update(fp32_accuracy=base_acc, budget=budget, chosen=int(report.index[-1]),
                        sensitivity=sensitivity_df)
    return report


# ----------------------------------------------------------------------------------------------------------------
# the small model int8 breaks


SMALL_MODEL_NAME = "minilm-l2-sst2"


def load_small_classifier(num_hidden_layers: int = 2, holdout: int = 2000, n_train: int | None = None,
                          progress: bool = True):
    """The first ``num_hidden_layers`` layers of MiniLM-L6-H384, fine-tuned on SST-2: a model int8 can break.

    The packaged MiniLM encoder is truncated (:func:`ufkit.models.truncate_layers`) and fine-tuned with the
    teacher's recipe (:func:`ufkit.train.teacher_config`) on the SST-2 training split minus ``holdout`` seeded
    sentences, which are returned as a labeled split the model never saw, for the safety net's budget. Cached in
    ``ufkit.config.cache_dir() / "minilm-l{N}-sst2"`` ("load if present, else train").

    Args:
        n_train: fine-tune on this many of the remaining training sentences (None: all).

    Returns:
        ``(model, tokenizer, info, heldout)``; ``heldout`` is a `datasets.Dataset` with ``text`` and ``label``.
    """
    from datasets import DatasetDict

    from . import config
    from .data import TaskData, load_sst2
    from .models import load_model, save_model, truncate_layers
    from .train import load_or_finetune, teacher_config

    task = load_sst2()
    split = task["train"].train_test_split(test_size=holdout, seed=0)
    base = config.cache_dir() / f"minilm-l{num_hidden_layers}-base"
    if not (base / "config.json").is_file():
        from transformers import AutoModel

        from .models import _quiet_transformers, default_model_path

        _, tokenizer = load_model(None)
        with _quiet_transformers():
            encoder = AutoModel.from_pretrained(default_model_path(), local_files_only=True)
        save_model(truncate_layers(encoder, num_hidden_layers), tokenizer, base)
    trimmed = TaskData(DatasetDict(train=split["train"], validation=task["validation"]), task.label_names,
                       f"{task.source} (train minus {holdout} held-out sentences)")
    model, tokenizer, info = load_or_finetune(config.cache_dir() / f"minilm-l{num_hidden_layers}-sst2",
                                              model_name=str(base), task=trimmed, cfg=teacher_config(),
                                              n_train=n_train, progress=progress)
    return model, tokenizer, info, split["test"]


# ----------------------------------------------------------------------------------------------------------------
# the whole pipeline


def _fingerprint(source: str) -> str:
    """Names, sizes and modification times of a local model folder's files (the hub id for a remote model)."""
    folder = Path(source)
    if not folder.is_dir():
        return source
    return ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in sorted(folder.iterdir())
                    if f.is_file())


def _is_current(path: Path, recipe: dict) -> bool:
    """A complete variant made from the same model files with the same settings (else it is remade)."""
    if not (path / MARKER).is_file():
        return False
    return json.loads((path / MARKER).read_text()).get("recipe") == recipe


def _save_torchao(source: str, out: Path) -> dict:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TorchAoConfig

    from .models import _quiet_transformers

    with _quiet_transformers(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = Path(source).is_dir()
        model = AutoModelForSequenceClassification.from_pretrained(
            source, local_files_only=local, device_map="cpu",
            quantization_config=TorchAoConfig(Int8DynamicActivationInt8WeightConfig()))
        model.save_pretrained(out, safe_serialization=True)
        AutoTokenizer.from_pretrained(source, local_files_only=local).save_pretrained(out)
    return {"config": "Int8DynamicActivationInt8WeightConfig", "format": "safetensors (transformers TorchAoConfig)"}


def quantize(model: str | os.PathLike | None, output: str | os.PathLike, *, variants: Iterable[str] | None = None,
             calibration_texts: Sequence[str] | None = None, validation=None, budget: float = 1.0,
             threads: int | None = None, skip_existing: bool = False, progress: bool = True) -> pd.DataFrame:
    """Write the quantized variants of a sequence classifier, one sub-folder each (see the module docstring).

    Args:
        model: a fine-tuned classifier: local folder or hub id.
        output: the folder to write (created if missing); existing variants are replaced.
        variants: names from :data:`VARIANTS` (default: all). ``onnx_*`` variants build on ``onnx_fp32`` and
            ``onnx_optimized``, which are written as well when needed.
        calibration_texts: real sentences for ``onnx_int8_static`` (required for it).
        validation (`datasets.Dataset`): labeled sentences for ``onnx_int8_auto`` (required for it).
        budget: accuracy points ``onnx_int8_auto`` may lose on ``validation``.
        threads: ORT threads while searching (default :func:`ufkit.config.bench_threads`).
        skip_existing: keep complete variants already in ``output`` that were made from the same model files
            with the same settings (a resumable run, and a cache); others are remade.

    Returns:
        DataFrame, one row per variant written: ``variant``, ``description``, ``size_mb``, ``seconds`` (time to
        make it), ``path``.

    Raises:
        QuantizeError: missing model, a model without a classification head, an unwritable ``output``, an unknown
            variant, or a variant whose inputs (calibration sentences, validation data) are missing.
    """
    from tqdm.auto import tqdm

    from .models import load_model

    wanted = list(VARIANTS) if variants is None else list(dict.fromkeys(variants))
    unknown = [v for v in wanted if v not in VARIANTS]
    if unknown:
        raise QuantizeError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    if "onnx_int8_static" in wanted and not calibration_texts:
        raise QuantizeError("onnx_int8_static needs calibration_texts (real sentences)")
    if "onnx_int8_auto" in wanted and validation is None:
        raise QuantizeError("onnx_int8_auto needs a labeled validation split")
    source = check_classifier(model)
    out = check_writable(output)
    # ORT variants need the ONNX files they build on.
    needs = set(wanted)
    if any(v.startswith("onnx_int8") for v in needs):
        needs |= {"onnx_optimized", "onnx_fp32"}
    if "onnx_optimized" in needs:
        needs.add("onnx_fp32")
    recipe = {"source_fingerprint": _fingerprint(source), "budget": budget,
              "n_calibration": len(calibration_texts or []), "n_validation": None if validation is None else
              len(validation)}
    todo = [v for v in VARIANTS if v in needs and not (skip_existing and _is_current(out / v, recipe))]
    for stale in out.glob(".*.tmp-*"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)

    net, tokenizer = load_model(source)
    rows = []
    for name in tqdm(todo, desc="quantize", disable=not progress):
        t0 = time.perf_counter()
        info = {"source": str(model if model is not None else source), "recipe": recipe}
        # info is filled in place: the context manager writes it as the marker when the block succeeds
        with _atomic_variant(out, name, info) as tmp:
            if name == "pytorch_fp32":
                net.save_pretrained(tmp, safe_serialization=True)
                tokenizer.save_pretrained(tmp)
            elif name == "torchao_int8":
                info.update(_save_torchao(source, tmp))
            else:
                tokenizer.save_pretrained(tmp)
                onnx_path = tmp / ONNX_FILE
                fp32 = out / "onnx_fp32" / ONNX_FILE
                opt = out / "onnx_optimized" / ONNX_FILE
                if name == "onnx_fp32":
                    info.update(export_onnx(net, tokenizer, onnx_path, texts=calibration_texts))
                elif name == "onnx_optimized":
                    info["fused"] = optimize_onnx(fp32, onnx_path, net.config)
                elif name == "onnx_int8_dynamic":
                    quantize_onnx_dynamic(opt, onnx_path, per_channel=False)
                elif name == "onnx_int8_dynamic_per_channel":
                    quantize_onnx_dynamic(opt, onnx_path, per_channel=True)
                elif name == "onnx_int8_static":
                    info.update(quantize_onnx_static(fp32, onnx_path, tokenizer, calibration_texts))
                elif name == "onnx_int8_auto":
                    report = auto_quantize(opt, onnx_path, tokenizer, validation, budget=budget, threads=threads,
                                           progress=progress)
                    chosen = report.iloc[-1]
                    info.update({"budget": budget, "fp32_accuracy": report.attrs["fp32_accuracy"],
                            "accuracy": chosen["accuracy"], "accuracy_drop": chosen["accuracy_drop"],
                            "within_budget": chosen["within_budget"], "kept_fp32": chosen["kept_fp32"],
                            "n_validation": len(validation)})
                    report.to_csv(tmp / "fallback_search.csv", index=False)
                    report.attrs["sensitivity"].to_csv(tmp / "sensitivity.csv", index=False)
            info["seconds"] = time.perf_counter() - t0
        rows.append({"variant": name, "description": VARIANTS[name], "size_mb": _folder_mb(out / name),
                     "seconds": info["seconds"], "path": str(out / name)})
    return pd.DataFrame(rows, columns=["variant", "description", "size_mb", "seconds", "path"])


def load_variant(path: str | os.PathLike, *, threads: int | None = None, compile: bool = False):
    """Load one variant written by :func:`quantize`.

    Args:
        path: the variant's folder (e.g. ``out/onnx_int8_dynamic``).
        threads: ORT intra-op threads for ONNX variants (PyTorch variants follow ``torch.set_num_threads``).
        compile: wrap a PyTorch variant in ``torch.compile(dynamic=True)``.

    Returns:
        ``(model, tokenizer, info)``: a ``torch.nn.Module`` or an :class:`OnnxClassifier`, the tokenizer and the
        variant's ``ufkit_variant.json``.

    Raises:
        QuantizeError: not a complete variant folder, or it cannot be loaded.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .models import _quiet_transformers

    path = Path(path)
    info = variant_info(path)
    with _quiet_transformers(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if (path / ONNX_FILE).is_file():
            return OnnxClassifier(path / ONNX_FILE, threads), tokenizer, info
        try:
            if info["variant"] == "torchao_int8":
                import torchao  # noqa: F401  (registers the int8 tensor type for loading)
            model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True,
                                                                       device_map="cpu")
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise QuantizeError(f"cannot load variant {str(path)!r}: {str(e).splitlines()[0]}") from None
    model.eval()
    if compile:
        import torch

        model = torch.compile(model, dynamic=True)
    return model, tokenizer, info


def _variant_rows(folder, variants, include_compiled):
    names = list_variants(folder)
    if not names:
        raise QuantizeError(f"{str(folder)!r} holds no quantized variants; run `ufkit quantize` first")
    if variants is not None:
        unknown = [v for v in variants if v not in names and v != COMPILED]
        if unknown:
            raise QuantizeError(f"variant(s) {unknown} not in {str(folder)!r}; it has {names}")
        names = [v for v in names if v in variants]
        include_compiled = include_compiled or COMPILED in variants
    rows = [(n, False) for n in names]
    if include_compiled and "torchao_int8" in list_variants(folder):
        rows.insert(rows.index(("torchao_int8", False)) + 1 if ("torchao_int8", False) in rows else len(rows),
                    (COMPILED, True))
    return rows


def benchmark_variants(folder: str | os.PathLike, texts: Sequence[str] | None = None, *,
                       batch_sizes: Sequence[int] = (1, 32), variants: Sequence[str] | None = None,
                       include_compiled: bool = False, threads: int | None = None, n_warmup: int = 10,
                       n_iters: int = 50, max_seconds: float | None = None, db_path: str | os.PathLike | None = None,
                       model_name: str | None = None, progress: bool = True) -> pd.DataFrame:
    """Time every variant of a :func:`quantize` folder at the same thread count on the same real sentences.

    PyTorch runs with ``torch.set_num_threads(threads)`` and ONNX Runtime with ``intra_op_num_threads=threads``
    (inter-op 1); ``threads`` defaults to :func:`ufkit.config.bench_threads`. Columns are those of
    :func:`ufkit.bench.benchmark` (latency in ms, throughput in sequences/s, size in MB of the variant's files,
    peak memory) plus ``variant``, ``model`` and ``compile_s`` (``torch.compile`` warm-up time, compiled row only).

    Args:
        max_seconds: cap on the timed runs of one row: a variant whose single call takes longer than
            ``max_seconds / n_iters`` is timed fewer times (at least 5; the row's ``n_iters`` says how many), so
            a slow backend does not stall the sweep.
    """
    import torch
    from tqdm.auto import tqdm

    from . import config
    from .bench import benchmark, make_batches

    threads = config.bench_threads() if threads is None else threads
    folder = Path(folder)
    model_name = model_name or folder.name
    frames = []
    for name, compiled in tqdm(_variant_rows(folder, variants, include_compiled), desc="benchmark",
                               disable=not progress):
        path = folder / ("torchao_int8" if compiled else name)
        model, tokenizer, info = load_variant(path, threads=threads, compile=compiled)
        extra = {"variant": name, "model": model_name}
        if compiled:  # compile for both batch shapes before timing
            old = torch.get_num_threads()
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            with torch.inference_mode():
                for b in batch_sizes:
                    model(**make_batches(tokenizer, list(texts or ["warm up"]), b, n_batches=1)[0])
            extra["compile_s"] = time.perf_counter() - t0
            torch.set_num_threads(old)
        for b in batch_sizes:
            iters = n_iters
            if max_seconds is not None:
                probe = make_batches(tokenizer, list(texts or ["a probe"]), b, n_batches=1)[0]
                old = torch.get_num_threads()
                torch.set_num_threads(threads)
                with torch.inference_mode():
                    t0 = time.perf_counter()
                    model(**probe)
                    once = time.perf_counter() - t0
                torch.set_num_threads(old)
                iters = max(5, min(n_iters, int(max_seconds / max(once, 1e-9))))
            frames.append(benchmark(model, tokenizer, texts, name=f"{model_name}/{name}", batch_size=b,
                                    n_warmup=min(n_warmup, iters), n_iters=iters, threads=threads,
                                    size_mb=info["size_mb"], db_path=db_path, table="quantize_bench", extra=extra))
        del model
    return pd.concat(frames, ignore_index=True)


def evaluate_variants(folder: str | os.PathLike, dataset, *, variants: Sequence[str] | None = None,
                      threads: int | None = None, batch_size: int = 64, progress: bool = True) -> pd.DataFrame:
    """Accuracy, precision, recall and F1 of every variant, its degradation against fp32 and its agreement.

    Args:
        dataset (`datasets.Dataset`): a labeled split (``text``, ``label``).

    Returns:
        DataFrame indexed by ``variant`` with the columns of :func:`ufkit.evaluate.evaluate` plus
        ``accuracy_drop`` (points below ``pytorch_fp32``), ``f1_drop``, ``agreement`` (percent of predictions equal
        to ``pytorch_fp32``'s) and ``degraded`` (accuracy drop above 1 point). Without a ``pytorch_fp32`` variant
        the reference is the first variant.
    """
    from tqdm.auto import tqdm

    from .evaluate import compute_metrics

    folder = Path(folder)
    rows, preds = [], {}
    for name, _ in tqdm(_variant_rows(folder, variants, False), desc="evaluate", disable=not progress):
        model, tokenizer, _ = load_variant(folder / name, threads=threads)
        tokenized = _tokenized(dataset, tokenizer)
        labels = np.asarray(tokenized["label"])
        if (labels < 0).any():
            raise QuantizeError("the split has unlabeled rows (label -1); evaluate on a labeled split")
        logits = _logits(model, tokenized, tokenizer, batch_size)
        preds[name] = logits.argmax(-1)
        rows.append(pd.Series(compute_metrics(labels, preds[name], logits.shape[1]), name=name))
    df = pd.DataFrame(rows)
    df.index.name = "variant"
    ref = "pytorch_fp32" if "pytorch_fp32" in df.index else df.index[0]
    df["accuracy_drop"] = df.loc[ref, "accuracy"] - df["accuracy"]
    df["f1_drop"] = df.loc[ref, "f1_macro"] - df["f1_macro"]
    df["agreement"] = [100.0 * (preds[n] == preds[ref]).mean() for n in df.index]
    df["degraded"] = df["accuracy_drop"] > 1.0
    return df
