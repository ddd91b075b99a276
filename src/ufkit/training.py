"""The one training loop, and fine-tuning a sequence classifier with it.

Every optimizer step in ufkit goes through :func:`train_loop`: fine-tuning (:func:`finetune`), FastBERT's branch
training, the NAS super-model's sandwich rule and its head warm-up all call it with their own loss. It is written
against :class:`accelerate.Accelerator`, so the same code runs on one CPU, one GPU, or several processes under
``accelerate launch``; AdamW with one no-decay rule (:func:`param_groups`), a transformers learning-rate schedule
(linear warm-up then decay by default), gradient clipping, seeding, a tqdm bar and a loss history.

Mixed precision: ``TrainConfig.mixed_precision="auto"`` trains in bfloat16 autocast (float32 master weights,
accelerate's ``mixed_precision="bf16"``) on CPUs with native bf16 arithmetic (``avx512_bf16`` or AMX-BF16) and
on GPUs that support it, in float32 elsewhere. Chapter 0 compares the two on the baseline.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

from . import UfkitError

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train_loop`.

    Attributes:
        learning_rate: peak AdamW learning rate, reached after ``warmup_ratio`` of the steps, then decayed to 0 by
            ``lr_scheduler_type`` (linear: Devlin et al. 2019's schedule).
        epochs: passes over the training data; fractions allowed (0.5 = half an epoch).
        max_steps: stop after this many optimizer steps if set (overrides ``epochs``).
        batch_size: sequences per step and process.
        warmup_ratio: fraction of the steps spent warming the learning rate up from 0, in ``[0, 1)``.
        weight_decay: AdamW's decoupled weight decay, applied to matrices and embeddings but not to biases and
            normalization weights (:func:`param_groups`).
        max_grad_norm: gradient clipping threshold (L2 norm over all trained parameters).
        max_length: longer sentences are truncated to this many tokens.
        seed: seeds torch, numpy and Python (``accelerate.utils.set_seed``) and the order of the batches.
        mixed_precision: ``"auto"`` (bf16 where the hardware has native bf16, else float32), ``"no"``, ``"bf16"``
            or ``"fp16"`` (GPU only).
        lr_scheduler_type: a transformers schedule name (``"linear"``, ``"cosine"``, ``"constant_with_warmup"``).
        log_every: steps per point of the loss history (the mean loss over those steps).
    """

    learning_rate: float = 5e-5
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 32
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_length: int = 128
    seed: int = 42
    mixed_precision: str = "auto"
    lr_scheduler_type: str = "linear"
    log_every: int = 50

    def validate(self) -> None:
        """Raise :class:`UfkitError` naming the first out-of-range field."""
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise UfkitError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not self.learning_rate > 0:
            raise UfkitError(f"learning_rate must be positive, got {self.learning_rate}")
        if not self.epochs > 0 and not self.max_steps:
            raise UfkitError(f"epochs must be positive, got {self.epochs}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise UfkitError(f"max_steps must be a positive integer or None, got {self.max_steps!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise UfkitError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not self.weight_decay >= 0:
            raise UfkitError(f"weight_decay must be non-negative, got {self.weight_decay}")
        if not self.max_grad_norm > 0:
            raise UfkitError(f"max_grad_norm must be positive, got {self.max_grad_norm}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise UfkitError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if not isinstance(self.log_every, int) or self.log_every < 1:
            raise UfkitError(f"log_every must be a positive integer, got {self.log_every!r}")

    def recipe(self) -> dict:
        """The fields as a dict, with ``mixed_precision`` resolved (:func:`resolve_mixed_precision`), for caches."""
        return {**asdict(self), "mixed_precision": resolve_mixed_precision(self.mixed_precision)}


def resolve_mixed_precision(mode: str = "auto") -> str:
    """``"bf16"`` or ``"no"`` for ``"auto"``: bf16 on CPUs with native bf16 (``avx512_bf16``, AMX-BF16) or a GPU
    that supports it, else float32; other modes are returned as they are."""
    if mode != "auto":
        return mode
    import torch

    from .measure.machine import native_bf16

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if native_bf16() else "no"


def _accelerator(mixed_precision: str):
    """An Accelerator with this mixed precision. accelerate's state is process-wide and refuses a second mode;
    in a single process a different mode is safe to switch to, so the state is reset first."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    mode = resolve_mixed_precision(mixed_precision)
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", mode) != mode and state.get("num_processes", 1) == 1:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mode)


def param_groups(named_parameters: Iterable, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: decay for weights of rank ≥ 2 (matrices, embeddings), none for rank-1 tensors
    (biases, LayerNorm weights), the usual rule for transformers (Loshchilov & Hutter 2019; BERT's code).

    Args:
        named_parameters: ``(name, parameter)`` pairs; parameters without ``requires_grad`` are skipped.

    Returns:
        two groups, ``[{"params": decayed, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]``.
    """
    decay, no_decay = [], []
    for _, p in named_parameters:
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_loop(model, loader, loss_fn: Callable, cfg: TrainConfig | None = None, *,
               parameters: Iterable | None = None, desc: str = "training", progress: bool = True,
               on_start: Callable[[], object] | None = None,
               after_step: Callable[[int], None] | None = None) -> dict:
    """Train ``model`` with ``loss_fn`` on ``loader``'s batches: ufkit's one optimizer loop.

    Each step: ``loss_fn(batch)`` under the accelerator's autocast, back-propagation, gradient clipping, one AdamW
    step, one scheduler step. ``loss_fn`` returns a scalar loss tensor, or an iterable of ``(name, loss)`` pairs
    (e.g. the sandwich rule's sub-models); each pair is back-propagated as it comes, so only one graph is alive at
    a time, and the gradients accumulate before the single optimizer step.

    Args:
        model: the module to train (``accelerator.prepare``-d; put in train mode, then ``on_start`` is called,
            and in eval mode at the end, even on error).
        loader: an iterable of batches with ``len()``, normally a ``torch.utils.data.DataLoader``; it is
            re-iterated for further epochs (``batch_sampler.set_epoch`` is called when present).
        loss_fn: ``batch -> loss`` or ``batch -> iterable of (name, loss)``.
        cfg: hyper-parameters (default :class:`TrainConfig`).
        parameters: ``(name, parameter)`` pairs to train (default: the model's with ``requires_grad``).
        desc: the progress bar's label.
        on_start: called after ``model.train()``, e.g. to put frozen parts back in eval mode.
        after_step: called with the step number (1, 2, ...) right after each optimizer and scheduler step,
            before the loss is logged, e.g. to re-apply sparsity masks that the update has filled in.

    Returns:
        dict with ``steps``, ``train_seconds``, ``losses`` (mean total loss per ``cfg.log_every`` steps),
        ``final_loss``, ``named_losses`` (name -> list, when ``loss_fn`` yields pairs), ``processes`` and
        ``mixed_precision``.

    Raises:
        UfkitError: a bad ``cfg``, an empty loader, or nothing to train.
    """
    import torch
    from accelerate.utils import set_seed
    from .progress import progress_bar
    from transformers import get_scheduler

    cfg = cfg or TrainConfig()
    cfg.validate()
    if len(loader) == 0:
        raise UfkitError("the training data is empty")
    named = [(n, p) for n, p in (parameters if parameters is not None else model.named_parameters())
             if p.requires_grad]
    if not named:
        raise UfkitError("nothing to train: no parameter requires a gradient")
    accelerator = _accelerator(cfg.mixed_precision)
    set_seed(cfg.seed)
    steps_per_epoch = math.ceil(len(loader) / accelerator.num_processes)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(param_groups(named, cfg.weight_decay), lr=cfg.learning_rate)
    scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total),
                              num_training_steps=total)
    prepared, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    params = [p for _, p in named]
    step, epoch, losses, window, named_losses, named_window = 0, 0, [], [], {}, {}
    start = time.perf_counter()
    bar = progress_bar(total=total, desc=desc, disable=not (progress and accelerator.is_local_main_process))
    try:
        prepared.train()
        if on_start is not None:
            on_start()
        while step < total:
            sampler = getattr(loader, "batch_sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            elif hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            for batch in loader:
                optimizer.zero_grad(set_to_none=True)
                step_loss = 0.0
                with accelerator.autocast():
                    out = loss_fn(batch)
                    pairs = [("loss", out)] if isinstance(out, torch.Tensor) else out
                    for name, loss in pairs:
                        accelerator.backward(loss)
                        value = float(loss.detach())
                        step_loss += value
                        if not isinstance(out, torch.Tensor):
                            named_window.setdefault(name, []).append(value)
                accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                step += 1
                if after_step is not None:
                    after_step(step)
                window.append(step_loss)
                if len(window) == cfg.log_every or step == total:
                    losses.append(sum(window) / len(window))
                    window = []
                    for name, vals in named_window.items():
                        if vals:
                            named_losses.setdefault(name, []).append(sum(vals) / len(vals))
                    named_window = {k: [] for k in named_window}
                    bar.set_postfix(loss=f"{losses[-1]:.4f}")
                bar.update(1)
                if step >= total:
                    break
            epoch += 1
    finally:
        bar.close()
        # accelerate wraps forward in autocast for mixed precision; the trained model must run as it is saved
        accelerator.unwrap_model(prepared, keep_fp32_wrapper=False)
        model.eval()
    return {"steps": step, "train_seconds": time.perf_counter() - start, "losses": losses,
            "final_loss": losses[-1] if losses else float("nan"), "named_losses": named_losses,
            "processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision}


def finetune(model, tokenizer, train_ds, cfg: TrainConfig | None = None, *, progress: bool = True):
    """Fine-tune a sequence classifier on a tokenised training split with cross-entropy (the model's own loss).

    Args:
        model: a ``PreTrainedModel`` with a sequence-classification head.
        tokenizer: pads the batches.
        train_ds (`datasets.Dataset`): output of :func:`ufkit.data.tokenize` with a ``label`` column.
        cfg: hyper-parameters; defaults to :class:`TrainConfig`.

    Returns:
        ``(model, history)``: the model (eval mode) and :func:`train_loop`'s history.

    Raises:
        UfkitError: a bad ``cfg`` or an empty split.
    """
    from .data import make_dataloader

    cfg = cfg or TrainConfig()
    cfg.validate()
    if len(train_ds) == 0:
        raise UfkitError("the training split is empty")
    loader = make_dataloader(train_ds, tokenizer, cfg.batch_size, shuffle=True, seed=cfg.seed)
    history = train_loop(model, loader, lambda batch: model(**batch).loss, cfg, desc="fine-tuning",
                         progress=progress)
    return model, history


def load_or_finetune(output_dir: str | Path, *, model_name: str | None = None, task=None,
                     cfg: TrainConfig | None = None, n_train: int | None = None, retrain: bool = False,
                     progress: bool = True):
    """Load the fine-tuned checkpoint in ``output_dir`` if it was trained from the same inputs, else train it.

    The cache (:func:`ufkit.cache.load_or_make`) matches on the recipe: the hyper-parameters (mixed precision
    resolved for this machine), the training-set size, the starting model's files and the training data's content.

    Args:
        output_dir: checkpoint folder (``save_pretrained`` layout, safetensors) plus ``cache_info.json``.
        model_name: backbone to start from (None: the packaged MiniLM-L6-H384).
        task (:class:`ufkit.data.TaskData`): the task; None loads SST-2.
        n_train: train on a seeded random subset of this many examples (None: all).
        retrain: ignore a cached checkpoint.

    Returns:
        ``(model, tokenizer, info)``; ``info`` holds the recipe, the steps, ``train_seconds``, the loss history
        and the machine it was trained on.
    """
    from .cache import fingerprint_source, fingerprint_texts, load_or_make_model
    from .data import load_sst2, subset, tokenize
    from .models import load_model, resolve_model

    cfg = cfg or TrainConfig()
    cfg.validate()
    task = task if task is not None else load_sst2()
    train = subset(task["train"], n_train, seed=cfg.seed)
    source = resolve_model(model_name)
    recipe = {"config": cfg.recipe(), "n_train_requested": n_train, "n_train": len(train),
              "model_name": model_name or "sentence-transformers/all-MiniLM-L6-v2 (packaged)",
              "model_id": fingerprint_source(source),
              "data_id": fingerprint_texts(train["text"], train["label"]), "label_names": list(task.label_names)}

    def make():
        model, tokenizer = load_model(source, label_names=task.label_names)
        model, history = finetune(model, tokenizer, tokenize(train, tokenizer, cfg.max_length), cfg,
                                  progress=progress)
        return (model, tokenizer), {"data": task.source, **history}

    return load_or_make_model(output_dir, recipe, make, retrain=retrain)
