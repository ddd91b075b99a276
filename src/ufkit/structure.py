"""The shapes of a structurally pruned BERT: how many attention heads and feedforward neurons each layer keeps.

A BERT config has one ``num_attention_heads`` and one ``intermediate_size`` for every layer, and transformers 5
has removed ``prune_heads`` (and ignores ``head_mask``), so a model whose layers keep different numbers of heads
or neurons cannot be described by the stock config. ufkit records the kept shapes in the config under
:data:`STRUCTURE_KEY`::

    config.ufkit_structure = {"num_heads": [12, 5, 7, 12, 3, 9],             # heads kept per layer
                              "intermediate_sizes": [1536, 700, 800, 1536, 400, 900]}

and saves it with ``model_type`` ``"ufkit_pruned_bert"``: :class:`PrunedBertConfig`, whose model classes
(:class:`PrunedBertModel`, :class:`PrunedBertForSequenceClassification`) are BERT's with those shapes built in.
Importing this module registers them with ``AutoConfig``, ``AutoModel`` and
``AutoModelForSequenceClassification`` (ufkit's loaders import it), so a pruned checkpoint (safetensors) loads
with plain ``from_pretrained`` and in ``ufkit evaluate``, ``benchmark`` and ``quantize`` like any other. Each
layer's head size stays ``hidden_size / num_attention_heads``; transformers' attention reshapes with ``-1``
heads, so a layer with fewer query/key/value rows simply has fewer heads.

* :func:`prune_heads` and :func:`prune_neurons` slice one layer's weights to the kept heads / neurons;
* :func:`layer_structure` reads the kept shapes of a model; :func:`record_structure` writes them into its
  config (and makes it a pruned-BERT model, so it saves as one); :func:`apply_structure` gives a freshly built
  model those shapes (weights are then loaded over them).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from transformers import (AutoConfig, AutoModel, AutoModelForSequenceClassification, BertConfig, BertModel,
                          BertForSequenceClassification)

from . import UfkitError

#: the config attribute that records the kept heads and neurons per layer
STRUCTURE_KEY = "ufkit_structure"


class StructureError(UfkitError, ValueError):
    """A keep list or a recorded structure that does not fit the model."""


def encoder_layers(model) -> nn.ModuleList:
    """The ``encoder.layer`` list of a BERT-family model, with or without a head.

    Raises:
        StructureError: the model has no ``encoder.layer``.
    """
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None:
        raise StructureError(f"{type(model).__name__} has no encoder.layer list (not a BERT-family encoder)")
    return layers


def head_size(config) -> int:
    """Width of one attention head: ``hidden_size // num_attention_heads`` of the original config."""
    return config.hidden_size // config.num_attention_heads


def _slice(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping rows (``dim=0``: outputs, and the bias) or columns (``dim=1``: inputs) ``index``."""
    w = linear.weight.detach().index_select(dim, index).clone()
    b = linear.bias.detach().clone() if linear.bias is not None else None
    if dim == 0 and b is not None:
        b = b.index_select(0, index).clone()
    out = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(w)
        if b is not None:
            out.bias.copy_(b)
    out.weight.requires_grad_(linear.weight.requires_grad)
    return out


def _keep_index(keep: Sequence[int], total: int, what: str) -> torch.Tensor:
    idx = sorted(int(i) for i in keep)
    if not idx:
        raise StructureError(f"a layer must keep at least one {what}, got an empty keep list")
    if len(set(idx)) != len(idx) or idx[0] < 0 or idx[-1] >= total:
        raise StructureError(f"{what} indices must be distinct and in [0, {total}), got {list(keep)}")
    return torch.tensor(idx, dtype=torch.long)


def prune_heads(layer, keep: Sequence[int], head_dim: int) -> None:
    """Keep only the attention heads ``keep`` of one ``BertLayer``, physically (in place).

    Query, key and value lose the other heads' rows (``head_dim`` each), the attention output projection their
    columns; the result equals the unpruned layer with the other heads' outputs set to zero.

    Args:
        layer: a ``BertLayer`` (``attention.self.{query,key,value}``, ``attention.output.dense``).
        keep: indices of the heads to keep, in ``[0, current number of heads)``; at least one.
        head_dim: width of one head.

    Raises:
        StructureError: an empty, repeated or out-of-range keep list.
    """
    att = layer.attention
    n = att.self.query.out_features // head_dim
    heads = _keep_index(keep, n, "head")
    rows = (heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
    for name in ("query", "key", "value"):
        setattr(att.self, name, _slice(getattr(att.self, name), rows, 0))
    att.output.dense = _slice(att.output.dense, rows, 1)
    att.self.num_attention_heads = len(heads)
    att.self.all_head_size = len(heads) * head_dim


def prune_neurons(layer, keep: Sequence[int]) -> None:
    """Keep only the feedforward neurons ``keep`` of one ``BertLayer``, physically (in place).

    Raises:
        StructureError: an empty, repeated or out-of-range keep list.
    """
    idx = _keep_index(keep, layer.intermediate.dense.out_features, "feedforward neuron")
    layer.intermediate.dense = _slice(layer.intermediate.dense, idx, 0)
    layer.output.dense = _slice(layer.output.dense, idx, 1)


def layer_structure(model) -> dict:
    """``{"num_heads": [...], "intermediate_sizes": [...]}``: the heads and neurons each layer has now."""
    d = head_size(model.config)
    layers = encoder_layers(model)
    return {"num_heads": [layer.attention.self.query.out_features // d for layer in layers],
            "intermediate_sizes": [layer.intermediate.dense.out_features for layer in layers]}


def record_structure(model) -> dict:
    """Record :func:`layer_structure` in ``model.config`` (:data:`STRUCTURE_KEY`), in place, so it saves.

    A ``BertForSequenceClassification`` or ``BertModel`` becomes the matching pruned-BERT class (same modules,
    same weights; only the config class and ``model_type`` change), so ``save_pretrained`` writes a checkpoint
    that ``AutoModelForSequenceClassification.from_pretrained`` rebuilds with the kept shapes.

    Returns:
        the structure.

    Raises:
        StructureError: a model of another architecture.
    """
    s = layer_structure(model)
    if not isinstance(model.config, PrunedBertConfig):
        if not isinstance(model.config, BertConfig):
            raise StructureError(f"only BERT-layout models can be pruned, got a {type(model.config).__name__}")
        old = model.config
        model.config = PrunedBertConfig(**old.to_dict())
        model.config._attn_implementation = old._attn_implementation  # not part of to_dict()
        for m in model.modules():
            if getattr(m, "config", None) is not None and isinstance(m.config, BertConfig):
                m.config = model.config
    swap_classes(model, {BertForSequenceClassification: PrunedBertForSequenceClassification,
                         BertModel: PrunedBertModel})
    setattr(model.config, STRUCTURE_KEY, s)
    return s


def swap_classes(model, classes: dict) -> None:
    """Give ``model`` (and its ``bert`` base model) the subclass ``classes[type]`` of its class, in place.

    Same modules, same weights; transformers' output capturing (``output_hidden_states``, which it records with hooks
    keyed by the model's class) is told about the new class, as ``post_init`` would have done.
    """
    for module in (model, getattr(model, "bert", None)):
        new = classes.get(type(module))
        if new is None:
            continue
        module.__class__ = new
        try:
            from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
        except ImportError:  # older transformers record hidden states without the registry
            continue
        _CAN_RECORD_REGISTRY[module] = module._can_record_outputs


def apply_structure(model, structure: dict | None = None) -> nn.Module:
    """Give a model built from a config the layer shapes recorded in it (or ``structure``), in place.

    Used when loading a pruned checkpoint: the model is built at full size from its config, each layer keeps
    its first ``num_heads[l]`` heads and ``intermediate_sizes[l]`` neurons, then the checkpoint's weights are
    loaded over them.

    Raises:
        StructureError: a record whose lengths differ from the number of layers or whose counts exceed them.
    """
    structure = structure if structure is not None else getattr(model.config, STRUCTURE_KEY, None)
    if not structure:
        return model
    layers = encoder_layers(model)
    heads, widths = structure.get("num_heads"), structure.get("intermediate_sizes")
    if len(heads) != len(layers) or len(widths) != len(layers):
        raise StructureError(f"{STRUCTURE_KEY} describes {len(heads)} / {len(widths)} layers but the model has "
                             f"{len(layers)}")
    d = head_size(model.config)
    for layer, h, w in zip(layers, heads, widths):
        n = layer.attention.self.query.out_features // d
        if h != n:
            prune_heads(layer, range(h), d)
        if w != layer.intermediate.dense.out_features:
            prune_neurons(layer, range(w))
    return model


class PrunedBertConfig(BertConfig):
    """A ``BertConfig`` whose ``ufkit_structure`` gives each layer's kept heads and feedforward neurons."""

    model_type = "ufkit_pruned_bert"


class PrunedBertModel(BertModel):
    """``BertModel`` built with the per-layer shapes of ``config.ufkit_structure`` (:func:`apply_structure`)."""

    config_class = PrunedBertConfig

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        apply_structure(self)


class PrunedBertForSequenceClassification(BertForSequenceClassification):
    """``BertForSequenceClassification`` built with the per-layer shapes of ``config.ufkit_structure``."""

    config_class = PrunedBertConfig

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        apply_structure(self)


AutoConfig.register(PrunedBertConfig.model_type, PrunedBertConfig, exist_ok=True)
AutoModel.register(PrunedBertConfig, PrunedBertModel, exist_ok=True)
AutoModelForSequenceClassification.register(PrunedBertConfig, PrunedBertForSequenceClassification, exist_ok=True)
