"""Distillation losses the chapters share (Hinton et al. 2015; TinyBERT, Jiao et al. 2020).

* :func:`kd_loss`: ``T^2 KL(p_teacher^T || p_student^T)``, the soft-label loss of knowledge distillation;
* :func:`hidden_mse`: the mean squared error between hidden states over real tokens, optionally through a
  projection where the widths differ (TinyBERT's layer-to-layer loss).

The direction of the KL divergence matters: ``KL(teacher || student)`` (forward, mean-seeking) is the
cross-entropy against the teacher's soft labels minus a constant; the reverse lets a student put all its mass on
one label, which a confidence-based exit (FastBERT) would then trust.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Distillation loss ``T^2 KL(softmax(t/T) || softmax(s/T))``, mean over the batch (Hinton et al. 2015).

    Equal to the soft cross-entropy against the teacher's softened probabilities minus the teacher's entropy, so
    it has the same gradients and is 0 when the student reproduces the teacher. The ``T^2`` keeps the gradients'
    scale independent of the temperature. Computed in float32 whatever the autocast dtype.

    Args:
        student_logits, teacher_logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`).
        temperature: ``T > 0``.

    Returns:
        a scalar tensor.

    Raises:
        ValueError: a non-positive temperature or logits of different shapes.
    """
    t = float(temperature)
    if not t > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape")
    log_ps = F.log_softmax(student_logits.float() / t, -1)
    log_pt = F.log_softmax(teacher_logits.float() / t, -1)
    # kl_div(input=log q, target=log p) = KL(p || q): the teacher is p, the student q
    return F.kl_div(log_ps, log_pt, log_target=True, reduction="batchmean") * t * t


def hidden_mse(student_states, teacher_states, attention_mask: torch.Tensor, *, projection=None) -> torch.Tensor:
    """Mean squared error between hidden states, over real tokens and all dimensions (TinyBERT's hidden loss).

    Args:
        student_states, teacher_states: equally long sequences of tensors of shape
            `(batch_size, sequence_length, hidden_size)`; the student's may be narrower than the teacher's.
        attention_mask (`torch.LongTensor` of shape `(batch_size, sequence_length)`): 1 for tokens, 0 for padding.
        projection: module or callable mapping the student's width to the teacher's (TinyBERT's learned
            ``W_h``); None compares the student with the teacher's first ``hidden_size`` dimensions, which is
            exact for a slice of the teacher (chapter 4's super-model).

    Returns:
        a scalar tensor: the sum of squared errors divided by (layers x real tokens x compared width).

    Raises:
        ValueError: different numbers of layers.
    """
    if len(student_states) != len(teacher_states):
        raise ValueError(f"{len(student_states)} student states but {len(teacher_states)} teacher states")
    keep = attention_mask.unsqueeze(-1).float()                                      # (B, T, 1) real tokens
    total, width = 0.0, None
    for s, t in zip(student_states, teacher_states):
        s = projection(s) if projection is not None else s
        t = t if projection is not None else t[..., :s.shape[-1]]
        width = s.shape[-1]
        total = total + (((s.float() - t.float()) ** 2) * keep).sum()
    return total / (len(student_states) * keep.sum() * width)
