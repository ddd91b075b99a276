"""Quantization-aware architecture search: Bigger&Faster's two stages on MiniLM-L6.

Chai, Bailey, Jin, Karle, Ko, Brooks, Wei, Kung, "Bigger&Faster: Two-stage Neural Architecture Search for Quantized
Transformer Models", 2022, arXiv:2209.12127; built on Yin et al., "AutoTinyBERT: Automatic Hyper-parameter
Optimization for Efficient Pre-trained Language Models", ACL 2021, arXiv:2107.13686.

* :mod:`ufkit.nas.space`: sub-architectures (:class:`ArchConfig`) and the space of them (:class:`SearchSpace`).
* :mod:`ufkit.nas.supernet`: stage 1, the weight-sharing super-model (:class:`SuperBert`), trained with the
  sandwich rule and distillation; :meth:`SuperBert.extract` gives a plain Hugging Face model of any slice.
* :mod:`ufkit.nas.latency`: stage 2a, a latency table measured on this CPU in float32 and int8, and latency
  predictors fitted to it.
* :mod:`ufkit.nas.search`: stage 2b, the evolutionary search whose fitness is the int8 sub-model's accuracy, and
  the baselines it is compared with.
"""

from .latency import (LINEAR_FEATURE_NAMES, LatencyPredictor, LinearLatencyPredictor, MLPLatencyPredictor, archs_of,
                      build_latency_dataset, build_model, fit_predictor, linear_features, mape, sample_archs,
                      split_archs, time_architecture)
from .search import SearchResult, accuracy, baseline_archs, load_or_search, make_fitness, pareto_front, search
from .space import ARCH_FIELDS, ArchConfig, NasError, SearchSpace, minilm_space
from .supernet import SuperBert, SupernetTrainConfig, load_or_train, slice_state_dict, sub_config

__all__ = [
    "ARCH_FIELDS", "ArchConfig", "NasError", "SearchSpace", "minilm_space",
    "SuperBert", "SupernetTrainConfig", "load_or_train", "slice_state_dict",
    "sub_config",
    "LINEAR_FEATURE_NAMES", "LatencyPredictor", "LinearLatencyPredictor", "MLPLatencyPredictor", "archs_of",
    "build_latency_dataset", "build_model", "fit_predictor", "linear_features", "mape", "sample_archs",
    "split_archs", "time_architecture",
    "SearchResult", "accuracy", "baseline_archs", "load_or_search", "make_fitness", "pareto_front", "search",
]
