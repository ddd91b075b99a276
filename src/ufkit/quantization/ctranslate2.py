"""CTranslate2: the BERT encoder in int8 under CTranslate2, the pooler and classifier applied in fp32 by ufkit.

CTranslate2 converts BERT *encoders* (``BertModel``: embeddings, layers and the tanh pooler) but has no converter
for ``BertForSequenceClassification``. :func:`convert_ctranslate2` therefore saves the classifier's encoder
(``model.bert``) to a temporary folder, converts it with ``ctranslate2.converters.TransformersConverter``
(``quantization="int8"``: int8 weights, activations quantized per call), and saves the head's weights beside it
(``head.safetensors``: the pooler's dense layer and the classifier). :class:`CTranslate2Classifier` runs the
encoder, takes the ``[CLS]`` row of its last hidden state, and applies ``tanh(pooler)`` and the classifier with
torch, in fp32, as ``BertForSequenceClassification`` does in eval mode. (Torch rather than numpy: numpy's OpenBLAS
keeps its own threads spinning after a larger product, which would compete with CTranslate2's next call.)

Threads. ``intra_threads`` is the number of OpenMP threads one forward pass uses; ``inter_threads`` the number of
batches CTranslate2 runs concurrently, which helps only when several batches are submitted at once (ufkit submits
one at a time), so it is 1. ``intra_threads`` is the benchmark's thread count for batches of more than one
sentence and 1 for a single sentence: at batch 1 every op is small, and on a 2-core VM issue 13 measured
CTranslate2 5 times slower with 2 OpenMP threads than with 1 (the fork and join of each op's thread team cost
more than the op). The choice is recorded in the variant's marker and as ``backend_threads`` in benchmark rows.

Transformers 5 dropped ``BertConfig.position_embedding_type``, which CTranslate2's BERT loader asserts is
``"absolute"``; the converter here sets it (transformers 5's BERT has only absolute position embeddings).

Sources: CTranslate2's documentation (``Encoder``, ``forward_batch``, the parallel execution page on
``intra_threads`` and ``inter_threads``) and its Transformers converter (``BertLoader``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .common import QuantizeError, VariantSkipped

#: The file holding the head's weights: ``pooler.weight``, ``pooler.bias``, ``classifier.weight``, ``classifier.bias``.
HEAD_FILE = "head.safetensors"
#: The sub-folder of a variant holding the CTranslate2 model.
ENCODER_DIR = "ct2_encoder"


def check_convertible(model) -> None:
    """Raise :class:`~ufkit.quantization.common.VariantSkipped` unless CTranslate2 can run ``model``'s encoder.

    Raises:
        VariantSkipped: not a ``BertForSequenceClassification``, no pooler, a structurally pruned model (its
            layers keep different numbers of heads; CTranslate2's spec has one head count), or an activation
            CTranslate2 lacks.
    """
    from transformers import BertForSequenceClassification

    name = "ctranslate2_int8"
    if type(model) is not BertForSequenceClassification:
        raise VariantSkipped(name, f"CTranslate2 runs BertForSequenceClassification only, not "
                                   f"{type(model).__name__}")
    if getattr(model.bert, "pooler", None) is None:
        raise VariantSkipped(name, "the model has no pooler for the classifier to read")
    if getattr(model.config, "ufkit_structure", None):
        raise VariantSkipped(name, "a structurally pruned model: CTranslate2's encoder takes one head count and "
                                   "one width for every layer")
    if model.config.hidden_act not in ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "relu", "silu",
                                        "swish"):
        raise VariantSkipped(name, f"CTranslate2 has no {model.config.hidden_act!r} activation")


def convert_ctranslate2(model, tokenizer, dst: str | os.PathLike, *, quantization: str = "int8") -> dict:
    """Convert a ``BertForSequenceClassification`` for :class:`CTranslate2Classifier`, into ``dst``.

    Args:
        model: the fp32 classifier (left unchanged).
        tokenizer: saved with the encoder (CTranslate2's converter reads its vocabulary).
        dst: folder to write: ``ct2_encoder/`` (CTranslate2's ``model.bin``, ``config.json``, vocabulary) and
            ``head.safetensors``.
        quantization: CTranslate2's weight type: ``"int8"`` (the variant) or ``"float32"`` (for checking the head).

    Returns:
        ``{"quantization", "head"}``.

    Raises:
        VariantSkipped: see :func:`check_convertible`.
        QuantizeError: CTranslate2's converter fails.
    """
    import ctranslate2
    import torch
    from safetensors.numpy import save_file

    from ..models import _quiet_transformers

    check_convertible(model)

    class _Converter(ctranslate2.converters.TransformersConverter):
        def load_model(self, model_class, path, **kwargs):
            loaded = super().load_model(model_class, path, **kwargs)
            if not hasattr(loaded.config, "position_embedding_type"):
                loaded.config.position_embedding_type = "absolute"
            return loaded

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ct2-src-", dir=dst) as tmp, _quiet_transformers():
        model.bert.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            _Converter(tmp).convert(str(dst / ENCODER_DIR), quantization=quantization, force=True)
        except Exception as e:  # the converter raises assertion, value and runtime errors
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise QuantizeError(f"CTranslate2 cannot convert the encoder: {first}") from None
    with torch.no_grad():
        head = {"pooler.weight": model.bert.pooler.dense.weight, "pooler.bias": model.bert.pooler.dense.bias,
                "classifier.weight": model.classifier.weight, "classifier.bias": model.classifier.bias}
        save_file({k: v.detach().float().contiguous().numpy() for k, v in head.items()}, str(dst / HEAD_FILE))
    return {"quantization": quantization, "head": "pooler (tanh) + classifier, fp32 (torch)"}


class CTranslate2Classifier:
    """A CTranslate2 BERT encoder and an fp32 head, called like a Hugging Face classifier.

    ``clf(input_ids=..., attention_mask=..., token_type_ids=...)`` (or ``clf(batch_dict)``) takes
    ``torch.LongTensor`` or numpy arrays of shape ``(batch, seq_len)``, right-padded, and returns an object whose
    ``.logits`` is a float32 ``torch.Tensor`` of shape ``(batch, num_labels)``. ``.pooled(...)`` returns the
    pooler's output, shape ``(batch, hidden)``.

    Args:
        path: a folder written by :func:`convert_ctranslate2`.
        threads: the thread budget (default :func:`ufkit.config.bench_threads`); ``intra_threads`` is 1 for a
            single sentence and ``threads`` otherwise (module docstring), ``inter_threads`` is 1.
        compute_type: CTranslate2's compute type (default: what the weights were saved in, ``"int8"`` for the
            variant; ``"float32"`` runs an int8 model in fp32).
        batch1_threads: ``intra_threads`` for a batch of one sentence.

    Raises:
        QuantizeError: the folder is incomplete, CTranslate2 cannot load it, or ``threads`` is not positive.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, compute_type: str = "default",
                 batch1_threads: int = 1):
        from safetensors.torch import load_file

        from .. import config

        self.path = Path(path)
        if not (self.path / ENCODER_DIR / "model.bin").is_file() or not (self.path / HEAD_FILE).is_file():
            raise QuantizeError(f"{str(self.path)!r} is not a CTranslate2 variant (no {ENCODER_DIR}/model.bin "
                                f"or {HEAD_FILE})")
        self.threads = config.bench_threads() if threads is None else int(threads)
        if self.threads < 1 or batch1_threads < 1:
            raise QuantizeError(f"threads must be a positive integer, got {threads!r}")
        self.compute_type, self.batch1_threads = compute_type, int(batch1_threads)
        head = load_file(str(self.path / HEAD_FILE))
        self._pooler_w, self._pooler_b = head["pooler.weight"].float(), head["pooler.bias"].float()
        self._cls_w, self._cls_b = head["classifier.weight"].float(), head["classifier.bias"].float()
        self._encoders: dict[int, object] = {}
        self._encoder(self.threads_for(1))  # fail early on a bad folder

    def threads_for(self, batch_size: int) -> int:
        """The ``intra_threads`` a batch of ``batch_size`` sentences runs on."""
        return min(self.batch1_threads, self.threads) if batch_size == 1 else self.threads

    def _encoder(self, intra: int):
        if intra not in self._encoders:
            import ctranslate2

            try:
                self._encoders[intra] = ctranslate2.Encoder(str(self.path / ENCODER_DIR), device="cpu",
                                                            compute_type=self.compute_type, inter_threads=1,
                                                            intra_threads=intra)
            except Exception as e:  # CTranslate2 raises RuntimeError and ValueError
                raise QuantizeError(f"CTranslate2 cannot load {str(self.path)!r}: {str(e).splitlines()[0]}") from None
        return self._encoders[intra]

    @property
    def size_mb(self) -> float:
        """The variant's files in MB."""
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file()) / 1e6

    def pooled(self, batch: dict | None = None, **inputs):
        """The pooler's output ``tanh(W h_[CLS] + b)``: a float32 ``torch.Tensor`` of shape ``(batch, hidden)``."""
        import ctranslate2
        import torch
        import torch.nn.functional as F

        batch = {**(batch or {}), **inputs}
        if "input_ids" not in batch or "attention_mask" not in batch:
            raise QuantizeError(f"CTranslate2 needs input_ids and attention_mask, got {sorted(batch)}")

        def arr(x):
            return x.numpy() if hasattr(x, "numpy") else np.asarray(x)

        ids = np.ascontiguousarray(arr(batch["input_ids"]), dtype=np.int32)
        lengths = np.ascontiguousarray(arr(batch["attention_mask"]).sum(axis=1), dtype=np.int32)
        types = batch.get("token_type_ids")
        types = arr(types).tolist() if types is not None and arr(types).any() else None
        out = self._encoder(self.threads_for(ids.shape[0])).forward_batch(
            ctranslate2.StorageView.from_array(ids), ctranslate2.StorageView.from_array(lengths),
            token_type_ids=types)
        cls = torch.from_numpy(np.asarray(out.last_hidden_state, dtype=np.float32)[:, 0].copy())
        with torch.inference_mode():
            return torch.tanh(F.linear(cls, self._pooler_w, self._pooler_b))

    def __call__(self, batch: dict | None = None, **inputs):
        import torch
        import torch.nn.functional as F
        from transformers.modeling_outputs import SequenceClassifierOutput

        with torch.inference_mode():
            logits = F.linear(self.pooled(batch, **inputs), self._cls_w, self._cls_b)
        return SequenceClassifierOutput(logits=logits)

    def __repr__(self) -> str:
        return (f"CTranslate2Classifier({str(self.path)!r}, threads={self.threads}, "
                f"compute_type={self.compute_type!r})")
