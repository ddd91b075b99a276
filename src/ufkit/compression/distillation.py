"""Knowledge distillation: train a smaller classifier to reproduce a fine-tuned teacher.

Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", NIPS 2014 Deep Learning Workshop
(arXiv:1503.02531, 2015): the student learns from the teacher's softened probabilities ``softmax(z / T)`` (the
*soft* labels), which say how similar the wrong classes are, besides (or instead of) the gold labels. The loss
of one labeled sentence is

    alpha * T^2 KL(p_teacher^T || p_student^T) + (1 - alpha) * CE(student, gold label),

and an unlabeled sentence (label ``-1``) gets the distillation term alone, so any in-domain text (SST-2's
unlabeled test split, :func:`unlabeled`) can be added to the training set. ``mode="hard"`` replaces the soft
labels by the teacher's argmax (plain pseudo-labelling). ``hidden_weight > 0`` adds TinyBERT's layer-to-layer
loss (Jiao et al., "TinyBERT: Distilling BERT for Natural Language Understanding", Findings of EMNLP 2020): the
mean squared error between each student layer's output and the output of the teacher layer it is mapped to,
through a learned projection where the student is narrower; the projections are trained with the student and
thrown away afterwards.

The teacher's logits on a training set depend on nothing the student does, so they can be computed once
(:func:`teacher_logits`) and passed to :func:`distill`: then the teacher does not run during training at all,
and several students share one teacher pass.

* :class:`DistillConfig`: :class:`ufkit.training.TrainConfig` plus the distillation settings;
* :func:`make_student`: a shallower copy of the teacher keeping chosen layers;
* :func:`uniform_layer_map`: which teacher layer each student layer imitates, by default;
* :func:`teacher_logits`: the teacher's logits on a list of texts, in order;
* :func:`distillation_loss`: the loss above from a batch of logits and labels;
* :func:`distill`: train a student (through the one training loop, :func:`ufkit.training.train_loop`);
* :func:`load_or_distill`: the same, cached in a folder ("load if present, else train");
* :func:`unlabeled`: a dataset with every label set to ``-1``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..distill import hidden_mse, kd_loss
from ..models import ModelError
from ..surgery import keep_layers
from ..training import TrainConfig
from .common import CompressionError

#: distillation targets: the teacher's softened probabilities, or its argmax
MODES = ("soft", "hard")
#: the column that carries each training row's index through the batches (to find its precomputed logits)
ROW_COLUMN = "ufkit_row"


@dataclass
class DistillConfig(TrainConfig):
    """Hyper-parameters of :func:`distill`: the training fields of :class:`ufkit.training.TrainConfig` plus these.

    Attributes:
        temperature: ``T > 0``; both logits are divided by it before the softmax, the KL term is scaled by
            ``T^2`` (Hinton et al. 2015) so its gradients keep their size as ``T`` changes.
        alpha: weight of the distillation term on a labeled row, in ``[0, 1]``; ``1 - alpha`` goes to the
            cross-entropy with the gold label. Unlabeled rows (label ``-1``) get the distillation term with weight 1.
        mode: ``"soft"`` (KL against the softened teacher) or ``"hard"`` (cross-entropy against the teacher's
            argmax; ``temperature`` is then unused).
        hidden_weight: weight of the hidden-state MSE (TinyBERT), ``>= 0``; 0 turns it off.
        layer_map: teacher layer (0-based) imitated by each student layer; None: :func:`uniform_layer_map`.
        hidden_embeddings: with ``hidden_weight > 0``, also match the embedding outputs (TinyBERT does).
    """

    temperature: float = 2.0
    alpha: float = 0.5
    mode: str = "soft"
    hidden_weight: float = 0.0
    layer_map: tuple | None = None
    hidden_embeddings: bool = True

    def validate(self) -> None:
        """Raise :class:`ufkit.UfkitError` for a bad training field and :class:`CompressionError` naming the first
        out-of-range distillation field."""
        super().validate()
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise CompressionError(f"temperature must be positive, got {self.temperature!r}")
        if not (isinstance(self.alpha, (int, float)) and 0 <= self.alpha <= 1):
            raise CompressionError(f"alpha must be in [0, 1], got {self.alpha!r}")
        if self.mode not in MODES:
            raise CompressionError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not (isinstance(self.hidden_weight, (int, float)) and self.hidden_weight >= 0):
            raise CompressionError(f"hidden_weight must be non-negative, got {self.hidden_weight!r}")
        if self.layer_map is not None:
            if isinstance(self.layer_map, (str, bytes)) or not all(
                    isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.layer_map):
                raise CompressionError(f"layer_map must be a sequence of non-negative teacher layer indices or "
                                       f"None, got {self.layer_map!r}")


def _layers(model) -> nn.ModuleList:
    layers = getattr(getattr(getattr(model, "base_model", model), "encoder", None), "layer", None)
    if layers is None:
        raise CompressionError(f"expected a BERT-family classifier with encoder.layer, got {type(model).__name__}")
    return layers


def make_student(teacher, layers: Sequence[int]):
    """A student that starts as the teacher with only the transformer layers ``layers`` (in that order).

    A deep copy of ``teacher`` through :func:`ufkit.surgery.keep_layers`: the kept layers, the embeddings, pooler
    and classifier keep the teacher's weights; ``config.num_hidden_layers`` is ``len(layers)``, so the student
    saves and loads as a shallower model of the same class. DistilBERT (Sanh et al., NeurIPS 2019 EMC^2
    Workshop) starts its student from every other teacher layer; :func:`ufkit.surgery.layers_to_keep` names
    other choices (Sajjad et al., Computer Speech & Language 2023).

    Args:
        teacher: a BERT-family sequence classifier (not modified).
        layers: 0-based indices of the teacher layers to keep, distinct.

    Returns:
        the student, in eval mode, every parameter trainable.

    Raises:
        CompressionError: ``layers`` empty, repeated or out of range, or a teacher without ``encoder.layer``.
    """
    _layers(teacher)
    try:
        student = keep_layers(copy.deepcopy(teacher), list(layers))
    except (ModelError, TypeError, ValueError) as e:
        raise CompressionError(f"layers: {e}") from None
    for p in student.parameters():
        p.requires_grad_(True)
    return student.eval()


def uniform_layer_map(student_layers: int, teacher_layers: int) -> tuple[int, ...]:
    """TinyBERT's uniform mapping: student layer ``i`` of ``n`` imitates teacher layer ``round((i+1) L / n) - 1``
    (0-based, rounded half up), so the last student layer imitates the last teacher layer; 3 of 6 -> (1, 3, 5).

    Raises:
        CompressionError: ``student_layers`` not in ``[1, teacher_layers]``.
    """
    if not (isinstance(student_layers, int) and isinstance(teacher_layers, int)
            and 1 <= student_layers <= teacher_layers):
        raise CompressionError(f"student_layers must be in [1, teacher_layers={teacher_layers}], "
                               f"got {student_layers!r}")
    return tuple(int(math.floor((i + 1) * teacher_layers / student_layers + 0.5)) - 1 for i in range(student_layers))


def _device(model) -> torch.device:
    return next(model.parameters()).device


def teacher_logits(teacher, tokenizer, texts, *, batch_size: int = 64, max_length: int = 128,
                   cache: str | Path | None = None) -> torch.Tensor:
    """The teacher's logits on ``texts``, in their order, computed once to distill several students from.

    Runs in eval mode under ``torch.inference_mode`` on the teacher's device, in length-sorted batches
    (:func:`ufkit.evaluate.predict_logits`).

    Args:
        teacher: a sequence classifier.
        texts: a sequence of strings (e.g. ``train_ds["text"]``).
        max_length: longer texts are truncated to this many tokens, as in training (``DistillConfig.max_length``).
        cache: a folder to keep them in (safetensors), reused only for the same teacher weights, texts and
            ``max_length`` (:func:`ufkit.cache.load_or_make`); None computes them every time.

    Returns:
        `torch.FloatTensor` of shape `(len(texts), num_labels)`, float32, on the CPU.

    Raises:
        CompressionError: ``texts`` empty or not all strings.
    """
    import datasets

    from ..data import tokenize
    from ..evaluate import predict_logits

    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise CompressionError("texts must be a non-empty sequence of strings")
    ds = tokenize(datasets.Dataset.from_dict({"text": texts}), tokenizer, max_length)
    device, was_training = _device(teacher), teacher.training
    teacher.eval()

    def run(**batch):
        return teacher(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()

    def make():
        try:
            return torch.from_numpy(predict_logits(run, ds, tokenizer, batch_size)), {"n": len(texts)}
        finally:
            teacher.train(was_training)

    if cache is None:
        return make()[0]
    from safetensors.torch import load_file, save_file

    from ..cache import fingerprint_model, fingerprint_texts, load_or_make

    recipe = {"teacher_id": fingerprint_model(teacher), "texts_id": fingerprint_texts(texts), "max_length": max_length}
    logits, _ = load_or_make(cache, recipe, make,
                             save=lambda t, folder: save_file({"logits": t.contiguous()}, folder / "logits.safetensors"),
                             load=lambda folder: load_file(folder / "logits.safetensors")["logits"])
    teacher.train(was_training)
    return logits


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None, *,
                      temperature: float = 2.0, alpha: float = 0.5, mode: str = "soft") -> torch.Tensor:
    """The per-sentence distillation loss, mean over the batch (Hinton et al. 2015).

    A labeled row (label ``>= 0``) costs ``alpha * D + (1 - alpha) * CE(student, label)``, an unlabeled row
    (label ``-1``) costs ``D``, where ``D`` is ``T^2 KL(softmax(t/T) || softmax(s/T))`` (``mode="soft"``,
    :func:`ufkit.distill.kd_loss`) or ``CE(student, argmax t)`` (``mode="hard"``). Computed in float32.

    Args:
        student_logits, teacher_logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`).
        labels (`torch.LongTensor` of shape `(batch_size,)`): gold ids, ``-1`` for unlabeled rows; None: all
            unlabeled.

    Returns:
        a scalar tensor.

    Raises:
        CompressionError: shapes that differ, a bad ``temperature``, ``alpha`` or ``mode``.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise CompressionError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                               f"{tuple(teacher_logits.shape)} must both be (batch_size, num_labels)")
    if not temperature > 0:
        raise CompressionError(f"temperature must be positive, got {temperature!r}")
    if not 0 <= alpha <= 1:
        raise CompressionError(f"alpha must be in [0, 1], got {alpha!r}")
    if mode not in MODES:
        raise CompressionError(f"mode must be one of {MODES}, got {mode!r}")
    n = student_logits.shape[0]
    if labels is None:
        labels = torch.full((n,), -1, dtype=torch.long, device=student_logits.device)
    if labels.shape != (n,):
        raise CompressionError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    s, t = student_logits.float(), teacher_logits.float().detach()

    def d_sum(s_rows, t_rows):  # the distillation term summed over rows
        if mode == "soft":
            return kd_loss(s_rows, t_rows, temperature) * s_rows.shape[0]  # kd_loss is a batch mean
        return F.cross_entropy(s_rows, t_rows.argmax(-1), reduction="sum")

    labeled = labels >= 0
    total = s.new_zeros(())
    if labeled.any():
        sl, tl = s[labeled], t[labeled]
        if alpha > 0:
            total = total + alpha * d_sum(sl, tl)
        if alpha < 1:
            total = total + (1 - alpha) * F.cross_entropy(sl, labels[labeled], reduction="sum")
    if (~labeled).any():
        total = total + d_sum(s[~labeled], t[~labeled])
    return total / n


def _check_data(train_ds, num_labels: int, *, allow_unlabeled: bool) -> None:
    cols = getattr(train_ds, "column_names", None)
    if cols is None or "text" not in cols or "label" not in cols:
        raise CompressionError(f"train_ds must be a datasets.Dataset with 'text' and 'label' columns, got "
                               f"{type(train_ds).__name__} with columns {cols}")
    if len(train_ds) == 0:
        raise CompressionError("train_ds is empty")
    labels = torch.as_tensor(list(train_ds["label"]), dtype=torch.long)
    low = -1 if allow_unlabeled else 0
    if (labels < low).any() or (labels >= num_labels).any():
        allowed = f"-1 (unlabeled) or in [0, {num_labels})" if allow_unlabeled else f"in [0, {num_labels})"
        raise CompressionError(f"train_ds labels must be {allowed}, got values from {int(labels.min())} to "
                               f"{int(labels.max())}")


class _Trainee(nn.Module):
    """The student and its hidden-state projections as one module, so :func:`train_loop` moves and trains both."""

    def __init__(self, student, projections: nn.ModuleList | None):
        super().__init__()
        self.student = student
        self.projections = projections


def distillation_objective(student, tokenizer, train_ds, cfg: DistillConfig, *, teacher=None,
                           teacher_logits: torch.Tensor | None = None):
    """The batches and the loss of distillation, for :func:`ufkit.training.train_loop`: what :func:`distill` trains
    with, and what other trainings that distil (gradual pruning, quantization-aware training) train with too.

    Args:
        student, tokenizer, train_ds, cfg, teacher_logits: as for :func:`distill`.
        teacher: the teacher model; None when ``teacher_logits`` are given and ``hidden_weight == 0``, or for plain
            cross-entropy on the gold labels (``alpha == 0``).

    Returns:
        ``(trainee, loader, loss_fn, extra)``: the module to train (the student and any hidden-state
        projections), the length-bucketed batches with each row's index, ``batch -> loss`` and facts for the
        history (``n_train``, ``teacher_runs``, ``layer_map``).

    Raises:
        CompressionError: as :func:`distill`, or no teacher where one is needed.
    """
    from ..data import make_dataloader, tokenize

    cfg = cfg if cfg is not None else DistillConfig()
    if not isinstance(cfg, DistillConfig):
        raise CompressionError(f"cfg must be a DistillConfig, got {type(cfg).__name__}")
    cfg.validate()
    if teacher is None and (cfg.hidden_weight > 0 or (teacher_logits is None and cfg.alpha > 0)):
        raise CompressionError("without a teacher model, distillation needs teacher_logits and hidden_weight = 0 "
                               "(or alpha = 0: plain cross-entropy)")
    num_labels = (teacher if teacher is not None else student).config.num_labels
    if student.config.num_labels != num_labels:
        raise CompressionError(f"student has {student.config.num_labels} labels but the teacher has {num_labels}")
    _check_data(train_ds, num_labels, allow_unlabeled=teacher is not None or teacher_logits is not None)
    n = len(train_ds)
    if teacher_logits is not None:
        teacher_logits = torch.as_tensor(teacher_logits, dtype=torch.float32)
        if tuple(teacher_logits.shape) != (n, num_labels):
            raise CompressionError(f"teacher_logits must have shape (len(train_ds), num_labels) = ({n}, "
                                   f"{num_labels}), got {tuple(teacher_logits.shape)}")
    hidden = cfg.hidden_weight > 0
    history_extra = {"n_train": n}
    projections = None
    pairs: list[tuple[int, int]] = []
    if hidden:
        s_depth, t_depth = len(_layers(student)), len(_layers(teacher))
        layer_map = tuple(cfg.layer_map) if cfg.layer_map is not None else uniform_layer_map(s_depth, t_depth)
        if len(layer_map) != s_depth or max(layer_map) >= t_depth:
            raise CompressionError(f"layer_map must give one teacher layer in [0, {t_depth}) for each of the "
                                   f"{s_depth} student layers, got {layer_map}")
        # hidden_states[0] is the embedding output, hidden_states[i + 1] layer i's
        pairs = ([(0, 0)] if cfg.hidden_embeddings else []) + [(i + 1, j + 1) for i, j in enumerate(layer_map)]
        s_width, t_width = student.config.hidden_size, teacher.config.hidden_size
        if s_width != t_width:
            projections = nn.ModuleList(nn.Linear(s_width, t_width) for _ in pairs).to(_device(student))
        history_extra["layer_map"] = list(layer_map)
    teacher_runs = teacher is not None and (hidden or teacher_logits is None)
    history_extra["teacher_runs"] = teacher_runs

    tok = tokenize(train_ds.remove_columns([c for c in train_ds.column_names if c not in ("text", "label")])
                   .add_column(ROW_COLUMN, list(range(n))), tokenizer, cfg.max_length)
    loader = make_dataloader(tok, tokenizer, cfg.batch_size, shuffle=True, seed=cfg.seed,
                             extra_columns=(ROW_COLUMN,))
    trainee = _Trainee(student, projections)
    if teacher is not None:
        teacher.eval()
    on_device = {}

    def loss_fn(batch):
        rows, labels = batch[ROW_COLUMN], batch["labels"]
        inputs = {k: v for k, v in batch.items() if k not in (ROW_COLUMN, "labels")}
        device = inputs["input_ids"].device
        s_out = student(**inputs, output_hidden_states=hidden)
        if teacher_runs:
            if _device(teacher) != device:
                teacher.to(device)
            with torch.no_grad():
                t_out = teacher(**inputs, output_hidden_states=hidden)
            t_logits = t_out.logits
        elif teacher_logits is None:  # no teacher at all (alpha is 0, every row labelled): cross-entropy
            return nn.functional.cross_entropy(s_out.logits, labels)
        else:
            if "logits" not in on_device:
                on_device["logits"] = teacher_logits.to(device)
            t_logits = on_device["logits"][rows.to(device)]
        loss = distillation_loss(s_out.logits, t_logits, labels, temperature=cfg.temperature, alpha=cfg.alpha,
                                 mode=cfg.mode)
        if hidden:
            mask = inputs["attention_mask"]
            terms = [hidden_mse([s_out.hidden_states[a]], [t_out.hidden_states[b]], mask,
                                projection=projections[k] if projections is not None else None)
                     for k, (a, b) in enumerate(pairs)]
            loss = loss + cfg.hidden_weight * torch.stack(terms).mean()
        return loss

    return trainee, loader, loss_fn, history_extra


def distill(student, teacher, tokenizer, train_ds, cfg: DistillConfig | None = None, *,
            teacher_logits: torch.Tensor | None = None, progress: bool = True):
    """Train ``student`` to reproduce ``teacher`` on ``train_ds`` (Hinton et al. 2015; TinyBERT's hidden loss).

    Each step: the student's logits on a batch, the teacher's (precomputed, or from a forward pass under
    ``torch.no_grad`` in eval mode), :func:`distillation_loss`, plus ``hidden_weight`` times the mean over the
    mapped layer pairs of :func:`ufkit.distill.hidden_mse`. The optimizer step is
    :func:`ufkit.training.train_loop`'s.

    *Fast path*: with ``hidden_weight == 0`` and ``teacher_logits`` given, the teacher does not run at all. With
    ``hidden_weight > 0`` it must run for its hidden states, and its live logits are used.

    Hidden states: student layer ``i`` (output ``hidden_states[i + 1]``, shape
    `(batch_size, sequence_length, student hidden_size)`) is compared with teacher layer ``cfg.layer_map[i]``, and
    the embedding outputs with each other when ``cfg.hidden_embeddings``; where the widths differ, each pair gets
    its own ``nn.Linear(student hidden_size, teacher hidden_size)``, trained with the student and discarded.

    Args:
        student: a sequence classifier with the teacher's number of labels (e.g. :func:`make_student`); trained
            in place (and left on the training device).
        teacher: the fine-tuned classifier; not modified (it may be moved to the training device).
        tokenizer: tokenises and pads the batches (the student's and teacher's, shared).
        train_ds (`datasets.Dataset`): columns ``text`` and ``label`` (``-1`` for unlabeled rows).
        cfg: hyper-parameters (default :class:`DistillConfig`).
        teacher_logits (`torch.FloatTensor` of shape `(len(train_ds), num_labels)`): the teacher's logits on
            ``train_ds``'s rows, in order (:func:`teacher_logits`).

    Returns:
        ``(student, history)``: the student in eval mode and :func:`ufkit.training.train_loop`'s history, with
        ``teacher_runs`` (False on the fast path), ``layer_map`` (with ``hidden_weight > 0``) and ``n_train``.

    Raises:
        CompressionError: a bad ``cfg``, a ``train_ds`` without ``text``/``label`` or empty or with labels out of
            range, ``teacher_logits`` of the wrong shape, label counts that differ, or a ``layer_map`` that does not
            fit the two depths.
    """
    from ..training import train_loop  # looked up when called, as the other trainers do (tests wrap it)

    cfg = cfg if cfg is not None else DistillConfig()
    trainee, loader, loss_fn, history_extra = distillation_objective(student, tokenizer, train_ds, cfg,
                                                                     teacher=teacher, teacher_logits=teacher_logits)
    history = train_loop(trainee, loader, loss_fn, cfg, desc="distilling", progress=progress)
    student.eval()
    return student, {**history, **history_extra}


def _fingerprint_logits(logits: torch.Tensor) -> dict:
    """What a recipe records of precomputed logits: their shape and a hash of the teacher's argmax, which does not
    change with the last bits of the floats (batch composition, another machine)."""
    from ..cache import fingerprint_texts

    return {"shape": list(logits.shape), "argmax_id": fingerprint_texts([], logits.argmax(-1).tolist())}


def _model_recipe(model) -> dict:
    """A model's shapes for a recipe: depth, width, heads and feedforward neurons per layer."""
    from ..structure import layer_structure

    c = model.config
    return {"class": type(model).__name__, "num_hidden_layers": c.num_hidden_layers, "hidden_size": c.hidden_size,
            "num_labels": c.num_labels, **layer_structure(model)}


def load_or_distill(folder: str | Path, *, teacher, tokenizer, student, train_ds, cfg: DistillConfig | None = None,
                    teacher_logits: torch.Tensor | None = None, retrain: bool = False, progress: bool = True):
    """Load the student distilled into ``folder`` if it was made from the same inputs, else :func:`distill` it.

    The cache (:func:`ufkit.cache.load_or_make`) matches on the recipe: ``cfg.recipe()`` (mixed precision
    resolved for this machine), the teacher's weights (:func:`ufkit.cache.fingerprint_model`), the student's
    initial weights and shapes, the training texts and labels (:func:`ufkit.cache.fingerprint_texts`) and, where
    given, the shape and argmax of ``teacher_logits``.

    Args:
        folder: checkpoint folder (``save_pretrained`` layout, safetensors, with the tokenizer) plus
            ``cache_info.json``.
        teacher, tokenizer, student, train_ds, cfg, teacher_logits, progress: as for :func:`distill`; ``student``
            is trained in place when no current copy exists.
        retrain: distill even when a current copy exists.

    Returns:
        ``(student, tokenizer, info)``: the trained student (loaded from ``folder`` on a cache hit, eval mode);
        ``info`` holds the recipe, ``train_seconds``, ``steps``, the loss history (``losses``, ``final_loss``)
        and the machine it was trained on.

    Raises:
        CompressionError: as :func:`distill`.
        ModelError: ``folder`` cannot be written.
    """
    from ..cache import fingerprint_model, fingerprint_texts, load_or_make_model

    cfg = cfg if cfg is not None else DistillConfig()
    if not isinstance(cfg, DistillConfig):
        raise CompressionError(f"cfg must be a DistillConfig, got {type(cfg).__name__}")
    cfg.validate()
    _check_data(train_ds, teacher.config.num_labels, allow_unlabeled=True)
    recipe = {"method": "knowledge distillation (Hinton et al. 2015)", "config": cfg.recipe(),
              "teacher_id": fingerprint_model(teacher), "teacher": _model_recipe(teacher),
              "student_init_id": fingerprint_model(student), "student": _model_recipe(student),
              "data_id": fingerprint_texts(train_ds["text"], train_ds["label"]), "n_train": len(train_ds),
              "teacher_logits": None if teacher_logits is None
              else _fingerprint_logits(torch.as_tensor(teacher_logits, dtype=torch.float32))}

    def make():
        model, history = distill(student, teacher, tokenizer, train_ds, cfg, teacher_logits=teacher_logits,
                                 progress=progress)
        return (model, tokenizer), history

    return load_or_make_model(folder, recipe, make, retrain=retrain)


def unlabeled(ds):
    """``ds`` with every label set to ``-1`` (its rows then get the distillation term only).

    Args:
        ds (`datasets.Dataset`): a ``text`` column; a ``label`` column is replaced or added.

    Returns:
        a new `datasets.Dataset` with columns ``text`` and ``label`` (int64, all ``-1``).

    Raises:
        CompressionError: ``ds`` has no ``text`` column.
    """
    import datasets

    cols = getattr(ds, "column_names", None)
    if cols is None or "text" not in cols:
        raise CompressionError(f"ds must be a datasets.Dataset with a 'text' column, got columns {cols}")
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"text": list(ds["text"]), "label": [-1] * len(ds)}, features=features)
