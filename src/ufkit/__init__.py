"""ufkit: making BERT-family encoders fast, one technique per module.

Modules: :mod:`ufkit.config` (run size, paths), :mod:`ufkit.data` (text-classification data),
:mod:`ufkit.models` (backbones with a classification head), :mod:`ufkit.train` (fine-tuning),
:mod:`ufkit.evaluate` (metrics), :mod:`ufkit.bench` (latency harness), :mod:`ufkit.cli` (the ``ufkit`` command).
"""

__version__ = "0.1.0"


class UfkitError(Exception):
    """Base class of ufkit's errors about bad input: the message names the argument and what was expected."""
