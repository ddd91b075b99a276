"""The configuration of crammedBERT with fast feedforward layers (UltraFastBERT), read in its original layout.

Belcak & Wattenhofer, "Exponentially Faster Language Modelling", 2023, arXiv:2311.10770 (the FFF layers);
Geiping & Goldstein, "Cramming: Training a Language Model on a Single GPU in One Day", ICML 2023 (the model).

The released checkpoints (``pbelcak/UltraFastBERT-1x11-long``) keep everything the model needs in one nested
``arch`` object of ``config.json``; the top level carries only ``architectures``, ``model_type`` (``crammedBERT``)
and the dtype. :class:`CrammedBertConfig` keeps that object as it is (``config.arch``, saved back unchanged) and
reads the usual Hugging Face names from it (``hidden_size``, ``num_hidden_layers``, ...) as properties. The number
of classification labels is the Hugging Face ``num_labels`` (``id2label``) of the top level, not
``arch.num_labels``. :func:`check_supported` names the first ``arch`` entry this implementation cannot run.

The feedforward block of every layer is ``arch.intermed_type``: ``"fff"`` (UltraFastBERT: ``arch.intermed_size``
trees of depth ``arch.intermed_depth``) or a dense one (crammedBERT's: ``arch.intermed_size`` is then its width,
e.g. 3,072), spelt ``"ff"`` as in the original code's configs or ``"dense"``. A dense model is UltraFastBERT's dense
twin: the same embedding, attention and norms, and a feedforward ``Linear -> GELU -> Linear``.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import PretrainedConfig

from .. import UfkitError

__all__ = ["CrammedBertConfig", "UltraFastBertConfigError", "DEFAULT_ARCH", "DENSE_INTERMED_TYPES",
           "INTERMED_TYPES", "check_supported"]

#: ``arch.intermed_type`` values of a dense feedforward: ``"ff"`` (the original crammedBERT configs' name, also its
#: default when the entry is absent there) and ``"dense"``; both build the same model.
DENSE_INTERMED_TYPES = ("ff", "dense")
#: Every supported ``arch.intermed_type``: ``"fff"`` and the dense ones.
INTERMED_TYPES = ("fff",) + DENSE_INTERMED_TYPES

#: The ``arch`` of ``pbelcak/UltraFastBERT-1x11-long``'s ``config.json``: 16 layers, hidden 768, 12 heads, one FFF tree
#: of depth 11 (4,095 neurons, 12 used per token), vocabulary 32,768, 128 positions. Missing keys of a given ``arch``
#: are filled from it.
DEFAULT_ARCH: dict[str, Any] = {
    "architectures": ["ScriptableCrammedBERT"],
    "attention": {
        "causal_attention": False,
        "dropout_prob": 0.1,
        "num_attention_heads": 12,
        "qkv_bias": False,
        "rotary_embedding": False,
        "seq_op_in_fp32": False,
        "sequence_op": "torch-softmax",
        "skip_output_projection": False,
        "type": "self-attention",
    },
    "classification_head": {
        "classifier_dropout": 0.1,
        "head_dim": 1024,
        "include_ff_layer": True,
        "nonlin": "Tanh",
        "pooler": "zero_index",
    },
    "decoder_bias": False,
    "embedding": {
        "dropout_prob": 0.1,
        "embedding_dim": 768,
        "max_seq_length": 128,
        "normalization": True,
        "pad_token_id": 0,
        "pos_embedding": "scaled-sinusoidal",
        "stable_low_precision": False,
        "vocab_size": 32768,
    },
    "ffn_layer_frequency": 1,
    "final_norm": True,
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "init": {"std": 0.02, "type": "normal"},
    "intermed_depth": 11,
    "intermed_size": 1,
    "intermed_type": "fff",
    "loss": "cross-entropy",
    "nonlin": "GELU",
    "norm": "LayerNorm",
    "norm_eps": 1e-12,
    "norm_scheme": "pre",
    "num_labels": None,
    "num_transformer_layers": 16,
    "objective_layout": "MLM",
    "skip_head_transform": True,
    "sparse_prediction": 0.25,
    "tie_weights": True,
    "use_bias": False,
}


class UltraFastBertConfigError(UfkitError, ValueError):
    """An ``arch`` entry that is malformed or that this implementation does not support; the message names it."""


def _merge(defaults: dict, given: dict) -> dict:
    """``given`` over a deep copy of ``defaults``, recursively for nested dicts (keys of ``given`` are kept as they are)."""
    out = copy.deepcopy(defaults)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _get(arch: dict, path: str):
    node = arch
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise UltraFastBertConfigError(f"arch.{path} is missing from the config")
        node = node[part]
    return node


def _int(arch: dict, path: str, lo: int) -> int:
    value = _get(arch, path)
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise UltraFastBertConfigError(f"arch.{path} must be an integer >= {lo}, got {value!r}")
    return value


def check_supported(arch: dict) -> None:
    """Raise :class:`UltraFastBertConfigError` naming the first ``arch`` entry that is malformed or not supported.

    Supported: the released UltraFastBERT layout (pre-norm LayerNorm, GELU, FFF feedforward, self-attention with a
    fused per-head ``query_key_value`` and no biases, scaled sinusoidal positions, MLM head without transform,
    pooler ``zero_index`` or ``avg`` with a Tanh dense layer); ``final_norm``, ``embedding.normalization`` and
    ``tie_weights`` may be either value; ``intermed_type`` may also be dense (:data:`DENSE_INTERMED_TYPES`, width
    ``intermed_size``; ``intermed_depth`` is then not read). Training-only entries (dropouts aside) are not checked.
    """
    hidden = _int(arch, "hidden_size", 1)
    dim = _int(arch, "embedding.embedding_dim", 1)
    if dim != hidden:
        raise UltraFastBertConfigError(f"arch.embedding.embedding_dim ({dim}) must equal arch.hidden_size ({hidden})")
    if dim % 2:
        raise UltraFastBertConfigError(f"arch.embedding.embedding_dim must be even for sinusoidal positions, got {dim}")
    heads = _int(arch, "attention.num_attention_heads", 1)
    if hidden % heads:
        raise UltraFastBertConfigError(
            f"arch.hidden_size ({hidden}) must be divisible by arch.attention.num_attention_heads ({heads})")
    _int(arch, "num_transformer_layers", 1)
    kind = _get(arch, "intermed_type")
    if kind not in INTERMED_TYPES:
        raise UltraFastBertConfigError(
            f"arch.intermed_type = {kind!r} is not supported (this implementation needs 'fff' for fast feedforward "
            f"layers, or one of {DENSE_INTERMED_TYPES} for a dense feedforward of width arch.intermed_size)")
    _int(arch, "intermed_size", 1)
    if kind == "fff":
        _int(arch, "intermed_depth", 0)
    _int(arch, "embedding.vocab_size", 1)
    _int(arch, "embedding.max_seq_length", 1)
    _int(arch, "classification_head.head_dim", 1)
    pad = _get(arch, "embedding.pad_token_id")
    if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int)
                            or not 0 <= pad < arch["embedding"]["vocab_size"]):
        raise UltraFastBertConfigError(f"arch.embedding.pad_token_id must be a token id or null, got {pad!r}")
    expected = {
        "norm": "LayerNorm",
        "nonlin": "GELU",
        "norm_scheme": "pre",
        "ffn_layer_frequency": 1,
        "skip_head_transform": True,
        "decoder_bias": False,
        "use_bias": False,
        "embedding.pos_embedding": "scaled-sinusoidal",
        "attention.type": "self-attention",
        "attention.sequence_op": "torch-softmax",
        "attention.causal_attention": False,
        "attention.rotary_embedding": False,
        "attention.qkv_bias": False,
        "attention.skip_output_projection": False,
        "classification_head.include_ff_layer": True,
        "classification_head.nonlin": "Tanh",
    }
    for path, want in expected.items():
        got = _get(arch, path)
        if got != want:
            raise UltraFastBertConfigError(f"arch.{path} = {got!r} is not supported (this implementation needs {want!r})")
    pooler = _get(arch, "classification_head.pooler")
    if pooler not in ("zero_index", "avg"):
        raise UltraFastBertConfigError(f"arch.classification_head.pooler must be 'zero_index' or 'avg', got {pooler!r}")
    eps = _get(arch, "norm_eps")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0:
        raise UltraFastBertConfigError(f"arch.norm_eps must be a positive number, got {eps!r}")
    for path in ("embedding.dropout_prob", "attention.dropout_prob", "hidden_dropout_prob",
                 "classification_head.classifier_dropout"):
        p = _get(arch, path)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise UltraFastBertConfigError(f"arch.{path} must be a probability in [0, 1), got {p!r}")


class CrammedBertConfig(PretrainedConfig):
    """Configuration of crammedBERT / UltraFastBERT (``model_type`` ``"crammedBERT"``), in the original nested layout.

    Args:
        arch: the original nested ``arch`` dict (as in the hub's ``config.json``). Missing keys are filled from
            :data:`DEFAULT_ARCH` (UltraFastBERT-1x11-long), so ``CrammedBertConfig()`` is the 1x11-long model and a
            tiny one is e.g. ``CrammedBertConfig(arch={"hidden_size": 32, "embedding": {"embedding_dim": 32,
            "vocab_size": 128}, "attention": {"num_attention_heads": 4}, "num_transformer_layers": 2,
            "intermed_depth": 3})``.
        **kwargs: the usual ``PretrainedConfig`` arguments (``num_labels``, ``id2label``, ...). Top-level
            ``vocab_size``, ``pad_token_id``, ``tie_word_embeddings`` are written into ``arch``.

    The Hugging Face names are properties over ``arch``: ``hidden_size`` (``arch.hidden_size``),
    ``num_hidden_layers`` (``arch.num_transformer_layers``), ``num_attention_heads``, ``vocab_size``,
    ``max_position_embeddings`` (``arch.embedding.max_seq_length``), ``pad_token_id``, ``layer_norm_eps``
    (``arch.norm_eps``), ``tie_word_embeddings`` (``arch.tie_weights``), and for the FFF layers ``fff_depth``
    (``arch.intermed_depth``) and ``fff_n_trees`` (``arch.intermed_size``: the number of trees, not a width).
    ``is_fff`` tells the feedforward kind (``arch.intermed_type``) and ``intermediate_size`` its width: the dense
    width, or the FFF's neurons K*(2**(D+1) - 1).

    Raises:
        UltraFastBertConfigError: ``arch`` is not a dict (unsupported values are reported when a model is built,
            by :func:`check_supported`).

    Geiping & Goldstein, ICML 2023; Belcak & Wattenhofer 2023, arXiv:2311.10770.
    """

    model_type = "crammedBERT"

    arch: dict | None = None

    def __post_init__(self, **kwargs):
        if self.arch is None:
            self.arch = {}
        if not isinstance(self.arch, dict):
            raise UltraFastBertConfigError(f"arch must be a dict (the nested original config), got {type(self.arch).__name__}")
        self.arch = _merge(DEFAULT_ARCH, self.arch)
        super().__post_init__(**kwargs)

    # ---- Hugging Face names, read from (and written into) arch -------------------------------------------------

    @property
    def hidden_size(self) -> int:
        """``arch.hidden_size`` (= ``arch.embedding.embedding_dim``)."""
        return self.arch["hidden_size"]

    @property
    def num_hidden_layers(self) -> int:
        """``arch.num_transformer_layers``."""
        return self.arch["num_transformer_layers"]

    @property
    def num_attention_heads(self) -> int:
        """``arch.attention.num_attention_heads``."""
        return self.arch["attention"]["num_attention_heads"]

    @property
    def vocab_size(self) -> int:
        """``arch.embedding.vocab_size``."""
        return self.arch["embedding"]["vocab_size"]

    @vocab_size.setter
    def vocab_size(self, value: int) -> None:
        self.arch["embedding"]["vocab_size"] = value

    @property
    def pad_token_id(self) -> int | None:
        """``arch.embedding.pad_token_id``."""
        return self.arch["embedding"]["pad_token_id"]

    @pad_token_id.setter
    def pad_token_id(self, value: int | None) -> None:
        self.arch["embedding"]["pad_token_id"] = value

    @property
    def max_position_embeddings(self) -> int:
        """``arch.embedding.max_seq_length``: the longest (padded) sequence the model accepts."""
        return self.arch["embedding"]["max_seq_length"]

    @property
    def layer_norm_eps(self) -> float:
        """``arch.norm_eps``."""
        return self.arch["norm_eps"]

    @property
    def tie_word_embeddings(self) -> bool:
        """``arch.tie_weights``: the MLM decoder is the word-embedding matrix."""
        return bool(self.arch["tie_weights"])

    @tie_word_embeddings.setter
    def tie_word_embeddings(self, value: bool) -> None:
        self.arch["tie_weights"] = bool(value)

    @property
    def is_fff(self) -> bool:
        """``arch.intermed_type == "fff"``: fast feedforward layers; False for a dense feedforward."""
        return self.arch["intermed_type"] == "fff"

    @property
    def intermediate_size(self) -> int:
        """Neurons per feedforward: ``arch.intermed_size`` for a dense one, K*(2**(D+1) - 1) for FFF trees."""
        if self.is_fff:
            return self.arch["intermed_size"] * (2 ** (self.arch["intermed_depth"] + 1) - 1)
        return self.arch["intermed_size"]

    @property
    def fff_depth(self) -> int:
        """``arch.intermed_depth``: levels below the root of each FFF tree (2**(depth+1) - 1 neurons per tree)."""
        return self.arch["intermed_depth"]

    @property
    def fff_n_trees(self) -> int:
        """``arch.intermed_size``: parallel FFF trees per layer (for a dense model: its width, see ``is_fff``)."""
        return self.arch["intermed_size"]

    @property
    def initializer_range(self) -> float:
        """``arch.init.std``: the standard deviation of the normal init of every Linear and Embedding weight."""
        return self.arch["init"]["std"]
