"""BERT with fast feedforward layers in place of (some of) its dense feedforward blocks, as Hugging Face classes.

A pretrained BERT's layer computes ``LayerNorm(h + dropout(W_out GELU(W_in h + b_in) + b_out))`` after attention.
Here the feedforward part of chosen layers is one of (``config.ufkit_fff["kind"]``):

* ``"leaf"``: a :class:`ufkit.fff.leaf.LeafFFF` (Belcak & Wattenhofer 2023, arXiv:2308.14711), what
  :func:`ufkit.ultrafastbert.convert.convert_to_leaf_fff` makes from the dense block;
* ``"fff"``: UltraFastBERT's FFF (:class:`ufkit.fff.FFF`, arXiv:2311.10770) with an output bias;
* ``"none"``: no feedforward at all, only a learned output bias (the control "feedforward removed").

The model is a ``BertForSequenceClassification`` whose chosen layers' ``intermediate`` module is replaced by the
FFF (input `(batch_size, sequence_length, hidden_size)`, output the same) and whose ``output.dense`` becomes an
identity, so residual, dropout and LayerNorm stay BERT's. Importing this module registers ``model_type``
``"ufkit_fff_bert"`` with ``AutoConfig``, ``AutoModel`` and ``AutoModelForSequenceClassification``: a saved model
loads with ``from_pretrained`` (safetensors) and in ``ufkit evaluate``, ``benchmark`` and ``quantize``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (AutoConfig, AutoModel, AutoModelForSequenceClassification, BertConfig,
                          BertForSequenceClassification, BertModel)

from ..structure import swap_classes
from .layer import FFF
from .leaf import ACTIVATIONS, LeafFFF
from .reference import fff_training_form

__all__ = ["FFF_KEY", "KINDS", "FffBertConfig", "FffBertModel", "FffBertForSequenceClassification",
           "NoFeedforward", "BiasedFFF", "fff_spec", "make_feedforward", "apply_fff", "feedforward_modules"]

#: The config attribute that records which layers hold which feedforward.
FFF_KEY = "ufkit_fff"
#: Feedforward kinds a layer can hold.
KINDS = ("leaf", "fff", "none")


class NoFeedforward(nn.Module):
    """The feedforward removed: `(..., H)` -> a learned bias `(H,)` broadcast to `(..., H)`.

    Plain tensor ops: it exports to ONNX and traces as it is."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.bias.expand_as(hidden_states)

    def flops_per_token(self) -> int:
        """No multiply-adds: 0."""
        return 0


class BiasedFFF(FFF):
    """UltraFastBERT's FFF (H -> H) plus the dense block's output bias, ``out_bias`` `(H,)`.

    In ``eval()`` mode under an ONNX export or a TorchScript trace it runs the training form
    (:func:`ufkit.fff.reference.fff_training_form`: plain tensor ops, the same values), since the kernels do not
    trace; so it does when its weights are tensor subclasses the kernels cannot read (torchao's int8 weights, which
    ``ufkit quantize``'s ``torchao_int8`` variant gives every ``nn.Linear``)."""

    def __init__(self, hidden_size: int, depth: int, n_trees: int = 1):
        super().__init__(hidden_size, hidden_size, depth=depth, n_trees=n_trees)
        self.out_bias = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        w_in, b_in, w_out = self._weights()
        plain = all(type(w) in (torch.Tensor, nn.Parameter) for w in (w_in, b_in, w_out))
        if not self.training and (torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or not plain):
            y = fff_training_form(hidden_states, w_in, b_in, w_out, self.depth, self.n_trees)
        else:
            y = super().forward(hidden_states)
        return y + self.out_bias


def fff_spec(kind: str, layers, *, depth: int | None = None, leaf_width: int | None = None,
             activation: str = "gelu", n_trees: int = 1) -> dict:
    """The record saved as ``config.ufkit_fff``: ``{"kind", "layers", "depth", "leaf_width", "activation",
    "n_trees"}``.

    Raises:
        ValueError: an unknown ``kind`` or ``activation``, no layers, or a missing/non-positive ``depth``
            (``leaf``, ``fff``) or ``leaf_width`` (``leaf``).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    layers = sorted({int(i) for i in layers})
    if not layers or layers[0] < 0:
        raise ValueError(f"layers must name at least one layer index >= 0, got {layers}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if kind in ("leaf", "fff") and not (isinstance(depth, int) and depth >= (1 if kind == "leaf" else 0)):
        raise ValueError(f"depth must be a positive integer for kind {kind!r}, got {depth!r}")
    if kind == "leaf" and not (isinstance(leaf_width, int) and leaf_width >= 1):
        raise ValueError(f"leaf_width must be a positive integer, got {leaf_width!r}")
    return {"kind": kind, "layers": layers, "depth": depth, "leaf_width": leaf_width, "activation": activation,
            "n_trees": n_trees}


def make_feedforward(spec: dict, hidden_size: int) -> nn.Module:
    """A fresh (randomly initialised) feedforward module of ``spec``'s kind, `(..., H)` -> `(..., H)`."""
    if spec["kind"] == "leaf":
        return LeafFFF(hidden_size, hidden_size, spec["depth"], spec["leaf_width"], spec["activation"])
    if spec["kind"] == "fff":
        return BiasedFFF(hidden_size, spec["depth"], spec.get("n_trees", 1))
    return NoFeedforward(hidden_size)


def _layers(model) -> nn.ModuleList:
    base = model.bert if hasattr(model, "bert") else model
    return base.encoder.layer


def apply_fff(model, spec: dict | None = None, modules: dict | None = None):
    """Put feedforward modules into the layers ``spec["layers"]`` of a BERT model, in place; returns the model.

    Each chosen layer's ``intermediate`` becomes ``modules[i]`` (or a fresh :func:`make_feedforward`) and its
    ``output.dense`` an identity. The spec is recorded in ``model.config.ufkit_fff`` and a
    ``BertForSequenceClassification`` / ``BertModel`` becomes :class:`FffBertForSequenceClassification` /
    :class:`FffBertModel`, so ``save_pretrained`` writes a checkpoint the Auto classes rebuild.

    Raises:
        ValueError: a model that is not BERT-layout, or a layer index past its last layer.
    """
    spec = spec if spec is not None else getattr(model.config, FFF_KEY, None)
    if not spec:
        return model
    if not isinstance(model.config, BertConfig) or getattr(model.config, "ufkit_structure", None):
        raise ValueError(f"FFF layers go into unpruned BERT-layout models, got a {type(model.config).__name__}")
    layers = _layers(model)
    if spec["layers"][-1] >= len(layers):
        raise ValueError(f"layers {spec['layers']} do not fit a model with {len(layers)} layers")
    H = model.config.hidden_size
    for i in spec["layers"]:
        layer = layers[i]
        layer.intermediate = (modules or {}).get(i) or make_feedforward(spec, H)
        layer.output.dense = nn.Identity()
    if not isinstance(model.config, FffBertConfig):
        old = model.config
        model.config = FffBertConfig(**old.to_dict())
        model.config._attn_implementation = old._attn_implementation  # not part of to_dict()
        for m in model.modules():
            if getattr(m, "config", None) is not None and isinstance(m.config, BertConfig):
                m.config = model.config
    swap_classes(model, {BertForSequenceClassification: FffBertForSequenceClassification, BertModel: FffBertModel})
    setattr(model.config, FFF_KEY, dict(spec))
    return model


def feedforward_modules(model) -> dict[int, nn.Module]:
    """``{layer index: its FFF / leaf FFF / no-feedforward module}`` for the layers ``config.ufkit_fff`` names."""
    spec = getattr(model.config, FFF_KEY, None) or {"layers": []}
    layers = _layers(model)
    return {i: layers[i].intermediate for i in spec["layers"]}


class FffBertConfig(BertConfig):
    """A ``BertConfig`` whose ``ufkit_fff`` (:func:`fff_spec`) says which layers hold which feedforward."""

    model_type = "ufkit_fff_bert"


class FffBertModel(BertModel):
    """``BertModel`` with the feedforward layers of ``config.ufkit_fff`` (:func:`apply_fff`)."""

    config_class = FffBertConfig

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        apply_fff(self)


class FffBertForSequenceClassification(BertForSequenceClassification):
    """``BertForSequenceClassification`` with the feedforward layers of ``config.ufkit_fff`` (:func:`apply_fff`)."""

    config_class = FffBertConfig

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        apply_fff(self)


AutoConfig.register(FffBertConfig.model_type, FffBertConfig, exist_ok=True)
AutoModel.register(FffBertConfig, FffBertModel, exist_ok=True)
AutoModelForSequenceClassification.register(FffBertConfig, FffBertForSequenceClassification, exist_ok=True)
