"""ufkit: making BERT-family encoders fast, one technique per subpackage, over a small foundation.

Foundation (imports nothing above it):

* :mod:`ufkit.config`: run size (smoke/full) and paths; :mod:`ufkit.progress`: progress bars that ``make book``
  shows in the terminal; :mod:`ufkit.data`: text-classification data;
  :mod:`ufkit.models`: loading and saving checkpoints; :mod:`ufkit.surgery`: structural edits of BERT layouts;
  :mod:`ufkit.cache`: the one cache helper; :mod:`ufkit.training`: the one training loop;
  :mod:`ufkit.distill`: distillation losses; :mod:`ufkit.evaluate`: metrics; :mod:`ufkit.measure`: timing,
  FLOPs, the machine and the results store; :mod:`ufkit.zoo`: the cached teachers and students chapters share.

Techniques (each imports the foundation, never the command line):

* :mod:`ufkit.fff`: fast feedforward layers (UltraFastBERT) and their kernels;
* :mod:`ufkit.early_exit`: FastBERT;
* :mod:`ufkit.quantization`: deployment quantization (torchao, ONNX Runtime);
* :mod:`ufkit.nas`: quantization-aware architecture search (Bigger&Faster), which deploys with
  :mod:`ufkit.quantization`.

On top: :mod:`ufkit.cli`, the ``ufkit`` command. ``pyproject.toml`` states these layers as an import-linter
contract that the tests check.
"""

__version__ = "0.1.0"


class UfkitError(Exception):
    """Base class of ufkit's errors about bad input: the message names the argument and what was expected."""
