"""The ``ufkit`` command line: ``finetune``, ``evaluate``, ``benchmark``, ``quantize``, ``bench-fff``, the
compression commands ``distill``, ``prune``, ``theseus`` and ``qat`` (chapter 3), ``convert-fff`` (a dense
feedforward converted into fast feedforward layers, chapter 6), whose outputs the others load, and ``optimize``
(chapter 7: composed recipes searched under an accuracy budget, :mod:`ufkit.compose`).

``ufkit evaluate`` and ``ufkit benchmark`` given a folder written by ``ufkit quantize`` run every variant in it;
a variant this CPU cannot run well, or whose optional package is missing, is reported as skipped with its reason
(``--force NAME`` runs it past a CPU rule). ``ufkit quantize --select fastest`` then picks the fastest variant on
this machine within the accuracy ``--budget`` and writes ``selection.json``. Given an early-exit folder
(``ufkit optimize``'s choice of an ``exits`` recipe) they run its exits at its speed.

Where a model meets labeled data (``evaluate``, ``quantize``), the data's labels are numbered as the model
numbers them (its ``config.id2label``): a file may hold a subset of the model's classes, and a label the model
does not know, or a data set with another number of classes, is refused.

Bad input (an unknown model path, missing data, an unknown column, a bad batch size) ends with exit code 2
and one line on standard error that names the argument: ``error: --batch-size must be ...``. Library chatter
that is not an error (torchao's CUDA-only extensions that do not load on a CPU, torch's deprecation notes,
Hugging Face progress bars) is silenced, so that each command prints its own output only.
``ufkit finetune`` runs unchanged under ``accelerate launch -m ufkit.cli finetune ...``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from . import UfkitError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="ufkit: make BERT-family encoders fast.")

ModelOpt = typer.Option(None, "--model", "-m", help="Hugging Face id or local folder (default: packaged MiniLM-L6-H384).")
DataOpt = typer.Option(None, "--data", "-d", help="Local file/folder (TSV, CSV, JSONL) or hub dataset name (default: SST-2).")
SubsetOpt = typer.Option(None, "--subset", help="Configuration of a hub dataset (e.g. 'sst2' for 'glue').")
TextOpt = typer.Option("sentence", "--text-column", help="Column holding the text.")
LabelOpt = typer.Option("label", "--label-column", help="Column holding the label.")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _errors_as_one_line(fn):
    """Turn ufkit's input errors into exit code 2 and a one-line message."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UfkitError as e:
            _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
        except OSError as e:  # unwritable output folder, full disk
            _fail(f"{e.filename or ''}: {e.strerror or e}".lstrip(": "))

    return wrapper


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UfkitError(f"{name} must be a positive integer, got {value}")


def _check_distillation(temperature: float, alpha: float, hidden_weight: float = 0.0) -> None:
    """The distillation flags of ``distill`` and ``convert-fff``; raise ``UfkitError`` naming the first bad one."""
    if not temperature > 0:
        raise UfkitError(f"--temperature must be positive, got {temperature}")
    if not 0 <= alpha <= 1:
        raise UfkitError(f"--alpha must be in [0, 1], got {alpha}")
    if not hidden_weight >= 0:
        raise UfkitError(f"--hidden-weight must be non-negative, got {hidden_weight}")


def _register_model_classes() -> None:
    """Register ufkit's own model classes with transformers' Auto classes before a model folder is read, so that
    a folder written by ``ufkit convert-fff`` (``model_type`` ``"ufkit_fff_bert"``) loads in every command
    (pruned models register themselves through :mod:`ufkit.models`)."""
    from .fff import bert  # noqa: F401  (registers model_type "ufkit_fff_bert")


class _DropMessages(logging.Filter):
    """Drop log records whose message starts with ``prefix`` and contains ``also``, while ``when()`` holds."""

    def __init__(self, prefix: str, also: str, when=lambda: True):
        super().__init__()
        self.prefix, self.also, self.when = prefix, also, when

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith(self.prefix) and self.also in message and self.when())


def _no_cuda() -> bool:
    import torch  # already loaded: torchao logs while importing it

    return not torch.cuda.is_available()


def _quiet_libraries() -> None:
    """Silence library output that is neither an error nor the command's own (before those libraries load).

    - torchao warns once per CUDA-only extension library (``_C_mxfp8``, ``_C_cutlass_90a``) that cannot load on
      a machine without CUDA; its CPU int8 path does not use them (with CUDA, the warning shows).
    - torch warns that torchao registers enums with ``register_constant`` (a deprecation inside torchao).
    - Hugging Face progress bars (loading weights, ``datasets.map``) unless the user set them.
    Any other warning from these loggers, and every error, still shows.
    """
    logging.getLogger("torchao").addFilter(_DropMessages("Failed to load ", ".so", when=_no_cuda))
    logging.getLogger("torch.utils._pytree").addFilter(_DropMessages("<enum ", "register_constant()"))
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' bars follow the hub's
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def _metrics_table(row) -> str:
    table = row.to_frame().T.astype({"n": int})
    return table.to_string(float_format=lambda v: f"{v:.2f}")


def _load_task(data, subset, text_column, label_column, label_names=None, validation_fraction=0.1):
    """Load --data; given ``label_names`` (the model's), number its labels as the model does.

    Raises:
        UfkitError: the data's labels do not fit the model's, naming --data and --model.
    """
    from .data import LabelError, load_hub, load_task

    try:
        if subset is not None and data is not None and not Path(data).exists():
            return load_hub(data, subset, text_column=text_column, label_column=label_column,
                            label_names=label_names)
        return load_task(data, text_column=text_column, label_column=label_column, label_names=label_names,
                         validation_fraction=validation_fraction)
    except LabelError as e:
        raise UfkitError(f"--data does not match --model: {e.reason}") from None


def _model_label_names(model) -> list[str]:
    """The label names of --model in id order (``config.id2label``).

    ``model`` is a hub id, a model folder or None (the packaged MiniLM), or a ``ufkit quantize`` folder: then
    the config of any of its variants, else of the model it was made from, else ``LABEL_<i>`` for each output
    of its ONNX graph.

    Raises:
        UfkitError: the model does not exist or its config cannot be read.
    """
    from transformers import AutoConfig

    from .models import _quiet_transformers, resolve_model
    from .quantization import MARKER, ONNX_FILE, list_variants

    _register_model_classes()

    def names(config) -> list[str]:
        return [str(config.id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]

    def read(source) -> list[str]:
        try:
            with _quiet_transformers():
                return names(AutoConfig.from_pretrained(source, local_files_only=Path(source).is_dir()))
        except (OSError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UfkitError(f"--model {str(model)!r}: cannot read its config: {first}") from None

    variants = list_variants(model) if model is not None else []
    if not variants:
        return read(resolve_model(model))
    folder = Path(model)
    for v in variants:
        if (folder / v / "config.json").is_file():
            return read(str(folder / v))
    source = json.loads((folder / variants[0] / MARKER).read_text()).get("source")
    if source and (Path(source) / "config.json").is_file():
        return read(source)
    import onnx

    graph = onnx.load(str(folder / variants[0] / ONNX_FILE), load_external_data=False).graph
    n = graph.output[0].type.tensor_type.shape.dim[-1].dim_value  # logits: (batch, num_labels)
    if n < 2:
        raise UfkitError(f"--model {str(model)!r}: cannot tell its labels (no variant holds a config.json)")
    return [f"LABEL_{i}" for i in range(n)]


def _early_exit_model(model):
    """The early-exit model of a folder written by ``EarlyExitModel.save_pretrained`` with its backbone (as
    ``ufkit optimize`` writes a chosen ``exits`` recipe), as a callable running its exits at the speed in its
    ``exit_speed.json`` (0, the full model, without one); None for any other model."""
    from .early_exit.model import CONFIG_FILE

    if model is None or not (Path(model) / CONFIG_FILE).is_file() or not (Path(model) / "config.json").is_file():
        return None
    from .compose import load_artifact

    _register_model_classes()
    artifact = load_artifact(model)
    typer.echo(f"early-exit model: {artifact.num_layers} layers, exits at speed {artifact.speed:g}", err=True)
    return artifact


def _scored(n: int, total: int, where: str) -> str:
    if n == total:
        return f"scored all {total} rows of {where}"
    return f"scored {n} of {total} rows of {where} (a seeded random sample)"


@app.command()
@_errors_as_one_line
def finetune(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the fine-tuned model (safetensors)."),
    model: Optional[str] = ModelOpt,
    data: Optional[str] = DataOpt,
    subset: Optional[str] = SubsetOpt,
    text_column: str = TextOpt,
    label_column: str = LabelOpt,
    epochs: float = typer.Option(1.0, help="Passes over the training split."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many steps (overrides --epochs)."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Sequences per step."),
    learning_rate: float = typer.Option(5e-5, help="Peak AdamW learning rate."),
    n_train: Optional[int] = typer.Option(None, help="Train on a random subset of this many examples."),
    seed: int = typer.Option(42, help="Random seed."),
    retrain: bool = typer.Option(False, help="Train even if OUTPUT already holds a checkpoint."),
):
    """Fine-tune a classifier and save it to OUTPUT; prints validation metrics."""
    from .evaluate import evaluate as evaluate_model
    from .training import TrainConfig, load_or_finetune

    _positive("--batch-size", batch_size)
    _positive("--max-steps", max_steps)
    _positive("--n-train", n_train)
    task = _load_task(data, subset, text_column, label_column)
    cfg = TrainConfig(epochs=epochs, max_steps=max_steps, batch_size=batch_size, learning_rate=learning_rate,
                      seed=seed)
    net, tokenizer, info = load_or_finetune(output, model_name=model, task=task, cfg=cfg, n_train=n_train,
                                            retrain=retrain)
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under `accelerate launch`, one process reports
        return
    typer.echo(f"model saved in {output} ({info['steps']} steps, {info['train_seconds']:.1f} s)")
    if "validation" in task.splits:
        row = evaluate_model(net, tokenizer, task["validation"], name=str(output))
        (Path(output) / "metrics.json").write_text(json.dumps(row.to_dict(), indent=2))
        typer.echo(_metrics_table(row))


@app.command()
@_errors_as_one_line
def evaluate(
    model: Optional[str] = ModelOpt,
    data: Optional[str] = DataOpt,
    subset: Optional[str] = SubsetOpt,
    split: Optional[str] = typer.Option(None, help="Split to evaluate on: train, validation (default), test. "
                                        "A single file given as --data has no splits: all of it is evaluated."),
    text_column: str = TextOpt,
    label_column: str = LabelOpt,
    max_samples: Optional[int] = typer.Option(None, "--max-samples", help="Evaluate a seeded random sample of "
                                              "this many rows (default: every row)."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Sequences per forward pass."),
    threads: Optional[int] = typer.Option(None, help="ONNX Runtime threads for ONNX variants (default: UFKIT_THREADS, else torch's intra-op thread count)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder to write metrics.csv into."),
    force: Optional[List[str]] = typer.Option(None, "--force", help="For a `ufkit quantize` folder: run this "
                                              "variant even where the CPU lacks what makes it fast (repeat)."),
):
    """Accuracy, precision, recall and F1 of a classifier on a split, or on every row of a single file.

    The data's labels are numbered as the model numbers them (its config.id2label), so a file may hold a subset
    of the model's classes. Given a folder written by `ufkit quantize`, evaluates every variant in it and adds
    the degradation against fp32 and the agreement of predictions with fp32.
    """
    from .data import subset as sample
    from .evaluate import evaluate as evaluate_model
    from .models import load_model
    from .quantization import evaluate_variants, is_variant_folder

    _register_model_classes()
    _positive("--batch-size", batch_size)
    _positive("--threads", threads)
    _positive("--max-samples", max_samples)
    single_file = data is not None and subset is None and Path(data).expanduser().is_file()
    if single_file and split not in (None, "validation"):
        raise UfkitError(f"--split {split!r}: a single file given as --data has no splits; all of it is evaluated")
    label_names = _model_label_names(model)
    task = _load_task(data, subset, text_column, label_column, label_names,
                      validation_fraction=1.0 if single_file else 0.1)
    ds = task[split or "validation"]
    scored = sample(ds, max_samples, seed=0)
    where = str(data) if single_file else f"the {split or 'validation'} split of {task.source}"
    if model is not None and is_variant_folder(model):
        df = evaluate_variants(model, scored, threads=threads, batch_size=batch_size, force=force or None)
        if output is not None:
            output.mkdir(parents=True, exist_ok=True)
            df.to_csv(output / "metrics.csv")
        cols = ["n", "accuracy", "precision_macro", "recall_macro", "f1_macro", "accuracy_drop", "agreement",
                "degraded"]
        ran = df[df["skipped"].isna()]
        typer.echo(ran[cols].astype({"n": int}).to_string(float_format=lambda v: f"{v:.2f}"))
        for name, reason in df["skipped"].dropna().items():
            typer.echo(f"skipped {name}: {reason}")
        typer.echo(_scored(len(scored), len(ds), where))
        return
    exit_model = _early_exit_model(model)
    if exit_model is not None:  # a folder with early exits runs them at its calibrated speed
        net, tokenizer = exit_model, exit_model.tokenizer
    else:
        net, tokenizer = load_model(model)
    row = evaluate_model(net, tokenizer, scored, batch_size=batch_size, name=model or "default")
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        row.to_frame().T.to_csv(output / "metrics.csv", index_label="model")
    typer.echo(_metrics_table(row))
    typer.echo(_scored(len(scored), len(ds), where))


@app.command()
@_errors_as_one_line
def benchmark(
    model: Optional[str] = ModelOpt,
    data: Optional[str] = DataOpt,
    subset: Optional[str] = SubsetOpt,
    split: str = typer.Option("validation", help="Split whose sentences are the inputs."),
    text_column: str = TextOpt,
    label_column: str = LabelOpt,
    batch_size: List[int] = typer.Option([1, 32], "--batch-size", "-b", help="Batch size (repeat for several)."),
    seq_len: Optional[int] = typer.Option(None, help="Tokens per sequence (default: natural sentence lengths)."),
    threads: Optional[int] = typer.Option(None, help="Torch threads (default: UFKIT_THREADS or torch's)."),
    warmup: int = typer.Option(10, help="Untimed runs."),
    iters: int = typer.Option(50, help="Timed runs."),
    variant: Optional[List[str]] = typer.Option(None, "--variant", help="For a `ufkit quantize` folder: variants to time (repeat; default all)."),
    compile_: bool = typer.Option(False, "--compile", help="For a `ufkit quantize` folder: also time torchao int8 under torch.compile."),
    force: Optional[List[str]] = typer.Option(None, "--force", help="For a `ufkit quantize` folder: time this "
                                              "variant even where the CPU lacks what makes it fast (repeat)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder for the result tables (CSV; default: ufkit's results folder)."),
):
    """Latency (ms), throughput (sequences/s), size (MB) and peak memory of a model on real sentences.

    Given a folder written by `ufkit quantize`, times every variant at the same thread count (PyTorch's
    intra-op threads and ONNX Runtime's intra-op threads alike) on the same sentences.
    """
    from .measure import ResultsStore, benchmark as run_benchmark
    from .models import load_model

    _register_model_classes()
    for b in batch_size:
        _positive("--batch-size", b)
    _positive("--iters", iters)
    _positive("--threads", threads)
    if seq_len is not None and seq_len < 3:
        raise UfkitError(f"--seq-len must be at least 3, got {seq_len}")
    task = _load_task(data, subset, text_column, label_column)
    texts = list(task[split]["text"])
    store = ResultsStore(output)
    import pandas as pd
    from .progress import progress_bar

    from .quantization import benchmark_variants, is_variant_folder

    if model is not None and is_variant_folder(model):
        if seq_len is not None:
            raise UfkitError("--seq-len is not supported for a `ufkit quantize` folder; it times natural lengths")
        df = benchmark_variants(model, texts, batch_sizes=batch_size, variants=variant or None,
                                include_compiled=compile_, threads=threads, n_warmup=warmup, n_iters=iters,
                                table=None, force=force or None)
        store.append("quantize_bench", df)
        cols = ["variant", "batch_size", "latency_ms_mean", "latency_ms_std", "latency_ms_p50", "latency_ms_p95",
                "throughput_seq_per_s", "size_mb", "peak_mem_mb", "threads"]
        ran = df[df["skipped"].isna()]
        if len(ran):
            typer.echo(ran[cols].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        for name, reason in df[df["skipped"].notna()].drop_duplicates("variant")[["variant", "skipped"]].values:
            typer.echo(f"skipped {name}: {reason}")
        typer.echo(f"results appended to {store.path('quantize_bench')}")
        return
    if variant or compile_ or force:
        raise UfkitError("--variant, --compile and --force need a folder written by `ufkit quantize` as --model")
    exit_model = _early_exit_model(model)
    size = None
    if exit_model is not None:  # a folder with early exits runs them at its calibrated speed
        from .compose.measuring import size_mb

        net, tokenizer, size = exit_model, exit_model.tokenizer, size_mb(exit_model)
    else:
        net, tokenizer = load_model(model)

    rows = [run_benchmark(net, tokenizer, texts, name=model or "default", batch_size=b, seq_len=seq_len,
                          n_warmup=warmup, n_iters=iters, threads=threads, table="benchmark", store=store,
                          size_mb=size)
            for b in progress_bar(batch_size, desc="benchmark", disable=len(batch_size) < 2)]
    df = pd.concat(rows, ignore_index=True)
    cols = ["name", "batch_size", "seq_len", "latency_ms_mean", "latency_ms_std", "latency_ms_p50",
            "latency_ms_p95", "throughput_seq_per_s", "size_mb", "peak_mem_mb", "threads"]
    typer.echo(df[cols].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    typer.echo(f"results appended to {store.path('benchmark')}")


ForceOpt = typer.Option(None, "--force", help="Run this variant even where the CPU lacks what makes it fast "
                        "(repeat; e.g. pytorch_bf16 without native bf16, torchao_int8 without AVX512-VNNI).")


@app.command()
@_errors_as_one_line
def quantize(
    model: str = typer.Option(..., "--model", "-m", help="Fine-tuned classifier: local folder or Hugging Face id."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write, one sub-folder per variant."),
    variant: Optional[List[str]] = typer.Option(None, "--variant", help="Variant to make (repeat; default all): "
                                                "pytorch_fp32, pytorch_bf16, torch_compile_fp32, "
                                                "torch_compile_bf16, torchao_int8, onnx_fp32, onnx_optimized, "
                                                "onnx_int8_dynamic, onnx_int8_dynamic_per_channel, onnx_int8_static, "
                                                "onnx_int8_auto, openvino_fp32, openvino_int8, ctranslate2_int8."),
    data: Optional[str] = DataOpt,
    subset: Optional[str] = SubsetOpt,
    text_column: str = TextOpt,
    label_column: str = LabelOpt,
    calibration_split: str = typer.Option("train", help="Split whose sentences calibrate onnx_int8_static and "
                                          "openvino_int8."),
    calibration_size: int = typer.Option(512, help="Calibration sentences (seeded sample)."),
    validation_split: str = typer.Option("validation", help="Labeled split on which onnx_int8_auto keeps its "
                                         "budget and --select measures accuracy drops (a held-out slice of "
                                         "training data keeps dev for the report)."),
    validation_size: Optional[int] = typer.Option(None, help="Use a seeded sample of this many validation sentences."),
    budget: float = typer.Option(1.0, help="Accuracy points onnx_int8_auto, and the variant --select picks, may "
                                 "lose against fp32."),
    threads: Optional[int] = typer.Option(None, help="Threads for every backend (default: UFKIT_THREADS, else torch's intra-op thread count)."),
    resume: bool = typer.Option(False, help="Keep complete variants already in OUTPUT."),
    force: Optional[List[str]] = ForceOpt,
    select: Optional[str] = typer.Option(None, "--select", help="'fastest': after writing the variants, evaluate "
                                         "and time them here and pick the fastest within --budget; writes "
                                         "OUTPUT/selection.json."),
    objective: str = typer.Option("latency", "--objective", help="For --select: 'latency' (median at batch 1) or "
                                  "'throughput' (sequences/s at batch 32)."),
):
    """Write PyTorch (fp32, bf16, compiled), torchao, ONNX Runtime, OpenVINO and CTranslate2 variants into OUTPUT.

    Variants this CPU cannot run well, or whose optional package is missing, are skipped with the reason shown
    and recorded in OUTPUT/report.json. With --select fastest, picks the fastest variant on this machine whose
    accuracy drop on the validation sentences stays within --budget.
    """
    from .data import subset as sample
    from .quantization import VARIANTS, check_classifier, check_writable, quantize as run, read_report, select_variant

    _register_model_classes()
    _positive("--calibration-size", calibration_size)
    _positive("--validation-size", validation_size)
    _positive("--threads", threads)
    if select is not None:
        if select != "fastest":
            raise UfkitError(f"--select must be 'fastest', got {select!r}")
        if not budget > 0:
            raise UfkitError(f"--budget must be a positive number of accuracy points with --select, got {budget}")
    if objective not in ("latency", "throughput"):
        raise UfkitError(f"--objective must be 'latency' or 'throughput', got {objective!r}")
    if budget < 0:
        raise UfkitError(f"--budget must be a non-negative number of accuracy points, got {budget}")
    wanted = variant or list(VARIANTS)
    for flag, names in (("--variant", wanted), ("--force", force or [])):
        unknown = [v for v in names if v not in VARIANTS]
        if unknown:
            raise UfkitError(f"{flag} {unknown[0]!r} is not one of {', '.join(VARIANTS)}")
    # Fail on the model and the folder before loading any data.
    try:  # the library names what is wrong; the command line names the flag
        source = check_classifier(model)
    except UfkitError as e:
        raise UfkitError(f"--model: {e}") from None
    try:
        check_writable(output)
    except UfkitError as e:
        raise UfkitError(f"--output: {e}") from None
    calibration = validation = None
    calibrated = {"onnx_int8_static", "openvino_int8"} & set(wanted)
    if calibrated or "onnx_int8_auto" in wanted or select is not None:
        task = _load_task(data, subset, text_column, label_column, _model_label_names(source))
        if calibrated:
            calibration = list(sample(task[calibration_split], calibration_size, seed=0)["text"])
        if "onnx_int8_auto" in wanted or select is not None:
            validation = sample(task[validation_split], validation_size, seed=0)
    df = run(model, output, variants=wanted, calibration_texts=calibration, validation=validation, budget=budget,
             threads=threads, skip_existing=resume, force=force or None)
    made = df[df["skipped"].isna()]
    if len(made):
        typer.echo(made[["variant", "size_mb", "seconds"]].to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    for row in df[df["skipped"].notna()].itertuples():
        typer.echo(f"skipped {row.variant}: {row.skipped}")
    typer.echo(f"variants written to {output}; report in {Path(output) / 'report.json'}")
    if select is None:
        typer.echo(f"next: ufkit benchmark --model {output}, ufkit evaluate --model {output}")
        return
    present = [r["variant"] for r in read_report(output).get("variants", []) if r["status"] in ("written", "kept")]
    choice = select_variant(output, validation, budget=budget, objective=objective, variants=present,
                            threads=threads, force=force or None)
    typer.echo(f"selected {choice['choice']}: {choice['why']} (table in {Path(output) / 'selection.json'})")


def _parse_config(text: str) -> tuple[int, int]:
    try:
        k, d = text.lower().split("x")
        return int(k), int(d)
    except ValueError:
        raise UfkitError(f"--config must look like KxD (n_trees x depth, e.g. 1x11), got {text!r}") from None


@app.command("bench-fff")
@_errors_as_one_line
def bench_fff(
    backend: List[str] = typer.Option(["native", "mkl", "torch_gather", "dense_torch", "dense_mkl"], "--backend",
                                      help="torch_gather, native, mkl, cuda, dense_torch, dense_mkl (repeat)."),
    config_: List[str] = typer.Option(["1x11"], "--config", "-c", help="n_trees x depth, e.g. 1x11 (repeat); "
                                      "'ladder' = UltraFastBERT's 3072x0 ... 1x11."),
    batch: List[int] = typer.Option([1, 128, 2048, 16384], "--batch", help="Tokens per call (repeat)."),
    hidden_size: int = typer.Option(768, help="H_in = H_out."),
    threads: Optional[int] = typer.Option(None, help="Torch threads (default: UFKIT_THREADS or torch's)."),
    warmup: int = typer.Option(2, help="Untimed calls per row."),
    iters: int = typer.Option(10, help="Timed calls per row."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder for the result tables (CSV; default: ufkit's results folder)."),
):
    """Time fast feedforward backends against dense feedforward baselines (UltraFastBERT, chapter 1)."""
    from .fff.bench import LADDER, TABLE, bench_fff as run
    from .measure import ResultsStore

    for b in batch:
        if b < 0:
            raise UfkitError(f"--batch must be a non-negative integer, got {b}")
    _positive("--hidden-size", hidden_size)
    _positive("--iters", iters)
    _positive("--threads", threads)
    configs = [c for text in config_ for c in (LADDER if text == "ladder" else [_parse_config(text)])]
    store = ResultsStore(output)
    try:
        df = run(backend, configs, batch, hidden_size, threads=threads, n_warmup=warmup, n_iters=iters,
                 device=device)
    except ValueError as e:  # the sweep's own argument checks
        raise UfkitError(str(e)) from None
    store.append(TABLE, df)
    cols = [c for c in ("backend", "cpu_path", "width", "depth", "n_trees", "batch", "threads", "latency_ms_mean",
                        "latency_ms_std") if c in df]
    typer.echo(df[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    typer.echo(f"results appended to {store.path(TABLE)}")


# ------------------------------------------------------------------------------------------------ compression


def _compression_inputs(model, data, subset, text_column, label_column):
    """Check --model (a fine-tuned classifier), load it and the task with the model's label numbering."""
    from .models import load_model
    from .quantization import check_classifier

    _register_model_classes()
    try:
        source = check_classifier(model)
    except UfkitError as e:
        raise UfkitError(f"--model: {e}") from None
    teacher, tokenizer = load_model(source)
    task = _load_task(data, subset, text_column, label_column, _model_label_names(source))
    return teacher, tokenizer, task


def _layer_list(text: str, option: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise UfkitError(f"{option} must be comma-separated layer indices such as 0,2,4, got {text!r}") from None


def _teacher_logits(teacher, tokenizer, train):
    """The teacher's logits on the training rows, kept in ufkit's cache so that a rerun whose output is already
    current does not pay for a teacher pass again (reused only for the same teacher weights and sentences)."""
    from . import config
    from .compression.distillation import teacher_logits

    return teacher_logits(teacher, tokenizer, list(train["text"]), cache=config.cache_dir() / "teacher-logits-cli")


def _report(net, tokenizer, task, output: Path, info: dict) -> dict | None:
    """Say where the model went; score it on the validation split (metrics.json) and return those metrics."""
    from .evaluate import evaluate as evaluate_model

    typer.echo(f"model saved in {output} ({info.get('steps', 0)} steps, {info.get('train_seconds', 0.0):.1f} s)")
    if "validation" not in task.splits:
        return None
    row = evaluate_model(net, tokenizer, task["validation"], name=str(output))
    (Path(output) / "metrics.json").write_text(json.dumps(row.to_dict(), indent=2))
    typer.echo(_metrics_table(row))
    return row.to_dict()


EpochsOpt = typer.Option(1.0, help="Passes over the training sentences.")
BatchOpt = typer.Option(32, "--batch-size", "-b", help="Sequences per step.")
LrOpt = typer.Option(1e-4, help="Peak AdamW learning rate.")
SeedOpt = typer.Option(42, help="Random seed.")
RetrainOpt = typer.Option(False, help="Train even if OUTPUT already holds a result of the same recipe.")
NTrainOpt = typer.Option(None, help="Train on a seeded subset of this many sentences.")


@app.command()
@_errors_as_one_line
def distill(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the student (safetensors)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="The fine-tuned teacher classifier."),
    data: Optional[str] = DataOpt,
    subset: Optional[str] = SubsetOpt,
    text_column: str = TextOpt,
    label_column: str = LabelOpt,
    layers: Optional[str] = typer.Option(None, help="Teacher layers that initialise the student, e.g. 0,2,4."),
    num_layers: Optional[int] = typer.Option(None, help="Student depth; its layers are spread evenly over the "
                                             "teacher's (default 3 when --layers is not given)."),
    mode: str = typer.Option("soft", help="soft (KL at --temperature) or hard (the teacher's argmax as label)."),
    temperature: float = typer.Option(2.0, help="Softmax temperature of the soft labels."),
    alpha: float = typer.Option(0.8, help="Weight of the distillation term; 1 - alpha on the gold labels."),
    hidden_weight: float = typer.Option(0.0, help="Weight of the hidden-state MSE (TinyBERT); 0 = logits only."),
    unlabeled: bool = typer.Option(False, help="Ignore the labels: distil on the training text (and an unlabeled "
                                   "test split when the data has one) from the teacher alone."),
    epochs: float = EpochsOpt,
    batch_size: int = BatchOpt,
    learning_rate: float = LrOpt,
    n_train: Optional[int] = NTrainOpt,
    seed: int = SeedOpt,
    retrain: bool = RetrainOpt,
):
    """Distil a fine-tuned classifier into a student made of some of its layers (Hinton et al. 2015)."""
    import datasets

    from .compression import distillation as D
    from .data import subset as sample

    _positive("--batch-size", batch_size)
    _positive("--n-train", n_train)
    _positive("--num-layers", num_layers)
    if mode not in ("soft", "hard"):
        raise UfkitError(f"--mode must be soft or hard, got {mode!r}")
    _check_distillation(temperature, alpha)
    teacher, tokenizer, task = _compression_inputs(model, data, subset, text_column, label_column)
    depth = teacher.config.num_hidden_layers
    if layers is not None:
        keep = _layer_list(layers, "--layers")
        bad = [i for i in keep if not 0 <= i < depth]
        if bad or len(set(keep)) != len(keep) or not keep:
            raise UfkitError(f"--layers must be distinct indices in [0, {depth - 1}] of the {depth}-layer teacher, "
                             f"got {layers!r}")
    else:
        n = num_layers or min(3, depth)
        if n > depth:
            raise UfkitError(f"--num-layers {n}: a student cannot be deeper than its {depth}-layer teacher")
        keep = [round(i * depth / n) for i in range(n)]
    train = sample(task["train"], n_train, seed=seed)
    if unlabeled:
        parts = [D.unlabeled(train)] + ([D.unlabeled(task["test"])] if "test" in task.splits else [])
        train = datasets.concatenate_datasets(parts)
    cfg = D.DistillConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                          warmup_ratio=0.1, mode=mode, temperature=temperature,
                          alpha=1.0 if unlabeled else alpha, hidden_weight=hidden_weight)
    logits = None if hidden_weight > 0 else _teacher_logits(teacher, tokenizer, train)
    net, tokenizer, info = D.load_or_distill(output, teacher=teacher, tokenizer=tokenizer,
                                             student=D.make_student(teacher, keep), train_ds=train, cfg=cfg,
                                             teacher_logits=logits, retrain=retrain)
    typer.echo(f"student: teacher layers {keep}")
    _report(net, tokenizer, task, output, info)


@app.command()
@_errors_as_one_line
def prune(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the pruned model (safetensors)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="The fine-tuned classifier to prune."),
    data: Optional[str] = DataOpt,
    subset: Optional[str] = SubsetOpt,
    text_column: str = TextOpt,
    label_column: str = LabelOpt,
    heads: Optional[float] = typer.Option(None, help="Attention heads to remove: a fraction in (0, 1) of all "
                                          "heads (by importance, Michel et al. 2019), or a whole number per layer."),
    neurons: Optional[float] = typer.Option(None, help="Feedforward neurons to remove: a fraction in (0, 1)."),
    drop_layers: Optional[int] = typer.Option(None, help="Transformer layers to drop (Sajjad et al.)."),
    strategy: str = typer.Option("top", help="Which layers --drop-layers drops: top, bottom, alternate, symmetric."),
    sparsity: Optional[float] = typer.Option(None, help="Unstructured magnitude sparsity in (0, 1) of the encoder's "
                                             "linear weights (gradual during recovery, Zhu & Gupta 2017)."),
    flops: Optional[float] = typer.Option(None, help="Retraining-free pruning (Kwon et al. 2022): fraction of the "
                                          "encoder's FLOPs to keep, in (0, 1]."),
    recover: bool = typer.Option(True, help="Distil from the unpruned model afterwards (one pass over --n-train)."),
    n_train: int = typer.Option(20_000, help="Training sentences for the recovery distillation (seeded subset)."),
    n_importance: int = typer.Option(2_048, help="Training sentences that score heads and neurons."),
    epochs: float = EpochsOpt,
    batch_size: int = BatchOpt,
    learning_rate: float = LrOpt,
    seed: int = SeedOpt,
    retrain: bool = RetrainOpt,
):
    """Prune heads, feedforward neurons or layers (a physically smaller model), weights (sparsity), or search
    a FLOPs budget without retraining; then optionally recover by distillation."""
    import copy

    from .compression import distillation as D
    from .compression import post_training, sparsity as S, structured
    from .data import subset as sample
    from .models import save_model
    from .surgery import DROP_STRATEGIES, keep_layers, layers_to_keep

    _positive("--n-train", n_train)
    _positive("--n-importance", n_importance)
    _positive("--batch-size", batch_size)
    structural = heads is not None or neurons is not None or drop_layers is not None
    if sum([structural, sparsity is not None, flops is not None]) != 1:
        raise UfkitError("give --heads/--neurons/--drop-layers, or --sparsity, or --flops (one kind of pruning)")
    if flops is not None and not 0 < flops <= 1:
        raise UfkitError(f"--flops must be a budget in (0, 1] (the fraction of FLOPs to keep), got {flops}")
    if sparsity is not None and not 0 < sparsity < 1:
        raise UfkitError(f"--sparsity must be in (0, 1), got {sparsity}")
    if neurons is not None and not 0 < neurons < 1:
        raise UfkitError(f"--neurons must be a fraction in (0, 1), got {neurons}")
    if strategy not in DROP_STRATEGIES:
        raise UfkitError(f"--strategy must be one of {', '.join(DROP_STRATEGIES)}, got {strategy!r}")
    if heads is not None and not (0 < heads < 1 or float(heads).is_integer() and heads >= 1):
        raise UfkitError(f"--heads must be a fraction in (0, 1) or a whole number of heads per layer, got {heads}")
    teacher, tokenizer, task = _compression_inputs(model, data, subset, text_column, label_column)
    cfg_layers = teacher.config
    if heads is not None and heads >= 1 and int(heads) >= cfg_layers.num_attention_heads:
        raise UfkitError(f"--heads {int(heads)}: a layer has {cfg_layers.num_attention_heads} heads and keeps at "
                         f"least one")
    if drop_layers is not None and not 0 < drop_layers < cfg_layers.num_hidden_layers:
        raise UfkitError(f"--drop-layers must be in [1, {cfg_layers.num_hidden_layers - 1}] for a "
                         f"{cfg_layers.num_hidden_layers}-layer model, got {drop_layers}")
    importance_set = sample(task["train"], n_importance, seed=seed + 1)
    recovery = sample(task["train"], n_train, seed=seed)
    cfg = D.DistillConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                          warmup_ratio=0.1, temperature=2.0, alpha=0.8)
    pruned, notes = copy.deepcopy(teacher), {}
    if sparsity is not None:
        if recover:
            logits = _teacher_logits(teacher, tokenizer, recovery)
            net, tokenizer, info = S.load_or_sparse_finetune(output, model=pruned, tokenizer=tokenizer,
                                                             train_ds=recovery, sparsity=sparsity, scope="global",
                                                             cfg=cfg, teacher_logits=logits, retrain=retrain)
            return _report(net, tokenizer, task, output, info)
        S.apply_masks_(pruned, S.magnitude_masks(pruned, sparsity))
    elif flops is not None:
        pruned, notes = post_training.post_training_prune(pruned, tokenizer, list(importance_set["text"]),
                                                          flops_ratio=flops)
        typer.echo(f"retraining-free pruning kept {100 * notes['flops_ratio']:.1f} % of the encoder FLOPs in "
                   f"{notes['seconds']['total']:.1f} s")
    else:
        if heads is not None or neurons is not None:
            h_scores, n_scores = structured.importance(pruned, tokenizer, list(importance_set["text"]),
                                                       labels=list(importance_set["label"]),
                                                       n_samples=n_importance)
            if heads is not None and heads >= 1:
                keep_h = [sorted(s.argsort(descending=True)[:len(s) - int(heads)].tolist()) for s in h_scores]
            else:
                keep_h = structured.select(h_scores, heads) if heads is not None else None
            keep_n = structured.select(n_scores, neurons) if neurons is not None else None
            structured.prune(pruned, heads=keep_h, neurons=keep_n)
        if drop_layers is not None:
            keep_layers(pruned, layers_to_keep(pruned.config.num_hidden_layers, drop_layers, strategy))
    if recover:
        logits = _teacher_logits(teacher, tokenizer, recovery)
        net, tokenizer, info = D.load_or_distill(output, teacher=teacher, tokenizer=tokenizer, student=pruned,
                                                 train_ds=recovery, cfg=cfg, teacher_logits=logits, retrain=retrain)
    else:
        save_model(pruned, tokenizer, output)
        net, info = pruned, {"steps": 0, "train_seconds": 0.0, **notes}
    _report(net, tokenizer, task, output, info)


@app.command()
@_errors_as_one_line
def theseus(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the successor model (safetensors)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="The fine-tuned classifier (predecessor)."),
    data: Optional[str] = DataOpt,
    subset: Optional[str] = SubsetOpt,
    text_column: str = TextOpt,
    label_column: str = LabelOpt,
    successors: int = typer.Option(3, help="Layers of the compressed model (each replaces a block of the teacher's)."),
    init_layers: Optional[str] = typer.Option(None, help="Teacher layers that initialise the successors, e.g. 0,2,4 "
                                              "(default: the first layer of each block)."),
    replace_rate: Optional[float] = typer.Option(None, help="Constant replacement probability in (0, 1]; default: "
                                                 "the paper's linear curriculum from --base-rate to 1."),
    base_rate: float = typer.Option(0.3, help="The curriculum's starting probability b in p = min(1, k t + b)."),
    epochs: float = EpochsOpt,
    batch_size: int = BatchOpt,
    learning_rate: float = LrOpt,
    n_train: Optional[int] = NTrainOpt,
    seed: int = SeedOpt,
    retrain: bool = RetrainOpt,
):
    """Compress by progressive module replacing (BERT-of-Theseus, Xu et al. 2020)."""
    from .compression import theseus as TH
    from .data import subset as sample
    from .training import TrainConfig

    _positive("--successors", successors)
    _positive("--n-train", n_train)
    if replace_rate is not None and not 0 < replace_rate <= 1:
        raise UfkitError(f"--replace-rate must be in (0, 1], got {replace_rate}")
    if not 0 <= base_rate <= 1:
        raise UfkitError(f"--base-rate must be in [0, 1], got {base_rate}")
    teacher, tokenizer, task = _compression_inputs(model, data, subset, text_column, label_column)
    depth = teacher.config.num_hidden_layers
    if successors > depth:
        raise UfkitError(f"--successors {successors}: the compressed model cannot be deeper than its {depth}-layer "
                         f"teacher")
    init = _layer_list(init_layers, "--init-layers") if init_layers else None
    if init is not None and (len(init) != successors or any(not 0 <= i < depth for i in init)):
        raise UfkitError(f"--init-layers needs {successors} indices in [0, {depth - 1}], got {init_layers!r}")
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed, warmup_ratio=0.1)
    train = sample(task["train"], n_train, seed=seed)
    steps = max(1, math.ceil(epochs * math.ceil(len(train) / batch_size)))
    net, tokenizer, info = TH.load_or_theseus(
        output, teacher=teacher, tokenizer=tokenizer, train_ds=train, num_successors=successors, init_layers=init,
        replace_rate=replace_rate, cfg=cfg, retrain=retrain,
        schedule=None if replace_rate is not None else TH.linear_schedule(steps, base_rate=base_rate))
    _report(net, tokenizer, task, output, info)


@app.command()
@_errors_as_one_line
def qat(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the QAT-trained model (fp32 safetensors)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="The fine-tuned classifier."),
    data: Optional[str] = DataOpt,
    subset: Optional[str] = SubsetOpt,
    text_column: str = TextOpt,
    label_column: str = LabelOpt,
    per_channel: bool = typer.Option(False, help="Simulate one weight scale per output channel (else per tensor)."),
    n_train: int = typer.Option(20_000, help="Training sentences (seeded subset)."),
    epochs: float = EpochsOpt,
    batch_size: int = BatchOpt,
    learning_rate: float = typer.Option(5e-5, help="Peak AdamW learning rate."),
    seed: int = SeedOpt,
    retrain: bool = RetrainOpt,
):
    """Quantization-aware fine-tuning for ONNX Runtime's dynamic int8; then `ufkit quantize` the output."""
    from .compression import distillation as D
    from .compression import qat as QT
    from .data import subset as sample
    from .training import TrainConfig

    _positive("--n-train", n_train)
    teacher, tokenizer, task = _compression_inputs(model, data, subset, text_column, label_column)
    train = sample(task["train"], n_train, seed=seed)
    logits = _teacher_logits(teacher, tokenizer, train)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed, warmup_ratio=0.1)
    net, tokenizer, info = QT.load_or_qat(output, model=teacher, tokenizer=tokenizer, train_ds=train, cfg=cfg,
                                          teacher_logits=logits, per_channel=per_channel, retrain=retrain)
    _report(net, tokenizer, task, output, info)
    variant = "onnx_int8_dynamic_per_channel" if per_channel else "onnx_int8_dynamic"
    typer.echo(f"next: ufkit quantize --model {output} --variant {variant} --output {output}-int8")


# ------------------------------------------------------------------------------------- fast feedforward


@app.command("convert-fff")
@_errors_as_one_line
def convert_fff(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the converted model (safetensors), "
                                "metrics.json and convert_fff.json."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="The fine-tuned dense BERT classifier."),
    data: Optional[str] = DataOpt,
    subset: Optional[str] = SubsetOpt,
    text_column: str = TextOpt,
    label_column: str = LabelOpt,
    method: str = typer.Option("leaf", help="leaf (the conversion into leaf FFFs), or a control: static (a dense "
                               "feedforward of the --leaf-width most important neurons), removed (no "
                               "feedforward), ultrafastbert (UltraFastBERT's FFF, randomly initialised)."),
    depth: int = typer.Option(3, help="Levels of routers: 2**depth leaves per layer."),
    leaf_width: int = typer.Option(192, "--leaf-width", help="Neurons per leaf, the neurons a token uses; "
                                   "2**depth * leaf-width must fit the layer's intermediate size. The static "
                                   "control's width."),
    fff_depth: int = typer.Option(11, help="Depth of the tree of --method ultrafastbert (UltraFastBERT-1x11: 11)."),
    n_stats: int = typer.Option(4_000, help="Training sentences whose activations split the neurons and fit the "
                                "routers (the first ones of the --n-train subset)."),
    temperature: float = typer.Option(2.0, help="Softmax temperature of the soft labels."),
    alpha: float = typer.Option(0.8, help="Weight of the distillation term; 1 - alpha on the gold labels."),
    hidden_weight: float = typer.Option(1.0, help="Weight of the hidden-state MSE, layer to layer; 0 = logits "
                                        "only."),
    epochs: float = typer.Option(1.0, help="Passes of distillation over the training sentences; 0 = none."),
    batch_size: int = BatchOpt,
    learning_rate: float = LrOpt,
    n_train: Optional[int] = NTrainOpt,
    seed: int = SeedOpt,
    max_steps: Optional[int] = typer.Option(None, hidden=True, help="Stop the distillation after this many steps."),
):
    """Convert a fine-tuned BERT's dense feedforward layers into leaf fast feedforward layers (Belcak & Wattenhofer
    2023) and distil the result from the dense model; or make a control (static, removed, ultrafastbert).

    Writes the model and tokenizer, metrics.json (validation metrics) and convert_fff.json (method, sizes, each
    layer's router agreement and relative errors, seconds). The folder loads in `ufkit evaluate`, `benchmark` and
    `quantize`.
    """
    import time

    from .compression.distillation import DistillConfig
    from .data import subset as sample
    from .models import save_model
    from .ultrafastbert.convert import METHODS, ConversionError, check_conversion, convert_fff as run, dense_layers

    if method not in METHODS:
        raise UfkitError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if depth < 1:
        raise UfkitError(f"--depth must be a positive integer, got {depth}")
    _positive("--leaf-width", leaf_width)
    _positive("--n-stats", n_stats)
    _positive("--batch-size", batch_size)
    _positive("--n-train", n_train)
    _positive("--max-steps", max_steps)
    if method == "ultrafastbert" and not 0 <= fff_depth <= 16:
        raise UfkitError(f"--fff-depth must be in [0, 16], got {fff_depth}")
    _check_distillation(temperature, alpha, hidden_weight)
    if not epochs >= 0:
        raise UfkitError(f"--epochs must be non-negative, got {epochs}")
    if not learning_rate > 0:
        raise UfkitError(f"--learning-rate must be positive, got {learning_rate}")
    teacher, tokenizer, task = _compression_inputs(model, data, subset, text_column, label_column)
    try:  # the library names the problem; the command line names the flags
        layers = dense_layers(teacher)
    except ConversionError as e:
        raise UfkitError(f"--model: {e}") from None
    if method == "leaf":
        try:
            check_conversion(teacher, depth, leaf_width)
        except ConversionError as e:
            raise UfkitError(f"--depth {depth} --leaf-width {leaf_width}: {e}") from None
    elif method == "static":
        smallest = min(layer.intermediate.dense.out_features for layer in layers)
        if leaf_width > smallest:
            raise UfkitError(f"--leaf-width {leaf_width}: the static control keeps at most the feedforward "
                             f"layers' {smallest} neurons")
    train = sample(task["train"], n_train, seed=seed)
    cfg = DistillConfig(epochs=epochs, max_steps=max_steps, batch_size=batch_size, learning_rate=learning_rate,
                        seed=seed, warmup_ratio=0.1, temperature=temperature, alpha=alpha,
                        hidden_weight=hidden_weight)
    distilling = epochs > 0 or max_steps is not None
    logits = _teacher_logits(teacher, tokenizer, train) if distilling and hidden_weight == 0 else None
    start = time.perf_counter()
    net, info = run(teacher, tokenizer, train, method=method, depth=depth, leaf_width=leaf_width,
                    fff_depth=fff_depth, cfg=cfg, n_stats=n_stats, teacher_logits=logits)
    save_model(net, tokenizer, output)
    report = {
        "method": method, "source": str(model) if model is not None else "default",
        "depth": depth if method == "leaf" else None,
        "leaf_width": leaf_width if method in ("leaf", "static") else None,
        "fff_depth": fff_depth if method == "ultrafastbert" else None,
        "n_stats": min(n_stats, len(train)), "n_train": len(train),
        "layers": {str(i): facts for i, facts in info["layers"].items()},
        "convert_seconds": info["convert_seconds"], "train_seconds": info.get("train_seconds", 0.0),
        "steps": info.get("steps", 0),
        "distillation": {"epochs": epochs, "max_steps": max_steps, "batch_size": batch_size,
                         "learning_rate": learning_rate, "temperature": temperature, "alpha": alpha,
                         "hidden_weight": hidden_weight, "seed": seed} if distilling else None,
        "total_seconds": time.perf_counter() - start,
    }
    metrics = _report(net, tokenizer, task, output, info)
    report["validation"] = metrics
    (Path(output) / "convert_fff.json").write_text(json.dumps(report, indent=2, default=float))
    for i, facts in info["layers"].items():
        if "router_agreement" in facts:
            typer.echo(f"layer {i}: router agreement {facts['router_agreement']:.2f}, relative error "
                       f"{facts['routed_rel_error']:.3f} routed, {facts['oracle_rel_error']:.3f} oracle")
    typer.echo(f"conversion report in {Path(output) / 'convert_fff.json'}; next: ufkit evaluate --model {output}")


# ------------------------------------------------------------------------------------------------ composition


def _parse_recipes(text: str | None):
    """The recipes of --recipes: comma-separated names of DEFAULT_RECIPES or steps joined by '+'."""
    from .compose import DEFAULT_RECIPES, ComposeError, parse_recipe

    if text is None:
        return list(DEFAULT_RECIPES.values())
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise UfkitError("--recipes names no recipe")
    try:
        recipes = [parse_recipe(name) for name in names]
    except ComposeError as e:
        raise UfkitError(f"--recipes: {e}") from None
    seen = [r.name for r in recipes]
    dup = sorted({n for n in seen if seen.count(n) > 1})
    if dup:
        raise UfkitError(f"--recipes names {dup[0]!r} twice")
    return recipes


def _optimize_splits(task, n_train: int | None, n_heldout: int, seed: int):
    """``(train, heldout, calibration, report)``: disjoint seeded parts of the training split (held-out and
    calibration sentences first, ``n_heldout`` each, drawn to follow the word counts of the split the results are
    reported on, :func:`ufkit.data.holdout`; the training subset from the rest) and that labeled split (validation,
    else test; None when there is none).

    Raises:
        UfkitError: no training split, unlabeled training rows, or too few rows for the held-out sets.
    """
    from .data import LabelError, holdout

    if "train" not in task.splits:
        raise UfkitError("--data has no training split: optimize trains its steps on it and keeps its budget on "
                         "held-out training sentences")
    report = None
    for name in ("validation", "test"):
        if name in task.splits and len(task[name]) and min(task[name]["label"]) >= 0:
            report = task[name]
            break
    ds = task["train"]
    if len(ds) < 2 * n_heldout + 1:
        raise UfkitError(f"--n-heldout {n_heldout}: the training split has {len(ds)} sentences, fewer than the "
                         f"{2 * n_heldout} held out (held-out and calibration sentences) plus one to train on")
    try:
        train, heldout, calibration = holdout(ds, n_heldout, n_heldout, n_train, seed=seed,
                                              like=report["text"] if report is not None else None)
    except LabelError:
        raise UfkitError("--data has no labels in its training split: optimize keeps its accuracy budget on "
                         "labeled held-out training sentences") from None
    return train, heldout, calibration, report


@app.command()
@_errors_as_one_line
def optimize(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the chosen model (OUTPUT/model), "
                                "report.json, report.md, pareto.png and the measurements."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="The fine-tuned classifier every recipe "
                                        "starts from (the teacher)."),
    data: Optional[str] = DataOpt,
    subset: Optional[str] = SubsetOpt,
    text_column: str = TextOpt,
    label_column: str = LabelOpt,
    budget: float = typer.Option(1.0, help="Accuracy points a model may lose against the teacher on held-out "
                                 "training sentences (> 0)."),
    objective: str = typer.Option("latency", help="What the chosen model is best at: latency (batch 1), "
                                  "throughput (batch 32) or size."),
    recipes: Optional[str] = typer.Option(None, "--recipes", help="Comma-separated recipes: names of the default "
                                          "set (int8, prune50-int8, prune75-int8, distil4-int8, "
                                          "distil4-prune50-int8, distil3-int8, distil3-prune50-int8, "
                                          "distil3-prune75-int8, distil2-int8, fff3-int8, exits, distil4-exits, "
                                          "fff3-exits; "
                                          "default: all) or steps joined by '+', e.g. distil:3+int8."),
    resume: bool = typer.Option(False, help="Continue a search in OUTPUT: keep the measurements stored there. "
                                "Without it OUTPUT must be new or empty. Steps are cached in ufkit's cache either way."),
    n_train: Optional[int] = typer.Option(20_000, help="Training sentences the steps train on (a seeded subset of "
                                          "the rest of the training split)."),
    n_heldout: int = typer.Option(1_000, help="Held-out training sentences the budget is kept on; as many more "
                                  "calibrate the exit speed."),
    epochs: float = typer.Option(1.0, help="Passes of every distillation over the training sentences."),
    batch_size: int = BatchOpt,
    learning_rate: float = LrOpt,
    seed: int = SeedOpt,
    threads: Optional[int] = typer.Option(None, help="Threads for timing (torch and ONNX Runtime; default: "
                                          "UFKIT_THREADS, else torch's)."),
    n_timed: int = typer.Option(256, help="Dev sentences timed per model and batch size."),
    max_steps: Optional[int] = typer.Option(None, hidden=True, help="Stop every distillation after this many steps."),
):
    """Search composed recipes (distil, truncate, prune, FFF, early exits, quantize) under an accuracy budget and
    write the best model for the objective, with a report (chapter 7).

    The budget is kept on held-out training sentences, never on the dev split it reports; they are drawn to follow
    the reported split's word counts. The teacher should not have seen them: one fine-tuned on the whole training
    split scores them too well, and every model's drop looks larger there than on dev (chapter 7 refits its
    teacher without them). Writes OUTPUT/model
    (loads in `ufkit evaluate` and `ufkit benchmark`), report.json (every recipe's every step's measurements, the
    Pareto front, the choice and why), report.md and pareto.png.
    """
    import time

    from . import config
    from .compose import (OBJECTIVES, ComposeError, Measurer, TrainSettings, export_model, search as run_search,
                          write_report)
    from .measure import ResultsStore

    if not budget > 0:
        raise UfkitError(f"--budget must be a positive number of accuracy points, got {budget:g}")
    if objective not in OBJECTIVES:
        raise UfkitError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    chosen_recipes = _parse_recipes(recipes)
    for name, value in (("--n-train", n_train), ("--n-heldout", n_heldout), ("--batch-size", batch_size),
                        ("--threads", threads), ("--n-timed", n_timed), ("--max-steps", max_steps)):
        _positive(name, value)
    if not epochs >= 0:
        raise UfkitError(f"--epochs must be non-negative, got {epochs}")
    if not learning_rate > 0:
        raise UfkitError(f"--learning-rate must be positive, got {learning_rate}")
    output = output.expanduser()
    if output.exists() and not output.is_dir():
        raise UfkitError(f"--output {str(output)!r} is a file, not a folder")
    if output.is_dir() and any(output.iterdir()) and not resume:
        raise UfkitError(f"--output {str(output)!r} is not empty: pass --resume to continue the search in it, or "
                         f"choose a new folder")
    teacher, tokenizer, task = _compression_inputs(model, data, subset, text_column, label_column)
    train, heldout, calibration, dev = _optimize_splits(task, n_train, n_heldout, seed)
    settings = TrainSettings(epochs=epochs, max_steps=max_steps, batch_size=batch_size, learning_rate=learning_rate,
                             seed=seed)
    output.mkdir(parents=True, exist_ok=True)
    store = ResultsStore(output / "measurements")
    start = time.perf_counter()
    try:
        result = run_search(chosen_recipes, teacher, tokenizer, train, heldout, dev, config.cache_dir() / "compose",
                            budget=budget, objective=objective, calibration_ds=calibration, settings=settings,
                            measure=Measurer(n_timed=n_timed), threads=threads, store=store)
        export_model(result, output / "model", teacher=teacher, tokenizer=tokenizer)
    except ComposeError as e:
        raise UfkitError(str(e)) from None
    meta = {"model": str(model) if model is not None else "default", "data": str(data) if data else "sst2",
            "subset": subset, "text_column": text_column, "label_column": label_column, "label_names":
            task.label_names, "n_train": len(train), "n_heldout": len(heldout), "n_calibration": len(calibration),
            "n_dev": len(dev) if dev is not None else 0, "settings": settings.recipe(),
            "measure": Measurer(n_timed=n_timed).__dict__, "resume": resume, "output_model": str(output / "model"),
            "wall_seconds": time.perf_counter() - start}
    paths = write_report(result, output, **meta)
    cand = result.candidates
    cols = [c for c in ("label", "heldout_accuracy", "heldout_drop", "dev_accuracy", result.column, "within_budget",
                        "on_front", "chosen") if c in cand]
    shown = cand[cols].rename(columns={"label": "model"})
    typer.echo(shown.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    for run in result.runs:
        if run.error:
            typer.echo(f"recipe {run.recipe.name} stopped: {run.error}")
    typer.echo(f"chosen: {result.reason}")
    typer.echo(f"model written to {output / 'model'}; report in {paths['md']}, {paths['json']}, {paths['png']}; "
               f"next: ufkit evaluate --model {output / 'model'}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``ufkit`` script: click's usage errors become one line too."""
    _quiet_libraries()
    try:
        rv = app(args=argv, standalone_mode=False)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        sys.exit(130)
    except typer.TyperException as e:  # click's usage errors, vendored by typer
        if type(e).__name__ == "NoArgsIsHelpError":
            typer.echo(e.format_message(), err=True)
            sys.exit(2)
        typer.echo(f"error: {e.format_message()}", err=True)
        sys.exit(getattr(e, "exit_code", 2) or 2)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
