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
  (:func:`ufkit.measure.count_flops`), together with the paper's count, which covers only the linear layers;
* :func:`calibrate_speed`: the largest speed whose accuracy drop on held-out data stays within a budget.

The two training stages
-----------------------
*Stage 1* trains backbone and teacher with cross-entropy. The fine-tuned baseline (:func:`ufkit.zoo.load_teacher`)
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
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..distill import kd_loss
from .branches import (EarlyExitError, EarlyExitOutput, FastBertClassifier, Predictions, _check_patience, _check_speed,
                       _HeadTeacher, normalized_entropy)

BRANCH_FILE = "early_exit.safetensors"
CONFIG_FILE = "early_exit_config.json"
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------- locating layers


def _feedforward_flops(layers, dense: int) -> int:
    """Mean over layers of the feedforward's linear FLOPs per token: ``dense`` for a dense one, else the FFF
    module's own count (``flops_per_token``; UltraFastBERT's FFF reports ``{"fff": ...}``)."""
    per = []
    for layer in layers:
        ff = getattr(layer, "intermediate", None)
        count = getattr(ff, "flops_per_token", None)
        if count is None:
            dense_in = getattr(ff, "dense", None)
            per.append(4 * dense_in.in_features * dense_in.out_features if dense_in is not None else dense)
            continue
        c = count()
        per.append(c["fff"] if isinstance(c, dict) else c)
    return int(round(sum(per) / len(per))) if per else dense


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
        # linear FLOPs per token of one layer's feedforward: 4 h f for a dense one; a fast feedforward layer
        # (ufkit.fff.bert) counts what a token visits (its routers and one leaf, or its tree path)
        self.feedforward_flops = _feedforward_flops(layers, 4 * self.hidden_size * self.intermediate_size)
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

        Linear layers: ``2 n (4 h^2 + 2 h f)`` (Q, K, V, output projection, the two feedforward matrices; a fast
        feedforward layer counts the neurons a token visits, averaged over layers); attention
        matrix products: ``4 n^2 h`` (scores and weighted values). Softmax, GELU, LayerNorm and biases are not
        counted, as :class:`~torch.utils.flop_counter.FlopCounterMode` does not count them.
        """
        h = self.hidden_size
        linear = 2 * n_tokens * 4 * h * h + n_tokens * self.feedforward_flops
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
        """Train ``params`` (branches) on ``loss_fn(states, mask, batch)`` with the backbone frozen, through the one
        training loop (:func:`ufkit.training.train_loop`)."""
        from ..data import make_dataloader, tokenize
        from ..training import TrainConfig, train_loop

        tokenizer = tokenizer or self.tokenizer
        if tokenizer is None:
            raise EarlyExitError("a tokenizer is needed: pass tokenizer=... or build the model with one")
        if not epochs > 0:
            raise EarlyExitError(f"epochs must be positive, got {epochs}")
        if len(data) == 0:
            raise EarlyExitError("no training texts")
        tok = data if "input_ids" in data.column_names else tokenize(data, tokenizer, max_length)
        loader = make_dataloader(tok, tokenizer, batch_size, shuffle=True, seed=seed)
        cfg = TrainConfig(learning_rate=learning_rate, epochs=epochs, batch_size=batch_size, warmup_ratio=0.06,
                          weight_decay=0.01, max_grad_norm=1.0, max_length=max_length, seed=seed)
        backbone = list(self.model.parameters())
        was_trainable = [p.requires_grad for p in backbone]
        for p in backbone:  # stage 2 (and the light stage 1) never touch the backbone
            p.requires_grad_(False)

        def modes():  # backbone dropout off: the branches learn from the features inference will see
            self.model.eval()
            for m in frozen:
                m.eval()

        try:
            history = train_loop(self, loader, lambda batch: loss_fn(*self._frozen_hidden(batch), batch), cfg,
                                 parameters=[(str(i), p) for i, p in enumerate(params)], desc=desc,
                                 progress=progress, on_start=modes)
        finally:
            for p, flag in zip(backbone, was_trainable):
                p.requires_grad_(flag)
            self.eval()
        return {**history, "n_texts": len(tok)}

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
                teacher_logits = self.teacher(states[-1], mask)
            return sum(kd_loss(student(states[i], mask), teacher_logits, t) for i, student in enumerate(self.students))

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
            from ..models import _quiet_transformers

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
    """Load students cached in ``path`` if they were trained for this teacher, on these texts, with these settings;
    else wrap ``model``, run :meth:`EarlyExitModel.fit_students` on ``data`` and save the branches there
    (``save_backbone=False``: the backbone is the cached teacher).

    Args:
        path: cache folder (e.g. ``ufkit.config.cache_dir() / "fastbert-students"``).
        model, tokenizer: the fine-tuned teacher (:func:`ufkit.zoo.load_teacher`); its weights are part of the
            cache's recipe (:func:`ufkit.cache.fingerprint_model`), so students of another teacher are retrained.
        data: texts for stage 2 (labels unused): a list of strings or a `datasets.Dataset` with ``text``.
        retrain: ignore a cached copy.
        fit_kwargs: passed to :meth:`EarlyExitModel.fit_students`.

    Returns:
        ``(early_exit_model, info)``; ``info`` is the cache's record (recipe, steps, seconds, losses, machine).
    """
    from ..cache import fingerprint_model, fingerprint_texts, load_or_make

    ds = EarlyExitModel._as_dataset(data)
    settings = {k: v for k, v in fit_kwargs.items() if k != "progress"}
    recipe = {"stage": 2, "format_version": FORMAT_VERSION, "fit_kwargs": settings,
              "teacher_id": fingerprint_model(model), "data_id": fingerprint_texts(ds["text"])}

    def make():
        ee = EarlyExitModel(model, tokenizer=tokenizer)
        return ee, ee.fit_students(ds, tokenizer, **fit_kwargs)

    return load_or_make(path, recipe, make, save=lambda ee, folder: ee.save_pretrained(folder, save_backbone=False),
                        load=lambda folder: EarlyExitModel.from_pretrained(folder, model=model, tokenizer=tokenizer),
                        retrain=retrain)


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


