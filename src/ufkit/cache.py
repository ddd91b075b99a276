"""The one cache helper: load a result if it was made from the same inputs, else make it and store it.

An expensive result (a fine-tuned checkpoint, trained branches, a super-model, a quantized variant, a search)
is a folder with a ``cache_info.json`` written last. :func:`load_or_make` reuses the folder only when the
*recipe* stored there equals the one asked for; a recipe names everything the result depends on: settings,
:func:`fingerprint` of the model files it started from, :func:`fingerprint_texts` of its data. A checkpoint does
not depend on the machine and is reused on any; timings do, and live in the results store instead
(:meth:`ufkit.measure.store.ResultsStore.load_or_measure`, keyed by machine).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

INFO_FILE = "cache_info.json"
#: Files whose content defines a model folder (weights, config, tokenizer); other files (reports, logs) do not.
MODEL_FILES = ("config.json", "*.safetensors", "*.onnx", "*.onnx.data", "tokenizer.json", "tokenizer_config.json",
               "vocab.txt", "special_tokens_map.json", "*_config.json")


def json_default(value):
    """``json.dumps``'s ``default``: numpy scalars as numbers, anything else as its string."""
    return value.item() if hasattr(value, "item") else str(value)


def fingerprint(path: str | os.PathLike, patterns: Iterable[str] = MODEL_FILES) -> str:
    """A 16-hex-digit content hash of a model folder (or one file): names and bytes of the files matching
    ``patterns``, in sorted order, so the same files give the same fingerprint wherever they live.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"cannot fingerprint {str(path)!r}: it does not exist")
    if path.is_file():
        files = [path]
    else:
        files = sorted({f for pat in patterns for f in path.glob(pat) if f.is_file() and f.name != INFO_FILE})
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def fingerprint_source(name_or_path: str | os.PathLike) -> str:
    """:func:`fingerprint` of a local model folder, or the hub id itself for a model that is not local."""
    return fingerprint(name_or_path) if Path(name_or_path).is_dir() else str(name_or_path)


def fingerprint_model(model) -> str:
    """A 16-hex-digit hash of a model's weights in memory (names, shapes, dtypes and bytes of its state dict)."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint_texts(texts: Iterable, labels: Iterable | None = None) -> str:
    """A 16-hex-digit hash of a list of texts (and labels), for recipes that depend on data."""
    h = hashlib.sha256()
    for t in texts:
        h.update(str(t).encode() + b"\0")
    if labels is not None:
        h.update(b"labels\0" + ",".join(str(int(x)) for x in labels).encode())
    return h.hexdigest()[:16]


def read_info(path: str | os.PathLike) -> dict | None:
    """The ``cache_info.json`` of a cached folder, or None when there is none."""
    f = Path(path).expanduser() / INFO_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def is_current(path: str | os.PathLike, recipe: dict) -> bool:
    """True when ``path`` holds a complete cached result made from ``recipe``."""
    info = read_info(path)
    return info is not None and info.get("recipe") == json.loads(json.dumps(recipe, default=json_default))


def load_or_make(path: str | os.PathLike, recipe: dict, make: Callable[[], tuple[Any, dict]], *,
                 save: Callable[[Any, Path], Any], load: Callable[[Path], Any], retrain: bool = False):
    """Load the result cached in ``path`` if it was made from ``recipe``, else make, save and return it.

    Args:
        path: the cache folder.
        recipe: everything the result depends on (JSON-serialisable): settings and input fingerprints.
        make: ``() -> (obj, info)``; ``info`` is stored beside the recipe (steps, seconds, losses...).
        save: ``(obj, folder) -> None`` writes the result into a fresh folder.
        load: ``folder -> obj`` reads it back.
        retrain: make it even when a current copy exists.

    Returns:
        ``(obj, info)``, ``info`` as stored: ``recipe``, ``make``'s info, ``machine`` (where it was made) and
        ``created``. Under ``accelerate launch`` every process makes, the main process saves, all return.

    The folder is written through :func:`ufkit.models.atomic_folder` with ``cache_info.json`` last, so an
    interrupted run leaves nothing that loads as current.
    """
    from .measure.machine import machine_info
    from .models import atomic_folder
    from .progress import announce

    path = Path(path).expanduser()
    if not retrain and is_current(path, recipe):
        return load(path), read_info(path)
    announce(f"making {path.name}: no cached copy from this recipe")
    obj, made = make()
    info = {"recipe": recipe, **made, "machine": machine_info(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    text = json.dumps(info, indent=2, default=json_default)
    try:
        from accelerate import PartialState

        state = PartialState()
        main = state.is_main_process
    except ImportError:  # accelerate is a dependency; this keeps the helper usable without it
        state, main = None, True
    if main:
        with atomic_folder(path) as tmp:
            save(obj, tmp)
            (tmp / INFO_FILE).write_text(text)
    if state is not None:
        state.wait_for_everyone()
    return obj, json.loads(text)


def load_or_make_model(path: str | os.PathLike, recipe: dict, make: Callable[[], tuple[Any, dict]], *,
                       retrain: bool = False):
    """:func:`load_or_make` for a ``(model, tokenizer)`` pair saved as a checkpoint folder.

    ``make`` returns ``((model, tokenizer), info)``; the pair is written with :func:`ufkit.models.save_model`
    (safetensors) and read back with :func:`ufkit.models.load_model`, so the cached folder is an ordinary model
    folder that every command loads.

    Returns:
        ``(model, tokenizer, info)``.
    """
    from .models import load_model, save_model

    (model, tokenizer), info = load_or_make(path, recipe, make, save=lambda obj, folder: save_model(*obj, folder),
                                            load=load_model, retrain=retrain)
    return model, tokenizer, info
