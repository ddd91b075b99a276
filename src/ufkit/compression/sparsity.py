"""Unstructured magnitude pruning: gradual pruning during fine-tuning, and a sparse (CSR) path to time it.

Magnitude pruning (Han, Pool, Tran & Dally, "Learning both Weights and Connections for Efficient Neural
Networks", NeurIPS 2015) zeroes the weights of smallest absolute value; done gradually while the model keeps
training, on the cubic schedule of Zhu & Gupta ("To prune, or not to prune: exploring the efficacy of pruning for
model compression", ICLR 2018 workshop, arXiv 2017), it reaches high sparsity with little loss. The zeros only save
time when a kernel skips them: :func:`to_sparse_csr` stores the pruned matrices in CSR and multiplies with torch's
sparse kernels, so the chapter can time the "sparse path" against the dense one.

Public functions:

* :func:`prunable_weights`: the encoder's (and pooler's) Linear weights, the only tensors pruned;
* :func:`magnitude_masks`, :func:`apply_masks_`: masks of the largest weights (globally or per weight), applied;
* :func:`sparsity_at`: Zhu & Gupta's cubic schedule;
* :func:`sparse_finetune`, :func:`load_or_sparse_finetune`: gradual pruning while fine-tuning (optionally with
  distillation from precomputed teacher logits), and its cached form;
* :func:`sparsity_report`: the fraction of zeros, overall and per weight;
* :func:`to_sparse_csr`, :class:`SparseLinear`, :func:`csr_size_mb`: the CSR model and the size it would take.
"""

from __future__ import annotations

import copy
import hashlib
import math
import warnings

import numpy as np
import torch
from torch import nn

from .common import CompressionError

SCOPES = ("global", "per_layer")


def _check_fraction(name: str, value, *, upper_inclusive: bool = False) -> float:
    """``value`` as a float in ``[0, 1)`` (``[0, 1]`` when ``upper_inclusive``), else CompressionError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise CompressionError(f"{name} must be a number in [0, 1), got {value!r}") from None
    ok = 0.0 <= v <= 1.0 if upper_inclusive else 0.0 <= v < 1.0
    if not ok:
        raise CompressionError(f"{name} must be in [0, 1{']' if upper_inclusive else ')'}, got {value!r}")
    return v


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights magnitude pruning acts on: every ``nn.Linear`` weight of the base model (encoder and pooler).

    In a BERT classifier these are, per layer, ``attention.self.query/key/value``, ``attention.output.dense``,
    ``intermediate.dense`` and ``output.dense``, plus ``pooler.dense``: about 96 % of MiniLM-L6's non-embedding
    parameters. Excluded: the embeddings (a lookup, which sparsity does not speed up), LayerNorm, every bias, and
    the classification head (outside the base model; a handful of weights that decide every prediction).

    Args:
        model: a transformers model (``BertForSequenceClassification``, a bare ``BertModel``...).

    Returns:
        ``{name: parameter}`` in module order; names as in ``model.named_parameters()``
        (``"bert.encoder.layer.0.attention.self.query.weight"``); each of shape `(out_features, in_features)`.

    Raises:
        CompressionError: ``model`` is not an ``nn.Module`` or has no Linear layer in its base model.
    """
    if not isinstance(model, nn.Module):
        raise CompressionError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    base = getattr(model, "base_model", model)
    inside = {id(m) for m in base.modules()}
    out = {}
    for name, module in model.named_modules():
        if (isinstance(module, nn.Linear) and id(module) in inside and module.weight.numel()
                and ".embeddings" not in f".{name}"):
            out[f"{name}.weight"] = module.weight
    if not out:
        raise CompressionError(f"model ({type(model).__name__}) has no Linear layer in its encoder to prune")
    return out


def magnitude_masks(model: nn.Module, sparsity: float, *, scope: str = "global") -> dict[str, torch.Tensor]:
    """Keep-masks of the weights of largest magnitude (Han et al., NeurIPS 2015).

    ``round(sparsity * n)`` weights of smallest ``|w|`` are marked for removal, among all prunable weights together
    (``"global"``: layers that matter less lose more) or in each weight separately (``"per_layer"``: every matrix
    ends at the same sparsity). Ties are broken by position, so the masks are deterministic; weights already zero
    rank first, so masks recomputed during gradual pruning never bring a pruned weight back.

    Args:
        model: see :func:`prunable_weights`.
        sparsity: fraction of the prunable weights to remove, in ``[0, 1)``.
        scope: ``"global"`` or ``"per_layer"``.

    Returns:
        ``{name: mask}``, one `torch.BoolTensor` per :func:`prunable_weights` entry, of its shape, on its device;
        True = kept.

    Raises:
        CompressionError: ``sparsity`` outside ``[0, 1)`` or an unknown ``scope``.
    """
    sparsity = _check_fraction("sparsity", sparsity)
    if scope not in SCOPES:
        raise CompressionError(f"scope must be one of {SCOPES}, got {scope!r}")
    weights = prunable_weights(model)

    def keep_mask(flat: torch.Tensor) -> torch.Tensor:
        n_prune = int(round(sparsity * flat.numel()))
        keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
        if n_prune:
            # a stable sort, not a threshold: ties at the threshold would make the count inexact
            keep[torch.argsort(flat, stable=True)[:n_prune]] = False
        return keep

    with torch.no_grad():
        if scope == "per_layer":
            return {n: keep_mask(w.detach().abs().reshape(-1).float()).reshape(w.shape) for n, w in weights.items()}
        flat = torch.cat([w.detach().abs().reshape(-1).float().to(next(iter(weights.values())).device)
                          for w in weights.values()])                                        # (n_prunable,)
        keep = keep_mask(flat)
        masks, start = {}, 0
        for n, w in weights.items():
            masks[n] = keep[start:start + w.numel()].reshape(w.shape).to(w.device)
            start += w.numel()
        return masks


def apply_masks_(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the weights whose mask is False, in place (no gradient is recorded).

    Args:
        masks: ``{name: mask}`` from :func:`magnitude_masks`; names from :func:`prunable_weights`.

    Raises:
        CompressionError: a name that is not a parameter of ``model``, or a mask of another shape.
    """
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            if name not in params:
                raise CompressionError(f"masks: {name!r} is not a parameter of the model")
            p = params[name]
            if tuple(mask.shape) != tuple(p.shape):
                raise CompressionError(f"masks[{name!r}] has shape {tuple(mask.shape)}, expected {tuple(p.shape)}")
            p.mul_(mask.to(device=p.device, dtype=p.dtype))


def sparsity_at(step: int, total_steps: int, final_sparsity: float, *, initial: float = 0.0, start: float = 0.0,
                end: float = 0.7) -> float:
    """Zhu & Gupta's gradual schedule: the sparsity to prune to after ``step`` of ``total_steps``.

    ``s(t) = s_f + (s_i - s_f) (1 - (t - t_0) / (t_1 - t_0))^3`` for ``t_0 <= t <= t_1``, with ``t_0 = start *
    total_steps`` and ``t_1 = end * total_steps``; ``s_i`` before ``t_0`` and ``s_f`` after ``t_1``. The cubic prunes
    fast while there are many redundant weights and slowly near the end; the steps after ``t_1`` let the model
    recover at the final sparsity. Non-decreasing in ``step``.

    Args:
        step: optimizer steps done, ``>= 0`` (beyond ``total_steps`` gives the final sparsity).
        total_steps: steps of the whole run, ``>= 1``.
        final_sparsity, initial: ``s_f`` and ``s_i``, in ``[0, 1)``, ``initial <= final_sparsity``.
        start, end: fractions of the run where the ramp begins and ends, ``0 <= start <= end <= 1``.

    Returns:
        a sparsity in ``[initial, final_sparsity]``.

    Raises:
        CompressionError: a value out of range.
    """
    final_sparsity = _check_fraction("final_sparsity", final_sparsity)
    initial = _check_fraction("initial", initial)
    start = _check_fraction("start", start, upper_inclusive=True)
    end = _check_fraction("end", end, upper_inclusive=True)
    if initial > final_sparsity:
        raise CompressionError(f"initial ({initial}) must not exceed final_sparsity ({final_sparsity})")
    if start > end:
        raise CompressionError(f"start ({start}) must not exceed end ({end})")
    if not isinstance(total_steps, (int, np.integer)) or total_steps < 1:
        raise CompressionError(f"total_steps must be a positive integer, got {total_steps!r}")
    if not isinstance(step, (int, np.integer)) or step < 0:
        raise CompressionError(f"step must be a non-negative integer, got {step!r}")
    t0, t1 = start * total_steps, end * total_steps
    if step >= t1:
        return final_sparsity
    if step <= t0:
        return initial
    remaining = 1.0 - (step - t0) / (t1 - t0)
    return final_sparsity + (initial - final_sparsity) * remaining ** 3


def sparsity_report(model: nn.Module) -> dict:
    """Fraction of exact zeros in the prunable weights (:func:`prunable_weights`), overall and per weight.

    Returns:
        ``{"sparsity": float, "zeros": int, "total": int, "per_weight": {name: float}}``; fractions in ``[0, 1]``.

    Raises:
        CompressionError: see :func:`prunable_weights`.
    """
    per, zeros, total = {}, 0, 0
    for name, w in prunable_weights(model).items():
        z = int((w.detach() == 0).sum())
        per[name] = z / w.numel()
        zeros += z
        total += w.numel()
    return {"sparsity": zeros / total, "zeros": zeros, "total": total, "per_weight": per}


# ----------------------------------------------------------------------------------------------------------------
# training: the objective (shared with ufkit.compression.qat) and gradual pruning


def _teacher_tensor(teacher_logits, n_rows: int, num_labels: int | None) -> torch.Tensor | None:
    """Teacher logits as a float32 CPU tensor of shape ``(n_rows, num_labels)``, checked; None stays None."""
    if teacher_logits is None:
        return None
    t = torch.as_tensor(np.asarray(teacher_logits, dtype=np.float32) if not torch.is_tensor(teacher_logits)
                        else teacher_logits.detach().float().cpu())
    if t.dim() != 2 or t.shape[0] != n_rows or (num_labels is not None and t.shape[1] != num_labels):
        raise CompressionError(f"teacher_logits must have shape ({n_rows}, {num_labels or 'num_labels'}) "
                               f"(one row per training example, in train_ds's order), got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise CompressionError("teacher_logits must be finite")
    return t.contiguous()


def _teacher_id(teacher: torch.Tensor | None) -> str | None:
    """A 16-hex-digit hash of the teacher logits (for cache recipes)."""
    if teacher is None:
        return None
    return hashlib.sha256(teacher.numpy().tobytes() + str(tuple(teacher.shape)).encode()).hexdigest()[:16]


def _data_id(train_ds) -> str:
    """:func:`ufkit.cache.fingerprint_texts` of the training split (its texts and labels, else its token ids)."""
    from ..cache import fingerprint_texts

    cols = train_ds.column_names
    labels = train_ds["label"] if "label" in cols else None
    if "text" in cols:
        return fingerprint_texts(train_ds["text"], labels)
    return fingerprint_texts((" ".join(map(str, ids)) for ids in train_ds["input_ids"]), labels)


def _objective(model, tokenizer, train_ds, cfg, teacher: torch.Tensor | None, temperature: float, alpha: float):
    """``(trainee, loader, loss_fn)`` for :func:`ufkit.training.train_loop`: distillation's
    (:func:`ufkit.compression.distillation.distillation_objective`) from precomputed teacher logits, ``alpha * kd_loss
    + (1 - alpha) * CE`` (Hinton et al. 2015), or plain cross-entropy without them."""
    import dataclasses

    from .distillation import DistillConfig, distillation_objective

    base = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name in
            {g.name for g in dataclasses.fields(DistillConfig)}}
    dcfg = DistillConfig(**{**base, "temperature": temperature, "alpha": alpha if teacher is not None else 0.0})
    trainee, loader, loss_fn, _ = distillation_objective(model, tokenizer, train_ds, dcfg, teacher_logits=teacher)
    return trainee, loader, loss_fn


def _training_recipe(model, train_ds, cfg, teacher: torch.Tensor | None, temperature: float, alpha: float) -> dict:
    """What a cached fine-tune of this module or :mod:`~ufkit.compression.qat` depends on besides its own
    settings: the config, the starting weights, the data and the distillation inputs."""
    from ..cache import fingerprint_model

    return {"config": cfg.recipe(), "model_id": fingerprint_model(model), "data_id": _data_id(train_ds),
            "n_train": len(train_ds), "teacher_id": _teacher_id(teacher),
            "temperature": temperature if teacher is not None else None,
            "alpha": alpha if teacher is not None else None}


def _check_kd(temperature, alpha) -> tuple[float, float]:
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise CompressionError(f"temperature must be a positive number, got {temperature!r}")
    return float(temperature), _check_fraction("alpha", alpha, upper_inclusive=True)


def _check_pruning(sparsity, scope, update_every, start, end) -> float:
    """Check :func:`sparse_finetune`'s pruning arguments; return ``sparsity`` as a float."""
    sparsity = _check_fraction("sparsity", sparsity)
    if scope not in SCOPES:
        raise CompressionError(f"scope must be one of {SCOPES}, got {scope!r}")
    if not isinstance(update_every, int) or update_every < 1:
        raise CompressionError(f"update_every must be a positive integer, got {update_every!r}")
    sparsity_at(0, 1, sparsity, start=start, end=end)  # checks start and end
    return sparsity


def _total_steps(loader, cfg) -> int:
    """The number of steps :func:`ufkit.training.train_loop` will take (the same formula)."""
    from accelerate import PartialState

    per_epoch = math.ceil(len(loader) / PartialState().num_processes)
    return cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))


def sparse_finetune(model, tokenizer, train_ds, *, sparsity: float, scope: str = "global", cfg=None,
                    teacher_logits=None, temperature: float = 2.0, alpha: float = 0.5, update_every: int = 50,
                    start: float = 0.0, end: float = 0.7, progress: bool = True):
    """Gradual magnitude pruning while fine-tuning (Zhu & Gupta 2017; Han et al., NeurIPS 2015), in place.

    Every ``update_every`` steps the masks are recomputed at :func:`sparsity_at`'s sparsity for that step (a cubic
    ramp from 0 at ``start`` to ``sparsity`` at ``end`` of the run); after every step the current masks are applied
    again, since the AdamW update fills the pruned weights in (``train_loop``'s ``after_step``). At the end the
    masks at ``sparsity`` are computed and applied once more, so the result has exactly ``round(sparsity * n)``
    zeros among the ``n`` prunable weights (``"global"``; per weight for ``"per_layer"``).

    With ``teacher_logits`` the loss is ``alpha * kd_loss(student, teacher, temperature) + (1 - alpha) * CE``
    (Hinton et al. 2015's soft labels; :func:`ufkit.distill.kd_loss`), as Sanh et al. (Movement Pruning, NeurIPS
    2020) prune BERT; otherwise plain cross-entropy.

    Args:
        model: a sequence classifier (``PreTrainedModel``), usually the fine-tuned teacher itself.
        tokenizer: pads the batches.
        train_ds (`datasets.Dataset`): ``text`` (tokenised here when needed) or :func:`ufkit.data.tokenize` output, and ``label``.
        sparsity: final fraction of prunable weights that are zero, in ``[0, 1)``.
        scope: ``"global"`` or ``"per_layer"`` (see :func:`magnitude_masks`).
        cfg (:class:`ufkit.training.TrainConfig`): hyper-parameters (default ``TrainConfig()``).
        teacher_logits (`numpy.ndarray` or `torch.FloatTensor` of shape `(len(train_ds), num_labels)`): the
            teacher's logits for each training row, in ``train_ds``'s order; None trains on the labels alone.
        temperature: distillation temperature ``T > 0``.
        alpha: weight of the distillation loss, in ``[0, 1]``.
        update_every: steps between mask updates, ``>= 1``.
        start, end: fractions of the run where the sparsity ramp begins and ends (see :func:`sparsity_at`).

    Returns:
        ``(model, history)``: the pruned model (eval mode) and ``train_loop``'s history plus ``sparsity`` (the
        zeros' fraction at the end), ``target_sparsity``, ``scope`` and ``schedule`` (``[step, sparsity]`` at each
        mask update).

    Raises:
        CompressionError: ``sparsity`` outside ``[0, 1)``, unknown ``scope``, bad ``update_every``,
            ``temperature`` or ``alpha``, a ``train_ds`` without text or labels, or an empty one, or ``teacher_logits`` of the wrong
            shape.
        UfkitError: a bad ``cfg``.
    """
    from ..training import TrainConfig, train_loop

    sparsity = _check_pruning(sparsity, scope, update_every, start, end)
    temperature, alpha = _check_kd(temperature, alpha)
    cfg = cfg or TrainConfig()
    cfg.validate()
    teacher = _teacher_tensor(teacher_logits, len(train_ds), getattr(model.config, "num_labels", None))
    trainee, loader, loss_fn = _objective(model, tokenizer, train_ds, cfg, teacher, temperature, alpha)
    total = _total_steps(loader, cfg)
    state = {"masks": None}
    schedule = []

    def update(step: int) -> None:
        if step % update_every == 0 or step == total:
            target = sparsity_at(step, total, sparsity, start=start, end=end)
            state["masks"] = magnitude_masks(model, target, scope=scope)
            schedule.append([step, target])
        if state["masks"] is not None:
            apply_masks_(model, state["masks"])

    update(0)
    history = train_loop(trainee, loader, loss_fn, cfg, desc=f"pruning to {sparsity:.0%}", progress=progress,
                         after_step=update)
    apply_masks_(model, magnitude_masks(model, sparsity, scope=scope))
    model.eval()
    history.update({"sparsity": sparsity_report(model)["sparsity"], "target_sparsity": sparsity, "scope": scope,
                    "schedule": schedule})
    return model, history


def load_or_sparse_finetune(folder, *, model, tokenizer, train_ds, sparsity: float, scope: str = "global",
                            cfg=None, teacher_logits=None, temperature: float = 2.0, alpha: float = 0.5,
                            update_every: int = 50, start: float = 0.0, end: float = 0.7, retrain: bool = False,
                            progress: bool = True):
    """:func:`sparse_finetune` through :func:`ufkit.cache.load_or_make`: load the pruned checkpoint in ``folder``
    if it was made from the same recipe, else prune a copy of ``model`` and save it there.

    The recipe holds every setting (``cfg.recipe()``, sparsity, scope, schedule, distillation settings), the starting
    model's weights (:func:`ufkit.cache.fingerprint_model`), the training data (texts and labels) and a hash of the
    teacher logits. ``model`` itself is never changed (a deep copy is trained).

    Args:
        folder: the checkpoint folder (``save_pretrained`` layout, safetensors) plus ``cache_info.json``.
        model: the starting classifier (copied, never changed); the other arguments are :func:`sparse_finetune`'s.
        retrain: prune again even when a current copy exists.

    Returns:
        ``(model, tokenizer, info)``: the pruned classifier as :func:`ufkit.models.load_model` loads it (dense
        weights with zeros), its tokenizer, and the cache info (recipe, history, machine).

    Raises:
        CompressionError, UfkitError: see :func:`sparse_finetune`.
    """
    from ..cache import load_or_make_model
    from ..training import TrainConfig

    sparsity = _check_pruning(sparsity, scope, update_every, start, end)
    temperature, alpha = _check_kd(temperature, alpha)
    cfg = cfg or TrainConfig()
    cfg.validate()
    teacher = _teacher_tensor(teacher_logits, len(train_ds), getattr(model.config, "num_labels", None))
    recipe = {"method": "gradual magnitude pruning (Zhu & Gupta 2017)", "sparsity": sparsity, "scope": scope,
              "update_every": update_every, "start": start, "end": end,
              **_training_recipe(model, train_ds, cfg, teacher, temperature, alpha)}

    def make():
        student = copy.deepcopy(model)
        student, history = sparse_finetune(student, tokenizer, train_ds, sparsity=sparsity, scope=scope, cfg=cfg,
                                           teacher_logits=teacher, temperature=temperature, alpha=alpha,
                                           update_every=update_every, start=start, end=end, progress=progress)
        return (student, tokenizer), history

    return load_or_make_model(folder, recipe, make, retrain=retrain)


# ----------------------------------------------------------------------------------------------------------------
# the sparse path


class SparseLinear(nn.Module):
    """A Linear layer whose weight is stored in CSR and multiplied with torch's sparse kernels.

    ``y = x Wᵀ + b`` is computed as ``(b + W xᵀ)ᵀ`` with ``torch.addmm(bias, W_csr, xᵀ)``: sparse `(out, in)`
    times dense `(in, N)`, the product torch's CSR kernels (MKL on CPU) implement. ``F.linear(x, W_csr)`` and
    ``torch.addmm(b, x, W_csrᵀ)`` give the same numbers but fail under ``torch.inference_mode`` (torch 2.13:
    "Cannot set version_counter for inference tensor"), which :func:`ufkit.evaluate.predict_logits` uses.
    Work: ``2 * nnz * N`` FLOPs instead of ``2 * in * out * N``, but the sparse kernel reads ``x`` irregularly and
    cannot use the dense GEMM's blocking, so it pays off only at high sparsity (Gale, Zaharia, Young & Elsen,
    "Sparse GPU Kernels for Deep Learning", SC 2020); the chapter measures where on its CPU.

    Args:
        linear: the dense layer; its weight (`(out_features, in_features)`) is converted with int32 indices.

    Shapes:
        input `(..., in_features)`, output `(..., out_features)`, any number of leading dimensions.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta": known, and said in the chapter
            w = linear.weight.detach().float().to_sparse_csr()
            # int32 indices: half the index bytes, and what MKL's sparse BLAS (LP64) takes natively
            csr = torch.sparse_csr_tensor(w.crow_indices().to(torch.int32), w.col_indices().to(torch.int32),
                                          w.values(), size=tuple(w.shape), check_invariants=False)
        self.register_buffer("weight", csr)
        if linear.bias is not None:
            self.register_buffer("bias", linear.bias.detach().float().clone())
        else:
            self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        xt = x.reshape(-1, self.in_features).t()                                        # (in, N)
        if self.bias is not None:
            y = torch.addmm(self.bias.unsqueeze(1), self.weight, xt)                        # (out, N)
        else:
            y = torch.sparse.mm(self.weight, xt)                                            # (out, N)
        return y.t().reshape(*lead, self.out_features)                                      # (..., out)

    def extra_repr(self) -> str:
        nnz = self.weight.values().numel()
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nnz={nnz} ({1 - nnz / max(1, self.in_features * self.out_features):.1%} sparse)")


def to_sparse_csr(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose prunable Linear layers are :class:`SparseLinear` (CSR weights).

    The copy computes the same logits as ``model`` (within 1e-5; the sum order differs) and is meant for timing
    the sparse path on CPU in float32; it is not saved (``save_pretrained`` writes dense checkpoints: use the
    pruned dense model for that). ``model`` is unchanged.

    Returns:
        the copy, in eval mode, with no parameter requiring gradients.

    Raises:
        CompressionError: see :func:`prunable_weights`.
    """
    names = [n[: -len(".weight")] for n in prunable_weights(model)]
    sparse = copy.deepcopy(model).float().eval()
    modules = dict(sparse.named_modules())
    for name in names:
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else sparse, child, SparseLinear(modules[name]))
    sparse.requires_grad_(False)
    return sparse


def csr_size_mb(model: nn.Module) -> float:
    """Megabytes (10^6 bytes) the model takes with its prunable weights in CSR and everything else dense.

    A prunable weight of shape `(out, in)` with ``nnz`` non-zeros costs ``nnz * 4`` (float32 values) + ``nnz * 4``
    (int32 column indices) + ``(out + 1) * 4`` (int32 row pointers) bytes, so CSR is smaller than dense only above
    50 % sparsity; every other parameter and buffer counts ``numel * element_size`` (shared tensors once).
    Works on the pruned dense model and on :func:`to_sparse_csr`'s copy alike (same number).

    Returns:
        size in MB, comparable with :func:`ufkit.measure.inputs.model_size_mb`.
    """
    prunable = {}
    try:
        prunable = {id(p): p for p in prunable_weights(model).values()}
    except CompressionError:  # a CSR copy has no dense Linear left in its encoder
        pass
    total, seen = 0, set()
    for t in list(model.parameters()) + list(model.buffers()):
        if t.layout == torch.sparse_csr:
            total += t.values().numel() * (4 + 4) + t.crow_indices().numel() * 4  # values + columns, rows
            continue
        if id(t) in prunable:
            nnz = int((t.detach() != 0).sum())
            total += nnz * (4 + 4) + (t.shape[0] + 1) * 4
            continue
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total / 1e6
