"""FastBERT's branch classifier, its uncertainty measure, and what early-exit inference returns."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import UfkitError




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


