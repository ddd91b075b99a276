"""BERT-of-Theseus: compress a fine-tuned BERT by replacing blocks of its layers with single layers, progressively.

Xu, Zhou, Ge, Wei & Zhou, "BERT-of-Theseus: Compressing BERT by Progressive Module Replacing", EMNLP 2020. The
teacher's (the *predecessor*'s) ``L`` layers are split into ``n`` contiguous blocks; each block gets one
*successor* layer, initialised from one of the block's layers. During training every block is, independently
and at every forward pass, replaced by its successor with probability ``p``; the mixed model is trained with
plain cross-entropy on the task's labels, so the successors learn to work in the predecessor's context, with no
distillation loss. ``p`` is a constant or the paper's linear curriculum ``p(t) = min(1, k t + b)``; once ``p``
reaches 1 only successors run, which is the paper's second phase (fine-tuning the successor alone). At inference
(eval mode) the successor model alone runs: the teacher's embeddings, the ``n`` successor layers, its pooler and
classifier.

The predecessor is frozen (no gradients, always in eval mode, so no dropout); the embeddings are shared with it
and frozen too; the successors, the pooler and the classifier train.

* :func:`partition_layers`: the contiguous blocks, as even as possible (6 -> 4: sizes 2, 2, 1, 1);
* :func:`replace_rate_at`: ``p`` at a training step, constant or linear; :func:`linear_schedule`: a ``(k, b)``
  that reaches ``p = 1`` at a given fraction of the steps;
* :class:`TheseusModel`: predecessor and successors, mixed in training, successors only in eval mode;
  :meth:`TheseusModel.successor_model` is the compact model as a plain ``BertForSequenceClassification``;
* :func:`theseus_compress`: train through the one training loop (:func:`ufkit.training.train_loop`);
* :func:`load_or_theseus`: the same, cached in a folder ("load if present, else train").
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..surgery import check_bert_classifier
from ..training import TrainConfig
from .common import CompressionError

#: the paper's constant replacement rate
DEFAULT_REPLACE_RATE = 0.5


def partition_layers(num_hidden_layers: int, num_blocks: int) -> list[list[int]]:
    """Split layers ``0 .. num_hidden_layers - 1`` into ``num_blocks`` contiguous blocks, as evenly as possible,
    the larger blocks first: 6 into 3 -> ``[[0, 1], [2, 3], [4, 5]]``; 6 into 4 -> ``[[0, 1], [2, 3], [4], [5]]``.

    Raises:
        CompressionError: ``num_blocks`` not in ``[1, num_hidden_layers]`` (a student deeper than the teacher).
    """
    if not isinstance(num_hidden_layers, int) or num_hidden_layers < 1:
        raise CompressionError(f"num_hidden_layers must be a positive integer, got {num_hidden_layers!r}")
    if not isinstance(num_blocks, int) or isinstance(num_blocks, bool) or not 1 <= num_blocks <= num_hidden_layers:
        raise CompressionError(f"num_successors must be an integer in [1, {num_hidden_layers}] (the teacher's "
                               f"layers; more would make a student deeper than the teacher), got {num_blocks!r}")
    size, extra = divmod(num_hidden_layers, num_blocks)
    blocks, start = [], 0
    for b in range(num_blocks):
        stop = start + size + (1 if b < extra else 0)
        blocks.append(list(range(start, stop)))
        start = stop
    return blocks


def _check_rate(replace_rate, schedule) -> tuple[float | None, tuple[float, float] | None]:
    """Validated ``(replace_rate, schedule)``; the paper's constant 0.5 when both are None."""
    if replace_rate is not None and schedule is not None:
        raise CompressionError("give replace_rate (a constant) or schedule=(k, b) (linear), not both")
    if schedule is not None:
        try:
            k, b = (float(x) for x in schedule)
        except (TypeError, ValueError):
            raise CompressionError(f"schedule must be a pair (k, b) of numbers, got {schedule!r}") from None
        if not k >= 0:
            raise CompressionError(f"schedule's slope k must be non-negative, got {k}")
        if not 0 <= b <= 1:
            raise CompressionError(f"schedule's base rate b must be in [0, 1], got {b}")
        return None, (k, b)
    p = DEFAULT_REPLACE_RATE if replace_rate is None else replace_rate
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise CompressionError(f"replace_rate must be a probability in [0, 1], got {replace_rate!r}")
    return float(p), None


def replace_rate_at(step: int, *, replace_rate: float | None = None,
                    schedule: tuple[float, float] | None = None) -> float:
    """The replacement probability at training step ``step`` (0-based): the constant ``replace_rate``, or the
    paper's linear curriculum ``min(1, k * step + b)`` for ``schedule=(k, b)``; 0.5 when neither is given.

    Raises:
        CompressionError: both given, a rate outside ``[0, 1]``, ``k < 0`` or ``b`` outside ``[0, 1]``.
    """
    p, sched = _check_rate(replace_rate, schedule)
    if sched is None:
        return p
    k, b = sched
    return min(1.0, k * step + b)


def linear_schedule(total_steps: int, *, base_rate: float = 0.3, full_at: float = 0.5) -> tuple[float, float]:
    """A linear curriculum ``(k, b)`` that starts at ``b = base_rate`` (the paper's 0.3) and reaches ``p = 1``
    after ``full_at`` of ``total_steps``; the remaining steps fine-tune the successors alone.

    Raises:
        CompressionError: ``total_steps < 1``, ``base_rate`` outside ``[0, 1]`` or ``full_at`` outside ``(0, 1]``.
    """
    if not isinstance(total_steps, int) or total_steps < 1:
        raise CompressionError(f"total_steps must be a positive integer, got {total_steps!r}")
    if not 0 <= base_rate <= 1:
        raise CompressionError(f"base_rate must be in [0, 1], got {base_rate!r}")
    if not 0 < full_at <= 1:
        raise CompressionError(f"full_at must be in (0, 1], got {full_at!r}")
    return (1.0 - base_rate) / (full_at * total_steps), float(base_rate)


class TheseusModel(nn.Module):
    """A fine-tuned BERT classifier (the predecessor) and ``n`` successor layers that replace blocks of its layers.

    Training mode: every forward draws, for each block independently, ``replace ~ Bernoulli(p)`` from a seeded
    ``torch.Generator`` (``p``: :meth:`current_replace_rate` at the current step, then the step counter
    advances); a replaced block runs its successor, the others run the predecessor's layers. Eval mode: the
    successors alone (the paper's inference, = :meth:`successor_model`). Attention masks are built as
    ``BertModel`` builds them (``transformers.masking_utils.create_bidirectional_mask``, for the configured
    attention implementation), so with ``p = 0`` and no dropout the model computes the teacher's logits exactly.

    Args:
        teacher: a fine-tuned ``BertForSequenceClassification`` (BERT/MiniLM layout); deep-copied, not modified.
        num_successors: ``n``, in ``[1, L]``.
        init_layers: the teacher layer each successor starts from, ``n`` indices in ``[0, L)``; default the
            first layer of each block (:func:`partition_layers`).
        replace_rate, schedule: constant ``p``, or ``(k, b)`` for ``p(t) = min(1, k t + b)``; default ``p = 0.5``.
        seed: seeds the replacement draws.

    Attributes:
        predecessor: the frozen copy of the teacher (its embeddings, pooler and classifier are the model's).
        successors (`nn.ModuleList`): the ``n`` successor layers (``BertLayer``).
        blocks: the teacher layers each successor replaces.
        step: training forwards so far (``t`` of the schedule).
        last_replaced: which blocks the last training forward replaced.

    Raises:
        CompressionError: not a BERT classifier, ``num_successors`` out of range, ``init_layers`` of the wrong
            length or out of range, a bad rate or schedule.
    """

    def __init__(self, teacher, num_successors: int = 3, *, init_layers: Sequence[int] | None = None,
                 replace_rate: float | None = None, schedule: tuple[float, float] | None = None, seed: int = 0):
        super().__init__()
        check_bert_classifier(teacher, CompressionError)
        layers = teacher.bert.encoder.layer
        self.blocks = partition_layers(len(layers), num_successors)
        self.init_layers = _check_init_layers(init_layers, self.blocks, len(layers))
        self.replace_rate, self.schedule = _check_rate(replace_rate, schedule)
        self.predecessor = copy.deepcopy(teacher)
        for p in self.predecessor.parameters():
            p.requires_grad_(False)
        self.successors = nn.ModuleList(copy.deepcopy(self.predecessor.bert.encoder.layer[i])
                                        for i in self.init_layers)
        for i, layer in enumerate(self.successors):
            _set_layer_idx(layer, i)
        # trained: the successors, and the output side (pooler + classifier), which both paths share
        for module in (self.successors, self.predecessor.bert.pooler, self.predecessor.classifier):
            for p in module.parameters():
                p.requires_grad_(True)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.step = 0
        self.last_replaced: list[bool] = []
        self.eval()

    @property
    def num_successors(self) -> int:
        return len(self.successors)

    @property
    def config(self):
        """The predecessor's config (the teacher's)."""
        return self.predecessor.config

    def current_replace_rate(self) -> float:
        """``p`` at the current training step :attr:`step`."""
        return replace_rate_at(self.step, replace_rate=self.replace_rate, schedule=self.schedule)

    def train(self, mode: bool = True):
        """Set training mode; the frozen predecessor (embeddings and layers) stays in eval mode (no dropout)."""
        super().train(mode)
        self.predecessor.bert.embeddings.eval()
        self.predecessor.bert.encoder.eval()
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None):
        """Logits of the mixed model (training) or of the successors alone (eval).

        Args:
            input_ids, attention_mask, token_type_ids (`torch.LongTensor` of shape
                `(batch_size, sequence_length)`): as for ``BertForSequenceClassification``.
            labels (`torch.LongTensor` of shape `(batch_size,)`): gold ids in ``[0, num_labels)``.

        Returns:
            ``transformers.modeling_outputs.SequenceClassifierOutput`` with ``logits`` (`torch.FloatTensor` of
            shape `(batch_size, num_labels)`) and ``loss`` (cross-entropy, when ``labels`` are given).
        """
        from transformers.masking_utils import create_bidirectional_mask
        from transformers.modeling_outputs import SequenceClassifierOutput

        bert = self.predecessor.bert
        with torch.no_grad():  # frozen: nothing before the first successor needs a gradient
            hidden = bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        # the mask BertModel.forward builds for its layers: 4-D additive (eager), boolean or None (sdpa)
        mask = create_bidirectional_mask(config=bert.config, inputs_embeds=hidden, attention_mask=attention_mask)
        if self.training:
            p = self.current_replace_rate()
            replaced = (torch.rand(self.num_successors, generator=self.generator) < p).tolist()
            self.step += 1
            self.last_replaced = replaced
        else:
            replaced = [True] * self.num_successors
        for block, successor, swap in zip(self.blocks, self.successors, replaced):
            if swap:
                hidden = successor(hidden, mask)
            else:
                for i in block:
                    hidden = bert.encoder.layer[i](hidden, mask)
        logits = self.predecessor.classifier(self.predecessor.dropout(bert.pooler(hidden)))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def successor_model(self):
        """The compact model: a ``BertForSequenceClassification`` with ``n`` layers (copies of the teacher's
        embeddings, the successors, the pooler and the classifier; ``config.num_hidden_layers = n``), in eval mode,
        that saves with ``save_pretrained`` and loads with ``AutoModelForSequenceClassification``. A pruned teacher
        (:mod:`ufkit.structure`) gives a pruned-BERT model with the successors' shapes recorded."""
        from ..structure import STRUCTURE_KEY, layer_structure

        layers = self.predecessor.bert.encoder.layer
        self.predecessor.bert.encoder.layer = nn.ModuleList()  # not copied only to be thrown away
        try:
            model = copy.deepcopy(self.predecessor)
        finally:
            self.predecessor.bert.encoder.layer = layers
        model.bert.encoder.layer = nn.ModuleList(copy.deepcopy(s) for s in self.successors)
        for i, layer in enumerate(model.bert.encoder.layer):
            _set_layer_idx(layer, i)
        model.config.num_hidden_layers = self.num_successors
        if getattr(model.config, STRUCTURE_KEY, None):
            setattr(model.config, STRUCTURE_KEY, layer_structure(model))
        for p in model.parameters():
            p.requires_grad_(True)
        return model.eval()


def _set_layer_idx(layer: nn.Module, index: int) -> None:
    for m in layer.modules():  # attention caches index layers by position
        if hasattr(m, "layer_idx"):
            m.layer_idx = index


def _check_init_layers(init_layers, blocks: list[list[int]], num_layers: int) -> list[int]:
    if init_layers is None:
        return [b[0] for b in blocks]
    try:
        idx = [int(i) for i in init_layers]
    except (TypeError, ValueError):
        raise CompressionError(f"init_layers must be a sequence of layer indices, got {init_layers!r}") from None
    if len(idx) != len(blocks):
        raise CompressionError(f"init_layers must give one teacher layer per successor ({len(blocks)}), got "
                               f"{len(idx)}: {idx}")
    if min(idx) < 0 or max(idx) >= num_layers:
        raise CompressionError(f"init_layers must be in [0, {num_layers}) (the teacher's layers), got {idx}")
    return idx


def theseus_compress(teacher, tokenizer, train_ds, *, num_successors: int = 3,
                     init_layers: Sequence[int] | None = None, replace_rate: float | None = None,
                     schedule: tuple[float, float] | None = None, cfg: TrainConfig | None = None,
                     progress: bool = True):
    """Compress ``teacher`` to ``num_successors`` layers by progressive module replacing (Xu et al., EMNLP 2020).

    Builds a :class:`TheseusModel` and trains it with cross-entropy on ``train_ds``'s labels through
    :func:`ufkit.training.train_loop` (one replacement draw per step, seeded by ``cfg.seed``). With a constant
    ``replace_rate``, the paper then fine-tunes the successor alone: pass the result to
    :func:`ufkit.training.finetune`; a ``schedule`` that reaches ``p = 1`` (:func:`linear_schedule`) does that
    within the same run.

    Args:
        teacher: a fine-tuned ``BertForSequenceClassification``; not modified.
        tokenizer: tokenises and pads the batches.
        train_ds (`datasets.Dataset`): columns ``text`` and ``label`` (ids in ``[0, num_labels)``).
        num_successors, init_layers, replace_rate, schedule: as for :class:`TheseusModel`.
        cfg: hyper-parameters (default :class:`ufkit.training.TrainConfig`).

    Returns:
        ``(model, history)``: :meth:`TheseusModel.successor_model` (eval mode) and the training history, with
        ``replace_rates`` (``p`` at the first step of every ``cfg.log_every``), ``blocks`` and ``init_layers``.

    Raises:
        CompressionError: bad arguments (see :class:`TheseusModel`), or a ``train_ds`` without ``text``/``label``,
            empty, or with labels outside ``[0, num_labels)``.
    """
    from ..data import make_dataloader, tokenize
    from ..training import train_loop
    from .distillation import _check_data

    cfg = cfg if cfg is not None else TrainConfig()
    cfg.validate()
    model = TheseusModel(teacher, num_successors, init_layers=init_layers, replace_rate=replace_rate,
                         schedule=schedule, seed=cfg.seed)
    _check_data(train_ds, teacher.config.num_labels, allow_unlabeled=False)
    tok = tokenize(train_ds.select_columns(["text", "label"]), tokenizer, cfg.max_length)
    loader = make_dataloader(tok, tokenizer, cfg.batch_size, shuffle=True, seed=cfg.seed)
    rates = []

    def loss_fn(batch):
        rates.append(model.current_replace_rate())
        return model(**batch).loss

    history = train_loop(model, loader, loss_fn, cfg, desc="BERT-of-Theseus", progress=progress)
    return model.successor_model(), {**history, "replace_rates": rates[::cfg.log_every], "blocks": model.blocks,
                                     "init_layers": model.init_layers}


def load_or_theseus(folder: str | Path, *, teacher, tokenizer, train_ds, num_successors: int = 3,
                    init_layers: Sequence[int] | None = None, replace_rate: float | None = None,
                    schedule: tuple[float, float] | None = None, cfg: TrainConfig | None = None,
                    retrain: bool = False, progress: bool = True):
    """Load the successor model in ``folder`` if it was made from the same inputs, else :func:`theseus_compress`.

    The cache (:func:`ufkit.cache.load_or_make`) matches on the recipe: ``cfg.recipe()``, the teacher's weights
    (:func:`ufkit.cache.fingerprint_model`), the blocks, ``init_layers``, the rate or schedule and the training
    texts and labels (:func:`ufkit.cache.fingerprint_texts`).

    Returns:
        ``(model, tokenizer, info)``: the successor model (eval mode) and ``info`` with the recipe,
        ``train_seconds``, ``steps``, the loss history and the machine it was trained on.

    Raises:
        CompressionError: as :func:`theseus_compress`.
        ModelError: ``folder`` cannot be written.
    """
    from ..cache import fingerprint_model, fingerprint_texts, load_or_make_model
    from .distillation import _check_data

    cfg = cfg if cfg is not None else TrainConfig()
    cfg.validate()
    check_bert_classifier(teacher, CompressionError)
    blocks = partition_layers(len(teacher.bert.encoder.layer), num_successors)
    init = _check_init_layers(init_layers, blocks, len(teacher.bert.encoder.layer))
    rate, sched = _check_rate(replace_rate, schedule)
    _check_data(train_ds, teacher.config.num_labels, allow_unlabeled=False)
    recipe = {"method": "BERT-of-Theseus (Xu et al. 2020)", "config": cfg.recipe(),
              "teacher_id": fingerprint_model(teacher), "blocks": blocks, "init_layers": init,
              "replace_rate": rate, "schedule": list(sched) if sched is not None else None,
              "data_id": fingerprint_texts(train_ds["text"], train_ds["label"]), "n_train": len(train_ds)}

    def make():
        model, history = theseus_compress(teacher, tokenizer, train_ds, num_successors=num_successors,
                                          init_layers=init, replace_rate=rate, schedule=sched, cfg=cfg,
                                          progress=progress)
        return (model, tokenizer), history

    return load_or_make_model(folder, recipe, make, retrain=retrain)
