"""Fast feedforward layers (UltraFastBERT): reference semantics, kernels, the layer, benchmarks.

Belcak & Wattenhofer, "Exponentially Faster Language Modelling", 2023, arXiv:2311.10770.

* :mod:`ufkit.fff.reference`: the definition every backend is tested against (routing, reference, training form).
* :mod:`ufkit.fff.kernels`: :func:`~ufkit.fff.kernels.fff_forward`, the inference form's backends (PyTorch, native
  C++, MKL, CUDA), and :func:`~ufkit.fff.kernels.cpu_path`, the native kernel's CPU path (scalar, AVX2, AVX-512).
* :mod:`ufkit.fff.layer`: :class:`~ufkit.fff.layer.FFF`, the ``torch.nn.Module``.
* :mod:`ufkit.fff.bench`: FFF against dense layers of the same width.
"""

from .kernels import (BACKENDS, CPU_PATHS, available_backends, bfloat16_weights, cpu_path, cpu_paths, fff_forward,
                      load_extension)
from .layer import FFF
from .reference import check_fff_args, conformance, fff_reference, fff_route, fff_training_form, n_nodes, node_usage

__all__ = ["BACKENDS", "CPU_PATHS", "available_backends", "bfloat16_weights", "cpu_path", "cpu_paths", "fff_forward", "load_extension",
           "FFF", "check_fff_args", "conformance", "fff_reference", "fff_route", "fff_training_form", "n_nodes",
           "node_usage"]
