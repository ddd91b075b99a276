"""Compression (bert-squeeze's list, done correctly and measured): distillation, structured and unstructured
pruning, BERT-of-Theseus, vocabulary pruning and quantization-aware training.

Each module turns a fine-tuned classifier (the chapter-0 teacher) into a smaller or faster one that saves with
``save_pretrained`` (safetensors) and loads in ``ufkit evaluate``, ``benchmark`` and ``quantize``:

* :mod:`ufkit.compression.common`: the error type.
"""

from .common import CompressionError

__all__ = ["CompressionError"]
