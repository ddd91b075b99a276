"""Applying one step: each :class:`~ufkit.compose.recipe.Step` kind as the chapter functions that do it.

:func:`apply_step` turns an :class:`Artifact` (a model, its tokenizer and its state) into the next one, in memory
and without caching (:mod:`ufkit.compose.run` caches). Every step reads the step's *input* as its teacher: a
student distils from the model it was cut from, a pruned model recovers from the model before pruning, so a step
applied to a model is the same whatever came before it.

==============  =====================================================================================================
kind            chapter functions
==============  =====================================================================================================
``distil``      :func:`ufkit.compression.distillation.make_student`, :func:`~ufkit.compression.distillation.teacher_logits`,
                :func:`~ufkit.compression.distillation.distill` (chapter 3)
``truncate``    :func:`ufkit.surgery.keep_layers` (the first layers; it keeps a pruned model's recorded structure),
                then optionally :func:`~ufkit.compression.distillation.distill`
``prune``       :func:`ufkit.compression.structured.prune_by_importance` (Michel et al. 2019), then
                :func:`~ufkit.compression.distillation.distill` (chapter 3)
``fff``         :func:`ufkit.ultrafastbert.convert.convert_fff`, method ``leaf`` (chapter 6)
``exits``       :class:`ufkit.early_exit.EarlyExitModel`, :meth:`~ufkit.early_exit.EarlyExitModel.fit_students`,
                :func:`ufkit.early_exit.calibrate_speed` (chapter 2)
``quantize``    :func:`ufkit.quantization.quantize` and :func:`~ufkit.quantization.load_variant` (chapter 5)
==============  =====================================================================================================

:func:`save_artifact` and :func:`load_artifact` write and read an artifact's folder: a checkpoint folder
(:func:`ufkit.models.save_model`) for a PyTorch model, an early-exit folder (backbone, branches and
``exit_speed.json``), or a folder holding the one runtime variant (``<folder>/<variant>/``, a folder
``ufkit evaluate`` and ``ufkit benchmark`` take as a ``ufkit quantize`` output).
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .recipe import ComposeError, Step, why_not

#: The file of an early-exit artifact that holds its calibrated speed and the calibration table.
EXIT_FILE = "exit_speed.json"


@dataclass
class TrainSettings:
    """How much every training step trains (a step's ``epochs``, ``max_steps``, ``learning_rate`` and
    ``batch_size`` override these for itself); part of every training step's cache recipe.

    Attributes:
        epochs, max_steps, batch_size, learning_rate, seed, warmup_ratio, mixed_precision: the distillations'
            :class:`ufkit.compression.distillation.DistillConfig` fields (chapter 3's students: one epoch at
            1e-4, batch 32, warm-up 10 %).
        temperature, alpha: soft labels' temperature and the weight of the distillation term (chapter 3: 2, 0.8).
        fff_hidden_weight: weight of the layer-to-layer hidden-state MSE in the FFF distillation (chapter 6: 1).
        n_importance: training sentences that score heads and neurons (Kwon et al. 2022: 2,048).
        n_stats: training sentences whose activations split the neurons and fit the routers (chapter 6).
        exit_epochs, exit_learning_rate: the FastBERT branches' self-distillation (chapter 2: 1 epoch at 1e-3).
        calibration_size: training sentences that calibrate ``onnx_int8_static``.
    """

    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 32
    learning_rate: float = 1e-4
    seed: int = 42
    warmup_ratio: float = 0.1
    mixed_precision: str = "auto"
    temperature: float = 2.0
    alpha: float = 0.8
    fff_hidden_weight: float = 1.0
    n_importance: int = 2048
    n_stats: int = 4000
    exit_epochs: float = 1.0
    exit_learning_rate: float = 1e-3
    calibration_size: int = 512

    def for_step(self, step: Step) -> "TrainSettings":
        """These settings with the step's own overrides (``epochs``, ``max_steps``, ``learning_rate``,
        ``batch_size``) applied; an ``exits`` step's ``epochs`` and ``learning_rate`` are its branches'
        (``exit_epochs``, ``exit_learning_rate``)."""
        over = {k: step.settings[k] for k in ("epochs", "max_steps", "learning_rate", "batch_size")
                if step.settings.get(k) is not None}
        if step.kind == "exits":  # the branches' own training
            over = {{"epochs": "exit_epochs", "learning_rate": "exit_learning_rate"}.get(k, k): v
                    for k, v in over.items()}
        return replace(self, **over)

    def distill_config(self, **over):
        """The :class:`~ufkit.compression.distillation.DistillConfig` of a step's distillation."""
        from ..compression.distillation import DistillConfig

        return DistillConfig(epochs=self.epochs, max_steps=self.max_steps, batch_size=self.batch_size,
                             learning_rate=self.learning_rate, seed=self.seed, warmup_ratio=self.warmup_ratio,
                             mixed_precision=self.mixed_precision, temperature=self.temperature, alpha=self.alpha,
                             **over)

    def recipe(self) -> dict:
        """The fields as a dict, for cache recipes and reports."""
        return asdict(self)


@dataclass
class Artifact:
    """A model a recipe has made so far.

    Attributes:
        model: a Hugging Face sequence classifier (``dense``, ``pruned``, ``fff``), an
            :class:`ufkit.early_exit.EarlyExitModel` (``exits``), or a loaded runtime variant (``runtime``: an
            :class:`ufkit.quantization.OnnxClassifier` or a torchao module).
        tokenizer: its tokenizer.
        state: one of :data:`ufkit.compose.recipe.STATES`.
        speed: the exit threshold of an ``exits`` model (None otherwise).
        path: the folder it is stored in (a cached step; the variant's folder for ``runtime``), or None.
        num_layers: transformer layers it runs at most.
        info: facts of the step that made it (steps, seconds, losses, calibration).
    """

    model: Any
    tokenizer: Any
    state: str
    speed: float | None = None
    path: Path | None = None
    num_layers: int | None = None
    info: dict = field(default_factory=dict)

    def __call__(self, batch: dict | None = None, **inputs):
        """Run the model on a batch (a dict, or keyword tensors): an object with ``.logits`` of shape
        ``(batch_size, num_labels)``. An ``exits`` model runs at its calibrated speed."""
        batch = {k: v for k, v in {**(batch or {}), **inputs}.items() if k != "labels"}
        if self.state == "exits":
            return self.model(**batch, speed=self.speed or 0.0)
        if self.state == "runtime" and not hasattr(self.model, "parameters"):
            return self.model(batch)
        return self.model(**batch)


def model_state(model) -> str:
    """The state of a model as the composition rules see it (:data:`ufkit.compose.recipe.STATES`)."""
    from ..early_exit import EarlyExitModel
    from ..quantization import OnnxClassifier

    if isinstance(model, EarlyExitModel):
        return "exits"
    if isinstance(model, OnnxClassifier):
        return "runtime"
    config = getattr(model, "config", None)
    if getattr(config, "ufkit_fff", None):
        return "fff"
    if getattr(config, "ufkit_structure", None):
        return "pruned"
    return "dense"


def as_artifact(model, tokenizer, path=None) -> Artifact:
    """An :class:`Artifact` of a fine-tuned classifier in memory (the teacher of a recipe)."""
    return Artifact(model, tokenizer, model_state(model), path=Path(path) if path else None,
                    num_layers=getattr(getattr(model, "config", None), "num_hidden_layers", None))


def _layers_to_keep(step: Step, depth: int) -> list[int]:
    n = step.settings["layers"]
    if isinstance(n, list):
        bad = [i for i in n if i >= depth]
        if bad:
            raise ComposeError(f"step {step.label}: layer indices {bad} do not exist in a {depth}-layer model")
        return list(n)
    if n > depth:
        raise ComposeError(f"step {step.label}: a student cannot be deeper than its {depth}-layer input")
    return [round(i * depth / n) for i in range(n)]


def _teacher_logits(model, tokenizer, train_ds, logits_cache):
    from ..compression.distillation import teacher_logits

    return teacher_logits(model, tokenizer, list(train_ds["text"]), cache=logits_cache)


def _distil(student, teacher, tokenizer, train_ds, ts: TrainSettings, logits_cache, progress):
    from ..compression.distillation import distill

    logits = _teacher_logits(teacher, tokenizer, train_ds, logits_cache)
    student, history = distill(student, teacher, tokenizer, train_ds, ts.distill_config(), teacher_logits=logits,
                               progress=progress)
    return student, history


def apply_step(step: Step, artifact: Artifact, *, train_ds=None, calibration_ds=None,
               settings: TrainSettings | None = None, budget: float | None = None, workdir: str | Path | None = None,
               threads: int | None = None, logits_cache: str | Path | None = None,
               progress: bool = True) -> Artifact:
    """Apply one step to a model, in memory: the next :class:`Artifact` (the input is not modified).

    Args:
        step: the step.
        artifact: its input.
        train_ds (`datasets.Dataset`): labeled training sentences (``text``, ``label``) for the distillations,
            the importance scores, the FFF statistics, the branches, and ``onnx_int8_static``'s calibration.
        calibration_ds (`datasets.Dataset`): labeled held-out sentences that calibrate the exit speed and
            ``onnx_int8_auto``'s fallback (never the split a report quotes).
        settings: the run's :class:`TrainSettings` (the step's overrides are applied here).
        budget: accuracy points (of ``calibration_ds``) the step may spend when its own ``budget`` is None:
            the exit speed's, ``onnx_int8_auto``'s.
        workdir: an existing folder where ``quantize`` writes its variant (the result's ``path`` lies in it).
        threads: ONNX Runtime threads of a loaded runtime variant.
        logits_cache: a folder caching the input's logits on ``train_ds`` (:func:`~ufkit.compression.distillation.teacher_logits`).

    Returns:
        the new :class:`Artifact`, its ``info`` holding the step's facts (``seconds``, training history...).

    Raises:
        ComposeError: the input's state does not take this step (the composition rules, with the reason), a
            size that does not fit it (more layers than it has, leaves wider than its feedforward, a one-layer
            model for exits), or missing data.
    """
    reason = why_not(step.kind, artifact.state)
    if reason is not None:
        raise ComposeError(f"step {step.label} cannot take a {artifact.state} model: {reason}")
    ts = (settings or TrainSettings()).for_step(step)
    if step.uses_train() and (train_ds is None or len(train_ds) == 0):
        raise ComposeError(f"step {step.label} needs training sentences (train_ds)")
    if step.uses_calibration() and (calibration_ds is None or len(calibration_ds) == 0):
        raise ComposeError(f"step {step.label} needs labeled held-out sentences (calibration_ds)")
    from .. import UfkitError

    start = time.perf_counter()
    try:
        out = _APPLY[step.kind](step, artifact, train_ds=train_ds, calibration_ds=calibration_ds, ts=ts,
                                budget=budget, workdir=workdir, threads=threads, logits_cache=logits_cache,
                                progress=progress)
    except ComposeError:
        raise
    except UfkitError as e:  # the chapter module names what does not fit; say which step met it
        raise ComposeError(f"step {step.label}: {e}") from None
    out.info = {"step": step.to_dict(), **out.info, "seconds": time.perf_counter() - start}
    return out


def _torch_result(model, tokenizer, info) -> Artifact:
    return Artifact(model.eval(), tokenizer, model_state(model), num_layers=model.config.num_hidden_layers,
                    info=info)


def _apply_distil(step, a, *, train_ds, ts, logits_cache, progress, **_):
    from ..compression.distillation import make_student

    keep = _layers_to_keep(step, a.model.config.num_hidden_layers)
    student, history = _distil(make_student(a.model, keep), a.model, a.tokenizer, train_ds, ts, logits_cache,
                               progress)
    return _torch_result(student, a.tokenizer, {"kept_layers": keep, **history})


def _apply_truncate(step, a, *, train_ds, ts, logits_cache, progress, **_):
    from ..surgery import keep_layers

    n, depth = step.settings["layers"], a.model.config.num_hidden_layers
    if n > depth:
        raise ComposeError(f"step {step.label}: cannot keep {n} layers of a {depth}-layer model")
    model = keep_layers(copy.deepcopy(a.model), list(range(n)))
    info = {"kept_layers": list(range(n))}
    if step.settings["recover"]:
        model, history = _distil(model, a.model, a.tokenizer, train_ds, ts, logits_cache, progress)
        info.update(history)
    return _torch_result(model, a.tokenizer, info)


def _apply_prune(step, a, *, train_ds, ts, logits_cache, progress, **_):
    from ..compression.structured import prune_by_importance
    from ..data import subset

    texts = subset(train_ds, ts.n_importance, seed=ts.seed + 1)
    model, facts = prune_by_importance(copy.deepcopy(a.model), a.tokenizer, list(texts["text"]),
                                       head_ratio=step.settings["heads"], neuron_ratio=step.settings["neurons"],
                                       labels=list(texts["label"]), n_samples=ts.n_importance)
    info = {k: facts[k] for k in ("num_heads", "intermediate_sizes", "importance_s") if k in facts}
    if step.settings["recover"]:
        model, history = _distil(model, a.model, a.tokenizer, train_ds, ts, logits_cache, progress)
        info.update(history)
    return _torch_result(model, a.tokenizer, info)


def _apply_fff(step, a, *, train_ds, ts, logits_cache, progress, **_):
    from ..ultrafastbert.convert import convert_fff, dense_layers

    depth = step.settings["depth"]
    width = step.settings["leaf_width"]
    if width is None:
        width = min(layer.intermediate.dense.out_features for layer in dense_layers(a.model)) // 2 ** depth
        if width < 1:
            raise ComposeError(f"step {step.label}: 2**{depth} leaves do not fit the feedforward layers")
    hidden = ts.fff_hidden_weight
    logits = _teacher_logits(a.model, a.tokenizer, train_ds, logits_cache) if hidden == 0 else None
    model, info = convert_fff(a.model, a.tokenizer, train_ds, method="leaf", depth=depth, leaf_width=width,
                              cfg=ts.distill_config(hidden_weight=hidden), n_stats=ts.n_stats,
                              teacher_logits=logits, progress=progress)
    info = {**info, "leaf_width": width, "layers": {str(k): v for k, v in info.get("layers", {}).items()}}
    return _torch_result(model, a.tokenizer, info)


def _apply_exits(step, a, *, train_ds, calibration_ds, ts, budget, progress, **_):
    from ..early_exit import EarlyExitModel, calibrate_speed

    if a.model.config.num_hidden_layers < 2:
        raise ComposeError(f"step {step.label}: a one-layer model has no layer to exit after")
    spend = step.settings["budget"] if step.settings["budget"] is not None else max(0.0, budget or 0.0)
    ee = EarlyExitModel(a.model, tokenizer=a.tokenizer)
    history = ee.fit_students(train_ds, a.tokenizer, epochs=ts.exit_epochs, batch_size=ts.batch_size,
                              learning_rate=ts.exit_learning_rate, seed=ts.seed, progress=progress)
    speed, table = calibrate_speed(ee, calibration_ds, budget=spend, tokenizer=a.tokenizer)
    info = {**history, "speed": speed, "budget": spend, "calibration": table.to_dict("list")}
    return Artifact(ee.eval(), a.tokenizer, "exits", speed=speed, num_layers=ee.num_hidden_layers, info=info)


def _apply_quantize(step, a, *, train_ds, calibration_ds, ts, budget, workdir, threads, progress, **_):
    from ..data import subset
    from ..models import save_model
    from ..quantization import load_variant, quantize

    if workdir is None:
        raise ComposeError(f"step {step.label} needs a workdir to write its variant into")
    variant = step.settings["variant"]
    calibration = (list(subset(train_ds, ts.calibration_size, seed=ts.seed)["text"])
                   if variant in ("onnx_int8_static", "openvino_int8") else None)
    spend = step.settings["budget"] if step.settings["budget"] is not None else max(0.0, budget or 0.0)
    with tempfile.TemporaryDirectory(prefix="ufkit-compose-") as tmp:
        source = save_model(a.model, a.tokenizer, Path(tmp) / "model")
        quantize(source, workdir, variants=[variant], calibration_texts=calibration,
                 validation=calibration_ds if variant == "onnx_int8_auto" else None, budget=spend, threads=threads,
                 progress=progress)
    path = Path(workdir) / variant
    model, tokenizer, info = load_variant(path, threads=threads)
    return Artifact(model, tokenizer, "runtime", path=path, num_layers=a.num_layers,
                    info={"variant": variant, "budget": spend if variant == "onnx_int8_auto" else None,
                          **{k: v for k, v in info.items() if k not in ("recipe", "source")}})


_APPLY = {"distil": _apply_distil, "truncate": _apply_truncate, "prune": _apply_prune, "fff": _apply_fff,
          "exits": _apply_exits, "quantize": _apply_quantize}


# ------------------------------------------------------------------------------------------------ save / load


def save_artifact(artifact: Artifact, folder: str | Path) -> None:
    """Write an artifact into an empty ``folder``: a checkpoint (PyTorch states), the early-exit model with its
    backbone, tokenizer and ``exit_speed.json`` (``exits``), or a copy of the variant folder as
    ``<folder>/<variant>/`` (``runtime``)."""
    folder = Path(folder)
    if artifact.state == "runtime":
        shutil.copytree(artifact.path, folder / artifact.path.name, dirs_exist_ok=True)
    elif artifact.state == "exits":
        artifact.model.save_pretrained(folder, save_backbone=True)
        if artifact.tokenizer is not None:
            artifact.tokenizer.save_pretrained(folder)
        (folder / EXIT_FILE).write_text(json.dumps({"speed": artifact.speed,
                                                    "budget": artifact.info.get("budget")}, indent=2))
    else:
        artifact.model.save_pretrained(folder, safe_serialization=True)
        artifact.tokenizer.save_pretrained(folder)


def load_artifact(folder: str | Path, *, threads: int | None = None) -> Artifact:
    """Read what :func:`save_artifact` wrote (or any model folder, ``ufkit quantize`` variant folder or output
    folder holding one variant).

    Raises:
        ComposeError: the folder holds none of these, or several variants.
    """
    from ..early_exit import EarlyExitModel
    from ..early_exit.model import CONFIG_FILE
    from .. import structure  # noqa: F401  (registers pruned checkpoints with the Auto classes)
    from ..fff import bert  # noqa: F401  (registers FFF checkpoints with the Auto classes)
    from ..models import load_model
    from ..quantization import MARKER, list_variants, load_variant

    folder = Path(folder)
    if (folder / MARKER).is_file():
        model, tokenizer, _ = load_variant(folder, threads=threads)
        return Artifact(model, tokenizer, "runtime", path=folder)
    variants = list_variants(folder)
    if len(variants) > 1:
        raise ComposeError(f"{str(folder)!r} holds several variants {variants}: load one of them")
    if variants:
        return load_artifact(folder / variants[0], threads=threads)
    if (folder / CONFIG_FILE).is_file():
        ee = EarlyExitModel.from_pretrained(folder)
        facts = json.loads((folder / EXIT_FILE).read_text()) if (folder / EXIT_FILE).is_file() else {}
        return Artifact(ee, ee.tokenizer, "exits", speed=facts.get("speed", 0.0), path=folder,
                        num_layers=ee.num_hidden_layers, info=facts)
    if not (folder / "config.json").is_file():
        raise ComposeError(f"{str(folder)!r} holds no model, early-exit model or quantized variant")
    model, tokenizer = load_model(folder)
    return Artifact(model, tokenizer, model_state(model), path=folder, num_layers=model.config.num_hidden_layers)
