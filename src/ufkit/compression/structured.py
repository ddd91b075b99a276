"""Structured pruning of a BERT encoder: whole attention heads and feedforward neurons, chosen by importance.

Michel et al. ("Are Sixteen Heads Really Better than One?", NeurIPS 2019) put a gate ``xi_h`` on every head's
output and score the head by how much the loss moves when the gate moves, ``E_x |dL(x)/dxi_h|``; the heads
with the lowest scores are removed. The same gate on every feedforward neuron's activation scores neurons.
transformers 5 has removed ``prune_heads`` and ignores ``head_mask``, so the gates here are forward-pre-hooks on
each layer's two output projections: ``attention.output.dense`` (its input is the heads' context vectors, one
``head_dim`` slice per head) and ``output.dense`` (its input is the feedforward activations, one column per
neuron). Removing a head or neuron physically (:func:`prune`) computes exactly what a 0 gate computes.

Public functions:

* :func:`gates`: a context manager that puts trainable all-ones gates (:class:`Gates`) on every head and neuron;
* :func:`masked`: the same with fixed masks, the reference a physically pruned model must equal;
  :func:`keep_masks` turns keep lists into 0/1 masks;
* :func:`importance`: head and neuron scores from gate gradients (Michel's ``|grad|`` or Kwon's Fisher);
* :func:`select`: the units to keep, pruning a ratio of them globally or per layer;
* :func:`prune`: physical pruning to given keep lists, recorded in the config so the model saves and loads;
* :func:`prune_by_importance`: importance, selection and pruning in one call;
* :func:`unit_flops` and :func:`encoder_flops`: the FLOPs a head and a neuron cost, and an encoder's total;
* :func:`bert_layers` and :func:`text_batches`: the checks and the batching the compression modules share.

No weights are trained here: importance needs only backward passes to the gates.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..progress import progress_bar
from ..structure import (StructureError, encoder_layers, head_size, layer_structure, prune_heads, prune_neurons,
                         record_structure)
from .common import CompressionError

#: importance kinds: Michel et al.'s sum of ``|dL/dxi|`` and Kwon et al.'s Fisher information ``sum (dL/dxi)^2``
KINDS = ("gradient", "fisher")
#: scopes of :func:`select`: rank units across all layers, or prune the same ratio of every layer
SCOPES = ("global", "per_layer")


# ------------------------------------------------------------------------------------------------ model checks


def bert_layers(model) -> nn.ModuleList:
    """The ``encoder.layer`` list of a BERT-layout model, after checking that heads and neurons can be gated.

    Each layer must have ``attention.self.query``, ``attention.output.dense``, ``intermediate.dense`` and
    ``output.dense`` (BERT, MiniLM and a ufkit pruned BERT do), and the config ``hidden_size`` and
    ``num_attention_heads``.

    Raises:
        CompressionError: the model is not a BERT-family encoder.
    """
    try:
        layers = encoder_layers(model)
    except StructureError:
        layers = None
    cfg = getattr(model, "config", None)
    ok = (layers is not None and len(layers) > 0 and cfg is not None and hasattr(cfg, "hidden_size")
          and hasattr(cfg, "num_attention_heads"))
    if ok:
        for layer in layers:
            try:
                parts = (layer.attention.self.query, layer.attention.output.dense, layer.intermediate.dense,
                         layer.output.dense)
            except AttributeError:
                ok = False
                break
            ok = ok and all(isinstance(p, nn.Linear) for p in parts)
    if not ok:
        raise CompressionError(f"model must be a BERT-family encoder (encoder.layer with attention.self.query, "
                               f"attention.output.dense, intermediate.dense, output.dense), got "
                               f"{type(model).__name__}")
    return layers


def _counts(model) -> tuple[list[int], list[int], int]:
    """Heads per layer, neurons per layer and the head size of a checked model."""
    bert_layers(model)
    s = layer_structure(model)
    return s["num_heads"], s["intermediate_sizes"], head_size(model.config)


# ------------------------------------------------------------------------------------------------------- gates


@dataclass
class Gates:
    """Multipliers on every head's output and every feedforward neuron's activation.

    Attributes:
        heads (`list[torch.FloatTensor]`): one per layer, of shape ``(H_l,)`` (one gate per head), or
            ``(batch_size, H_l)`` for a gate per example; ``None`` leaves the layer's heads alone.
        neurons (`list[torch.FloatTensor]`): one per layer, of shape ``(I_l,)`` or ``(batch_size, I_l)``; ``None``
            leaves the layer alone.

    The hooks read these lists at every forward call, so an entry may be replaced between calls.
    """

    heads: list = field(default_factory=list)
    neurons: list = field(default_factory=list)


def _expand(mask: torch.Tensor, width: int, x: torch.Tensor) -> torch.Tensor:
    """A ``(units,)`` or ``(batch, units)`` mask repeated ``width`` times per unit, broadcastable to ``x``."""
    m = mask.to(x.dtype)
    if width > 1:
        m = m.repeat_interleave(width, dim=-1)
    return m if m.dim() == 1 else m[:, None, :]  # (batch, 1, units * width) against (batch, seq, units * width)


@contextlib.contextmanager
def _hooked(model, g: Gates) -> Iterator[Gates]:
    """Install ``g`` as forward-pre-hooks on each layer's two output projections; remove them on exit."""
    layers = bert_layers(model)
    d = head_size(model.config)
    handles = []

    def head_hook(i):
        def hook(module, args):
            m = g.heads[i]
            return None if m is None else (args[0] * _expand(m, d, args[0]),) + tuple(args[1:])
        return hook

    def neuron_hook(i):
        def hook(module, args):
            m = g.neurons[i]
            return None if m is None else (args[0] * _expand(m, 1, args[0]),) + tuple(args[1:])
        return hook

    try:
        for i, layer in enumerate(layers):
            handles.append(layer.attention.output.dense.register_forward_pre_hook(head_hook(i)))
            handles.append(layer.output.dense.register_forward_pre_hook(neuron_hook(i)))
        yield g
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def gates(model) -> Iterator[Gates]:
    """Gate every attention head and feedforward neuron with a trainable multiplier, all ones (Michel et al. 2019).

    Inside the ``with`` block the model computes what it computed before (the gates are 1), and a backward pass
    fills ``gates.heads[l].grad`` and ``gates.neurons[l].grad``: the sensitivity of the loss to each unit, the
    importance of Michel et al. ("Are Sixteen Heads Really Better than One?", NeurIPS 2019). Works with a
    model whose layers keep different numbers of heads or neurons. The hooks are removed on exit.

    Yields:
        :class:`Gates` whose ``heads[l]`` (`torch.FloatTensor` of shape ``(H_l,)``) and ``neurons[l]`` (of shape
        ``(I_l,)``) are ones with ``requires_grad=True``.

    Raises:
        CompressionError: the model is not a BERT-family encoder.
    """
    heads, neurons, _ = _counts(model)
    device = next(model.parameters()).device
    g = Gates([torch.ones(h, device=device, requires_grad=True) for h in heads],
              [torch.ones(n, device=device, requires_grad=True) for n in neurons])
    with _hooked(model, g):
        yield g


def _check_masks(masks, sizes: list[int], name: str) -> list:
    if masks is None:
        return [None] * len(sizes)
    masks = list(masks)
    if len(masks) != len(sizes):
        raise CompressionError(f"{name} must have one entry per layer ({len(sizes)}), got {len(masks)}")
    out = []
    for i, (m, n) in enumerate(zip(masks, sizes)):
        if m is None:
            out.append(None)
            continue
        m = torch.as_tensor(m, dtype=torch.float32).detach()
        if m.shape != (n,):
            raise CompressionError(f"{name}[{i}] must have shape ({n},), got {tuple(m.shape)}")
        out.append(m)
    return out


@contextlib.contextmanager
def masked(model, heads=None, neurons=None) -> Iterator[Gates]:
    """Multiply every head's output and every neuron's activation by a fixed mask (0/1, or any real scale).

    The reference for :func:`prune`: a model pruned to the units a 0/1 mask keeps computes the same logits.

    Args:
        heads: one entry per layer, ``None`` or a mask of shape ``(H_l,)``; ``None`` for no head masks.
        neurons: one entry per layer, ``None`` or a mask of shape ``(I_l,)``; ``None`` for no neuron masks.

    Yields:
        the :class:`Gates` in use (float32 tensors, no gradient).

    Raises:
        CompressionError: not a BERT-family encoder, or a mask list of the wrong length or shape.
    """
    h, n, _ = _counts(model)
    device = next(model.parameters()).device
    hm = [None if m is None else m.to(device) for m in _check_masks(heads, h, "heads")]
    nm = [None if m is None else m.to(device) for m in _check_masks(neurons, n, "neurons")]
    with _hooked(model, Gates(hm, nm)) as g:
        yield g


def keep_masks(sizes: Sequence[int], keep) -> list[torch.Tensor]:
    """0/1 masks, one per layer, of shape ``(sizes[l],)``, with ones at the indices ``keep[l]``.

    Raises:
        CompressionError: a keep list that does not fit its layer (see :func:`prune`).
    """
    keep = _check_keep(keep, list(sizes), "keep")
    out = []
    for n, k in zip(sizes, keep):
        m = torch.zeros(n)
        m[list(range(n)) if k is None else k] = 1.0
        out.append(m)
    return out


# -------------------------------------------------------------------------------------------------- batching


def text_batches(tokenizer, texts: Sequence[str], *, batch_size: int = 32, max_length: int = 128,
                 extra: Sequence | None = None) -> Iterator[tuple[dict, list[int]]]:
    """Tokenised, length-sorted batches of ``texts``, each padded to its own longest sentence.

    Args:
        texts: the sentences.
        batch_size: sentences per batch.
        max_length: longer sentences are truncated to this many tokens.
        extra: a per-sentence value (e.g. labels) returned in the batch as ``"labels"``.

    Yields:
        ``(batch, rows)``: the batch (``input_ids``, ``attention_mask``, ... of shape ``(batch_size, seq_len)``)
        and the positions in ``texts`` of its rows.
    """
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    order = sorted(range(len(texts)), key=lambda i: len(enc["input_ids"][i]))  # little padding per batch
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = dict(tokenizer.pad({k: [enc[k][i] for i in rows] for k in enc.keys()}, return_tensors="pt"))
        if extra is not None:
            batch["labels"] = torch.tensor([int(extra[i]) for i in rows])
        yield batch, rows


def _check_texts(texts, name: str = "texts") -> list[str]:
    if isinstance(texts, str) or texts is None:
        raise CompressionError(f"{name} must be a sequence of strings, got {type(texts).__name__}")
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise CompressionError(f"{name} must be a non-empty sequence of strings")
    return texts


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CompressionError(f"{name} must be a positive integer, got {value!r}")
    return value


# ------------------------------------------------------------------------------------------------- importance


def importance(model, tokenizer, texts: Sequence[str], *, labels: Sequence[int] | None = None,
               n_samples: int = 2048, batch_size: int = 32, kind: str = "gradient", max_length: int = 128,
               progress: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Importance of every attention head and feedforward neuron, from the gradients of the loss at the gates.

    For each example ``n`` and gate ``xi`` (all 1), ``g_n = dL_n / dxi``; the gates are per example, so one
    backward pass per batch gives every example's own gradient.

    * ``kind="gradient"``: ``sum_n |g_n|``, Michel et al. ("Are Sixteen Heads Really Better than One?",
      NeurIPS 2019), their ``E_x |dL(x)/dxi_h|`` up to the factor ``1/N``;
    * ``kind="fisher"``: ``sum_n g_n^2``, the diagonal of the Fisher information of the masks, Kwon et al.
      ("A Fast Post-Training Pruning Framework for Transformers", NeurIPS 2022).

    ``L_n`` is the cross-entropy against ``labels[n]`` when labels are given, else against the model's own
    predicted label (its argmax). The soft-label alternative, the KL divergence to the model's own (detached)
    prediction, has a zero gradient at the model itself, so it would score every unit 0.

    Weights get no gradient (their ``requires_grad`` is switched off and restored); dropout is off and the model
    is left in eval mode.

    Args:
        texts: the sentences; the first ``n_samples`` are used.
        labels: label ids of the sentences, or None.
        n_samples: how many sentences to use.
        batch_size: sentences per forward/backward pass.
        kind: ``"gradient"`` or ``"fisher"``.
        max_length: longer sentences are truncated to this many tokens.
        progress: show a progress bar.

    Returns:
        ``(head_scores, neuron_scores)``: lists with one float32 CPU tensor per layer, of shapes ``(H_l,)`` and
        ``(I_l,)``; higher is more important.

    Raises:
        CompressionError: not a BERT-family encoder, an unknown ``kind``, no texts, labels of another length
            than the texts or outside ``[0, num_labels)``, or a non-positive ``n_samples`` / ``batch_size``.
    """
    if kind not in KINDS:
        raise CompressionError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    texts = _check_texts(texts)
    _positive_int(n_samples, "n_samples")
    _positive_int(batch_size, "batch_size")
    if labels is not None:
        labels = list(labels)
        if len(labels) != len(texts):
            raise CompressionError(f"labels must have one id per text ({len(texts)}), got {len(labels)}")
        num_labels = getattr(model.config, "num_labels", None)
        if num_labels and not all(0 <= int(y) < num_labels for y in labels):
            raise CompressionError(f"labels must be ids in [0, {num_labels}) (unlabeled rows: pass labels=None)")
        labels = labels[:n_samples]
    texts = texts[:n_samples]
    heads, neurons, _ = _counts(model)
    device = next(model.parameters()).device
    head_scores = [torch.zeros(h, dtype=torch.float64) for h in heads]
    neuron_scores = [torch.zeros(n, dtype=torch.float64) for n in neurons]
    flags = {p: p.requires_grad for p in model.parameters()}
    model.eval()
    g = Gates([None] * len(heads), [None] * len(neurons))
    scores = head_scores + neuron_scores  # the same tensors, in the order of the gradients below
    try:
        for p in flags:
            p.requires_grad_(False)
        with _hooked(model, g):
            batches = text_batches(tokenizer, texts, batch_size=batch_size, max_length=max_length, extra=labels)
            total = math.ceil(len(texts) / batch_size)
            for batch, _ in progress_bar(batches, total=total, desc=f"{kind} importance", disable=not progress,
                                         leave=False):
                batch = {k: v.to(device) for k, v in batch.items()}
                target = batch.pop("labels", None)
                b = batch["input_ids"].shape[0]
                g.heads = [torch.ones(b, h, device=device, requires_grad=True) for h in heads]  # (B, H_l)
                g.neurons = [torch.ones(b, n, device=device, requires_grad=True) for n in neurons]  # (B, I_l)
                logits = model(**batch).logits  # (B, num_labels)
                if target is None:
                    target = logits.detach().argmax(-1)
                # summed, so each example's gates receive that example's own gradient
                loss = F.cross_entropy(logits.float(), target, reduction="sum")
                grads = torch.autograd.grad(loss, g.heads + g.neurons)
                for i, gr in enumerate(grads):
                    gr = gr.detach().double().cpu()
                    gr = gr.abs() if kind == "gradient" else gr.square()
                    scores[i].add_(gr.sum(0))
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.eval()
    return [s.float() for s in head_scores], [s.float() for s in neuron_scores]


# -------------------------------------------------------------------------------------------------- selection


def select(scores: Sequence[torch.Tensor], ratio: float, *, scope: str = "global",
           min_keep: int = 1) -> list[list[int]]:
    """The units (heads or neurons) to keep in every layer when a fraction ``ratio`` of them is pruned.

    * ``scope="global"``: the ``floor(ratio * total)`` units with the lowest scores across all layers go, each
      layer's scores first divided by their L2 norm (Michel et al., NeurIPS 2019, normalise head importance per
      layer so that layers compare); a layer never drops below ``min_keep`` units, so a ratio that would empty
      layers prunes fewer units;
    * ``scope="per_layer"``: every layer loses ``floor(ratio * units in the layer)`` units, keeping ``min_keep``.

    Args:
        scores: one 1-D tensor per layer (e.g. from :func:`importance`); higher is more important.
        ratio: fraction of the units to prune, in ``[0, 1)``.
        scope: ``"global"`` or ``"per_layer"``.
        min_keep: units every layer keeps at least (all of a layer that has fewer).

    Returns:
        the indices to keep, sorted, one list per layer.

    Raises:
        CompressionError: ``ratio`` outside ``[0, 1)``, an unknown ``scope``, ``min_keep < 1``, or scores that are
            not non-empty finite 1-D tensors.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise CompressionError(f"ratio must be a number in [0, 1), got {ratio!r}")
    if scope not in SCOPES:
        raise CompressionError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    _positive_int(min_keep, "min_keep")
    if isinstance(scores, torch.Tensor) or not len(scores):
        raise CompressionError("scores must be a non-empty list with one 1-D tensor per layer")
    s = []
    for i, x in enumerate(scores):
        x = torch.as_tensor(x, dtype=torch.float64).detach().cpu()
        if x.dim() != 1 or x.numel() == 0 or not torch.isfinite(x).all():
            raise CompressionError(f"scores[{i}] must be a non-empty 1-D tensor of finite numbers, got shape "
                                   f"{tuple(x.shape)}")
        s.append(x)
    floors = [min(min_keep, len(x)) for x in s]
    if scope == "per_layer":
        keep = []
        for x, lo in zip(s, floors):
            n_keep = max(lo, len(x) - math.floor(ratio * len(x)))
            keep.append(sorted(torch.argsort(x, descending=True, stable=True)[:n_keep].tolist()))
        return keep
    normed = [x / x.norm() if x.norm() > 0 else x for x in s]
    flat = torch.cat(normed)
    layer_of = torch.cat([torch.full((len(x),), i) for i, x in enumerate(s)]).tolist()
    index_in = [j for x in s for j in range(len(x))]
    left = [len(x) for x in s]
    pruned = [set() for _ in s]
    budget = math.floor(ratio * len(flat))
    for u in torch.argsort(flat, stable=True).tolist():  # least important first
        if budget == 0:
            break
        layer = layer_of[u]
        if left[layer] > floors[layer]:
            pruned[layer].add(index_in[u])
            left[layer] -= 1
            budget -= 1
    return [[j for j in range(len(x)) if j not in p] for x, p in zip(s, pruned)]


# ---------------------------------------------------------------------------------------------------- pruning


def _check_keep(keep, sizes: list[int], name: str) -> list:
    """Validated keep lists (``None`` entries keep the whole layer)."""
    if keep is None:
        return [None] * len(sizes)
    if isinstance(keep, (str, torch.Tensor)):
        raise CompressionError(f"{name} must be a list with one keep list per layer, got {type(keep).__name__}")
    keep = list(keep)
    if len(keep) != len(sizes):
        raise CompressionError(f"{name} must have one keep list per layer ({len(sizes)}), got {len(keep)}")
    out = []
    for i, (k, n) in enumerate(zip(keep, sizes)):
        if k is None:
            out.append(None)
            continue
        idx = [int(j) for j in (k.tolist() if isinstance(k, torch.Tensor) else k)]
        if not idx:
            raise CompressionError(f"{name}[{i}] keeps nothing: every layer must keep at least one unit")
        if len(idx) > n:
            raise CompressionError(f"{name}[{i}] keeps {len(idx)} units but layer {i} has only {n}")
        if len(set(idx)) != len(idx) or min(idx) < 0 or max(idx) >= n:
            raise CompressionError(f"{name}[{i}] must hold distinct indices in [0, {n}), got {idx}")
        out.append(sorted(idx))
    return out


def prune(model, *, heads=None, neurons=None):
    """Remove attention heads and feedforward neurons physically, in place, keeping the ones listed.

    Query, key and value lose the pruned heads' rows and ``attention.output.dense`` their columns; the
    intermediate projection loses the pruned neurons' rows and ``output.dense`` their columns
    (:func:`ufkit.structure.prune_heads`, :func:`ufkit.structure.prune_neurons`). The result computes what
    :func:`masked` with the matching 0/1 masks computes. The kept shapes are recorded in the config
    (:func:`ufkit.structure.record_structure`), so ``save_pretrained`` writes a checkpoint that
    :func:`ufkit.models.load_model` and ``AutoModelForSequenceClassification`` rebuild.

    Args:
        heads: one entry per layer: the indices of the heads to keep (of the layer's current heads), or ``None``
            to keep them all; ``None`` keeps every head.
        neurons: the same for feedforward neurons.

    Returns:
        the same model.

    Raises:
        CompressionError: not a BERT model, or a keep list that is empty, longer than the layer, repeated or out
            of range (checked for every layer before anything changes).
    """
    h, n, d = _counts(model)
    from transformers import BertConfig  # the recorded structure is BERT's (ufkit.structure)

    if not isinstance(model.config, BertConfig):
        raise CompressionError(f"model must be a BERT model to be pruned physically, got a "
                               f"{type(model.config).__name__}")
    heads = _check_keep(heads, h, "heads")
    neurons = _check_keep(neurons, n, "neurons")
    for layer, nh, ni, kh, kn in zip(bert_layers(model), h, n, heads, neurons):
        if kh is not None and len(kh) < nh:
            prune_heads(layer, kh, d)
        if kn is not None and len(kn) < ni:
            prune_neurons(layer, kn)
    record_structure(model)
    return model


def prune_by_importance(model, tokenizer, texts: Sequence[str], *, head_ratio: float = 0.0,
                        neuron_ratio: float = 0.0, labels: Sequence[int] | None = None, scope: str = "global",
                        n_samples: int = 2048, kind: str = "gradient", batch_size: int = 32,
                        max_length: int = 128, progress: bool = False):
    """Score heads and neurons (:func:`importance`), keep the best (:func:`select`) and prune (:func:`prune`).

    One-shot: Michel et al. (NeurIPS 2019) also prune iteratively, re-scoring after each step; call this
    repeatedly for that. Without fine-tuning afterwards, accuracy drops quickly beyond a small ratio; see
    :func:`ufkit.compression.post_training.post_training_prune` for a retraining-free repair.

    Args:
        head_ratio, neuron_ratio: fractions of heads / neurons to prune, in ``[0, 1)``.
        labels, n_samples, kind, batch_size, max_length, progress: as in :func:`importance`.
        scope: as in :func:`select`.

    Returns:
        ``(model, info)``: the same model, pruned in place; ``info`` holds ``num_heads`` and
        ``intermediate_sizes`` (kept per layer), ``head_scores`` and ``neuron_scores`` (lists of floats per layer,
        before pruning), ``importance_s`` and ``seconds`` (total wall time, s).

    Raises:
        CompressionError: see :func:`importance`, :func:`select` and :func:`prune`.
    """
    start = time.perf_counter()
    for name, r in (("head_ratio", head_ratio), ("neuron_ratio", neuron_ratio)):
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r < 1.0:
            raise CompressionError(f"{name} must be a number in [0, 1), got {r!r}")
    if scope not in SCOPES:
        raise CompressionError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    hs, ns = importance(model, tokenizer, texts, labels=labels, n_samples=n_samples, batch_size=batch_size,
                        kind=kind, max_length=max_length, progress=progress)
    importance_s = time.perf_counter() - start
    keep_h = select(hs, head_ratio, scope=scope) if head_ratio > 0 else None
    keep_n = select(ns, neuron_ratio, scope=scope) if neuron_ratio > 0 else None
    prune(model, heads=keep_h, neurons=keep_n)
    s = layer_structure(model)
    info = {**s, "head_scores": [x.tolist() for x in hs], "neuron_scores": [x.tolist() for x in ns],
            "importance_s": importance_s, "seconds": time.perf_counter() - start}
    return model, info


# ------------------------------------------------------------------------------------------------------ FLOPs


def unit_flops(*, hidden_size: int, head_dim: int, seq_len: float) -> tuple[float, float]:
    """FLOPs one attention head and one feedforward neuron cost per sequence of ``seq_len`` tokens.

    Two FLOPs per multiply-add, as ``torch.utils.flop_counter`` counts them. A head: its query, key, value rows and
    its output-projection columns, ``4 * seq_len * hidden_size * head_dim`` multiply-adds, plus its attention
    scores and context, ``2 * seq_len^2 * head_dim``; a neuron: a row of the intermediate and a column of the
    output projection, ``2 * seq_len * hidden_size``. Biases, softmax, GELU and LayerNorm are left out (a few
    percent). The cost model of Kwon et al. (NeurIPS 2022).

    Returns:
        ``(head_flops, neuron_flops)``.

    Raises:
        CompressionError: a non-positive size or length.
    """
    for name, v in (("hidden_size", hidden_size), ("head_dim", head_dim), ("seq_len", seq_len)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise CompressionError(f"{name} must be a positive number, got {v!r}")
    L, H, d = float(seq_len), float(hidden_size), float(head_dim)
    return 2.0 * (4.0 * L * H * d + 2.0 * L * L * d), 2.0 * (2.0 * L * H)


def encoder_flops(structure: dict, *, hidden_size: int, head_dim: int, seq_len: float) -> float:
    """FLOPs of the encoder layers on one sequence of ``seq_len`` tokens, for the kept heads and neurons.

    ``sum_l num_heads[l] * head_flops + intermediate_sizes[l] * neuron_flops`` (:func:`unit_flops`): the matrix
    products of the attention projections, the attention scores and context, and the feedforward layer; not the
    embeddings, the pooler or the classifier.

    Args:
        structure: ``{"num_heads": [...], "intermediate_sizes": [...]}`` as :func:`ufkit.structure.layer_structure`
            returns.

    Returns:
        FLOPs (two per multiply-add) per sequence.

    Raises:
        CompressionError: a structure without the two lists of equal length, or non-positive sizes.
    """
    try:
        heads, widths = list(structure["num_heads"]), list(structure["intermediate_sizes"])
    except (KeyError, TypeError):
        raise CompressionError("structure must be a dict with lists 'num_heads' and 'intermediate_sizes'") from None
    if len(heads) != len(widths):
        raise CompressionError(f"structure's lists differ in length: {len(heads)} num_heads, {len(widths)} "
                               f"intermediate_sizes")
    fh, fn = unit_flops(hidden_size=hidden_size, head_dim=head_dim, seq_len=seq_len)
    return float(sum(h * fh + n * fn for h, n in zip(heads, widths)))
