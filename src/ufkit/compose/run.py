"""Running a recipe step by step: every step's result cached by its recipe prefix, every model measured.

:class:`Composer` holds what every recipe of one task shares (the teacher, the data, the settings, the cache, the
measurement) and runs recipes (:meth:`Composer.run`); :func:`run_recipe` runs one.

**The cache.** Step ``i`` of a recipe is stored in ``cache_dir/<prefix labels>-<hash>/`` through the one cache
helper (:func:`ufkit.cache.load_or_make`). The folder is named by the recipe *prefix* (steps ``1..i`` with their
settings) and the task's inputs (the teacher's weights, the data that any step of the prefix reads, the training
settings), so two recipes that share a prefix share its folders (``distil-3 → int8`` and ``distil-3 → exits``
distil once). The recipe the folder must match adds the step's actual input (:func:`ufkit.cache.fingerprint_model`
of the model step ``i - 1`` made) and, for a step that spends the accuracy budget, what is left of it: a changed
input re-makes the step in its folder.

**The measurements.** The teacher and every step's model are measured by ``measure`` (default
:class:`ufkit.compose.measuring.Measurer`); with a ``store`` the rows are kept in its table ``compose``, keyed by
the machine, the model's content (``artifact_id``), the measurer's settings and the data, so a resumed search
measures nothing twice.

**The budget a step may spend.** ``exits`` (its speed) and ``quantize`` with ``onnx_int8_auto`` (its fallback)
are calibrated on the calibration sentences within what the run's ``budget`` leaves: ``budget`` minus the
accuracy points the steps before lost against the teacher on those same sentences.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .measuring import Measurer, accuracy
from .recipe import ComposeError, Recipe, Step, check_steps, prefix_label
from .steps import Artifact, TrainSettings, apply_step, as_artifact, load_artifact, save_artifact

#: Version of the cache recipes of :class:`Composer`; a change re-makes every step.
FORMAT = 1
#: The results-store table the measurements go to.
TABLE = "compose"


@dataclass
class StepResult:
    """One model a recipe made, and its measurements.

    Attributes:
        recipe: the recipe's name.
        index: 1-based position of the step in the recipe (0 for the teacher's row).
        step: the step (None for the teacher).
        label: the prefix's label, ``distil-3 → int8`` (what the model is).
        state: the model's state (:data:`ufkit.compose.recipe.STATES`).
        num_layers: transformer layers it runs at most.
        path: its cache folder (None for the teacher).
        artifact_id: a hash of its content (weights, exit speed, variant files).
        reused: True when the step was loaded from the cache rather than made.
        seconds: how long making it took (when it was made, even in an earlier run).
        measurement: :data:`ufkit.compose.measuring.COLUMNS` and the facts of the step (``speed``...).
        info: the step's facts from its cache record (training history, kept layers, calibration...).
    """

    recipe: str
    index: int
    step: Step | None
    label: str
    state: str
    num_layers: int | None
    path: Path | None
    artifact_id: str
    reused: bool
    seconds: float
    measurement: dict
    info: dict = field(default_factory=dict)

    def row(self) -> dict:
        """The flat row of a report table: the fields above (``step`` as its label) and the measurements."""
        return {"recipe": self.recipe, "index": self.index, "step": self.step.label if self.step else "teacher",
                "label": self.label, "state": self.state, "num_layers": self.num_layers,
                "path": str(self.path) if self.path else None, "artifact_id": self.artifact_id,
                "reused": self.reused, "seconds": self.seconds, **self.measurement}


@dataclass
class RecipeRun:
    """What :meth:`Composer.run` made of one recipe.

    Attributes:
        recipe: the recipe.
        steps: one :class:`StepResult` per step run (fewer than the recipe's when ``error`` is set).
        final: the last step's :class:`~ufkit.compose.steps.Artifact` in memory (None after an error).
        error: why the recipe stopped (a :class:`~ufkit.compose.recipe.ComposeError`'s message), or None.
    """

    recipe: Recipe
    steps: list = field(default_factory=list)
    final: Artifact | None = None
    error: str | None = None


def _hash(obj) -> str:
    from ..cache import fingerprint_texts, json_default

    return fingerprint_texts([json.dumps(obj, sort_keys=True, default=json_default)])


def _slug(steps: Sequence[Step]) -> str:
    return re.sub(r"[^\w.-]+", "_", "__".join(s.label for s in steps))[:80]


def _data_id(ds) -> str | None:
    from ..cache import fingerprint_texts

    if ds is None:
        return None
    return fingerprint_texts(ds["text"], ds["label"] if "label" in ds.column_names else None)


def _check_labeled(ds, name: str, required: bool = True) -> None:
    if ds is None:
        if required:
            raise ComposeError(f"{name} is required")
        return
    cols = getattr(ds, "column_names", None) or []
    if "text" not in cols or "label" not in cols:
        raise ComposeError(f"{name} must be a datasets.Dataset with 'text' and 'label' columns, got columns {cols}")
    if len(ds) == 0:
        raise ComposeError(f"{name} is empty")
    if (np.asarray(ds["label"]) < 0).any():
        raise ComposeError(f"{name} has unlabeled rows (label -1): the budget needs labeled sentences")


def step_settings(step: Step, ts: TrainSettings) -> dict:
    """The training settings a step's result depends on (for its cache recipe): the distillation's for
    distil, a recovering truncate or prune, and fff; the branches' for exits; the calibration's for
    ``onnx_int8_static``; none otherwise. Mixed precision is resolved for this machine."""
    from ..training import resolve_mixed_precision

    ts = ts.for_step(step)
    kd = {"epochs": ts.epochs, "max_steps": ts.max_steps, "batch_size": ts.batch_size,
          "learning_rate": ts.learning_rate, "seed": ts.seed, "warmup_ratio": ts.warmup_ratio,
          "mixed_precision": resolve_mixed_precision(ts.mixed_precision), "temperature": ts.temperature,
          "alpha": ts.alpha}
    s = step.settings
    if step.kind == "distil" or (step.kind == "truncate" and s["recover"]):
        return kd
    if step.kind == "prune":
        return {**(kd if s["recover"] else {}), "n_importance": ts.n_importance, "seed": ts.seed}
    if step.kind == "fff":
        return {**kd, "fff_hidden_weight": ts.fff_hidden_weight, "n_stats": ts.n_stats}
    if step.kind == "exits":
        return {"exit_epochs": ts.exit_epochs, "exit_learning_rate": ts.exit_learning_rate,
                "batch_size": ts.batch_size, "seed": ts.seed}
    if step.kind == "quantize" and s["variant"] == "onnx_int8_static":
        return {"calibration_size": ts.calibration_size, "seed": ts.seed}
    return {}


def artifact_id(artifact: Artifact) -> str:
    """A hash of what an artifact computes: ``<state>-<16 hex digits>`` of its weights
    (:func:`ufkit.cache.fingerprint_model`; an early-exit model's with its branches and speed) or of its variant
    files (:func:`ufkit.cache.fingerprint`)."""
    from ..cache import fingerprint, fingerprint_model

    if artifact.state == "runtime":
        return f"runtime-{fingerprint(artifact.path)}"
    fp = fingerprint_model(artifact.model)
    if artifact.state == "exits":
        fp = _hash([fp, artifact.speed])
    return f"{artifact.state}-{fp}"


class Composer:
    """Runs recipes on one task: the teacher, the data, the settings, the cache and the measurement they share.

    Args:
        teacher: the fine-tuned classifier every recipe starts from (a Hugging Face sequence classifier; not
            modified).
        tokenizer: its tokenizer.
        train_ds (`datasets.Dataset`): labeled training sentences (``text``, ``label``) the steps train on.
        heldout_ds (`datasets.Dataset`): labeled held-out *training* sentences, none of them in ``train_ds``: the
            accuracy budget is kept on them.
        dev_ds (`datasets.Dataset`): the labeled split a report quotes, or None; measured, never used to choose.
        cache_dir: the steps' cache (default ``ufkit.config.cache_dir() / "compose"``).
        calibration_ds (`datasets.Dataset`): labeled held-out sentences that calibrate the exit speed and
            ``onnx_int8_auto`` (default ``heldout_ds``; a disjoint set keeps the budget check honest).
        settings: :class:`~ufkit.compose.steps.TrainSettings` (default: chapter 3's).
        measure: ``(artifact, *, heldout_ds, dev_ds, threads) -> dict`` (default :class:`Measurer`).
        budget: accuracy points (on the calibration sentences) the steps that calibrate may lose against the
            teacher, together with the steps before them.
        threads: ONNX Runtime threads of loaded variants, and torch's while timing (default
            :func:`ufkit.config.bench_threads`).
        store: a :class:`ufkit.measure.store.ResultsStore` keeping the measurements, or None.
        progress: the chapter functions' progress bars.

    Raises:
        ComposeError: a data set without ``text``/``label``, empty or with unlabeled rows; a negative budget.
    """

    def __init__(self, teacher, tokenizer, train_ds, heldout_ds, dev_ds=None, cache_dir=None, *,
                 calibration_ds=None, settings: TrainSettings | None = None, measure: Callable | None = None,
                 budget: float = 1.0, threads: int | None = None, store=None, progress: bool = True):
        from .. import config
        from ..cache import fingerprint_model

        for ds, name, required in ((train_ds, "train_ds", True), (heldout_ds, "heldout_ds", True),
                                   (dev_ds, "dev_ds", False), (calibration_ds, "calibration_ds", False)):
            _check_labeled(ds, name, required)
        if not (isinstance(budget, (int, float)) and budget >= 0):
            raise ComposeError(f"budget must be a non-negative number of accuracy points, got {budget!r}")
        self.teacher = as_artifact(teacher, tokenizer)
        self.tokenizer = tokenizer
        self.train_ds, self.heldout_ds, self.dev_ds = train_ds, heldout_ds, dev_ds
        self.calibration_ds = calibration_ds if calibration_ds is not None else heldout_ds
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else config.cache_dir() / "compose"
        self.settings = settings or TrainSettings()
        self.measure = measure if measure is not None else Measurer()
        self.budget = float(budget)
        self.threads = config.bench_threads() if threads is None else int(threads)
        self.store = store
        self.progress = progress
        self.teacher_id = fingerprint_model(teacher)
        self.ids = {"train": _data_id(train_ds), "heldout": _data_id(heldout_ds), "dev": _data_id(dev_ds),
                    "calibration": _data_id(self.calibration_ds)}
        self._teacher_row: StepResult | None = None
        self._calibration_accuracy: dict[str, float] = {}

    # ----------------------------------------------------------------------------------------- measuring

    def _measure(self, artifact: Artifact, art_id: str, before: dict | None) -> dict:
        """Measure an artifact (through the store when the measurer has a ``key``); a runtime variant takes its
        input's FLOPs (``before``)."""
        import pandas as pd

        from ..measure.machine import machine_info

        def run() -> dict:
            row = dict(self.measure(artifact, heldout_ds=self.heldout_ds, dev_ds=self.dev_ds, threads=self.threads))
            if before is not None and not np.isfinite(row.get("flops_per_sample", np.nan)):
                row["flops_per_sample"] = before.get("flops_per_sample", np.nan)
            return row

        if self.store is None or not hasattr(self.measure, "key"):
            return run()
        key = {"artifact_id": art_id, "measure_id": self.measure.key(), "threads": self.threads,
               "data_id": _hash([self.ids["heldout"], self.ids["dev"]])}
        rows = self.store.load_or_measure(TABLE, lambda: pd.DataFrame([{**run(), **machine_info(self.threads)}]),
                                          **key)
        skip = set(key) | set(machine_info(self.threads)) | {"machine_id", "busy", "other_cores", "attempts"}
        row = rows.iloc[-1].to_dict()
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items() if k not in skip}

    def teacher_measurement(self) -> StepResult:
        """The teacher's row (measured once per :class:`Composer`)."""
        if self._teacher_row is None:
            t = self.teacher
            art_id = f"{t.state}-{self.teacher_id}"
            self._teacher_row = StepResult("teacher", 0, None, "teacher", t.state, t.num_layers, None, art_id, True,
                                           0.0, self._measure(t, art_id, None))
        return self._teacher_row

    def measure_model(self, artifact: Artifact, label: str, source: str = "book") -> StepResult:
        """Measure a model made elsewhere (another chapter's) exactly as the recipes' models are measured, so that
        it sits on the same Pareto front: same sentences, same thread count, same store.

        Args:
            artifact: the model (:func:`~ufkit.compose.steps.as_artifact`, or a loaded runtime variant).
            label: its name in tables and plots.
            source: what made it (a chapter), kept in the row's ``recipe`` column.

        Returns:
            a :class:`StepResult` with ``index`` 0 and no step.
        """
        art_id = artifact_id(artifact)
        return StepResult(source, 0, None, label, artifact.state, artifact.num_layers, artifact.path, art_id, True,
                          0.0, self._measure(artifact, art_id, None))

    def calibration_accuracy(self, artifact: Artifact, art_id: str) -> float:
        """Accuracy (%) of an artifact on the calibration sentences (kept per artifact)."""
        if art_id not in self._calibration_accuracy:
            self._calibration_accuracy[art_id] = accuracy(artifact, self.calibration_ds)
        return self._calibration_accuracy[art_id]

    # ------------------------------------------------------------------------------------------- running

    def step_folder(self, prefix: Sequence[Step], origin: str | None = None) -> Path:
        """The cache folder of a recipe prefix on this task: named by the prefix's labels and a hash of the
        prefix, the model it starts from (``origin``: a fingerprint; default the teacher), the data any of its
        steps reads and the settings its steps use."""
        key = {"format": FORMAT, "prefix": [s.to_dict() for s in prefix], "teacher_id": origin or self.teacher_id,
               "train_id": self.ids["train"] if any(s.uses_train() for s in prefix) else None,
               "calibration_id": self.ids["calibration"] if any(s.uses_calibration() for s in prefix) else None,
               "settings": [step_settings(s, self.settings) for s in prefix]}
        return self.cache_dir / f"{_slug(prefix)}-{_hash(key)[:12]}"

    def run(self, recipe: Recipe, *, on_step: Callable[[StepResult], None] | None = None,
            errors: str = "raise", start: Artifact | None = None, start_label: str = "start") -> RecipeRun:
        """Run a recipe: every step loaded from its cache folder when current, else made and cached; every model
        measured.

        Args:
            recipe: the recipe (its steps already checked against one another).
            on_step: called with each :class:`StepResult` as it is measured (progress bars).
            errors: ``"raise"`` a :class:`ComposeError` of a step, or ``"record"`` it in the result's ``error``
                and return the steps before it.
            start: the model the recipe starts from (default: the teacher), e.g. another chapter's student; the
                steps' distillations still learn from their input, the budget still counts from the teacher.
            start_label: how labels name ``start`` (``start_label → int8``).

        Returns:
            :class:`RecipeRun`.

        Raises:
            ComposeError: a step the model it meets cannot take (its state, sizes, data), with ``errors="raise"``.
        """
        from ..cache import fingerprint_model, load_or_make

        if errors not in ("raise", "record"):
            raise ComposeError(f"errors must be 'raise' or 'record', got {errors!r}")
        teacher_row = self.teacher_measurement()
        current, current_id, before = self.teacher, teacher_row.artifact_id, teacher_row.measurement
        origin, origin_fp = self.teacher, self.teacher_id
        if start is not None:
            if start.state not in ("dense", "pruned", "fff"):
                raise ComposeError(f"start must be a PyTorch classifier (dense, pruned or fff), got a {start.state} "
                                   "model")
            row = self.measure_model(start, start_label)
            current, current_id, before = start, row.artifact_id, row.measurement
            origin, origin_fp = start, row.artifact_id
        check_steps(recipe.steps, start=current.state)
        out = RecipeRun(recipe)
        for i, step in enumerate(recipe.steps):
            prefix = recipe.steps[:i + 1]
            try:
                budget_left = None
                if step.uses_budget() and step.settings.get("budget") is None:
                    lost = (self.calibration_accuracy(self.teacher, teacher_row.artifact_id)
                            - self.calibration_accuracy(current, current_id))
                    budget_left = round(max(0.0, self.budget - lost), 6)
                input_fp = origin_fp if current is origin else fingerprint_model(current.model)
                folder = self.step_folder(prefix, origin_fp)
                cache_recipe = {"format": FORMAT, "prefix": [s.to_dict() for s in prefix], "input_id": input_fp,
                                "settings": step_settings(step, self.settings),
                                "train_id": self.ids["train"] if step.uses_train() else None,
                                "calibration_id": self.ids["calibration"] if step.uses_calibration() else None,
                                "budget": budget_left}
                made, work = {}, None

                def make(step=step, current=current, budget_left=budget_left, input_fp=input_fp):
                    nonlocal work
                    self.cache_dir.mkdir(parents=True, exist_ok=True)
                    work = Path(tempfile.mkdtemp(prefix=".work-", dir=self.cache_dir))
                    logits = self.cache_dir / "logits" / f"{input_fp}-{self.ids['train']}"
                    art = apply_step(step, current, train_ds=self.train_ds, calibration_ds=self.calibration_ds,
                                     settings=self.settings, budget=budget_left, workdir=work, threads=self.threads,
                                     logits_cache=logits, progress=self.progress)
                    made["artifact"] = art
                    return art, _jsonable(art.info)

                try:
                    art, info = load_or_make(folder, cache_recipe, make, save=save_artifact,
                                             load=lambda f: load_artifact(f, threads=self.threads))
                finally:
                    if work is not None:
                        shutil.rmtree(work, ignore_errors=True)
                if art.state == "runtime" or "artifact" not in made:
                    art = load_artifact(folder, threads=self.threads)  # the variant now lives in the cache
                art.path = folder if art.state != "runtime" else art.path
                art.num_layers = art.num_layers or current.num_layers
                art.info = info
                art_id = artifact_id(art)
                measurement = self._measure(art, art_id, before)
                if art.state == "exits":
                    measurement["speed"] = art.speed
                label = prefix_label(prefix) if start is None else f"{start_label} → {prefix_label(prefix)}"
                result = StepResult(recipe.name, i + 1, step, label, art.state, art.num_layers,
                                    folder, art_id, "artifact" not in made, float(info.get("seconds", 0.0)),
                                    measurement, {k: v for k, v in info.items() if k not in ("recipe", "machine")})
            except ComposeError as e:
                if errors == "raise":
                    raise
                out.error = str(e)
                return out
            out.steps.append(result)
            if on_step is not None:
                on_step(result)
            current, current_id, before = art, art_id, measurement
        out.final = current
        return out


def _jsonable(info: dict) -> dict:
    from ..cache import json_default

    return json.loads(json.dumps(info, default=json_default))


def run_recipe(recipe: Recipe, teacher, tokenizer, train_ds, heldout_ds, dev_ds=None, cache_dir=None, *,
               calibration_ds=None, settings: TrainSettings | None = None, measure: Callable | None = None,
               budget: float = 1.0, threads: int | None = None, store=None, progress: bool = True,
               on_step: Callable | None = None) -> RecipeRun:
    """Run one recipe on a teacher: each step cached by its recipe prefix and inputs, each model measured.

    The arguments are :class:`Composer`'s (see it for the cache and the budget a step may spend); ``on_step`` is
    called with each :class:`StepResult`. Composing techniques is what bert-squeeze's issue #49 asks for
    (pruning, quantization and distillation together); the steps are FastBERT's exits (Liu et al. 2020),
    chapter 3's distillation and pruning, UltraFastBERT's fast feedforward layers (Belcak & Wattenhofer 2023) and
    fast-bert's runtimes.

    Returns:
        :class:`RecipeRun`: the step results (``measurement``: accuracies in %, FLOPs per sample, latencies in ms,
        throughput in sentences/s, size in MB) and the final :class:`~ufkit.compose.steps.Artifact`.

    Raises:
        ComposeError: bad data or budget, or a step the model it meets cannot take (with the reason).
    """
    composer = Composer(teacher, tokenizer, train_ds, heldout_ds, dev_ds, cache_dir, calibration_ds=calibration_ds,
                        settings=settings, measure=measure, budget=budget, threads=threads, store=store,
                        progress=progress)
    return composer.run(recipe, on_step=on_step)
