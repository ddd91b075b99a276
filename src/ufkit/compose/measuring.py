"""Measuring every model a recipe makes, through the one measurement layer (:mod:`ufkit.measure`).

:class:`Measurer` is the default measurement of :func:`ufkit.compose.run_recipe` and :func:`ufkit.compose.search`:
accuracy on the held-out training sentences (what the budget is kept on) and on the dev split (what a report
quotes; never used to choose), FLOPs per sample, latency at batch 1 and at batch 32 with the throughput there,
and size. Any callable with the same signature may replace it (a cheap one in tests); one with a ``key()``
method has its rows kept in a results store (:meth:`ufkit.measure.store.ResultsStore.load_or_measure`, keyed by
the machine, the model and that key), so a resumed search measures nothing twice.

Every model is timed with :func:`ufkit.measure.measure_latency`, which runs *every* timing sentence once per
round in consecutive batches: an early-exit model's cost depends on the sentence, and the same method for all
models keeps their latencies comparable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

#: The columns a measurement has (missing ones are NaN).
COLUMNS = ("heldout_accuracy", "dev_accuracy", "dev_f1_macro", "flops_per_sample", "latency_ms",
           "batch_latency_ms", "throughput_seq_per_s", "size_mb", "n_heldout", "n_dev", "latency_batch_size",
           "throughput_batch_size", "n_timed")


def _predict(artifact, ds, batch_size: int = 64) -> np.ndarray:
    """Predicted label ids of ``artifact`` on a labeled split, `(n,)`."""
    from ..evaluate import predict_logits

    if artifact.state == "exits":
        return artifact.model.predict(ds, artifact.tokenizer, speed=artifact.speed or 0.0,
                                      batch_size=batch_size).labels
    return predict_logits(artifact, _tokenized(ds, artifact.tokenizer), artifact.tokenizer, batch_size).argmax(-1)


def _tokenized(ds, tokenizer, max_length: int = 128):
    """``ds`` tokenised as :func:`ufkit.data.tokenize` does, built directly rather than through ``Dataset.map``
    (which hashes the tokenizer, a noticeable cost per call for a 30k-word vocabulary)."""
    import datasets

    enc = tokenizer(list(ds["text"]), truncation=True, max_length=max_length)
    return datasets.Dataset.from_dict({**{k: list(v) for k, v in enc.items()}, "label": list(ds["label"])})


def accuracy(artifact, ds, batch_size: int = 64) -> float:
    """Accuracy (%) of an :class:`~ufkit.compose.steps.Artifact` (an early-exit model at its speed) on a labeled
    split (``text``, ``label``)."""
    labels = np.asarray(ds["label"])
    return float(100.0 * np.mean(_predict(artifact, ds, batch_size) == labels))


def _metrics(artifact, ds, batch_size: int) -> dict:
    from ..evaluate import compute_metrics

    num_labels = artifact.model.num_labels if artifact.state == "exits" else None
    return compute_metrics(np.asarray(ds["label"]), _predict(artifact, ds, batch_size), num_labels)


def flops_per_sample(artifact, texts) -> float:
    """Mean FLOPs per sentence of a PyTorch or early-exit artifact, each sentence run alone at its own length.

    A classifier's FLOPs are counted by :func:`ufkit.measure.count_flops`; its fast feedforward layers (whose
    kernels are not torch operators the counter sees) are counted as what a token visits
    (``flops_per_token``: the routers and one leaf) times its tokens. An early-exit model's FLOPs are its analytic
    count at its speed (:meth:`ufkit.early_exit.EarlyExitModel.predict`, checked against the counter in chapter 2).
    A runtime variant has no PyTorch graph: NaN (:func:`ufkit.compose.run_recipe` gives it its input's count, the
    same matrix products in int8).
    """
    import contextlib

    import torch

    from ..measure import count_flops

    texts = list(texts)
    if not texts:
        return float("nan")
    if artifact.state == "exits":
        return float(artifact.model.predict(texts, artifact.tokenizer, speed=artifact.speed or 0.0,
                                            batch_size=1).flops.mean())
    if artifact.state == "runtime":
        return float("nan")
    model = artifact.model.eval()
    per_token, hidden = 0, model.config.hidden_size
    fff_out = contextlib.nullcontext()
    if artifact.state == "fff":
        from ..fff.bert import feedforward_modules

        modules = list(feedforward_modules(model).values())
        counts = [m.flops_per_token() for m in modules]
        per_token = sum(c["fff"] if isinstance(c, dict) else c for c in counts)
        fff_out = _replaced(modules, lambda x: torch.zeros(*x.shape[:-1], hidden, dtype=x.dtype))
    total = 0
    with torch.inference_mode(), fff_out:
        for text in texts:
            batch = dict(artifact.tokenizer([text], truncation=True, max_length=128, return_tensors="pt"))
            total += count_flops(lambda: model(**batch)) + per_token * int(batch["attention_mask"].sum())
    return total / len(texts)


class _replaced:
    """Within the block, every module of ``modules`` computes ``fn(input)`` instead of its forward."""

    def __init__(self, modules, fn):
        self.modules, self.fn = modules, fn

    def __enter__(self):
        for m in self.modules:
            m.forward = self.fn  # an instance attribute shadows the class's forward

    def __exit__(self, *exc):
        for m in self.modules:
            del m.forward


def size_mb(artifact) -> float:
    """Size in MB (10^6 bytes): a PyTorch model's parameters and buffers, an early-exit model's with its branches,
    a runtime variant's files as the runtime counts them (its ``size_mb``), else its weight files (``*.onnx``,
    ``*.onnx.data``, ``*.safetensors``; not its tokenizer)."""
    from ..measure import model_size_mb

    if artifact.state == "runtime":
        own = getattr(artifact.model, "size_mb", None)  # ONNX Runtime, OpenVINO and CTranslate2 know their files
        if own is not None:
            return float(own() if callable(own) else own)
        files = [f for pat in ("*.onnx", "*.onnx.data", "*.safetensors") for f in Path(artifact.path).glob(pat)]
        return sum(f.stat().st_size for f in files) / 1e6
    return model_size_mb(artifact.model)


@dataclass
class Measurer:
    """The default measurement of a composed model (:func:`ufkit.compose.run_recipe`).

    Attributes:
        latency_batch_size: the batch of the latency objective (1: one request at a time).
        throughput_batch_size: the batch of the throughput objective (32).
        n_timed: sentences timed (a seeded sample of the dev split, else of the held-out sentences); every one
            runs once per round.
        rounds: passes over the timed sentences per batch size.
        n_warmup: untimed batches before each timing.
        n_flops: held-out sentences whose FLOPs are counted, one at a time.
        timing, flops: switch latency or FLOPs off (NaN), e.g. in tests.
        batch_size: sentences per forward pass when scoring accuracy.
    """

    latency_batch_size: int = 1
    throughput_batch_size: int = 32
    n_timed: int = 256
    rounds: int = 1
    n_warmup: int = 5
    n_flops: int = 32
    timing: bool = True
    flops: bool = True
    batch_size: int = 64

    def key(self) -> str:
        """A 16-hex-digit hash of the settings (what a stored measurement must match)."""
        from ..cache import fingerprint_texts

        return fingerprint_texts([f"{k}={v}" for k, v in sorted(asdict(self).items())])

    def __call__(self, artifact, *, heldout_ds, dev_ds=None, threads: int | None = None) -> dict:
        """Measure ``artifact`` (an :class:`~ufkit.compose.steps.Artifact`).

        Args:
            heldout_ds (`datasets.Dataset`): labeled held-out training sentences (the budget's).
            dev_ds (`datasets.Dataset`): the labeled split a report quotes, or None.
            threads: torch threads while timing (default :func:`ufkit.config.bench_threads`); ONNX Runtime's are
                fixed when the variant is loaded.

        Returns:
            dict with :data:`COLUMNS`: accuracies in %, FLOPs per sample, latency per call in ms at
            ``latency_batch_size``, latency per call and throughput (sentences/s) at ``throughput_batch_size``,
            size in MB.
        """
        from ..data import subset
        from ..measure import measure_latency

        row = dict.fromkeys(COLUMNS, float("nan"))
        row.update(heldout_accuracy=accuracy(artifact, heldout_ds, self.batch_size), n_heldout=len(heldout_ds),
                   latency_batch_size=self.latency_batch_size, throughput_batch_size=self.throughput_batch_size)
        if dev_ds is not None and len(dev_ds):
            m = _metrics(artifact, dev_ds, self.batch_size)
            row.update(dev_accuracy=m["accuracy"], dev_f1_macro=m["f1_macro"], n_dev=len(dev_ds))
        if self.flops:
            row["flops_per_sample"] = flops_per_sample(artifact, subset(heldout_ds, self.n_flops, seed=0)["text"])
        row["size_mb"] = size_mb(artifact)
        if self.timing:
            source = dev_ds if dev_ds is not None and len(dev_ds) else heldout_ds
            texts = list(subset(source, self.n_timed, seed=0)["text"])
            row["n_timed"] = len(texts)
            for b in dict.fromkeys((self.latency_batch_size, self.throughput_batch_size)):
                df = measure_latency({"model": artifact}, artifact.tokenizer, texts, batch_size=b,
                                     n_warmup=self.n_warmup, rounds=self.rounds, threads=threads)
                r = df.iloc[0]
                if b == self.latency_batch_size:
                    row["latency_ms"] = float(r["latency_ms_mean"])
                if b == self.throughput_batch_size:
                    row["batch_latency_ms"] = float(r["latency_ms_mean"])
                    row["throughput_seq_per_s"] = float(r["throughput_seq_per_s"])
        return row
