"""Compression (bert-squeeze's list, done correctly and measured): distillation, structured and unstructured
pruning, BERT-of-Theseus, vocabulary pruning and quantization-aware training.

Each module turns a fine-tuned classifier (the chapter-0 teacher) into a smaller or faster one that saves with
``save_pretrained`` (safetensors) and loads in ``ufkit evaluate``, ``benchmark`` and ``quantize``:

* :mod:`ufkit.compression.distillation`: knowledge distillation into students made of some of the teacher's layers
  (soft and hard targets, unlabeled text, precomputed teacher logits, TinyBERT's hidden-state loss);
* :mod:`ufkit.compression.theseus`: BERT-of-Theseus, progressive module replacing;
* :mod:`ufkit.compression.structured`: head and feedforward-neuron importance through gates, physical pruning;
* :mod:`ufkit.compression.post_training`: retraining-free pruning under a FLOPs budget (Kwon et al. 2022);
* :mod:`ufkit.compression.sparsity`: gradual magnitude pruning and a sparse CSR path;
* :mod:`ufkit.compression.vocabulary`: vocabulary pruning (TextPruner);
* :mod:`ufkit.compression.qat`: quantization-aware training for ONNX Runtime's dynamic int8;
* :mod:`ufkit.compression.common`: the error type.

Layer dropping (Sajjad et al.) is :func:`ufkit.surgery.layers_to_keep` with :func:`ufkit.surgery.keep_layers`; the
per-layer shapes of a pruned model are :mod:`ufkit.structure`'s.
"""

from .common import CompressionError

__all__ = ["CompressionError"]
