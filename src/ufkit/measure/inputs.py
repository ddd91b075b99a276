"""Inputs for latency measurements: real sentences, batched as serving sees them, and model sizes.

A benchmark never times a repeated word: inputs are real sentences of the task (SST-2 by default), at their
natural lengths padded per batch, or cut from a stream of real text to an exact length for latency-vs-length
curves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .. import UfkitError


def sample_texts(n: int = 512, split: str = "validation", seed: int = 0) -> list[str]:
    """``n`` real SST-2 sentences (seeded sample) for benchmark inputs."""
    from ..data import load_sst2, subset

    return list(subset(load_sst2()[split], n, seed=seed)["text"])


def make_batches(tokenizer, texts: Sequence[str], batch_size: int, seq_len: int | None = None,
                 n_batches: int = 8, seed: int = 0) -> list[dict]:
    """A pool of input batches made from real sentences.

    Args:
        texts: real sentences to draw from.
        batch_size: sequences per batch.
        seq_len: None keeps each sentence's natural length, padding to the longest in the batch (what serving
            sees); an int makes every row exactly ``seq_len`` tokens of real text, ``[CLS] ... [SEP]``, by
            concatenating consecutive sentences (for latency-vs-length curves).
        n_batches: size of the pool; the timed runs cycle through it.

    Returns:
        list of dicts of ``torch.LongTensor`` of shape ``(batch_size, length)``: ``input_ids``, ``attention_mask``
        (and ``token_type_ids``).

    Raises:
        UfkitError: ``batch_size`` or ``seq_len`` not a positive integer, or no texts.
    """
    import torch

    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise UfkitError(f"batch_size must be a positive integer, got {batch_size!r}")
    if seq_len is not None and (not isinstance(seq_len, (int, np.integer)) or seq_len < 3):
        raise UfkitError(f"seq_len must be an integer ≥ 3 or None, got {seq_len!r}")
    if not texts:
        raise UfkitError("texts is empty: a benchmark needs real sentences")
    rng = np.random.default_rng(seed)
    batches = []
    if seq_len is None:
        for _ in range(n_batches):
            pick = [texts[i] for i in rng.choice(len(texts), size=batch_size, replace=len(texts) < batch_size)]
            batches.append(dict(tokenizer(pick, padding=True, truncation=True, max_length=512,
                                          return_tensors="pt")))
        return batches
    stream = [t for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"] for t in ids]
    body = seq_len - 2
    if len(stream) < body:
        stream = stream * (body // max(1, len(stream)) + 1)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    for _ in range(n_batches):
        starts = rng.integers(0, len(stream) - body + 1, size=batch_size)
        rows = [[cls] + stream[s:s + body] + [sep] for s in starts]
        ids = torch.tensor(rows, dtype=torch.long)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                        "token_type_ids": torch.zeros_like(ids)})
    return batches


def model_size_mb(model=None, path: str | Path | None = None) -> float:
    """Size in MB (10^6 bytes): of the files under ``path`` if given, else of the model's parameters and buffers."""
    if path is not None:
        p = Path(path)
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
        return sum(f.stat().st_size for f in files) / 1e6
    if model is None or not hasattr(model, "parameters"):
        return float("nan")
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total / 1e6
