"""FastBERT: self-distilled exits after every layer and adaptive inference time.

Liu et al., "FastBERT: a Self-distilling BERT with Adaptive Inference Time", ACL 2020; patience exits from Zhou et
al., "BERT Loses Patience", NeurIPS 2020.

* :mod:`ufkit.early_exit.branches`: the branch classifier, normalized entropy, the output types.
* :mod:`ufkit.early_exit.model`: :class:`~ufkit.early_exit.model.EarlyExitModel` (adaptive inference, FLOPs,
  training of the branches, save/load) and :func:`~ufkit.early_exit.model.load_or_fit`.
* :mod:`ufkit.early_exit.exits`: exits simulated from all branches' logits, curves, speed calibration.
"""

from .branches import EarlyExitError, EarlyExitOutput, FastBertClassifier, Predictions, normalized_entropy
from .exits import calibrate_speed, exit_curves, simulate_exits
from .model import EarlyExitModel, load_or_fit

__all__ = ["EarlyExitError", "EarlyExitOutput", "FastBertClassifier", "Predictions", "normalized_entropy",
           "calibrate_speed", "exit_curves", "simulate_exits", "EarlyExitModel", "load_or_fit"]
