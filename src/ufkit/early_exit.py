"""FastBERT: self-distilled exits after every layer and adaptive inference time.

Liu et al., "FastBERT: a Self-distilling BERT with Adaptive Inference Time", ACL 2020. A small classifier (a
*branch*) sits after every transformer layer. The one after the last layer is the teacher; the others are
students trained to imitate it (self-distillation). At inference a sample leaves after layer ``i`` as soon as
its student is sure enough: the normalized entropy of its prediction,

    U = -sum_c p_c log p_c / log(num_labels)   in [0, 1],

falls below ``speed``. ``speed = 0`` never exits early (the full model); ``speed = 1`` exits almost always after
the first layer. Beyond the paper this module has

* **batch compaction**: in a batch, samples that exit leave it and the rest run on, trimmed to their own longest
  sequence, so a batch costs what its samples cost (FastBERT's issues #35 and #40: one hard sample kept the
  whole batch running);
* **patience exits** (Zhou et al., "BERT Loses Patience: Fast and Robust Inference with Early Exit",
  NeurIPS 2020, "PABEE"): a sample exits once its predicted label has stayed the same for ``patience``
  consecutive layers;
* **top-k entropy** for many labels (FastBERT issue #7): the entropy of the ``top_k`` largest probabilities,
  renormalized, divided by ``log(top_k)``; with 40 labels the full normalized entropy rarely falls low enough;
* **FLOPs per sample**, counted analytically (every matrix product: the linear layers, the attention matrix
  products, the branches) and checked against :class:`torch.utils.flop_counter.FlopCounterMode`
  (:func:`count_flops`), together with the paper's count, which covers only the linear layers;
* :func:`calibrate_speed`: the largest speed whose accuracy drop on held-out data stays within a budget.

The two training stages
-----------------------
*Stage 1* trains backbone and teacher with cross-entropy. The fine-tuned baseline (:func:`ufkit.train.load_teacher`)
already is that: a backbone fine-tuned together with a classification head. By default (``teacher="head"``)
that head, the backbone's pooler and linear classifier, **is** the teacher, so ``speed = 0`` reproduces the
baseline's predictions bit for bit and stage 1 costs nothing. ``teacher="fastbert"`` instead puts the paper's
classifier after the last layer and :meth:`EarlyExitModel.fit_teacher` trains it with cross-entropy on the
frozen fine-tuned backbone (a cheap stage 1 that keeps the backbone as fine-tuned).

*Stage 2* (:meth:`EarlyExitModel.fit_students`) freezes backbone and teacher and trains the students on
``sum_i KL(p_teacher || p_student_i)``. The direction is the forward KL of ordinary distillation (Hinton et al.
2015): it equals the cross-entropy against the teacher's soft labels up to a constant, and it punishes a student
that is confident where the teacher is not. That matters here because the student's *own* confidence decides the
exit: the reverse direction, ``KL(p_student || p_teacher)`` (the paper's equation as printed), is mode-seeking,
lets a student put all its mass on one label and so exit with a low entropy where it should not. No labels are
needed, so any unlabeled text of the domain serves.

Layouts supported: models whose base model has ``embeddings`` and ``encoder.layer``, with the layers called as
``layer(hidden_states, attention_mask)``. BERT and MiniLM are tested; RoBERTa, ELECTRA and XLM-R share the layout
but are untested. Weights are shared with the wrapped model, never copied.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import UfkitError

BRANCH_FILE = "early_exit.safetensors"
CONFIG_FILE = "early_exit_config.json"
FORMAT_VERSION = 1


class EarlyExitError(UfkitError, ValueError):
    """Bad input to early-exit inference or training: an out-of-range speed, too few labels, an unsupported model."""


# ------------------------------------------------------------------------------------------------ branches


class FastBertClassifier(nn.Module):
    """The paper's branch classifier (Liu et al., "FastBERT", ACL 2020).

    ``Linear(hidden_size -> 128) + tanh``, a self-attention of width 128 with 2 heads, the first token's output,
    ``Linear(128 -> 128) + tanh``, ``Linear(128 -> num_labels)``. Only the first token's output is used, so only
    its query is computed: keys and values need every token, the query only one. The result equals full
    self-attention followed by first-token pooling, at ``1/n`` of the query and score cost.

    Args:
        hidden_size: width of the backbone's hidden states.
        num_labels: number of classes (≥ 2).
        cls_hidden_size: the branch's width (128 in the paper).
        cls_num_heads: attention heads (2 in the paper); must divide ``cls_hidden_size``.
        dropout: dropout on the attention probabilities and before the last layer during training.

    Raises:
        EarlyExitError: ``num_labels < 2`` or a width the heads do not divide.
    """

    def __init__(self, hidden_size: int, num_labels: int, cls_hidden_size: int = 128, cls_num_heads: int = 2,
                 dropout: float = 0.1):
        super().__init__()
        if num_labels < 2:
            raise EarlyExitError(f"num_labels must be at least 2, got {num_labels}")
        if cls_hidden_size % cls_num_heads:
            raise EarlyExitError(f"cls_num_heads ({cls_num_heads}) must divide cls_hidden_size ({cls_hidden_size})")
        self.num_heads, self.head_dim = cls_num_heads, cls_hidden_size // cls_num_heads
        self.dense_in = nn.Linear(hidden_size, cls_hidden_size)
        self.query = nn.Linear(cls_hidden_size, cls_hidden_size)
        self.key = nn.Linear(cls_hidden_size, cls_hidden_size)
        self.value = nn.Linear(cls_hidden_size, cls_hidden_size)
        self.attn_out = nn.Linear(cls_hidden_size, cls_hidden_size)
        self.dense = nn.Linear(cls_hidden_size, cls_hidden_size)
        self.classifier = nn.Linear(cls_hidden_size, num_labels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(batch_size, num_labels)``.

        Args:
            hidden_states (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`): a layer's output.
            attention_mask (`torch.LongTensor` of shape `(batch_size, sequence_length)`): 1 for tokens, 0 for padding.
        """
        b, t, _ = hidden_states.shape
        x = torch.tanh(self.dense_in(hidden_states))                                  # (B, T, C)
        q = self.query(x[:, :1]).view(b, 1, self.num_heads, self.head_dim).transpose(1, 2)   # (B, nh, 1, d)
        k = self.key(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)           # (B, nh, T, d)
        v = self.value(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)         # (B, nh, T, d)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)                 # (B, nh, 1, T)
        pad = attention_mask[:, None, None, :] == 0
        scores = scores.masked_fill(pad, torch.finfo(scores.dtype).min)
        probs = self.dropout(scores.softmax(-1))
        ctx = (probs @ v).transpose(1, 2).reshape(b, -1)                              # (B, C)
        pooled = torch.tanh(self.dense(self.attn_out(ctx)))
        return self.classifier(self.dropout(pooled))                                  # (B, num_labels)


class _HeadTeacher(nn.Module):
    """The fine-tuned model's own head as the teacher: pooler (if any) + classifier, sharing their weights."""

    def __init__(self, pooler, classifier, takes_sequence: bool):
        super().__init__()
        # Stored outside the module tree so that the wrapped model's weights are never registered twice.
        self.__dict__["_pooler"], self.__dict__["_classifier"] = pooler, classifier
        self.takes_sequence = takes_sequence

    def forward(self, hidden_states, attention_mask):
        if self.takes_sequence:  # RoBERTa-style heads pick the first token themselves
            return self._classifier(hidden_states)
        return self._classifier(self._pooler(hidden_states))


# --------------------------------------------------------------------------------------------- uncertainty


def normalized_entropy(logits: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    """FastBERT's uncertainty, in ``[0, 1]``: entropy of ``softmax(logits)`` divided by ``log(num_labels)``.

    Args:
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`).
        top_k: use only the ``top_k`` largest probabilities, renormalized, and divide by ``log(top_k)``
            (for many labels, where the long tail keeps the full entropy high). None or ≥ ``num_labels``: all.

    Returns:
        `torch.FloatTensor` of shape `(batch_size,)`.

    Raises:
        EarlyExitError: ``top_k < 2``.
    """
    n = logits.shape[-1]
    if top_k is not None and top_k < 2:
        raise EarlyExitError(f"top_k must be at least 2 (or None for all labels), got {top_k}")
    k = n if top_k is None else min(top_k, n)
    logp = logits.float().log_softmax(-1)
    if k < n:
        logp = logp.topk(k, dim=-1).values
        logp = logp - logp.logsumexp(-1, keepdim=True)  # renormalize over the top k
    return -(logp.exp() * logp).sum(-1) / math.log(k)


def _check_speed(speed: float) -> float:
    try:
        s = float(speed)
    except (TypeError, ValueError):
        raise EarlyExitError(f"speed must be a number in [0, 1], got {speed!r}") from None
    if not 0.0 <= s <= 1.0:  # also rejects NaN
        raise EarlyExitError(f"speed must be in [0, 1] (0 = full model, 1 = fastest), got {speed!r}")
    return s


def _check_patience(patience: int | None) -> int | None:
    if patience is None:
        return None
    if not isinstance(patience, (int, np.integer)) or patience < 1:
        raise EarlyExitError(f"patience must be a positive integer or None, got {patience!r}")
    return int(patience)


# ------------------------------------------------------------------------------------------------- outputs


@dataclass
class EarlyExitOutput:
    """What adaptive inference returns for a batch.

    Attributes:
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`): logits of the branch each sample exited at.
        exit_layer (`torch.LongTensor` of shape `(batch_size,)`): 1-based layer after which each sample exited
            (``num_hidden_layers`` = the teacher answered).
        flops (`torch.LongTensor` of shape `(batch_size,)`): floating-point operations each sample cost at its own
            length (no padding): every matrix product of the layers it ran and the branches it consulted.
        flops_linear (`torch.LongTensor` of shape `(batch_size,)`): the same counting only linear layers, as the
            FastBERT paper does.
    """

    logits: torch.Tensor
    exit_layer: torch.Tensor
    flops: torch.Tensor
    flops_linear: torch.Tensor


@dataclass
class Predictions:
    """:meth:`EarlyExitModel.predict`'s result, in the input's row order (numpy arrays of length ``n``).

    Attributes:
        labels: predicted label ids, int64.
        exit_layer: 1-based exit layer per sample.
        flops, flops_linear: FLOPs per sample (see :class:`EarlyExitOutput`).
        logits: float32 array of shape ``(n, num_labels)``.
        seconds: wall-clock time of the whole prediction (tokenization excluded).
    """

    labels: np.ndarray
    exit_layer: np.ndarray
    flops: np.ndarray
    flops_linear: np.ndarray
    logits: np.ndarray
    seconds: float

    def accuracy(self, labels) -> float:
        """Accuracy in percent against ``labels`` (int array of length ``n``)."""
        return float(100.0 * np.mean(self.labels == np.asarray(labels)))


# ----------------------------------------------------------------------------------------- locating layers


def _find_parts(model):
    """``(base_model, embeddings, layers)`` of a BERT-like model, or raise EarlyExitError naming what is missing."""
    base = getattr(model, "base_model", model)
    embeddings = getattr(base, "embeddings", None)
    encoder = getattr(base, "encoder", None)
    layers = getattr(encoder, "layer", None) if encoder is not None else None
    if embeddings is None or not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise EarlyExitError(
            f"cannot find the transformer layers of {type(model).__name__}: expected a BERT-like model whose base "
            f"model has `.embeddings` and `.encoder.layer` (a ModuleList), as BERT, MiniLM, RoBERTa and ELECTRA "
            f"have")
    return base, embeddings, layers


def _find_head(model, base):
    """The model's own classification head as a teacher, or None when it has none we understand."""
    classifier = getattr(model, "classifier", None)
    if classifier is None or model is base:
        return None
    pooler = getattr(base, "pooler", None)
    if isinstance(classifier, nn.Linear) and pooler is not None:
        return _HeadTeacher(pooler, classifier, takes_sequence=False)       # BERT: pooler(h[:, 0]) -> Linear
    if not isinstance(classifier, nn.Linear):
        return _HeadTeacher(None, classifier, takes_sequence=True)          # RoBERTa/ELECTRA heads
    return None


# ------------------------------------------------------------------------------------------------ the model


class EarlyExitModel(nn.Module):
    """A BERT-like encoder with a FastBERT branch after every layer and adaptive inference.

    The wrapped model's embeddings and layers are used in place (not copied). ``students[i]`` reads layer
    ``i + 1``'s output (``i = 0 .. num_hidden_layers - 2``); the teacher reads the last layer's.

    Args:
        model: a Hugging Face model, e.g. ``BertForSequenceClassification`` (fine-tuned for stage 1).
        num_labels: classes; default ``model.config.num_labels``.
        teacher: ``"head"`` (the model's own fine-tuned head; default) or ``"fastbert"`` (the paper's classifier,
            to be trained with :meth:`fit_teacher`).
        cls_hidden_size, cls_num_heads: width and heads of the branches (128 and 2 in the paper).
        tokenizer: kept for :meth:`predict` and :meth:`save_pretrained`.

    Raises:
        EarlyExitError: the layers cannot be found, ``num_labels < 2``, an unknown ``teacher``, or
            ``teacher="head"`` on a model without a classification head.
    """

    def __init__(self, model, num_labels: int | None = None, *, teacher: str = "head", cls_hidden_size: int = 128,
                 cls_num_heads: int = 2, dropout: float = 0.1, tokenizer=None):
        super().__init__()
        base, embeddings, layers = _find_parts(model)
        cfg = model.config
        num_labels = int(num_labels if num_labels is not None else getattr(cfg, "num_labels", 0))
        if num_labels < 2:
            raise EarlyExitError(f"num_labels must be at least 2, got {num_labels}")
        if teacher not in ("head", "fastbert"):
            raise EarlyExitError(f"teacher must be 'head' or 'fastbert', got {teacher!r}")
        self.model, self.config, self.tokenizer = model, cfg, tokenizer
        self._base, self._embeddings, self._layers = [base], [embeddings], [layers]  # lists: no re-registration
        self.num_labels, self.teacher_kind = num_labels, teacher
        self.num_hidden_layers = len(layers)
        self.hidden_size = int(cfg.hidden_size)
        self.intermediate_size = int(getattr(cfg, "intermediate_size", 4 * self.hidden_size))
        self.branch_kwargs = dict(cls_hidden_size=cls_hidden_size, cls_num_heads=cls_num_heads, dropout=dropout)
        self.students = nn.ModuleList([FastBertClassifier(self.hidden_size, num_labels, **self.branch_kwargs)
                                       for _ in range(self.num_hidden_layers - 1)])
        if teacher == "head":
            head = _find_head(model, base)
            if head is None:
                raise EarlyExitError(f"teacher='head' needs a model with a classification head "
                                     f"(e.g. BertForSequenceClassification), got {type(model).__name__}; "
                                     f"use teacher='fastbert' and fit_teacher(...)")
            if getattr(cfg, "num_labels", num_labels) != num_labels:
                raise EarlyExitError(f"num_labels={num_labels} but the model's head has {cfg.num_labels} labels")
            self.__dict__["_head"] = head  # not a submodule: its weights belong to self.model
            self.teacher_classifier = None
        else:
            self.teacher_classifier = FastBertClassifier(self.hidden_size, num_labels, **self.branch_kwargs)
        self._mask_fn = _mask_function()
        self.eval()

    # ------------------------------------------------------------------------------------------ pieces

    @property
    def layers(self) -> nn.ModuleList:
        """The wrapped model's transformer layers (shared, not copied)."""
        return self._layers[0]

    def teacher(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Teacher logits ``(batch_size, num_labels)`` from the last layer's hidden states."""
        if self.teacher_classifier is not None:
            return self.teacher_classifier(hidden_states, attention_mask)
        return self._head(hidden_states, attention_mask)

    def _layer_mask(self, attention_mask: torch.Tensor, hidden_states: torch.Tensor):
        return self._mask_fn(self.config, hidden_states, attention_mask)

    def _run_layer(self, i: int, hidden_states, mask):
        out = self.layers[i](hidden_states, mask)
        return out[0] if isinstance(out, tuple) else out  # older transformers return a tuple

    def _embed(self, input_ids, attention_mask, token_type_ids):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs = {"input_ids": input_ids}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        return self._embeddings[0](**kwargs), attention_mask

    # ----------------------------------------------------------------------------------------- FLOPs

    def layer_flops(self, n_tokens, linear_only: bool = False):
        """FLOPs of one transformer layer on ``n_tokens`` tokens (int or integer tensor/array, elementwise).

        Linear layers: ``2 n (4 h^2 + 2 h f)`` (Q, K, V, output projection, the two feedforward matrices); attention
        matrix products: ``4 n^2 h`` (scores and weighted values). Softmax, GELU, LayerNorm and biases are not
        counted, as :class:`~torch.utils.flop_counter.FlopCounterMode` does not count them.
        """
        h, f = self.hidden_size, self.intermediate_size
        linear = 2 * n_tokens * (4 * h * h + 2 * h * f)
        return linear if linear_only else linear + 4 * n_tokens * n_tokens * h

    def branch_flops(self, n_tokens, teacher: bool = False, linear_only: bool = False):
        """FLOPs of one branch on ``n_tokens`` tokens (students, or the teacher if ``teacher``).

        FastBERT branch, width ``c``: ``2 n h c`` (input projection) ``+ 4 n c^2`` (keys, values) ``+ 4 c^2`` (the first
        token's query and attention output) ``+ 2 c^2 + 2 c L`` (the last two linear layers) and, unless
        ``linear_only``, ``4 n c`` for the first token's attention scores and weighted values. The BERT head
        (``teacher="head"``): ``2 h^2 + 2 h L`` (pooler and classifier on the first token).
        """
        h, n_labels = self.hidden_size, self.num_labels
        if teacher and self.teacher_classifier is None:
            # BERT: pooler h->h and classifier h->L; RoBERTa's head: dense h->h and out_proj h->L. First token only.
            return 2 * h * h + 2 * h * n_labels + 0 * n_tokens  # "0 * n" keeps the caller's array shape
        c = self.branch_kwargs["cls_hidden_size"]
        linear = 2 * n_tokens * h * c + 4 * n_tokens * c * c + 6 * c * c + 2 * c * n_labels
        return linear if linear_only else linear + 4 * n_tokens * c

    def analytic_flops(self, n_tokens, exit_layer, *, students: bool = True, linear_only: bool = False):
        """FLOPs per sample from its length and exit layer (what :meth:`forward` accumulates).

        Args:
            n_tokens, exit_layer: integer arrays of shape ``(n,)``: tokens per sample and 1-based exit layer.
            students: whether students were consulted on the way (False only for ``speed = 0`` without patience).

        Returns:
            int64 `numpy.ndarray` of shape ``(n,)``.
        """
        n = np.asarray(n_tokens, dtype=np.int64)
        e = np.asarray(exit_layer, dtype=np.int64)
        total = e * self.layer_flops(n, linear_only)
        last = e == self.num_hidden_layers
        if students:
            total = total + np.minimum(e, self.num_hidden_layers - 1) * self.branch_flops(n, linear_only=linear_only)
        return total + np.where(last, self.branch_flops(n, teacher=True, linear_only=linear_only), 0)

    # --------------------------------------------------------------------------------------- inference

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, *, speed: float = 0.0, patience: int | None = None,
                top_k: int | None = None, labels: torch.Tensor | None = None) -> EarlyExitOutput:
        """Adaptive inference on one batch, with batch compaction.

        After layer ``i`` each remaining sample's student answers; samples whose uncertainty
        (:func:`normalized_entropy`) is below ``speed``, or whose predicted label has not changed for ``patience``
        layers, exit with that answer and leave the batch; the rest continue, trimmed to their longest sequence
        (right padding). The teacher answers whatever reaches the last layer. With ``speed = 0`` and no patience
        no student can fire, so none is run: the result is exactly the full model's.

        Args:
            input_ids, attention_mask, token_type_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`).
            speed: threshold in ``[0, 1]`` on the normalized entropy.
            patience: PABEE's patience (layers), or None for entropy exits only. Both may be combined: a sample
                exits when either rule says so.
            top_k: entropy over the ``top_k`` largest probabilities (see :func:`normalized_entropy`).
            labels: ignored; accepted so that a training batch can be passed as it is.

        Returns:
            :class:`EarlyExitOutput`; ``flops`` counts each sample at its own length, as if it ran alone (the
            padding a batch adds is not charged to it).

        Raises:
            EarlyExitError: ``speed`` outside ``[0, 1]``, a bad ``patience`` or ``top_k``.
        """
        speed = _check_speed(speed)
        patience = _check_patience(patience)
        if top_k is not None and top_k < 2:
            raise EarlyExitError(f"top_k must be at least 2 (or None for all labels), got {top_k}")
        use_students = speed > 0 or patience is not None
        hidden, mask = self._embed(input_ids, attention_mask, token_type_ids)
        b, device = hidden.shape[0], hidden.device
        out_logits = torch.zeros(b, self.num_labels, dtype=hidden.dtype, device=device)
        exit_layer = torch.full((b,), self.num_hidden_layers, dtype=torch.long, device=device)
        flops = torch.zeros(b, dtype=torch.long, device=device)
        flops_lin = torch.zeros(b, dtype=torch.long, device=device)
        active = torch.arange(b, device=device)            # original row of each remaining sample
        lengths = mask.sum(-1)                              # (B,) tokens per sample
        last_pred = torch.full((b,), -1, dtype=torch.long, device=device)
        streak = torch.zeros(b, dtype=torch.long, device=device)
        layer_mask = self._layer_mask(mask, hidden)  # rebuilt only when the batch changes
        for i in range(self.num_hidden_layers):
            hidden = self._run_layer(i, hidden, layer_mask)
            flops[active] += self.layer_flops(lengths)
            flops_lin[active] += self.layer_flops(lengths, linear_only=True)
            if i == self.num_hidden_layers - 1:
                out_logits[active] = self.teacher(hidden, mask).to(out_logits.dtype)
                flops[active] += self.branch_flops(lengths, teacher=True)
                flops_lin[active] += self.branch_flops(lengths, teacher=True, linear_only=True)
                break
            if not use_students:
                continue
            logits = self.students[i](hidden, mask)
            flops[active] += self.branch_flops(lengths)
            flops_lin[active] += self.branch_flops(lengths, linear_only=True)
            done = torch.zeros(len(active), dtype=torch.bool, device=device)
            if speed > 0:
                done |= normalized_entropy(logits, top_k) < speed
            if patience is not None:
                pred = logits.argmax(-1)
                streak = torch.where(pred == last_pred, streak + 1, torch.zeros_like(streak))
                last_pred = pred
                done |= streak >= patience
            if done.any():
                rows = active[done]
                out_logits[rows] = logits[done].to(out_logits.dtype)
                exit_layer[rows] = i + 1
                keep = ~done
                if not keep.any():
                    break
                # Compaction: the exited samples leave; the rest run on, trimmed to their longest sequence.
                hidden, mask, active, lengths = hidden[keep], mask[keep], active[keep], lengths[keep]
                last_pred, streak = last_pred[keep], streak[keep]
                longest = int(lengths.max())
                if longest < mask.shape[1] and not mask[:, longest:].any():
                    hidden, mask = hidden[:, :longest], mask[:, :longest]
                layer_mask = self._layer_mask(mask, hidden)
        return EarlyExitOutput(out_logits, exit_layer, flops, flops_lin)

    def runner(self, **kwargs) -> Callable[[dict], EarlyExitOutput]:
        """A callable ``fn(batch_dict)`` running :meth:`forward` with fixed settings, for timing harnesses."""
        _check_speed(kwargs.get("speed", 0.0))

        def run(batch):
            return self(**{k: v for k, v in batch.items() if k != "labels"}, **kwargs)

        return run

    @torch.inference_mode()
    def all_layer_logits(self, input_ids, attention_mask=None, token_type_ids=None, labels=None) -> torch.Tensor:
        """Every branch's logits on a batch (no exits): shape ``(num_hidden_layers, batch_size, num_labels)``."""
        hidden, mask = self._embed(input_ids, attention_mask, token_type_ids)
        out = []
        for i in range(self.num_hidden_layers):
            hidden = self._run_layer(i, hidden, self._layer_mask(mask, hidden))
            branch = self.teacher if i == self.num_hidden_layers - 1 else self.students[i]
            out.append(branch(hidden, mask))
        return torch.stack(out)

    def _batches(self, data, tokenizer, batch_size: int, max_length: int):
        """``(order, batches)``: padded batches of similar length and the input row of each batched sample.

        ``data`` is a list of strings or a `datasets.Dataset` with ``text`` (or already tokenised: ``input_ids``).
        """
        tokenizer = tokenizer or self.tokenizer
        if tokenizer is None:
            raise EarlyExitError("a tokenizer is needed: pass tokenizer=... or build the model with one")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise EarlyExitError(f"batch_size must be a positive integer, got {batch_size!r}")
        if hasattr(data, "column_names"):  # a datasets.Dataset
            if "input_ids" in data.column_names:
                keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in data.column_names]
                enc = {k: data[k] for k in keys}
            else:
                data = list(data["text"])
        if isinstance(data, (list, tuple)):
            if not all(isinstance(t, str) for t in data):
                raise EarlyExitError("texts must be a list of strings")
            enc = dict(tokenizer(list(data), truncation=True, max_length=max_length)) if data else {"input_ids": []}
        elif not hasattr(data, "column_names"):
            raise EarlyExitError(f"data must be a list of strings or a datasets.Dataset, got {type(data).__name__}")
        n = len(enc["input_ids"])
        if n == 0:
            raise EarlyExitError("no texts to predict on")
        # Sorted by length so that a batch pads little (stable sort: a deterministic order).
        order = np.argsort([len(x) for x in enc["input_ids"]], kind="stable")
        batches = []
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            batches.append(dict(tokenizer.pad({k: [v[j] for j in idx] for k, v in enc.items()}, return_tensors="pt")))
        return order, batches

    def predict(self, data, tokenizer=None, *, speed: float = 0.0, patience: int | None = None,
                top_k: int | None = None, batch_size: int = 32, max_length: int = 128) -> Predictions:
        """Adaptive predictions for many texts, in batches of similar length, with compaction.

        Args:
            data: a list of strings, or a `datasets.Dataset` with a ``text`` column (or already tokenised).
            tokenizer: default: the one the model was built or loaded with.
            speed, patience, top_k: see :meth:`forward`.
            batch_size: sequences per batch (``1`` = one by one).

        Returns:
            :class:`Predictions` in the input's row order.

        Raises:
            EarlyExitError: bad ``speed``/``patience``/``top_k``, no tokenizer, no texts.
        """
        _check_speed(speed)
        _check_patience(patience)
        order, batches = self._batches(data, tokenizer, batch_size, max_length)
        parts = []
        self.eval()
        start = time.perf_counter()
        with torch.inference_mode():
            for batch in batches:
                parts.append(self(**batch, speed=speed, patience=patience, top_k=top_k))
        seconds = time.perf_counter() - start
        cat = {f: torch.cat([getattr(p, f) for p in parts]).float().numpy() if f == "logits"
               else torch.cat([getattr(p, f) for p in parts]).numpy() for f in EarlyExitOutput.__dataclass_fields__}
        result = {}
        for f, arr in cat.items():
            out = np.empty_like(arr)
            out[order] = arr
            result[f] = out
        return Predictions(labels=result["logits"].argmax(-1).astype(np.int64), exit_layer=result["exit_layer"],
                           flops=result["flops"], flops_linear=result["flops_linear"], logits=result["logits"],
                           seconds=seconds)

    def predict_all_layers(self, data, tokenizer=None, *, batch_size: int = 64, max_length: int = 128):
        """Every branch's logits and every sample's length, for sweeping exit rules without re-running the model.

        Returns:
            ``(logits, n_tokens)``: float32 array of shape ``(num_hidden_layers, n, num_labels)`` and int array
            ``(n,)``, in the input's row order. :func:`simulate_exits` turns them into the exits :meth:`predict`
            makes (up to float rounding between batch shapes).
        """
        order, batches = self._batches(data, tokenizer, batch_size, max_length)
        self.eval()
        logits = torch.cat([self.all_layer_logits(**b) for b in batches], dim=1).float().numpy()
        n_tok = torch.cat([b["attention_mask"].sum(-1) for b in batches]).numpy()
        out_l, out_n = np.empty_like(logits), np.empty_like(n_tok)
        out_l[:, order], out_n[order] = logits, n_tok
        return out_l, out_n

    # ----------------------------------------------------------------------------------------- training

    def _frozen_hidden(self, batch):
        """Every layer's output and the teacher's logits, without gradients (the backbone is frozen)."""
        with torch.no_grad():
            hidden, mask = self._embed(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))
            states = []
            for i in range(self.num_hidden_layers):
                hidden = self._run_layer(i, hidden, self._layer_mask(mask, hidden))
                states.append(hidden)
        return states, mask

    def _train_branches(self, params, loss_fn, data, tokenizer, *, epochs, batch_size, learning_rate,
                        max_length, seed, progress, desc, frozen=()):
        from tqdm.auto import tqdm

        from .data import make_dataloader, tokenize

        tokenizer = tokenizer or self.tokenizer
        if tokenizer is None:
            raise EarlyExitError("a tokenizer is needed: pass tokenizer=... or build the model with one")
        if not epochs > 0:
            raise EarlyExitError(f"epochs must be positive, got {epochs}")
        if len(data) == 0:
            raise EarlyExitError("no training texts")
        torch.manual_seed(seed)
        tok = data if "input_ids" in data.column_names else tokenize(data, tokenizer, max_length)
        loader = make_dataloader(tok, tokenizer, batch_size, shuffle=True, seed=seed)
        total = max(1, math.ceil(epochs * len(loader)))
        opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.01)
        warm = max(1, int(0.06 * total))

        def schedule(s):  # linear warm-up, then linear decay to 0 (transformers' helper takes seconds to import)
            return min((s + 1) / warm, max(0.0, (total - s) / (total - warm + 1)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        backbone = list(self.model.parameters())
        was_trainable = [p.requires_grad for p in backbone]
        for p in backbone:  # stage 2 (and the light stage 1) never touch the backbone
            p.requires_grad_(False)
        losses, window, step, epoch = [], [], 0, 0
        start = time.perf_counter()
        bar = tqdm(total=total, desc=desc, disable=not progress)
        try:
            self.train()
            self.model.eval()  # backbone dropout off: the branches learn from the features inference will see
            for m in frozen:
                m.eval()
            while step < total:
                loader.batch_sampler.set_epoch(epoch)
                for batch in loader:
                    states, mask = self._frozen_hidden(batch)
                    loss = loss_fn(states, mask, batch)
                    opt.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    opt.step()
                    sched.step()
                    step += 1
                    window.append(loss.item())
                    if len(window) == 50 or step == total:
                        losses.append(sum(window) / len(window))
                        window = []
                        bar.set_postfix(loss=f"{losses[-1]:.4f}")
                    bar.update(1)
                    if step >= total:
                        break
                epoch += 1
        finally:
            bar.close()
            for p, flag in zip(backbone, was_trainable):
                p.requires_grad_(flag)
            self.eval()
        return {"steps": step, "train_seconds": time.perf_counter() - start, "n_texts": len(tok),
                "losses": losses, "final_loss": losses[-1] if losses else float("nan")}

    @staticmethod
    def _as_dataset(data, labels=None):
        import datasets

        if isinstance(data, datasets.Dataset):
            return data
        texts = list(data)
        if not all(isinstance(t, str) for t in texts):
            raise EarlyExitError("texts must be strings or a datasets.Dataset with a 'text' column")
        lab = [-1] * len(texts) if labels is None else [int(x) for x in labels]
        if len(lab) != len(texts):
            raise EarlyExitError(f"{len(texts)} texts but {len(lab)} labels")
        return datasets.Dataset.from_dict({"text": texts, "label": lab})

    def fit_students(self, data, tokenizer=None, *, epochs: float = 1.0, batch_size: int = 32,
                     learning_rate: float = 1e-3, temperature: float = 1.0, max_length: int = 128, seed: int = 0,
                     progress: bool = True) -> dict:
        """Stage 2, self-distillation: train the students on ``sum_i KL(p_teacher || p_student_i)``.

        Backbone and teacher are frozen (gradients off, dropout off). No labels are read: ``data`` may be any
        unlabeled text of the task's domain. AdamW with 6 % linear warm-up then linear decay, gradient clipping at
        1.0. The learning rate is higher than for fine-tuning because only the small, freshly initialised branches
        learn. With ``teacher="fastbert"``, train the teacher first (:meth:`fit_teacher`).

        Args:
            data: a list of strings or a `datasets.Dataset` with a ``text`` column (labels, if any, are ignored).
            temperature: softens both distributions; the loss is scaled by ``temperature**2`` (Hinton et al. 2015).

        Returns:
            dict with ``steps``, ``train_seconds``, ``n_texts``, ``losses`` (mean of every 50 steps), ``final_loss``.

        Raises:
            EarlyExitError: no texts, no tokenizer, ``epochs <= 0``, ``temperature <= 0``, or a one-layer model.
        """
        if not temperature > 0:
            raise EarlyExitError(f"temperature must be positive, got {temperature}")
        if self.num_hidden_layers < 2:
            raise EarlyExitError("a one-layer model has no students to train")
        params = [p for s in self.students for p in s.parameters()]
        t = float(temperature)

        def loss_fn(states, mask, batch):
            with torch.no_grad():
                log_pt = F.log_softmax(self.teacher(states[-1], mask).float() / t, -1)
            total = 0.0
            for i, student in enumerate(self.students):
                log_ps = F.log_softmax(student(states[i], mask).float() / t, -1)
                # kl_div(input=log q, target=log p) = KL(p || q): the teacher is p, the student q.
                total = total + F.kl_div(log_ps, log_pt, log_target=True, reduction="batchmean") * t * t
            return total

        return self._train_branches(params, loss_fn, self._as_dataset(data), tokenizer, epochs=epochs,
                                    batch_size=batch_size, learning_rate=learning_rate, max_length=max_length,
                                    seed=seed, progress=progress, desc="stage 2: students",
                                    frozen=[self.teacher_classifier] if self.teacher_classifier is not None else [])

    def fit_teacher(self, data, labels=None, tokenizer=None, *, epochs: float = 1.0, batch_size: int = 32,
                    learning_rate: float = 1e-3, max_length: int = 128, seed: int = 0, progress: bool = True) -> dict:
        """Light stage 1 for ``teacher="fastbert"``: train the paper's teacher classifier with cross-entropy on the
        frozen (already fine-tuned) backbone.

        Args:
            data: a `datasets.Dataset` with ``text`` and ``label``, or a list of strings with ``labels``.

        Raises:
            EarlyExitError: the teacher is the model's own head, or the data has unlabeled rows.
        """
        if self.teacher_classifier is None:
            raise EarlyExitError("fit_teacher needs teacher='fastbert'; the default teacher is the fine-tuned head")
        ds = self._as_dataset(data, labels)
        if min(ds["label"]) < 0:
            raise EarlyExitError("fit_teacher needs labels for every text (found label -1)")

        def loss_fn(states, mask, batch):
            return F.cross_entropy(self.teacher_classifier(states[-1], mask), batch["labels"])

        return self._train_branches(list(self.teacher_classifier.parameters()), loss_fn, ds, tokenizer,
                                    epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                                    max_length=max_length, seed=seed, progress=progress, desc="stage 1: teacher")

    # ------------------------------------------------------------------------------------- save / load

    def branch_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained branches' weights (students, and the teacher classifier when ``teacher="fastbert"``)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("model.")}

    def save_pretrained(self, path: str | os.PathLike, *, save_backbone: bool = True) -> Path:
        """Save in ``save_pretrained`` layout, safetensors only.

        Writes ``early_exit_config.json`` and ``early_exit.safetensors`` (the branches) and, if ``save_backbone``,
        the wrapped model (``config.json``, ``model.safetensors``) and the tokenizer into the same folder. Without
        the backbone the folder is a few hundred kB and :meth:`from_pretrained` needs ``model=``.
        """
        from safetensors.torch import save_file

        path = Path(path).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        if save_backbone:
            self.model.save_pretrained(path, safe_serialization=True)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(path)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.branch_state_dict().items()}
        save_file(tensors, str(path / BRANCH_FILE), metadata={"format": "pt", "ufkit": "early_exit"})
        cfg = {"format_version": FORMAT_VERSION, "num_labels": self.num_labels, "teacher": self.teacher_kind,
               "num_hidden_layers": self.num_hidden_layers, "hidden_size": self.hidden_size,
               "backbone_saved": save_backbone, **self.branch_kwargs}
        (path / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, model=None, tokenizer=None) -> "EarlyExitModel":
        """Load what :meth:`save_pretrained` wrote.

        Args:
            path: the folder.
            model: the backbone to wrap when the folder holds only the branches (``save_backbone=False``).
            tokenizer: default: the folder's tokenizer, if it has one.

        Raises:
            EarlyExitError: no ``early_exit_config.json`` or ``early_exit.safetensors``, a backbone that does not
                match the saved branches (layers or hidden size), or no backbone at all.
        """
        from safetensors.torch import load_file
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(path).expanduser()
        cfg_path, w_path = path / CONFIG_FILE, path / BRANCH_FILE
        if not cfg_path.is_file() or not w_path.is_file():
            raise EarlyExitError(f"{str(path)!r} has no {CONFIG_FILE} and {BRANCH_FILE}: not an early-exit model "
                                 f"saved with EarlyExitModel.save_pretrained")
        cfg = json.loads(cfg_path.read_text())
        if model is None:
            if not (path / "config.json").is_file():
                raise EarlyExitError(f"{str(path)!r} holds only the branches; pass the backbone as model=...")
            from .models import _quiet_transformers

            with _quiet_transformers():
                model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
        if tokenizer is None and (path / "tokenizer_config.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        ee = cls(model, cfg["num_labels"], teacher=cfg["teacher"], cls_hidden_size=cfg["cls_hidden_size"],
                 cls_num_heads=cfg["cls_num_heads"], dropout=cfg.get("dropout", 0.1), tokenizer=tokenizer)
        if (ee.num_hidden_layers, ee.hidden_size) != (cfg["num_hidden_layers"], cfg["hidden_size"]):
            raise EarlyExitError(f"the backbone has {ee.num_hidden_layers} layers of width {ee.hidden_size}, the saved "
                                 f"branches expect {cfg['num_hidden_layers']} of width {cfg['hidden_size']}")
        missing, unexpected = ee.load_state_dict(load_file(str(w_path)), strict=False)
        missing = [k for k in missing if not k.startswith("model.")]
        if missing or unexpected:
            raise EarlyExitError(f"saved branches do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
        return ee.eval()


def load_or_fit(path: str | os.PathLike, model, tokenizer, data, *, retrain: bool = False, **fit_kwargs):
    """Load students cached in ``path`` if there, else wrap ``model``, run :meth:`EarlyExitModel.fit_students` on
    ``data`` and save the branches there (``save_backbone=False``: the backbone is the cached teacher).

    Args:
        path: cache folder (e.g. ``ufkit.config.cache_dir() / "fastbert-students"``).
        model, tokenizer: the fine-tuned teacher (:func:`ufkit.train.load_teacher`).
        data: texts for stage 2 (labels unused).
        retrain: ignore a cached copy.
        fit_kwargs: passed to :meth:`EarlyExitModel.fit_students`.

    Returns:
        ``(early_exit_model, info)``; ``info`` is the content of ``train_info.json`` (stage 2's settings, steps,
        seconds, losses, machine).
    """
    from .bench import machine_info

    path = Path(path).expanduser()
    info_path = path / "train_info.json"
    if not retrain and info_path.is_file() and (path / CONFIG_FILE).is_file():
        ee = EarlyExitModel.from_pretrained(path, model=model, tokenizer=tokenizer)
        return ee, json.loads(info_path.read_text())
    ee = EarlyExitModel(model, tokenizer=tokenizer)
    history = ee.fit_students(data, tokenizer, **fit_kwargs)
    ee.save_pretrained(path, save_backbone=False)
    info = {"stage": 2, "fit_kwargs": {k: v for k, v in fit_kwargs.items() if k != "progress"}, **history,
            "machine": machine_info()}
    info_path.write_text(json.dumps(info, indent=2))
    return ee, info


def _mask_function():
    """How a layer wants its attention mask: transformers' own builder when present (so speed 0 is bit-identical
    to the wrapped model), else BERT's additive ``(batch_size, 1, 1, sequence_length)`` mask."""
    try:
        from transformers.masking_utils import create_bidirectional_mask
    except ImportError:  # transformers < 4.56
        create_bidirectional_mask = None

    def build(config, hidden_states, attention_mask):
        if create_bidirectional_mask is not None:
            return create_bidirectional_mask(config=config, inputs_embeds=hidden_states, attention_mask=attention_mask)
        m = attention_mask[:, None, None, :].to(hidden_states.dtype)
        return (1.0 - m) * torch.finfo(hidden_states.dtype).min

    return build


# -------------------------------------------------------------------------------------- exits from logits


def simulate_exits(all_logits: np.ndarray, *, speed: float = 0.0, patience: int | None = None,
                   top_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The exit rule of :meth:`EarlyExitModel.forward` applied to precomputed logits of every branch.

    Args:
        all_logits: float array of shape ``(num_hidden_layers, n, num_labels)`` (:meth:`predict_all_layers`).
        speed, patience, top_k: as in :meth:`EarlyExitModel.forward`.

    Returns:
        ``(labels, exit_layer)``: int arrays of shape ``(n,)``; ``exit_layer`` is 1-based.

    Raises:
        EarlyExitError: bad ``speed``, ``patience`` or ``top_k``.
    """
    speed = _check_speed(speed)
    n_layers = all_logits.shape[0]
    patience = _check_patience(patience)
    logits = torch.as_tensor(all_logits)
    n = logits.shape[1]
    exit_layer = np.full(n, n_layers, dtype=np.int64)
    undecided = np.ones(n, dtype=bool)
    streak = np.zeros(n, dtype=np.int64)
    last = np.full(n, -1, dtype=np.int64)
    if speed > 0 or patience is not None:
        for i in range(n_layers - 1):
            done = np.zeros(n, dtype=bool)
            if speed > 0:
                done |= (normalized_entropy(logits[i], top_k) < speed).numpy()
            if patience is not None:
                pred = logits[i].argmax(-1).numpy()
                streak = np.where(pred == last, streak + 1, 0)
                last = pred
                done |= streak >= patience
            newly = done & undecided
            exit_layer[newly] = i + 1
            undecided &= ~done
    labels = all_logits[exit_layer - 1, np.arange(n)].argmax(-1)
    return labels, exit_layer


def exit_curves(model: "EarlyExitModel", all_logits: np.ndarray, n_tokens, labels, *,
                speeds: Sequence[float] = tuple(np.round(np.linspace(0, 1, 51), 2)),
                patiences: Sequence[int] = (1, 2, 3, 4), top_k: int | None = None):
    """Accuracy and FLOPs of three exit rules from one pass of every branch's logits.

    Rules: ``entropy`` (FastBERT, one row per speed), ``patience`` (PABEE, one row per patience) and ``truncate``
    (keep the first ``k`` layers and always answer with branch ``k``: the same classifiers without adaptivity).

    Args:
        all_logits, n_tokens: from :meth:`EarlyExitModel.predict_all_layers`.
        labels: int array ``(n,)``.

    Returns:
        `pandas.DataFrame` with ``rule``, ``setting`` (speed, patience or k), ``accuracy`` (%), ``flops`` (mean per
        sample), ``flops_speedup`` (against the full model, no students) and ``mean_exit_layer``.
    """
    import pandas as pd

    y = np.asarray(labels)
    n_layers = model.num_hidden_layers
    full = model.analytic_flops(n_tokens, np.full(len(y), n_layers), students=False).mean()
    rows = []

    def add(rule, setting, pred, exits, flops):
        rows.append({"rule": rule, "setting": setting, "accuracy": 100.0 * np.mean(pred == y), "flops": flops,
                     "flops_speedup": full / flops, "mean_exit_layer": float(np.mean(exits))})

    for s in speeds:
        pred, ex = simulate_exits(all_logits, speed=s, top_k=top_k)
        add("entropy", float(s), pred, ex, model.analytic_flops(n_tokens, ex, students=s > 0).mean())
    for t in patiences:
        pred, ex = simulate_exits(all_logits, patience=t)
        add("patience", int(t), pred, ex, model.analytic_flops(n_tokens, ex).mean())
    n = np.asarray(n_tokens)
    for k in range(1, n_layers + 1):
        flops = k * model.layer_flops(n) + model.branch_flops(n, teacher=k == n_layers)
        add("truncate", k, all_logits[k - 1].argmax(-1), np.full(len(y), k), flops.mean())
    return pd.DataFrame(rows)


def calibrate_speed(model: EarlyExitModel, data, labels=None, *, budget: float = 1.0,
                    speeds: Sequence[float] | None = None, patience: int | None = None, top_k: int | None = None,
                    tokenizer=None, batch_size: int = 64):
    """The largest speed whose accuracy drop on held-out data is at most ``budget`` points.

    One pass computes every branch's logits (:meth:`EarlyExitModel.predict_all_layers`); each speed's exits are
    then simulated (:func:`simulate_exits`), so a fine grid costs no more than a coarse one. The reference is the
    full model's accuracy (speed 0) on the same data. Accuracy need not fall monotonically with speed; the speed
    returned is the largest on the grid that meets the budget, and the table shows the whole curve.

    Args:
        data: held-out texts (not the ones reported on), as a list or a `datasets.Dataset` with ``text``/``label``.
        labels: their labels when ``data`` is a list.
        budget: allowed accuracy drop in percentage points (≥ 0).
        speeds: grid to search (default ``0, 0.01, ..., 1``).

    Returns:
        ``(speed, table)``: the chosen speed and a `pandas.DataFrame` with ``speed``, ``accuracy``, ``drop``,
        ``mean_exit_layer``, ``flops`` (mean per sample) and ``flops_speedup``.

    Raises:
        EarlyExitError: a negative budget, missing labels, or a speed outside ``[0, 1]`` in the grid.
    """
    import pandas as pd

    if not budget >= 0:
        raise EarlyExitError(f"budget must be a non-negative number of accuracy points, got {budget}")
    grid = np.round(np.linspace(0, 1, 101), 4) if speeds is None else np.asarray(list(speeds), dtype=float)
    for s in grid:
        _check_speed(s)
    ds = EarlyExitModel._as_dataset(data, labels)
    y = np.asarray(ds["label"])
    if len(y) == 0 or (y < 0).any():
        raise EarlyExitError("calibrate_speed needs labeled held-out data (found no rows or label -1)")
    all_logits, n_tok = model.predict_all_layers(ds, tokenizer, batch_size=batch_size)
    full = all_logits[-1].argmax(-1)
    ref_acc = 100.0 * np.mean(full == y)
    ref_flops = model.analytic_flops(n_tok, np.full(len(y), model.num_hidden_layers), students=False).mean()
    rows = []
    for s in sorted(set(grid.tolist()) | {0.0}):
        pred, ex = simulate_exits(all_logits, speed=s, patience=patience, top_k=top_k)
        students = s > 0 or patience is not None
        fl = model.analytic_flops(n_tok, ex, students=students).mean()
        acc = 100.0 * np.mean(pred == y)
        rows.append({"speed": s, "accuracy": acc, "drop": ref_acc - acc, "mean_exit_layer": ex.mean(),
                     "flops": fl, "flops_speedup": ref_flops / fl})
    table = pd.DataFrame(rows)
    ok = table[table["drop"] <= budget + 1e-9]
    return float(ok["speed"].max()), table


# -------------------------------------------------------------------------------------------- measuring


def count_flops(fn: Callable, *args, **kwargs) -> int:
    """FLOPs of ``fn(*args, **kwargs)`` as :class:`torch.utils.flop_counter.FlopCounterMode` counts them.

    torch counts no FLOPs for the CPU's fused attention kernel (``_scaled_dot_product_flash_attention_for_cpu``);
    it is added here as the two matrix products it performs, ``2 B H L S (E + Ev)``, the same formula torch uses
    for the GPU kernels.
    """
    from torch.utils.flop_counter import FlopCounterMode

    def cpu_sdpa(query, key, value, *a, out_shape=None, **kw):
        b, h, lq, e = query
        return 2 * b * h * lq * key[-2] * (e + value[-1])

    mapping = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = cpu_sdpa
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def measure_latency(runners: dict[str, Callable[[dict], object]], tokenizer, texts: Sequence[str], *,
                    batch_size: int = 1, n_warmup: int = 5, rounds: int = 1, threads: int | None = None,
                    max_length: int = 128, seed: int = 0, db_path=None, table: str = "early_exit_latency",
                    extra: dict | None = None):
    """Wall-clock latency of several callables over *every* text, in consecutive batches, interleaved.

    An adaptive model's cost depends on its input, so :func:`ufkit.bench.benchmark`'s pool of eight batches
    would time eight sentences' exit layers. Here every text is run once per round (seeded shuffle, then
    consecutive batches of ``batch_size``, each padded to its own longest sentence), and each batch goes through
    every runner before the next batch, so that load from other processes falls on all runners alike.

    Args:
        runners: name -> a ``torch.nn.Module`` (called as ``model(**batch)``) or a callable taking the batch dict
            (``input_ids``, ``attention_mask``, ``token_type_ids``), e.g. :meth:`EarlyExitModel.runner`.
        texts: real sentences (e.g. the dev split).
        rounds: passes over the texts per runner; the reported mean is over all timed calls.
        threads: torch intra-op threads (default :func:`ufkit.config.bench_threads`); restored after.
        db_path: SQLite file to append the rows to (None: do not store).

    Returns:
        `pandas.DataFrame`, one row per runner: ``name``, ``batch_size``, ``n_texts``, ``n_calls``,
        ``latency_ms_mean`` (per call), ``latency_ms_std``, ``latency_ms_p50``, ``latency_ms_p95``,
        ``ms_per_seq``, ``throughput_seq_per_s`` and the :func:`ufkit.bench.machine_info` columns.

    Raises:
        EarlyExitError: no texts, no runners, or a non-positive ``batch_size``/``rounds``.
    """
    import pandas as pd

    from . import bench, config

    if not texts:
        raise EarlyExitError("texts is empty")
    if not runners:
        raise EarlyExitError("runners is empty")
    if batch_size < 1 or rounds < 1:
        raise EarlyExitError(f"batch_size and rounds must be positive, got {batch_size} and {rounds}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    batches = [dict(tokenizer([texts[j] for j in order[i:i + batch_size]], padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt"))
               for i in range(0, len(texts), batch_size)]
    threads = config.bench_threads() if threads is None else threads
    calls = {name: bench._as_callable(fn) for name, fn in runners.items()}  # a module takes the batch as keywords
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    times = {name: [] for name in runners}
    try:
        with torch.inference_mode():
            for fn in calls.values():
                for b in batches[:n_warmup]:
                    fn(b)
            names = list(runners)
            for _ in range(rounds):
                for j, b in enumerate(batches):
                    # Every runner on the same batch back to back, in a rotating order: a burst of load from
                    # another process falls on all runners alike instead of on whichever ran at that moment.
                    for name in names[j % len(names):] + names[:j % len(names)]:
                        t0 = time.perf_counter()
                        calls[name](b)
                        times[name].append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(old)
    rows = []
    for name, t in times.items():
        t = np.asarray(t)
        rows.append({"name": name, "batch_size": batch_size, "n_texts": len(texts), "n_calls": len(t),
                     "latency_ms_mean": t.mean(), "latency_ms_std": t.std(ddof=1) if len(t) > 1 else 0.0,
                     "latency_ms_p50": np.percentile(t, 50), "latency_ms_p95": np.percentile(t, 95),
                     "ms_per_seq": t.sum() / (rounds * len(texts)),
                     "throughput_seq_per_s": rounds * len(texts) * 1e3 / t.sum(),
                     **(extra or {}), **bench.machine_info(threads)})
    df = pd.DataFrame(rows)
    if db_path is not None:
        bench.append_results(df, db_path, table)
    return df
