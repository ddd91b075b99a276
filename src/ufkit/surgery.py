"""Model surgery on BERT-family layouts: changes of structure that keep (or deliberately cut) what a model computes.

* :func:`truncate_layers` keeps the first layers (chapter 5's small model);
* :func:`keep_layers` keeps any subset of layers and :func:`layers_to_keep` names the subsets of layer dropping
  (students initialised from a teacher's layers, "Poor Man's BERT");
* :func:`rewire` reorders heads, feedforward neurons and hidden dimensions by importance, a permutation that does
  not change the function but decides what a slice or a pruned model keeps (chapter 4's super-model).
"""

from __future__ import annotations

import torch
from torch import nn

from .models import ModelError


def truncate_layers(model, num_hidden_layers: int):
    """Keep the first ``num_hidden_layers`` transformer layers of a BERT-family model, in place.

    Works on a bare encoder (``BertModel``) and on a model with a head (``BertForSequenceClassification``); the
    embeddings, pooler and head are kept. ``config.num_hidden_layers`` is updated, so ``save_pretrained`` writes a
    checkpoint that plain transformers loads as a shallower model.

    Returns:
        the same model.

    Raises:
        ModelError: ``num_hidden_layers`` is not in ``[1, current depth]``, or the model has no ``encoder.layer``.
    """
    encoder = getattr(getattr(model, "base_model", model), "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None:
        raise ModelError(f"{type(model).__name__} has no encoder.layer list to truncate")
    if not isinstance(num_hidden_layers, int) or not 1 <= num_hidden_layers <= len(layers):
        raise ModelError(f"num_hidden_layers must be an integer in [1, {len(layers)}], got {num_hidden_layers!r}")
    del layers[num_hidden_layers:]
    model.config.num_hidden_layers = num_hidden_layers
    return model


#: layer-dropping strategies of Sajjad et al. ("On the Effect of Dropping Layers of Pre-trained Transformer
#: Models", Computer Speech & Language 2023; "Poor Man's BERT")
DROP_STRATEGIES = ("top", "bottom", "alternate", "symmetric")


def layers_to_keep(num_hidden_layers: int, n_drop: int, strategy: str = "top") -> list[int]:
    """Indices of the layers that stay when ``n_drop`` of ``num_hidden_layers`` are dropped (Sajjad et al.).

    * ``top``: drop the last ``n_drop`` layers (the paper's best strategy on GLUE);
    * ``bottom``: drop the first ``n_drop``;
    * ``alternate``: drop every other layer from the top (5, 3, 1, ... for 6 layers), then more from the top;
    * ``symmetric``: keep the bottom and top layers and drop from the middle outwards.

    Returns:
        sorted indices, ``num_hidden_layers - n_drop`` of them.

    Raises:
        ModelError: an unknown strategy, or ``n_drop`` not in ``[0, num_hidden_layers)``.
    """
    if strategy not in DROP_STRATEGIES:
        raise ModelError(f"strategy must be one of {', '.join(DROP_STRATEGIES)}, got {strategy!r}")
    if not isinstance(n_drop, int) or not 0 <= n_drop < num_hidden_layers:
        raise ModelError(f"n_drop must be an integer in [0, {num_hidden_layers - 1}] for a "
                         f"{num_hidden_layers}-layer model, got {n_drop!r}")
    n = num_hidden_layers
    if strategy == "top":
        drop = list(range(n - n_drop, n))
    elif strategy == "bottom":
        drop = list(range(n_drop))
    elif strategy == "alternate":
        order = list(range(n - 1, -1, -2)) + [i for i in range(n - 1, -1, -1) if (n - 1 - i) % 2]
        drop = order[:n_drop]
    else:
        mid = (n - 1) / 2
        order = sorted(range(n), key=lambda i: (abs(i - mid), -i))
        drop = order[:n_drop]
    return sorted(set(range(n)) - set(drop))


def keep_layers(model, indices):
    """Keep only the transformer layers ``indices`` (in that order) of a BERT-family model, in place.

    The kept layers keep their weights; embeddings, pooler and head are unchanged and ``config.num_hidden_layers``
    is updated, so the result saves and loads as a shallower model of the same class. A student initialised
    from a teacher's layers {0, 2, 4} is ``keep_layers(copy.deepcopy(teacher), [0, 2, 4])``.

    Raises:
        ModelError: no ``encoder.layer`` list, an empty or repeated index list, or an index out of range.
    """
    encoder = getattr(getattr(model, "base_model", model), "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None:
        raise ModelError(f"{type(model).__name__} has no encoder.layer list")
    idx = [int(i) for i in indices]
    if not idx or len(set(idx)) != len(idx) or min(idx) < 0 or max(idx) >= len(layers):
        raise ModelError(f"layer indices must be distinct and in [0, {len(layers)}), got {list(indices)}")
    kept = [layers[i] for i in idx]
    encoder.layer = nn.ModuleList(kept)
    for new, layer in enumerate(kept):  # attention caches index layers by position
        for m in layer.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = new
    model.config.num_hidden_layers = len(kept)
    structure = getattr(model.config, "ufkit_structure", None)
    if structure:
        model.config.ufkit_structure = {k: [v[i] for i in idx] for k, v in structure.items()}
    return model


def check_bert_classifier(model, error: type[Exception] = ModelError) -> None:
    """Raise ``error`` unless ``model`` is a BertForSequenceClassification-like model (BERT/MiniLM layout with a
    pooler and a linear classifier, absolute positions) whose dimensions can be permuted or sliced."""
    cfg = getattr(model, "config", None)
    bert = getattr(model, "bert", None)
    ok = (cfg is not None and bert is not None and hasattr(bert, "embeddings") and hasattr(bert, "encoder")
          and getattr(bert, "pooler", None) is not None and isinstance(getattr(model, "classifier", None), nn.Linear))
    if not ok:
        raise error(f"this needs a BertForSequenceClassification (BERT/MiniLM with a pooler and a "
                       f"linear classifier), got {type(model).__name__}")
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute" or getattr(cfg, "is_decoder", False):
        raise error("only encoders with absolute position embeddings can be sliced")


def _permute_(param: torch.Tensor, perm: torch.Tensor, dim: int) -> None:
    with torch.no_grad():
        param.copy_(param.index_select(dim, perm))


def rewire(model, *, hidden: bool = True) -> nn.Module:
    """Reorder heads, feedforward neurons and hidden dimensions by importance, most important first, in place.

    A permutation of heads, of feedforward neurons or of the hidden dimension (applied to every matrix that reads or
    writes it) does not change what the model computes; it only decides what a slice keeps. Importance is
    weight-magnitude based, so no data is needed:

    * a feedforward neuron ``j``: ``||W_in[j, :]|| * ||W_out[:, j]||`` (how strongly it can move the output);
    * a head: the same product over its query/key/value rows and its columns of the attention output matrix;
    * a hidden dimension ``i``: the mean over the model's LayerNorms of ``|gamma_i|`` (the scale every layer gives
      that dimension of the residual stream).

    DynaBERT (Hou et al., "DynaBERT: Dynamic BERT with Adaptive Width and Depth", NeurIPS 2020) rewires heads and
    neurons with a gradient-based importance; we use weights because they need no data and no backward pass.

    Args:
        model: a ``BertForSequenceClassification``; modified in place and returned.
        hidden: also reorder the hidden dimension (sliced by every sub-model narrower than the base).

    Raises:
        ModelError: not a BERT classifier (:func:`check_bert_classifier`).
    """
    check_bert_classifier(model)
    cfg, bert = model.config, model.bert
    head = cfg.hidden_size // cfg.num_attention_heads
    for layer in bert.encoder.layer:
        att, inter, out = layer.attention, layer.intermediate.dense, layer.output.dense
        # feedforward neurons: rows of W_in (and its bias), columns of W_out
        score = inter.weight.norm(dim=1) * out.weight.norm(dim=0)
        perm = torch.argsort(score, descending=True, stable=True)
        _permute_(inter.weight, perm, 0)
        _permute_(inter.bias, perm, 0)
        _permute_(out.weight, perm, 1)
        # heads: blocks of `head` rows of Q, K, V (and biases), blocks of columns of the output projection
        qkv = torch.cat([m.weight.view(cfg.num_attention_heads, -1) for m in (att.self.query, att.self.key,
                                                                              att.self.value)], dim=1)
        o = att.output.dense.weight.view(cfg.hidden_size, cfg.num_attention_heads, head)
        score = qkv.norm(dim=1) * o.permute(1, 0, 2).reshape(cfg.num_attention_heads, -1).norm(dim=1)
        order = torch.argsort(score, descending=True, stable=True)
        perm = (order[:, None] * head + torch.arange(head)).reshape(-1)
        for m in (att.self.query, att.self.key, att.self.value):
            _permute_(m.weight, perm, 0)
            _permute_(m.bias, perm, 0)
        _permute_(att.output.dense.weight, perm, 1)
    if hidden:
        norms = [bert.embeddings.LayerNorm] + [m for layer in bert.encoder.layer
                                               for m in (layer.attention.output.LayerNorm, layer.output.LayerNorm)]
        score = torch.stack([n.weight.abs() for n in norms]).mean(0)
        perm = torch.argsort(score, descending=True, stable=True)
        emb = bert.embeddings
        for e in (emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings):
            _permute_(e.weight, perm, 1)
        for n in norms:
            _permute_(n.weight, perm, 0)
            _permute_(n.bias, perm, 0)
        for layer in bert.encoder.layer:
            att = layer.attention
            for m in (att.self.query, att.self.key, att.self.value, layer.intermediate.dense):
                _permute_(m.weight, perm, 1)  # these read the hidden dimension
            for m in (att.output.dense, layer.output.dense):
                _permute_(m.weight, perm, 0)  # these write it
                _permute_(m.bias, perm, 0)
        pool = bert.pooler.dense  # reads and writes it (the pooled vector is hidden-sized too)
        _permute_(pool.weight, perm, 0)
        _permute_(pool.weight, perm, 1)
        _permute_(pool.bias, perm, 0)
        _permute_(model.classifier.weight, perm, 1)
    return model
