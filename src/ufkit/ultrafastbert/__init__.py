"""UltraFastBERT: crammedBERT with fast feedforward layers, as Hugging Face models that load the original checkpoints.

Belcak & Wattenhofer, "Exponentially Faster Language Modelling", 2023, arXiv:2311.10770; the model is crammedBERT
(Geiping & Goldstein, "Cramming: Training a Language Model on a Single GPU in One Day", ICML 2023).

Importing this package registers ``model_type`` ``"crammedBERT"`` with ``AutoConfig``, ``AutoModel``,
``AutoModelForMaskedLM``, ``AutoModelForPreTraining`` and ``AutoModelForSequenceClassification``, so the original
recipe works with ``import ufkit.ultrafastbert`` in place of ``import cramming``::

    import ufkit.ultrafastbert  # noqa: F401
    from transformers import AutoModelForMaskedLM
    model = AutoModelForMaskedLM.from_pretrained("pbelcak/UltraFastBERT-1x11-long").eval()

* :mod:`ufkit.ultrafastbert.configuration`: :class:`CrammedBertConfig` (the original nested ``arch`` config;
  ``arch.intermed_type`` ``"fff"``, or ``"ff"``/``"dense"`` for crammedBERT's dense feedforward);
* :mod:`ufkit.ultrafastbert.modeling`: :class:`CrammedBertModel`, :class:`CrammedBertForMaskedLM`,
  :class:`CrammedBertForSequenceClassification`; FFF layers from :mod:`ufkit.fff` (training form in ``train()``,
  compiled kernels in ``eval()``, or the training form in ``eval()`` with backend ``"masked"``), or
  :class:`CrammedFFN` for a dense model;
* :mod:`ufkit.ultrafastbert.ops`: the FFF inference form as the ``torch.library`` op ``torch.ops.ufkit.fff`` (fake
  kernel and autograd formula), which ``eval()`` runs, so ``torch.compile(model, fullgraph=True)`` works;
* :mod:`ufkit.ultrafastbert.bench`: end-to-end latency of a 1x11-long-sized model in the masked form (the
  released code's), the kernel form and its dense twin (:func:`bench_end_to_end`, :func:`speedups`), and the FLOP
  bound (:func:`amdahl_bound`);
* :mod:`ufkit.ultrafastbert.convert`: a fine-tuned dense BERT classifier's feedforward layers converted into leaf
  FFFs (:func:`convert_to_leaf_fff`), or replaced by a control (:func:`make_control`), then distilled from the
  dense model (:func:`convert_fff`; ``ufkit convert-fff`` on the command line).
"""

from transformers import (AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForPreTraining,
                          AutoModelForSequenceClassification)

from .bench import (DENSE_WIDTH, ULTRAFASTBERT_1X11_LONG, amdahl_bound, bench_end_to_end, dense_twin,
                    end_to_end_config, speedups)
from .configuration import (DEFAULT_ARCH, DENSE_INTERMED_TYPES, INTERMED_TYPES, CrammedBertConfig,
                            UltraFastBertConfigError, check_supported)
from .convert import (CONTROLS, METHODS, ConversionError, check_conversion, collect_feedforward, convert_fff,
                      convert_layer, convert_to_leaf_fff, dense_layers, fit_routers, make_control, neuron_importance,
                      oracle_leaves, split_neurons)
from .modeling import (FFF_BACKENDS, CrammedBertForMaskedLM, CrammedBertForSequenceClassification,
                       CrammedBertMaskedLMOutput, CrammedBertModel, CrammedBertModelOutput, CrammedBertPreTrainedModel,
                       CrammedBertSequenceClassifierOutput, CrammedFFF, CrammedFFN, UltraFastBertCheckpointError,
                       sinusoidal_positions)

#: the hub checkpoint of the paper (16 layers, hidden 768, one FFF tree of depth 11)
HUB_CHECKPOINT = "pbelcak/UltraFastBERT-1x11-long"

AutoConfig.register(CrammedBertConfig.model_type, CrammedBertConfig, exist_ok=True)
AutoModel.register(CrammedBertConfig, CrammedBertModel, exist_ok=True)
AutoModelForMaskedLM.register(CrammedBertConfig, CrammedBertForMaskedLM, exist_ok=True)
AutoModelForPreTraining.register(CrammedBertConfig, CrammedBertForMaskedLM, exist_ok=True)
AutoModelForSequenceClassification.register(CrammedBertConfig, CrammedBertForSequenceClassification, exist_ok=True)

__all__ = [
    "HUB_CHECKPOINT",
    "DEFAULT_ARCH",
    "DENSE_INTERMED_TYPES",
    "INTERMED_TYPES",
    "FFF_BACKENDS",
    "CrammedBertConfig",
    "UltraFastBertConfigError",
    "UltraFastBertCheckpointError",
    "check_supported",
    "CrammedBertPreTrainedModel",
    "CrammedBertModel",
    "CrammedBertForMaskedLM",
    "CrammedBertForSequenceClassification",
    "CrammedBertModelOutput",
    "CrammedBertMaskedLMOutput",
    "CrammedBertSequenceClassifierOutput",
    "CrammedFFF",
    "CrammedFFN",
    "sinusoidal_positions",
    "ULTRAFASTBERT_1X11_LONG",
    "DENSE_WIDTH",
    "end_to_end_config",
    "dense_twin",
    "bench_end_to_end",
    "speedups",
    "amdahl_bound",
    "CONTROLS",
    "METHODS",
    "ConversionError",
    "check_conversion",
    "dense_layers",
    "collect_feedforward",
    "split_neurons",
    "oracle_leaves",
    "fit_routers",
    "convert_layer",
    "convert_to_leaf_fff",
    "neuron_importance",
    "make_control",
    "convert_fff",
]
