"""Deployment variants: PyTorch (fp32, bf16, compiled), torchao int8, ONNX Runtime, OpenVINO and CTranslate2.

:func:`quantize` writes one folder per model with one sub-folder per *variant*:

=================================  ==================================================================================
``pytorch_fp32``                   the model as given, ``save_pretrained`` (safetensors)
``pytorch_bf16``                   the same files; loaded with its linear weights in bf16 and run under
                                   ``torch.autocast("cpu", dtype=torch.bfloat16)`` (oneDNN: AVX512-BF16 or AMX)
``torch_compile_fp32``             the same files; ``torch.compile(dynamic=True)``, inductor with ``freezing``,
                                   compiled when loaded (:mod:`ufkit.quantization.pytorch`)
``torch_compile_bf16``             bf16 autocast under ``torch.compile``
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
``openvino_fp32``                  ``onnx_fp32`` converted to OpenVINO IR, run in fp32 (``INFERENCE_PRECISION_HINT``
                                   f32; :mod:`ufkit.quantization.openvino`)
``openvino_int8``                  the IR quantized by NNCF's post-training quantization on the calibration
                                   sentences
``ctranslate2_int8``               the BERT encoder converted to CTranslate2 int8, the pooler and classifier in fp32
                                   (:mod:`ufkit.quantization.ctranslate2`)
=================================  ==================================================================================

Every variant is evaluated (:func:`evaluate_variants`) and timed (:func:`benchmark_variants`) by the same harness:
:func:`load_variant` returns something called on a batch dict (``input_ids``, ``attention_mask``,
``token_type_ids``) that returns ``.logits``, at the same thread count. A variant that cannot run well on this CPU
(no native bf16, no AVX512-VNNI for torchao), whose optional package is missing (``pip install
'ufkit[openvino]'``, ``'ufkit[ctranslate2]'``), or whose backend cannot convert this model, is *skipped* with its
reason (:mod:`ufkit.quantization.support`): a ``skipped`` column in the returned tables and an entry in the output
folder's ``report.json``, never silently. ``force=`` runs a variant past a CPU rule.

Each variant is written to a hidden temporary folder and renamed into place once complete; a folder counts as
a variant only if it holds ``ufkit_variant.json``, which is written last. An interrupted run therefore leaves
nothing that :func:`load_variant` accepts.

Sources: ONNX Runtime's quantization guide (onnxruntime.ai/docs/performance/model-optimizations/quantization)
and transformer optimizer; torchao's ``quantize_`` API; PyTorch's ``torch.compile`` and ``torch.autocast``;
OpenVINO's and NNCF's documentation; CTranslate2's documentation; the variant list of anuk909/fast-bert, made fair
here (every backend at the same thread count, real sentences) and given a cure for int8 accuracy collapse
(:func:`sensitivity` and :func:`auto_quantize`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..cache import fingerprint_source, json_default
from ..measure.inputs import model_size_mb
from ..measure.timing import num_threads
from .auto import _logits, _tokenized, auto_quantize
from .common import COMPILED, MARKER, ONNX_FILE, VARIANTS, QuantizeError, VariantSkipped
from .onnx import OnnxClassifier, export_onnx, optimize_onnx, quantize_onnx_dynamic, quantize_onnx_static
from .support import check_runnable, skip_reason

#: The run report :func:`quantize` writes into its output folder: what it wrote, kept and skipped, and why.
REPORT_FILE = "report.json"
#: Variants whose folder holds the PyTorch classifier as ``pytorch_fp32`` does, with how to run it.
_TORCH_RUNTIMES = {"pytorch_bf16": {"autocast": "bfloat16", "compile": None},
                   "torch_compile_fp32": {"autocast": None, "compile": True},
                   "torch_compile_bf16": {"autocast": "bfloat16", "compile": True}}


def check_classifier(name_or_path) -> str:
    """Resolve a model id or folder and check that it is a sequence classifier.

    Returns:
        the folder or hub id to load from.

    Raises:
        QuantizeError: the path does not exist, has no readable config, or the checkpoint has no
            sequence-classification head (quantizing a randomly initialised head would report nonsense).
    """
    from transformers import AutoConfig

    from ..models import ModelError, _quiet_transformers, resolve_model

    try:
        source = resolve_model(name_or_path)
        with _quiet_transformers():
            cfg = AutoConfig.from_pretrained(source, local_files_only=Path(source).is_dir())
    except ModelError as e:
        raise QuantizeError(str(e)) from None
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QuantizeError(f"model {str(name_or_path)!r}: cannot read its config: {first}") from None
    archs = getattr(cfg, "architectures", None) or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise QuantizeError(f"model {str(name_or_path)!r} is not a sequence-classification model (architectures: "
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
        raise QuantizeError(f"output folder {str(folder)!r} is not writable: {e.strerror or e}") from None
    return folder


@contextlib.contextmanager
def _atomic_variant(out: Path, name: str, info: dict):
    """Yield a temporary folder; on success write the marker and rename it to ``out / name``."""
    from ..models import atomic_folder

    with atomic_folder(out / name) as tmp:
        yield tmp
        marker = {"variant": name, "description": VARIANTS.get(name, name), **info,
                  "size_mb": model_size_mb(path=tmp), "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2, default=json_default))


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
# the whole pipeline


def _is_current(path: Path, recipe: dict) -> bool:
    """A complete variant made from the same model files with the same settings (else it is remade)."""
    if not (path / MARKER).is_file():
        return False
    return json.loads((path / MARKER).read_text()).get("recipe") == recipe


def _save_torchao(source: str, out: Path) -> dict:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TorchAoConfig

    from .. import structure  # noqa: F401  (pruned checkpoints load through the Auto classes)
    from ..models import _quiet_transformers

    with _quiet_transformers(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = Path(source).is_dir()
        model = AutoModelForSequenceClassification.from_pretrained(
            source, local_files_only=local, device_map="cpu",
            quantization_config=TorchAoConfig(Int8DynamicActivationInt8WeightConfig()))
        model.save_pretrained(out, safe_serialization=True)
        AutoTokenizer.from_pretrained(source, local_files_only=local).save_pretrained(out)
    return {"config": "Int8DynamicActivationInt8WeightConfig", "format": "safetensors (transformers TorchAoConfig)"}


def _write_report(out: Path, rows: list[dict], threads: int | None) -> None:
    from ..measure.machine import machine_info

    report = {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_info(threads), "variants": rows}
    tmp = out / f".{REPORT_FILE}.tmp"
    tmp.write_text(json.dumps(report, indent=2, default=json_default))
    os.replace(tmp, out / REPORT_FILE)


def read_report(folder: str | os.PathLike) -> dict:
    """The ``report.json`` of a :func:`quantize` output folder (``{}`` if it has none).

    Returns:
        a dict with ``created``, ``machine`` and ``variants``: one dict per variant with ``variant``, ``status``
        (``written``, ``kept`` or ``skipped``), ``reason``, ``seconds`` and ``size_mb``.
    """
    path = Path(folder) / REPORT_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def quantize(model: str | os.PathLike | None, output: str | os.PathLike, *, variants: Iterable[str] | None = None,
             calibration_texts: Sequence[str] | None = None, validation=None, budget: float = 1.0,
             threads: int | None = None, skip_existing: bool = False, force: bool | Iterable[str] | None = None,
             progress: bool = True) -> pd.DataFrame:
    """Write the deployment variants of a sequence classifier, one sub-folder each (see the module docstring).

    Args:
        model: a fine-tuned classifier: local folder or hub id.
        output: the folder to write (created if missing); existing variants are replaced.
        variants: names from :data:`VARIANTS` (default: all). ``onnx_*`` and ``openvino_*`` variants build on
            ``onnx_fp32`` (and ``onnx_int8_*`` on ``onnx_optimized``), which are written as well when needed.
        calibration_texts: real sentences for ``onnx_int8_static`` and ``openvino_int8`` (required for them).
        validation (`datasets.Dataset`): labeled sentences for ``onnx_int8_auto`` (required for it).
        budget: accuracy points ``onnx_int8_auto`` may lose on ``validation``.
        threads: ORT threads while searching (default :func:`ufkit.config.bench_threads`).
        skip_existing: keep complete variants already in ``output`` that were made from the same model files
            with the same settings (a resumable run, and a cache); others are remade.
        force: True, or names of variants to make even where this CPU lacks what makes them fast
            (:func:`~ufkit.quantization.support.skip_reason`).

    Returns:
        DataFrame, one row per variant written or skipped: ``variant``, ``description``, ``size_mb``, ``seconds``
        (time to make it), ``path``, ``skipped`` (empty, None or NaN, when the variant was made; else why not:
        this CPU, a missing package, a model its backend cannot convert). The same, with the variants kept by
        ``skip_existing``, is written to ``output/report.json`` (:func:`read_report`).

    Raises:
        QuantizeError: missing model, a model without a classification head, an unwritable ``output``, an unknown
            variant, or a variant whose inputs (calibration sentences, validation data) are missing.
    """
    from ..progress import progress_bar

    from ..models import load_model

    wanted = list(VARIANTS) if variants is None else list(dict.fromkeys(variants))
    unknown = [v for v in wanted if v not in VARIANTS]
    if unknown:
        raise QuantizeError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    skipped = {v: r for v in wanted if (r := skip_reason(v, force=force, writing=True)) is not None}
    wanted = [v for v in wanted if v not in skipped]
    for name in ("onnx_int8_static", "openvino_int8"):
        if name in wanted and not calibration_texts:
            raise QuantizeError(f"{name} needs calibration_texts (real sentences)")
    if "onnx_int8_auto" in wanted and validation is None:
        raise QuantizeError("onnx_int8_auto needs a labeled validation split")
    source = check_classifier(model)
    out = check_writable(output)
    # ORT and OpenVINO variants need the ONNX files they build on.
    needs = set(wanted)
    if any(v.startswith("onnx_int8") for v in needs):
        needs |= {"onnx_optimized", "onnx_fp32"}
    if "onnx_optimized" in needs or any(v.startswith("openvino") for v in needs):
        needs.add("onnx_fp32")
    recipe = {"model_id": fingerprint_source(source), "budget": budget,
              "n_calibration": len(calibration_texts or []), "n_validation": None if validation is None else
              len(validation)}
    todo = [v for v in VARIANTS if v in needs and not (skip_existing and _is_current(out / v, recipe))]
    kept = [v for v in VARIANTS if v in needs and v not in todo]
    for stale in out.glob(".*.tmp-*"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)

    net, tokenizer = load_model(source) if todo else (None, None)
    rows = []
    for name in progress_bar(todo, desc="quantize", disable=not progress):
        t0 = time.perf_counter()
        info = {"source": str(model if model is not None else source), "recipe": recipe}
        try:
            # info is filled in place: the context manager writes it as the marker when the block succeeds
            with _atomic_variant(out, name, info) as tmp:
                _write_variant(name, tmp, out, info, net, tokenizer, source, calibration_texts=calibration_texts,
                               validation=validation, budget=budget, threads=threads, progress=progress)
                info["seconds"] = time.perf_counter() - t0
        except VariantSkipped as e:
            skipped[name] = e.reason
            continue
        rows.append({"variant": name, "description": VARIANTS[name], "size_mb": model_size_mb(path=out / name),
                     "seconds": info["seconds"], "path": str(out / name), "skipped": None})
    rows += [{"variant": v, "description": VARIANTS[v], "size_mb": float("nan"), "seconds": float("nan"),
              "path": None, "skipped": skipped[v]} for v in VARIANTS if v in skipped]
    report = [{"variant": r["variant"], "status": "written" if r["skipped"] is None else "skipped",
               "reason": r["skipped"], "seconds": r["seconds"], "size_mb": r["size_mb"]} for r in rows]
    report += [{"variant": v, "status": "kept", "reason": "made earlier from the same model files and settings",
                "seconds": None, "size_mb": model_size_mb(path=out / v)} for v in kept]
    order = list(VARIANTS)
    _write_report(out, sorted(report, key=lambda r: order.index(r["variant"])), threads)
    df = pd.DataFrame(rows, columns=["variant", "description", "size_mb", "seconds", "path", "skipped"])
    return df.sort_values("variant", key=lambda c: c.map(order.index), kind="stable").reset_index(drop=True)


def _write_variant(name: str, tmp: Path, out: Path, info: dict, net, tokenizer, source: str, *, calibration_texts,
                   validation, budget, threads, progress) -> None:
    """Write variant ``name`` into ``tmp``, adding what describes it to ``info`` (its marker)."""
    if name == "pytorch_fp32" or name in _TORCH_RUNTIMES:
        net.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if name in _TORCH_RUNTIMES:
            from .pytorch import COMPILE_SETTINGS

            runtime = dict(_TORCH_RUNTIMES[name])
            runtime["compile"] = COMPILE_SETTINGS if runtime["compile"] else None
            info.update(runtime=runtime, format="safetensors (fp32; linear weights cast to bf16 when loaded)"
                        if runtime["autocast"] else "safetensors (fp32)")
        return
    if name == "torchao_int8":
        info.update(_save_torchao(source, tmp))
        return
    if name.startswith("openvino"):
        import openvino as ov

        from .openvino import convert_openvino

        tokenizer.save_pretrained(tmp)
        net.config.save_pretrained(tmp)  # the label names, for `ufkit evaluate`
        int8 = name == "openvino_int8"
        info.update(convert_openvino(out / "onnx_fp32" / ONNX_FILE, tmp, tokenizer=tokenizer,
                                     calibration_texts=calibration_texts if int8 else None),
                    runtime={"inference_precision_hint": "f32", "openvino": ov.__version__})
        return
    if name == "ctranslate2_int8":
        import ctranslate2

        from .ctranslate2 import convert_ctranslate2

        tokenizer.save_pretrained(tmp)
        net.config.save_pretrained(tmp)
        info.update(convert_ctranslate2(net, tokenizer, tmp, quantization="int8"),
                    runtime={"compute_type": "int8", "inter_threads": 1,
                             "intra_threads": "1 at batch size 1, else the benchmark's thread count",
                             "ctranslate2": ctranslate2.__version__})
        return
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


def load_variant(path: str | os.PathLike, *, threads: int | None = None, compile: bool = False,
                 force: bool | Iterable[str] | None = None):
    """Load one variant written by :func:`quantize`, ready to call on a batch dict.

    Args:
        path: the variant's folder (e.g. ``out/onnx_int8_dynamic``).
        threads: intra-op threads for ONNX Runtime, OpenVINO and CTranslate2 (default
            :func:`ufkit.config.bench_threads`); PyTorch variants follow ``torch.set_num_threads``.
        compile: wrap a PyTorch variant in ``torch.compile(dynamic=True)`` (the ``torchao_int8_compiled`` row).
            ``torch_compile_*`` variants are compiled by their marker without it.
        force: True, or names of variants to load even where this CPU lacks what makes them fast.

    Returns:
        ``(model, tokenizer, info)``: a ``torch.nn.Module`` (plain, or a
        :class:`~ufkit.quantization.pytorch.TorchClassifier` for bf16 and compiled variants), an
        :class:`OnnxClassifier`, :class:`~ufkit.quantization.openvino.OpenVinoClassifier` or
        :class:`~ufkit.quantization.ctranslate2.CTranslate2Classifier`; the tokenizer; the variant's
        ``ufkit_variant.json``. Each takes ``input_ids``, ``attention_mask`` and ``token_type_ids`` of shape
        ``(batch, seq_len)`` and returns ``.logits`` of shape ``(batch, num_labels)``.

    Raises:
        VariantSkipped: this machine cannot run the variant well (CPU) or at all (package, compiler).
        QuantizeError: not a complete variant folder, or it cannot be loaded.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .. import structure  # noqa: F401  (pruned checkpoints load through the Auto classes)
    from ..models import _quiet_transformers

    path = Path(path)
    info = variant_info(path)
    name = info["variant"]
    check_runnable(COMPILED if compile and name == "torchao_int8" else name, force=force)
    with _quiet_transformers(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if (path / ONNX_FILE).is_file():
            return OnnxClassifier(path / ONNX_FILE, threads), tokenizer, info
        if name.startswith("openvino"):
            from .openvino import OPENVINO_FILE, OpenVinoClassifier

            return OpenVinoClassifier(path / OPENVINO_FILE, threads), tokenizer, info
        if name == "ctranslate2_int8":
            from .ctranslate2 import CTranslate2Classifier

            return CTranslate2Classifier(path, threads), tokenizer, info
        try:
            if name == "torchao_int8":
                import torchao  # noqa: F401  (registers the int8 tensor type for loading)
            model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True,
                                                                       device_map="cpu")
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise QuantizeError(f"cannot load variant {str(path)!r}: {str(e).splitlines()[0]}") from None
    model.eval()
    runtime = info.get("runtime") or {}
    if name in _TORCH_RUNTIMES:
        from .pytorch import TorchClassifier

        return (TorchClassifier(model, bf16=runtime.get("autocast") == "bfloat16",
                                compile=bool(runtime.get("compile"))), tokenizer, info)
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


def _skipped_rows(name: str, reason: str, batch_sizes, model_name: str, threads: int) -> pd.DataFrame:
    from ..measure.machine import machine_info

    return pd.DataFrame([{"name": f"{model_name}/{name}", "batch_size": b, "variant": name, "model": model_name,
                          "skipped": reason, **machine_info(threads)} for b in batch_sizes])


def benchmark_variants(folder: str | os.PathLike, texts: Sequence[str] | None = None, *,
                       batch_sizes: Sequence[int] = (1, 32), variants: Sequence[str] | None = None,
                       include_compiled: bool = False, threads: int | None = None, n_warmup: int = 10,
                       n_iters: int = 50, max_seconds: float | None = None, table: str | None = None,
                       model_name: str | None = None, force: bool | Iterable[str] | None = None,
                       progress: bool = True) -> pd.DataFrame:
    """Time every variant of a :func:`quantize` folder at the same thread count on the same real sentences.

    PyTorch runs with ``torch.set_num_threads(threads)``, ONNX Runtime with ``intra_op_num_threads=threads``
    (inter-op 1), OpenVINO with ``INFERENCE_NUM_THREADS=threads`` and CTranslate2 with ``intra_threads=threads``
    (1 at batch size 1; ``backend_threads`` says which); ``threads`` defaults to :func:`ufkit.config.bench_threads`.
    Variants that compile or prepare code per input shape (``torch_compile_*``, ``torchao_int8_compiled``,
    ``openvino_*``) are first called once on every batch the timing will use, and that warm-up is reported as
    ``compile_s`` (seconds).

    Columns are those of :func:`ufkit.measure.benchmark` (latency in ms, throughput in sequences/s, size in MB of
    the variant's files, peak memory) plus ``variant``, ``model``, ``model_id``, ``compile_s``, ``backend_threads``
    and ``skipped``: a variant this machine cannot run well or at all (:mod:`ufkit.quantization.support`) gets one
    row per batch size with the reason there, the machine's columns, and no timings.

    Args:
        table: results-store table to append the rows to (None: do not store).
        max_seconds: cap on the timed runs of one row: a variant whose single call takes longer than
            ``max_seconds / n_iters`` is timed fewer times (at least 5; the row's ``n_iters`` says how many), so
            a slow backend does not stall the sweep.
        force: True, or names of variants to time even where this CPU lacks what makes them fast.
    """
    import torch
    from ..progress import progress_bar

    from .. import config
    from ..measure import ResultsStore, benchmark, make_batches, sample_texts

    threads = config.bench_threads() if threads is None else threads
    folder = Path(folder)
    model_name = model_name or folder.name
    pool_texts = sample_texts() if texts is None else list(texts)
    frames = []
    for name, compiled in progress_bar(_variant_rows(folder, variants, include_compiled), desc="benchmark",
                                      disable=not progress):
        path = folder / ("torchao_int8" if compiled else name)
        try:
            model, tokenizer, info = load_variant(path, threads=threads, compile=compiled, force=force)
        except VariantSkipped as e:
            rows = _skipped_rows(name, e.reason, batch_sizes, model_name, threads)
            if table is not None:
                ResultsStore().append(table, rows)
            frames.append(rows)
            continue
        extra = {"variant": name, "model": model_name, "model_id": info.get("recipe", {}).get("model_id")}
        if compiled or getattr(model, "warmup_per_shape", False):
            # compile (or let the backend prepare) every batch shape the timing will use, before timing
            t0 = time.perf_counter()
            with num_threads(threads), torch.inference_mode():
                for b in batch_sizes:
                    for batch in make_batches(tokenizer, pool_texts, b, n_batches=min(8, max(1, n_iters))):
                        model(**batch)
            extra["compile_s"] = time.perf_counter() - t0
        for b in batch_sizes:
            iters = n_iters
            if max_seconds is not None:
                probe = make_batches(tokenizer, pool_texts, b, n_batches=1)[0]
                with num_threads(threads), torch.inference_mode():
                    t0 = time.perf_counter()
                    model(**probe)
                    once = time.perf_counter() - t0
                iters = max(5, min(n_iters, int(max_seconds / max(once, 1e-9))))
            row_extra = dict(extra)
            if hasattr(model, "threads_for"):
                row_extra["backend_threads"] = model.threads_for(b)
            frames.append(benchmark(model, tokenizer, pool_texts, name=f"{model_name}/{name}", batch_size=b,
                                    n_warmup=min(n_warmup, iters), n_iters=iters, threads=threads,
                                    size_mb=info["size_mb"], table=table, extra=row_extra))
        del model
    df = pd.concat(frames, ignore_index=True)
    if "skipped" not in df:
        df["skipped"] = None
    return df


def evaluate_variants(folder: str | os.PathLike, dataset, *, variants: Sequence[str] | None = None,
                      threads: int | None = None, batch_size: int = 64, force: bool | Iterable[str] | None = None,
                      progress: bool = True) -> pd.DataFrame:
    """Accuracy, precision, recall and F1 of every variant, its degradation against fp32 and its agreement.

    Args:
        dataset (`datasets.Dataset`): a labeled split (``text``, ``label``).
        force: True, or names of variants to run even where this CPU lacks what makes them fast.

    Returns:
        DataFrame indexed by ``variant`` with the columns of :func:`ufkit.evaluate.evaluate` plus
        ``accuracy_drop`` (points below ``pytorch_fp32``), ``f1_drop``, ``agreement`` (percent of predictions equal
        to ``pytorch_fp32``'s), ``degraded`` (accuracy drop above 1 point) and ``skipped`` (empty where the
        variant ran, else why this machine does not run it; its metrics are then NaN). Without a
        ``pytorch_fp32`` variant the reference is the first variant evaluated.

    Raises:
        QuantizeError: the folder holds no variants, none of them can run here, or the split has unlabeled rows.
    """
    from ..progress import progress_bar

    from ..evaluate import compute_metrics

    folder = Path(folder)
    rows, preds, skipped = [], {}, {}
    for name, _ in progress_bar(_variant_rows(folder, variants, False), desc="evaluate", disable=not progress):
        try:
            model, tokenizer, _ = load_variant(folder / name, threads=threads, force=force)
        except VariantSkipped as e:
            skipped[name] = e.reason
            rows.append(pd.Series(dtype=float, name=name))
            continue
        tokenized = _tokenized(dataset, tokenizer)
        labels = np.asarray(tokenized["label"])
        if (labels < 0).any():
            raise QuantizeError("the split has unlabeled rows (label -1); evaluate on a labeled split")
        logits = _logits(model, tokenized, tokenizer, batch_size)
        preds[name] = logits.argmax(-1)
        rows.append(pd.Series(compute_metrics(labels, preds[name], logits.shape[1]), name=name))
    df = pd.DataFrame(rows)
    df.index.name = "variant"
    ran = [n for n in df.index if n in preds]
    if not ran:
        raise QuantizeError(f"no variant in {str(folder)!r} can run here: " +
                            "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    ref = "pytorch_fp32" if "pytorch_fp32" in preds else ran[0]
    df["accuracy_drop"] = df.loc[ref, "accuracy"] - df["accuracy"]
    df["f1_drop"] = df.loc[ref, "f1_macro"] - df["f1_macro"]
    df["agreement"] = [100.0 * (preds[n] == preds[ref]).mean() if n in preds else np.nan for n in df.index]
    df["degraded"] = df["accuracy_drop"] > 1.0
    df["skipped"] = [skipped.get(n) for n in df.index]
    return df
