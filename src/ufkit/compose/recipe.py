"""Steps and recipes: what a composed model is made of, checked for composition before anything runs.

A :class:`Step` is one named ``model -> model`` transformation with JSON-serialisable settings; a :class:`Recipe`
is an ordered tuple of steps. Both are plain data: :mod:`ufkit.compose.steps` applies them and
:mod:`ufkit.compose.run` runs and caches them. The composition rules (which step may follow which) are the
table :data:`ACCEPTS` of the *state* a model is in (``dense``, ``pruned``, ``fff``, ``exits``, ``runtime``) and
the state each step leaves it in (:data:`PRODUCES`); :func:`check_steps` walks a recipe through them and raises
:class:`ComposeError` with the reason a step cannot follow another. The table and its reasons are in the
docstring of :mod:`ufkit.compose`.

:func:`parse_recipe` reads the command line's recipe syntax (``distil:3+int8``); :data:`DEFAULT_RECIPES` is the
search's default set.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from .. import UfkitError

#: The kinds of step, in the order a recipe usually puts them.
STEP_KINDS = ("distil", "truncate", "prune", "fff", "exits", "quantize")
#: The states a model passes through: a plain BERT classifier, one with pruned heads/neurons
#: (``config.ufkit_structure``), one with fast feedforward layers (``config.ufkit_fff``), an early-exit model
#: (:class:`ufkit.early_exit.EarlyExitModel`), and a runtime variant (ONNX Runtime or torchao, not trainable).
STATES = ("dense", "pruned", "fff", "exits", "runtime")

#: The input states each step kind accepts.
ACCEPTS = {
    "distil": ("dense", "pruned"),
    "truncate": ("dense", "pruned"),
    "prune": ("dense", "pruned"),
    "fff": ("dense",),
    "exits": ("dense", "pruned", "fff"),
    "quantize": ("dense", "pruned", "fff"),
}

_RUNTIME_WHY = ("a quantized runtime variant (ONNX Runtime, torchao) is no longer a trainable PyTorch BERT, so "
                "quantize must be the last step")
_EXITS_WHY = ("the early exits' branches read every layer's output and their speed was calibrated on this "
              "exact model, so exits must be the last step")
#: Why a step cannot take a model in a given state: ``(kind, state) -> reason``; ``(None, state)`` for any kind.
WHY = {
    (None, "runtime"): _RUNTIME_WHY,
    (None, "exits"): _EXITS_WHY,
    ("quantize", "exits"): ("an early-exit model leaves its layers through Python control flow that one exported "
                            "ONNX graph cannot express (it would run every layer), and exporting each layer as a "
                            "graph of its own is not implemented: exits and quantize do not compose"),
    ("distil", "fff"): ("the FFF model's config.ufkit_fff names its converted layers by index, which dropping "
                        "layers would break: distil (or truncate) before converting to FFF"),
    ("truncate", "fff"): ("the FFF model's config.ufkit_fff names its converted layers by index, which dropping "
                          "layers would break: truncate before converting to FFF"),
    ("prune", "fff"): ("structured pruning scores and removes neurons of dense feedforward layers "
                       "(intermediate.dense), which fast feedforward layers do not have: FFF and pruning do not "
                       "compose in either order"),
    ("fff", "pruned"): ("ufkit.ultrafastbert.convert converts only unpruned models (its leaves split the whole "
                        "dense layer, and FFF layers go into unpruned BERT models only): FFF and pruning do not "
                        "compose in either order"),
    ("fff", "fff"): "the model's feedforward layers are fast feedforward layers already",
}

#: Training settings a step may override for itself (see :class:`ufkit.compose.steps.TrainSettings`).
TRAIN_KEYS = ("epochs", "max_steps", "learning_rate", "batch_size")

#: Short labels of the quantization variants (every one of :data:`ufkit.quantization.VARIANTS`, which the tests
#: check; kept here so that a recipe is checked without importing the runtimes), used in step labels and in the
#: recipe syntax; ``int8`` is ONNX Runtime's dynamic int8 with one weight scale per output channel.
VARIANT_LABELS = {
    "pytorch_fp32": "fp32",
    "pytorch_bf16": "bf16",
    "torch_compile_fp32": "compile-fp32",
    "torch_compile_bf16": "compile-bf16",
    "torchao_int8": "torchao-int8",
    "onnx_fp32": "onnx-fp32",
    "onnx_optimized": "onnx-opt",
    "onnx_int8_dynamic": "int8-tensor",
    "onnx_int8_dynamic_per_channel": "int8",
    "onnx_int8_static": "int8-static",
    "onnx_int8_auto": "int8-auto",
    "openvino_fp32": "openvino-fp32",
    "openvino_int8": "openvino-int8",
    "ctranslate2_int8": "ct2-int8",
}
_VARIANT_OF_LABEL = {v: k for k, v in VARIANT_LABELS.items()}


class ComposeError(UfkitError, ValueError):
    """A recipe that cannot run: a step that does not compose with the one before (the message says why), bad
    step settings, or a step the model it meets cannot take (too few layers, sizes that do not fit)."""


def produces(kind: str, state: str) -> str:
    """The state a ``kind`` step leaves a model in that was in ``state`` (distil and truncate keep it)."""
    return {"prune": "pruned", "fff": "fff", "exits": "exits", "quantize": "runtime"}.get(kind, state)


def why_not(kind: str, state: str) -> str | None:
    """None when a ``kind`` step accepts a model in ``state``, else the reason it does not."""
    if state in ACCEPTS[kind]:
        return None
    return WHY.get((kind, state)) or WHY.get((None, state)) or f"{kind} does not take a {state} model"


# ------------------------------------------------------------------------------------------------------ steps


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


_TRAIN_RULES = {  # key -> (check, what it must be)
    "epochs": (lambda v: _is_number(v) and v >= 0, "a non-negative number"),
    "max_steps": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "learning_rate": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
}


def _check_train(kind: str, settings: dict) -> None:
    for key, (ok, what) in _TRAIN_RULES.items():
        value = settings.get(key)
        if value is not None and not ok(value):
            raise ComposeError(f"{kind}: {key} must be {what}, got {value!r}")


def _check_layers(value) -> list[int] | int:
    if _is_int(value):
        if value < 1:
            raise ComposeError(f"distil: layers must be a positive number of layers, got {value}")
        return value
    if isinstance(value, (list, tuple)) and value and all(_is_int(i) and i >= 0 for i in value):
        if len(set(value)) != len(value):
            raise ComposeError(f"distil: layers must be distinct layer indices, got {list(value)}")
        return list(value)
    raise ComposeError(f"distil: layers must be a number of layers or a list of layer indices, got {value!r}")


def _check_budget(kind: str, value) -> float | None:
    if value is None:
        return None
    if not _is_number(value) or value < 0:
        raise ComposeError(f"{kind}: budget must be a non-negative number of accuracy points or None, got {value!r}")
    return float(value)


# Each kind: its settings with defaults (None: required when marked so), and a check that normalises them.
_DEFAULTS = {
    "distil": {"layers": None},
    "truncate": {"layers": None, "recover": False},
    "prune": {"heads": 0.0, "neurons": 0.0, "recover": True},
    "fff": {"depth": 3, "leaf_width": None},
    "exits": {"budget": None},
    "quantize": {"variant": "onnx_int8_dynamic_per_channel", "budget": None},
}
_TRAINS = {"distil", "truncate", "prune", "fff", "exits"}


def _normalise(kind: str, settings: dict) -> dict:
    if kind not in STEP_KINDS:
        raise ComposeError(f"unknown step kind {kind!r}; the kinds are {', '.join(STEP_KINDS)}")
    train_keys = set(TRAIN_KEYS) - {"max_steps"} if kind == "exits" else set(TRAIN_KEYS)  # fit_students: epochs
    allowed = set(_DEFAULTS[kind]) | (train_keys if kind in _TRAINS else set())
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ComposeError(f"{kind}: unknown setting(s) {', '.join(unknown)}; it takes {', '.join(sorted(allowed))}")
    s = {**_DEFAULTS[kind], **settings}
    if kind == "distil":
        if s["layers"] is None:
            raise ComposeError("distil: layers is required (a number of layers, or the teacher layers to keep)")
        s["layers"] = _check_layers(s["layers"])
    elif kind == "truncate":
        if not _is_int(s["layers"]) or s["layers"] < 1:
            raise ComposeError(f"truncate: layers must be a positive number of layers to keep, got {s['layers']!r}")
        if not isinstance(s["recover"], bool):
            raise ComposeError(f"truncate: recover must be true or false, got {s['recover']!r}")
    elif kind == "prune":
        for key in ("heads", "neurons"):
            if not _is_number(s[key]) or not 0 <= s[key] < 1:
                raise ComposeError(f"prune: {key} must be a fraction in [0, 1) to remove, got {s[key]!r}")
            s[key] = float(s[key])
        if s["heads"] == 0 and s["neurons"] == 0:
            raise ComposeError("prune: give heads or neurons (a fraction to remove) above 0")
        if not isinstance(s["recover"], bool):
            raise ComposeError(f"prune: recover must be true or false, got {s['recover']!r}")
    elif kind == "fff":
        if not _is_int(s["depth"]) or not 1 <= s["depth"] <= 10:
            raise ComposeError(f"fff: depth must be an integer in [1, 10], got {s['depth']!r}")
        if s["leaf_width"] is not None and (not _is_int(s["leaf_width"]) or s["leaf_width"] < 1):
            raise ComposeError(f"fff: leaf_width must be a positive integer or None, got {s['leaf_width']!r}")
    elif kind == "exits":
        s["budget"] = _check_budget(kind, s["budget"])
    elif kind == "quantize":
        variant = _VARIANT_OF_LABEL.get(s["variant"], s["variant"])
        if variant not in VARIANT_LABELS:
            raise ComposeError(f"quantize: unknown variant {s['variant']!r}; choose from {', '.join(VARIANT_LABELS)} "
                               f"(or {', '.join(VARIANT_LABELS.values())})")
        s["variant"] = variant
        s["budget"] = _check_budget(kind, s["budget"])
    if kind in _TRAINS:
        _check_train(kind, s)
    return json.loads(json.dumps(s))  # plain JSON types (tuples become lists)


@dataclass
class Step:
    """One ``model -> model`` transformation: a kind (:data:`STEP_KINDS`) and its JSON-serialisable settings.

    Settings by kind (defaults in brackets); every training kind also takes ``epochs``, ``max_steps``,
    ``learning_rate`` and ``batch_size``, which override the run's :class:`ufkit.compose.steps.TrainSettings`
    (for ``exits``: the branches' epochs and learning rate; it takes no ``max_steps``):

    * ``distil``: ``layers``, a number of layers spread evenly over the input's (``round(i L / n)``, as
      ``ufkit distill`` does) or the input layers to keep; the student starts from them
      (:func:`ufkit.compression.distillation.make_student`) and learns from the step's input (Hinton et al. 2015).
    * ``truncate``: ``layers``, the first layers to keep (:func:`ufkit.surgery.keep_layers`); ``recover``
      [false] distils the result from the step's input.
    * ``prune``: ``heads`` and ``neurons`` [0], fractions of all heads / feedforward neurons to remove by
      importance (Michel et al. 2019, :func:`ufkit.compression.structured.prune_by_importance`); ``recover``
      [true] distils the pruned model from the step's input.
    * ``fff``: ``depth`` [3] and ``leaf_width`` [the layer's width / 2**depth, every neuron in a leaf]: the leaf
      FFF conversion with its distillation (:func:`ufkit.ultrafastbert.convert.convert_fff`).
    * ``exits``: FastBERT branches after every layer (:class:`ufkit.early_exit.EarlyExitModel`), trained by
      self-distillation, and the largest speed whose accuracy drop on held-out sentences stays within
      ``budget`` [None: what the run's budget leaves after the steps before] (:func:`ufkit.early_exit.calibrate_speed`).
    * ``quantize``: ``variant`` [``onnx_int8_dynamic_per_channel``], one of :data:`ufkit.quantization.VARIANTS`
      or its label in :data:`VARIANT_LABELS` (:func:`ufkit.quantization.quantize`); ``budget`` is
      ``onnx_int8_auto``'s.

    Raises:
        ComposeError: an unknown kind, an unknown setting, a missing or out-of-range value.
    """

    kind: str
    settings: dict = field(default_factory=dict)

    def __post_init__(self):
        self.settings = _normalise(self.kind, dict(self.settings))

    def to_dict(self) -> dict:
        """``{"kind": ..., **settings}``: what a report and a cache recipe record."""
        return {"kind": self.kind, **self.settings}

    @classmethod
    def from_dict(cls, d: dict) -> "Step":
        """The step :meth:`to_dict` wrote."""
        d = dict(d)
        return cls(d.pop("kind"), d)

    @property
    def label(self) -> str:
        """A short name: ``distil-3``, ``truncate-2``, ``prune-h50-n50``, ``fff-d3``, ``exits``, ``int8``..."""
        s = self.settings
        if self.kind == "distil":
            n = s["layers"]
            return f"distil-{n}" if isinstance(n, int) else "distil-" + ".".join(map(str, n))
        if self.kind == "truncate":
            return f"truncate-{s['layers']}" + ("-kd" if s["recover"] else "")
        if self.kind == "prune":
            parts = [f"h{round(100 * s['heads'])}" if s["heads"] else "", f"n{round(100 * s['neurons'])}"
                     if s["neurons"] else ""]
            return "prune-" + "-".join(p for p in parts if p) + ("" if s["recover"] else "-nokd")
        if self.kind == "fff":
            return f"fff-d{s['depth']}" + (f"w{s['leaf_width']}" if s["leaf_width"] else "")
        if self.kind == "exits":
            return "exits" + (f"-b{s['budget']:g}" if s["budget"] is not None else "")
        return VARIANT_LABELS[s["variant"]]

    def uses_train(self) -> bool:
        """Whether the result depends on the training sentences."""
        if self.kind == "truncate":
            return self.settings["recover"]
        if self.kind == "quantize":
            return self.settings["variant"] == "onnx_int8_static"
        return True

    def uses_calibration(self) -> bool:
        """Whether the result depends on the calibration sentences (exit speed, ``onnx_int8_auto``'s budget)."""
        return self.kind == "exits" or (self.kind == "quantize" and self.settings["variant"] == "onnx_int8_auto")

    def uses_budget(self) -> bool:
        """Whether the step spends what is left of the run's accuracy budget."""
        return self.uses_calibration()


def distil(layers, **train) -> Step:
    """A ``distil`` step (:class:`Step`): a student of ``layers`` layers (or these layer indices) and KD."""
    return Step("distil", {"layers": layers, **train})


def truncate(layers: int, *, recover: bool = False, **train) -> Step:
    """A ``truncate`` step (:class:`Step`): keep the first ``layers`` layers; ``recover`` distils afterwards."""
    return Step("truncate", {"layers": layers, "recover": recover, **train})


def prune(heads: float = 0.0, neurons: float = 0.0, *, recover: bool = True, **train) -> Step:
    """A ``prune`` step (:class:`Step`): remove these fractions of heads and feedforward neurons, then recover."""
    return Step("prune", {"heads": heads, "neurons": neurons, "recover": recover, **train})


def fff(depth: int = 3, leaf_width: int | None = None, **train) -> Step:
    """An ``fff`` step (:class:`Step`): leaf fast feedforward layers of ``depth`` (convert, then distil)."""
    return Step("fff", {"depth": depth, "leaf_width": leaf_width, **train})


def exits(budget: float | None = None, **train) -> Step:
    """An ``exits`` step (:class:`Step`): FastBERT branches and a speed calibrated within ``budget`` points."""
    return Step("exits", {"budget": budget, **train})


def quantize(variant: str = "onnx_int8_dynamic_per_channel", *, budget: float | None = None) -> Step:
    """A ``quantize`` step (:class:`Step`): export to a runtime variant; it must be the last step."""
    return Step("quantize", {"variant": variant, "budget": budget})


# ---------------------------------------------------------------------------------------------------- recipes


def check_steps(steps: Sequence[Step], start: str = "dense") -> list[str]:
    """Walk ``steps`` through the composition rules from a model in state ``start``.

    Returns:
        the state after each step.

    Raises:
        ComposeError: a step that cannot take the state the steps before leave, naming both and why.
    """
    if start not in STATES:
        raise ComposeError(f"start must be one of {STATES}, got {start!r}")
    states, state, before = [], start, None
    for i, step in enumerate(steps):
        reason = why_not(step.kind, state)
        if reason is not None:
            after = f"after {before.label}" if before is not None else f"on a {state} model"
            raise ComposeError(f"step {i + 1} ({step.label}) cannot run {after}: {reason}")
        state, before = produces(step.kind, state), step
        states.append(state)
    return states


_NAME = re.compile(r"^[\w.:+/=-]+$")


@dataclass
class Recipe:
    """An ordered, non-empty list of :class:`Step`; checked against the composition rules (:func:`check_steps`,
    from a dense model) when it is made.

    Attributes:
        name: how reports and ``--recipes`` name it (letters, digits and ``_ - . : + / =``).
        steps: the steps, a tuple.

    Raises:
        ComposeError: no steps, a bad name, or steps that do not compose.
    """

    name: str
    steps: tuple = ()

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ComposeError(f"recipe name must be letters, digits and _ - . : + / =, got {self.name!r}")
        self.steps = tuple(s if isinstance(s, Step) else Step.from_dict(s) for s in self.steps)
        if not self.steps:
            raise ComposeError(f"recipe {self.name!r} has no steps")
        check_steps(self.steps)

    @property
    def label(self) -> str:
        """The steps' labels joined by arrows: ``distil-3 → int8``."""
        return prefix_label(self.steps)

    def to_dict(self) -> dict:
        """``{"name", "label", "steps": [step dicts]}``."""
        return {"name": self.name, "label": self.label, "steps": [s.to_dict() for s in self.steps]}


def prefix_label(steps: Iterable[Step]) -> str:
    """The labels of ``steps`` joined by `` → `` (``teacher`` for none)."""
    labels = [s.label for s in steps]
    return " → ".join(labels) if labels else "teacher"


def _value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    if "/" in text:
        return [_value(t) for t in text.split("/") if t]
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


#: The setting a step's first unnamed argument sets in the recipe syntax (``distil:3``, ``quantize:onnx_fp32``).
POSITIONAL = {"distil": "layers", "truncate": "layers", "prune": "heads", "fff": "depth", "exits": "budget",
              "quantize": "variant"}


def parse_step(text: str) -> Step:
    """One step of the recipe syntax: ``kind[:value][:key=value...]``, or a variant label alone (``int8``).

    Values are integers, numbers, ``true``/``false``/``none``, lists of integers written ``0/2/4``, or text.
    Examples: ``distil:3``, ``distil:0/2/4:epochs=2``, ``truncate:2:recover=true``, ``prune:heads=0.5:neurons=0.5``,
    ``fff:2:leaf_width=16``, ``exits:budget=0.5``, ``quantize:onnx_fp32``, ``int8``.

    Raises:
        ComposeError: an unknown kind or setting, a bad value, a second unnamed value.
    """
    text = text.strip()
    if text in _VARIANT_OF_LABEL:
        return Step("quantize", {"variant": _VARIANT_OF_LABEL[text]})
    kind, *args = text.split(":")
    if kind not in STEP_KINDS:
        raise ComposeError(f"unknown step {kind!r} in {text!r}; the kinds are {', '.join(STEP_KINDS)} (or a "
                           f"variant label: {', '.join(VARIANT_LABELS.values())})")
    settings: dict = {}
    for i, arg in enumerate(args):
        if "=" in arg:
            key, value = arg.split("=", 1)
            settings[key.strip()] = _value(value.strip())
        elif i == 0:
            settings[POSITIONAL[kind]] = _value(arg.strip())
        else:
            raise ComposeError(f"step {text!r}: only the first value may be unnamed; write key=value")
    return Step(kind, settings)


def parse_recipe(text: str, known: dict | None = None) -> Recipe:
    """A recipe from its name in ``known`` (default :data:`DEFAULT_RECIPES`) or from steps joined by ``+``
    (``distil:3+prune:heads=0.5+int8``; see :func:`parse_step`), named by that text.

    Raises:
        ComposeError: an unknown recipe name, an unknown step, or steps that do not compose.
    """
    known = DEFAULT_RECIPES if known is None else known
    text = text.strip()
    if text in known:
        return known[text]
    if "+" not in text and ":" not in text and text.split(":")[0] not in STEP_KINDS and text not in _VARIANT_OF_LABEL:
        raise ComposeError(f"unknown recipe {text!r}; the recipes are {', '.join(known)}, or steps joined by '+' "
                           f"such as distil:3+int8")
    return Recipe(text, tuple(parse_step(t) for t in text.split("+")))


def _defaults() -> dict[str, Recipe]:
    half = dict(heads=0.5, neurons=0.5)  # chapter 3's "half width": no dev accuracy lost after recovery
    recipes = [
        Recipe("int8", (quantize(),)),  # fast-bert's answer, chapter 5's best single technique
        Recipe("prune50-int8", (prune(**half), quantize())),
        Recipe("prune75-int8", (prune(heads=0.75, neurons=0.75), quantize())),
        Recipe("distil4-int8", (distil(4), quantize())),
        Recipe("distil4-prune50-int8", (distil(4), prune(**half), quantize())),
        Recipe("distil3-int8", (distil(3), quantize())),
        Recipe("distil3-prune50-int8", (distil(3), prune(**half), quantize())),  # bert-squeeze #49
        Recipe("distil3-prune75-int8", (distil(3), prune(heads=0.75, neurons=0.75), quantize())),
        Recipe("distil2-int8", (distil(2), quantize())),
        Recipe("fff3-int8", (fff(3), quantize())),
        Recipe("exits", (exits(),)),
        Recipe("distil4-exits", (distil(4), exits())),
        Recipe("fff3-exits", (fff(3), exits())),
    ]
    return {r.name: r for r in recipes}


#: The search's default recipes by name: ORT int8 alone; half (and a quarter of) the heads and feedforward
#: neurons pruned, in int8; 4-, 3- and 2-layer students in int8, the 4- and 3-layer ones also pruned to half
#: width and the 3-layer one to a quarter (distillation, pruning and int8 together: what bert-squeeze's issue #49
#: asks for); leaf FFF of depth 3
#: in int8; FastBERT exits on the teacher, on the 4-layer student and on the FFF model.
DEFAULT_RECIPES: dict[str, Recipe] = _defaults()
