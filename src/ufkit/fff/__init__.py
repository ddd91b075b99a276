"""Fast feedforward layers (UltraFastBERT): reference semantics, kernels, the layers, FFF-BERT models, benchmarks.

Belcak & Wattenhofer, "Exponentially Faster Language Modelling", 2023, arXiv:2311.10770, and "Fast Feedforward
Networks", 2023, arXiv:2308.14711.

* :mod:`ufkit.fff.reference`: the definition every backend is tested against (routing, reference, training form).
* :mod:`ufkit.fff.kernels`: :func:`~ufkit.fff.kernels.fff_forward`, the inference form's backends (PyTorch, native
  C++, MKL, CUDA), and :func:`~ufkit.fff.kernels.cpu_path`, the native kernel's CPU path (scalar, AVX2, AVX-512).
* :mod:`ufkit.fff.layer`: :class:`~ufkit.fff.layer.FFF`, the ``torch.nn.Module``.
* :mod:`ufkit.fff.leaf`: the *leaf* FFF (a tree of routers over small feedforward blocks) in its hard, masked and
  soft forms, :func:`~ufkit.fff.leaf.leaf_fff_forward` (PyTorch and fused native backends) and
  :class:`~ufkit.fff.leaf.LeafFFF`.
* :mod:`ufkit.fff.bert`: BERT classifiers with FFF, leaf FFF or no feedforward in chosen layers
  (:func:`~ufkit.fff.bert.apply_fff`), as Hugging Face classes that save and load. Its names are importable from
  here; the module (and with it ``transformers``) loads on first use of one of them, and registers
  ``model_type`` ``"ufkit_fff_bert"`` with the Auto classes.
* :mod:`ufkit.fff.bench`: FFF against dense layers of the same width.
"""

from .kernels import (BACKENDS, CPU_PATHS, available_backends, bfloat16_weights, cpu_path, cpu_paths, fff_forward,
                      load_extension)
from .layer import FFF
from .leaf import (ACTIVATIONS, LEAF_BACKENDS, LeafFFF, check_leaf_args, leaf_fff_forward, leaf_fff_masked,
                   leaf_fff_reference, leaf_fff_soft, leaf_route, leaf_soft_weights, n_leaves)
from .reference import check_fff_args, conformance, fff_reference, fff_route, fff_training_form, n_nodes, node_usage

#: Names of :mod:`ufkit.fff.bert`, imported on first access (it imports transformers).
_BERT_NAMES = ("FFF_KEY", "KINDS", "FffBertConfig", "FffBertModel", "FffBertForSequenceClassification",
               "NoFeedforward", "BiasedFFF", "fff_spec", "make_feedforward", "apply_fff", "feedforward_modules")

__all__ = ["BACKENDS", "CPU_PATHS", "available_backends", "bfloat16_weights", "cpu_path", "cpu_paths", "fff_forward",
           "load_extension", "FFF", "check_fff_args", "conformance", "fff_reference", "fff_route",
           "fff_training_form", "n_nodes", "node_usage", "ACTIVATIONS", "LEAF_BACKENDS", "LeafFFF",
           "check_leaf_args", "leaf_fff_forward", "leaf_fff_masked", "leaf_fff_reference", "leaf_fff_soft",
           "leaf_route", "leaf_soft_weights", "n_leaves", *_BERT_NAMES]


def __getattr__(name: str):
    if name in _BERT_NAMES:
        from . import bert

        return getattr(bert, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
