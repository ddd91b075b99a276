"""crammedBERT with fast feedforward layers (UltraFastBERT) as Hugging Face models, in the original checkpoint layout.

Belcak & Wattenhofer, "Exponentially Faster Language Modelling", 2023, arXiv:2311.10770 (the FFF layers);
Geiping & Goldstein, "Cramming: Training a Language Model on a Single GPU in One Day", ICML 2023 (the model).

The architecture (B = batch, S = padded sequence length <= ``max_seq_length``, H = hidden size)::

    x = LayerNorm(E[input_ids] + s * P[0:S])               # (B, S, H); P fixed sinusoidal, s a learned scalar
    for each layer:                                          # pre-norm
        x = x + Attn(LN1(x), attention_mask)                 # fused per-head query_key_value, no biases
        x = x + FFF(LN2(x))                                  # K trees of depth D: K*(D+1) neurons per token
    h = LayerNorm_final(x)                                   # the encoder output
    masked LM:     logits = h @ E^T                          # decoder tied to the word embeddings, no transform
    classification: logits = head(dropout(tanh(pooler.dense(pool(h)))))   # pool: position 0, or mean over S

Parameter names are the original ``state_dict`` names (``encoder.embedding.word_embedding.weight``,
``encoder.layers.0.attn.self_attention.query_key_value.weight``, ``encoder.layers.0.ffn.linear_in.bias``,
``decoder.weight``, ``pooler.dense.weight``, ``head.weight``, ...), so released checkpoints load as they are.

In ``train()`` mode every FFF layer runs the training form of the paper (dense pre-activations masked to the visited
nodes, differentiable); in ``eval()`` mode the inference form through ufkit's compiled kernels
(:func:`ufkit.fff.kernels.fff_forward`, ``backend="auto"``), which touches only the visited neurons, registered as the
op ``torch.ops.ufkit.fff`` (:mod:`ufkit.ultrafastbert.ops`) so that ``torch.compile(model, fullgraph=True)`` traces it.
The backend ``"masked"`` (:meth:`CrammedBertModel.set_fff_backend`) runs the training form in ``eval()`` too: what the
released code runs at inference, for comparison.

With a dense ``arch.intermed_type`` (``"ff"`` or ``"dense"``) every layer's feedforward is :class:`CrammedFFN`
instead, ``ffn.dense_out(GELU(ffn.dense_in(x)))``: the dense twin of an UltraFastBERT model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput, SequenceClassifierOutput

from .. import UfkitError
from ..fff import BACKENDS, FFF, fff_route, fff_training_form
from .configuration import CrammedBertConfig, UltraFastBertConfigError, check_supported
from .ops import fff as fff_op

__all__ = [
    "UltraFastBertCheckpointError",
    "sinusoidal_positions",
    "FFF_BACKENDS",
    "CrammedFFF",
    "CrammedFFN",
    "CrammedBertModelOutput",
    "CrammedBertMaskedLMOutput",
    "CrammedBertSequenceClassifierOutput",
    "CrammedBertPreTrainedModel",
    "CrammedBertModel",
    "CrammedBertForMaskedLM",
    "CrammedBertForSequenceClassification",
]


#: What :meth:`CrammedBertModel.set_fff_backend` accepts: ``"auto"`` and the kernels' backends (see
#: :func:`ufkit.fff.kernels.fff_forward`), and ``"masked"``: the training form in ``eval()`` too.
FFF_BACKENDS = ("auto",) + BACKENDS + ("masked",)


class UltraFastBertCheckpointError(UfkitError, ValueError):
    """A checkpoint that lacks a tensor the model needs, or whose tied tensors differ; the message names them."""


# ---- building blocks -----------------------------------------------------------------------------------------


def sinusoidal_positions(length: int, dim: int, device=None) -> torch.Tensor:
    """The fixed sinusoidal position table, `torch.FloatTensor` of shape `(length, dim)`, computed in float32.

    Row p, for i = 0 .. dim/2 - 1 and w_i = exp(-(2i) ln(10000) / dim): column 2i is sin(p w_i) and column 2i+1 is
    cos(p w_i) (interleaved, not two halves). Vaswani et al. 2017; crammedBERT's ``scaled-sinusoidal`` multiplies
    it by a learned scalar.

    Raises:
        ValueError: ``dim`` odd or not positive, ``length`` negative.
    """
    if dim <= 0 or dim % 2:
        raise ValueError(f"dim must be a positive even number, got {dim}")
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))  # (dim/2,)
    angle = torch.arange(length, dtype=torch.float32, device=device)[:, None] * freq  # (length, dim/2)
    return torch.stack((angle.sin(), angle.cos()), dim=-1).reshape(length, dim)  # (length, dim), sin/cos interleaved


class ScaledSinusoidalPositions(nn.Module):
    """``s * P[0:S]``: the sinusoidal table times a learned scalar ``scale_factor`` (shape `(1,)`, init 1/sqrt(D))."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.scale_factor = nn.Parameter(torch.full((1,), dim**-0.5))

    def forward(self, seq_len: int, device) -> torch.Tensor:
        """`(seq_len, dim)` in the dtype of ``scale_factor``."""
        table = sinusoidal_positions(seq_len, self.dim, device).to(self.scale_factor.dtype)  # (S, D)
        return self.scale_factor * table


class CrammedEmbedding(nn.Module):
    """Word embedding plus scaled sinusoidal positions, then LayerNorm and dropout. No token types."""

    def __init__(self, config: CrammedBertConfig):
        super().__init__()
        arch = config.arch
        emb = arch["embedding"]
        self.word_embedding = nn.Embedding(emb["vocab_size"], emb["embedding_dim"], padding_idx=emb["pad_token_id"])
        self.pos_embedding = ScaledSinusoidalPositions(emb["embedding_dim"])
        self.norm = nn.LayerNorm(emb["embedding_dim"], eps=arch["norm_eps"]) if emb["normalization"] else nn.Identity()
        self.dropout = nn.Dropout(emb["dropout_prob"])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """`(B, S)` token ids -> `(B, S, H)`."""
        x = self.word_embedding(input_ids) + self.pos_embedding(input_ids.shape[1], input_ids.device)  # (B, S, H)
        return self.dropout(self.norm(x))


class CrammedSelfAttention(nn.Module):
    """Scaled dot-product attention from one fused projection ``query_key_value`` `(3H, H)` laid out per head.

    Rows [3dh, 3dh+d), [3dh+d, 3dh+2d), [3dh+2d, 3dh+3d) are head h's query, key and value (d = H / heads).
    ``norm_factor`` (a 0-dim buffer, 1/sqrt(d)) is kept because the original checkpoints store it.
    """

    def __init__(self, config: CrammedBertConfig):
        super().__init__()
        arch = config.arch
        self.hidden_size = arch["hidden_size"]
        self.num_heads = arch["attention"]["num_attention_heads"]
        self.head_dim = self.hidden_size // self.num_heads
        self.scale = self.head_dim**-0.5
        self.dropout_prob = arch["attention"]["dropout_prob"]
        self.query_key_value = nn.Linear(self.hidden_size, 3 * self.hidden_size, bias=False)
        self.register_buffer("norm_factor", torch.tensor(self.scale, dtype=torch.float32))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """`x` `(B, S, H)`, `mask` additive `(B, 1, 1, S)` or None -> `(B, S, H)` (heads concatenated in order)."""
        B, S, _ = x.shape
        qkv = self.query_key_value(x).view(B, S, self.num_heads, 3, self.head_dim)  # (B, S, heads, 3, d)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # each (B, heads, S, d)
        p = self.dropout_prob if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=self.scale)  # (B, heads, S, d)
        return out.transpose(1, 2).reshape(B, S, self.hidden_size)  # (B, S, H)


class CrammedAttention(nn.Module):
    """Self-attention followed by the output projection ``dense`` `(H, H)` without bias."""

    def __init__(self, config: CrammedBertConfig):
        super().__init__()
        self.self_attention = CrammedSelfAttention(config)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.dense(self.self_attention(x, mask))


class CrammedFFF(FFF):
    """UltraFastBERT's FFF block: :class:`ufkit.fff.FFF` (H -> H) that can also report the nodes each token visits.

    ``forward(hidden_states, output_nodes=False)`` takes `(..., H)` and returns `(..., H)`, or with
    ``output_nodes=True`` a pair with the visited nodes, `torch.LongTensor` of shape `(..., n_trees, depth + 1)`,
    root first, heap numbering inside each tree (root 0, children of n are 2n+1 and 2n+2). ``train()``: the masked
    training form; ``eval()``: the compiled inference form (``backend``, default ``"auto"``) through the registered op
    ``torch.ops.ufkit.fff`` (:mod:`ufkit.ultrafastbert.ops`: traceable by ``torch.compile``, and differentiable with
    the training form's gradients), whose own routing gives the nodes. ``backend = "masked"`` runs the masked
    training form in ``eval()`` as well (every neuron computed, then masked: what the released code runs, at the
    cost of a dense layer of width K*N); the op is not called then.
    """

    def forward(self, hidden_states: torch.Tensor, output_nodes: bool = False):
        w_in, b_in, w_out = self.linear_in.weight, self.linear_in.bias, self.linear_out.weight
        if self.training or self.backend == "masked":
            y = fff_training_form(hidden_states, w_in, b_in, w_out, self.depth, self.n_trees)
            if not output_nodes:
                return y
            route = fff_route(hidden_states.detach(), w_in.detach(), b_in.detach(), self.depth, self.n_trees)
            return y, self.local_nodes(route.flatten(-2))  # (..., K, D+1) global -> per tree
        y, route = fff_op(hidden_states, w_in, b_in, w_out, self.depth, self.n_trees, self.backend)
        if not output_nodes:
            return y
        return y, self.local_nodes(route)

    def local_nodes(self, route: torch.Tensor) -> torch.Tensor:
        """Global node indices `(..., K*(D+1))` -> per-tree heap indices `(..., K, D+1)` (int64)."""
        route = route.reshape(*route.shape[:-1], self.n_trees, self.depth + 1).long()  # (..., K, D+1)
        offset = torch.arange(self.n_trees, device=route.device) * self.n_nodes  # (K,)
        return route - offset[:, None]


class CrammedFFN(nn.Module):
    """crammedBERT's dense feedforward (the original ``FFNComponent``): ``dense_out(GELU(dense_in(x)))``.

    ``dense_in`` `(I, H)` and ``dense_out`` `(H, I)` with biases when ``arch.use_bias`` (false in the crammedBERT and
    UltraFastBERT configs, so none), I = ``arch.intermed_size``; GELU is the exact (erf) one. `(..., H)` ->
    `(..., H)`.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False):
        super().__init__()
        self.dense_in = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.nonlin = nn.GELU()
        self.dense_out = nn.Linear(intermediate_size, hidden_size, bias=bias)

    @property
    def width(self) -> int:
        """Neurons in the layer, I."""
        return self.dense_in.out_features

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dense_out(self.nonlin(self.dense_in(hidden_states)))


class CrammedLayer(nn.Module):
    """One pre-norm transformer layer: ``x + dropout(attn(norm1(x)))``, then ``x + dropout(ffn(norm2(x)))``; ``ffn``
    is a :class:`CrammedFFF` or, for a dense ``arch.intermed_type``, a :class:`CrammedFFN`."""

    def __init__(self, config: CrammedBertConfig):
        super().__init__()
        arch = config.arch
        H = arch["hidden_size"]
        self.norm1 = nn.LayerNorm(H, eps=arch["norm_eps"])
        self.attn = CrammedAttention(config)
        self.norm2 = nn.LayerNorm(H, eps=arch["norm_eps"])
        if arch["intermed_type"] == "fff":
            self.ffn = CrammedFFF(H, H, depth=arch["intermed_depth"], n_trees=arch["intermed_size"])
        else:
            self.ffn = CrammedFFN(H, arch["intermed_size"], bias=bool(arch["use_bias"]))
        self.dropout = nn.Dropout(arch["hidden_dropout_prob"])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, output_nodes: bool = False):
        """`(B, S, H)` -> `(B, S, H)`, or with ``output_nodes`` also the FFF's visited nodes `(B, S, K, D+1)`."""
        x = x + self.dropout(self.attn(self.norm1(x), mask))
        if output_nodes:
            y, nodes = self.ffn(self.norm2(x), output_nodes=True)
            return x + self.dropout(y), nodes
        return x + self.dropout(self.ffn(self.norm2(x)))


class CrammedPooler(nn.Module):
    """Pool the encoder output (``zero_index``: position 0; ``avg``: mean over all S positions, padding included),
    then ``dense`` `(head_dim, H)` with bias, Tanh and dropout: `(B, S, H)` -> `(B, head_dim)`."""

    def __init__(self, config: CrammedBertConfig):
        super().__init__()
        head = config.arch["classification_head"]
        self.pooler = head["pooler"]
        self.dense = nn.Linear(config.hidden_size, head["head_dim"])
        self.activation = nn.Tanh()
        self.dropout = nn.Dropout(head["classifier_dropout"])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.pooler == "zero_index":
            pooled = hidden_states[:, 0]  # (B, H)
        elif self.pooler == "avg":
            pooled = hidden_states.mean(dim=1)  # (B, H); the attention mask is not used, as in the original
        else:
            raise ValueError(f"pooler must be 'zero_index' or 'avg', got {self.pooler!r}")
        return self.dropout(self.activation(self.dense(pooled)))


# ---- outputs -------------------------------------------------------------------------------------------------


@dataclass
class CrammedBertModelOutput(BaseModelOutput):
    """:class:`transformers.modeling_outputs.BaseModelOutput` plus the FFF nodes.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`): after the
            final LayerNorm.
        hidden_states (`tuple(torch.FloatTensor)`, with ``output_hidden_states=True``): the embedding output and the
            residual stream after each layer (before the final LayerNorm), each `(batch_size, sequence_length,
            hidden_size)`: ``num_hidden_layers + 1`` tensors.
        fff_visited_nodes (`tuple(torch.LongTensor)`, with ``output_fff_nodes=True``): per layer, the nodes each
            token visits, `(batch_size, sequence_length, n_trees, depth + 1)`, root first, heap numbering per tree.
    """

    fff_visited_nodes: tuple[torch.LongTensor, ...] | None = None


@dataclass
class CrammedBertMaskedLMOutput(MaskedLMOutput):
    """:class:`transformers.modeling_outputs.MaskedLMOutput` (``logits`` `(batch_size, sequence_length,
    vocab_size)`) plus ``fff_visited_nodes`` as in :class:`CrammedBertModelOutput`."""

    fff_visited_nodes: tuple[torch.LongTensor, ...] | None = None


@dataclass
class CrammedBertSequenceClassifierOutput(SequenceClassifierOutput):
    """:class:`transformers.modeling_outputs.SequenceClassifierOutput` (``logits`` `(batch_size, num_labels)`) plus
    ``pooled_output`` `(batch_size, head_dim)` (after dense and Tanh) and ``fff_visited_nodes``."""

    pooled_output: torch.FloatTensor | None = None
    fff_visited_nodes: tuple[torch.LongTensor, ...] | None = None


# ---- models --------------------------------------------------------------------------------------------------


class CrammedBertPreTrainedModel(PreTrainedModel):
    """Base class: config class, the original init, and a strict ``from_pretrained``.

    ``from_pretrained`` raises :class:`UltraFastBertCheckpointError` naming every encoder tensor (or untied decoder)
    the checkpoint lacks, and when the checkpoint's ``decoder.weight`` differs from its word embeddings although the
    config ties them. A classification head missing from the checkpoint (fine-tuning from the masked-LM checkpoint,
    as the original recipe does) is initialised as usual.
    """

    config_class = CrammedBertConfig
    base_model_prefix = "encoder"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _optional_checkpoint_prefixes: tuple[str, ...] = ()

    def _init_weights(self, module):
        """The original init: Linear and Embedding weights N(0, std^2), biases 0, LayerNorm 1 / 0, the padding row 0,
        positional scale 1/sqrt(D). Tensors loaded from a checkpoint are left as they are."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, ScaledSinusoidalPositions):
            init.constant_(module.scale_factor, module.dim**-0.5)
        elif isinstance(module, CrammedSelfAttention):
            init.constant_(module.norm_factor, module.scale)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, raising :class:`UltraFastBertCheckpointError` for a checkpoint that
        lacks a tensor of the encoder (named in the message) or has untied copies of tied weights."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        missing = sorted(k for k in info.get("missing_keys", ())
                         if not k.startswith(cls._optional_checkpoint_prefixes or ("\0",)))
        if missing:
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            raise UltraFastBertCheckpointError(
                f"the checkpoint at {pretrained_model_name_or_path} lacks {len(missing)} tensor(s) that "
                f"{cls.__name__} needs: {shown}")
        if model.config.tie_word_embeddings:
            out, emb = model.get_output_embeddings(), model.get_input_embeddings()
            if out is not None and out.weight is not emb.weight:
                raise UltraFastBertCheckpointError(
                    f"the checkpoint at {pretrained_model_name_or_path} holds a decoder.weight that differs from "
                    "encoder.embedding.word_embedding.weight, but arch.tie_weights is true")
        return (model, info) if want_info else model


def _check_inputs(config: CrammedBertConfig, input_ids, attention_mask) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a tensor of shape (batch_size, sequence_length), got {shape}")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    S, limit = input_ids.shape[1], config.max_position_embeddings
    if S > limit:
        raise ValueError(f"input_ids has sequence_length {S} but this model accepts at most max_seq_length = {limit} "
                         "positions (arch.embedding.max_seq_length); truncate the input")
    if S == 0 or input_ids.shape[0] == 0:
        raise ValueError(f"input_ids must not be empty, got shape {tuple(input_ids.shape)}")
    if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor)
                                       or tuple(attention_mask.shape) != tuple(input_ids.shape)):
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got {shape}")
    if not torch.compiler.is_compiling():
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= config.vocab_size:
            raise ValueError(f"input_ids must be token ids in [0, {config.vocab_size}), got values in [{lo}, {hi}]")


class CrammedBertModel(CrammedBertPreTrainedModel):
    """The crammedBERT / UltraFastBERT encoder (the original ``encoder.*`` tensors): embedding, layers, final norm.

    ``forward(input_ids, attention_mask=None, token_type_ids=None, output_hidden_states=None,
    output_fff_nodes=False, return_dict=None)``:

    Args:
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`): token ids, right-padded;
            ``sequence_length`` at most ``config.max_position_embeddings`` (``arch.embedding.max_seq_length``).
        attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, optional): 1 for real tokens, 0 for
            padding; ``(1 - mask) * -10000`` is added to the attention scores of the keys.
        token_type_ids: accepted (tokenizers return it) and ignored: the model has no token types.
        output_hidden_states: return the embedding output and every layer's output.
        output_fff_nodes: return every layer's visited FFF nodes.

    Returns:
        :class:`CrammedBertModelOutput` (or its tuple with ``return_dict=False``).

    Raises:
        ValueError: ``input_ids`` not 2-D integer ids in the vocabulary, longer than ``max_seq_length``, or an
            ``attention_mask`` of another shape.
        UltraFastBertConfigError: ``output_fff_nodes=True`` on a dense model (no FFF layers).
    """

    def __init__(self, config: CrammedBertConfig):
        check_supported(config.arch)
        super().__init__(config)
        self.embedding = CrammedEmbedding(config)
        self.layers = nn.ModuleList(CrammedLayer(config) for _ in range(config.num_hidden_layers))
        self.final_norm = (nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.arch["final_norm"]
                           else nn.Identity())
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embedding.word_embedding

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embedding.word_embedding = value

    def set_fff_backend(self, backend: str) -> None:
        """Inference backend of every FFF layer in ``eval()``: one of :data:`FFF_BACKENDS`.

        ``"auto"``, ``"torch_gather"``, ``"native"``, ``"mkl"``, ``"cuda"``: the inference form through
        :func:`ufkit.fff.kernels.fff_forward`; ``"masked"``: the masked training form (what the released code runs).
        ``train()`` always runs the training form.

        Raises:
            ValueError: an unknown backend.
            UltraFastBertConfigError: the model is dense (``arch.intermed_type`` ``"ff"``/``"dense"``): it has no FFF
                layer, and silently ignoring the call would let a benchmark time something else than it says.
        """
        if backend not in FFF_BACKENDS:
            raise ValueError(f"backend must be one of {FFF_BACKENDS}, got {backend!r}")
        self._require_fff("set_fff_backend")
        for layer in self.layers:
            layer.ffn.backend = backend

    def _require_fff(self, what: str) -> None:
        if not self.config.is_fff:
            raise UltraFastBertConfigError(
                f"{what} needs FFF layers, but this model's arch.intermed_type is "
                f"{self.config.arch['intermed_type']!r} (a dense feedforward)")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, output_hidden_states: bool | None = None,
                output_fff_nodes: bool = False, return_dict: bool | None = None):
        _check_inputs(self.config, input_ids, attention_mask)
        if output_fff_nodes:
            self._require_fff("output_fff_nodes=True")
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if return_dict is None:
            return_dict = self.config.return_dict
        x = self.embedding(input_ids)  # (B, S, H)
        mask = None
        if attention_mask is not None:
            mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0  # (B, 1, 1, S), additive on keys
        hidden, nodes = [x] if output_hidden_states else None, [] if output_fff_nodes else None
        for layer in self.layers:
            if output_fff_nodes:
                x, n = layer(x, mask, output_nodes=True)
                nodes.append(n)  # (B, S, K, D+1)
            else:
                x = layer(x, mask)
            if output_hidden_states:
                hidden.append(x)
        out = CrammedBertModelOutput(
            last_hidden_state=self.final_norm(x),
            hidden_states=tuple(hidden) if output_hidden_states else None,
            fff_visited_nodes=tuple(nodes) if output_fff_nodes else None,
        )
        return out if return_dict else out.to_tuple()


class CrammedBertForMaskedLM(CrammedBertPreTrainedModel):
    """UltraFastBERT for masked language modelling (the original ``ScriptableLMForPreTraining``).

    ``decoder`` (`(vocab_size, H)`, no bias) is tied to ``encoder.embedding.word_embedding`` when
    ``arch.tie_weights`` (the released models). ``forward`` takes the arguments of :class:`CrammedBertModel` plus
    ``labels`` (`torch.LongTensor` `(batch_size, sequence_length)`, -100 = ignored) and returns
    :class:`CrammedBertMaskedLMOutput` with ``logits`` `(batch_size, sequence_length, vocab_size)` for every
    position and, with labels, the mean cross-entropy ``loss``.
    """

    _tied_weights_keys = {"decoder.weight": "encoder.embedding.word_embedding.weight"}

    def __init__(self, config: CrammedBertConfig):
        super().__init__(config)
        self.encoder = CrammedBertModel(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.encoder.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Linear:
        return self.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.decoder = value

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, output_fff_nodes: bool = False,
                return_dict: bool | None = None):
        if return_dict is None:
            return_dict = self.config.return_dict
        enc = self.encoder(input_ids, attention_mask, output_hidden_states=output_hidden_states,
                           output_fff_nodes=output_fff_nodes, return_dict=True)
        logits = self.decoder(enc.last_hidden_state)  # (B, S, V); the prediction head is an identity
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        out = CrammedBertMaskedLMOutput(loss=loss, logits=logits, hidden_states=enc.hidden_states,
                                        fff_visited_nodes=enc.fff_visited_nodes)
        return out if return_dict else out.to_tuple()


class CrammedBertForSequenceClassification(CrammedBertPreTrainedModel):
    """UltraFastBERT for sequence classification (the original ``ScriptableLMForSequenceClassification``).

    The encoder, then :class:`CrammedPooler` (``pooler.dense`` `(head_dim, H)`, Tanh; pooling rule
    ``arch.classification_head.pooler``), then ``head`` `(num_labels, head_dim)`; ``num_labels`` is the Hugging
    Face config's. ``forward`` takes the arguments of :class:`CrammedBertModel` plus ``labels`` (`(batch_size,)`:
    class ids, or floats for regression / multi-label as in ``BertForSequenceClassification``) and returns
    :class:`CrammedBertSequenceClassifierOutput` with ``logits`` `(batch_size, num_labels)`.
    A checkpoint without ``pooler.*`` / ``head.*`` (the masked-LM one) loads with those newly initialised.
    """

    _optional_checkpoint_prefixes = ("pooler.", "head.")

    def __init__(self, config: CrammedBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.encoder = CrammedBertModel(config)
        self.pooler = CrammedPooler(config)
        self.head = nn.Linear(config.arch["classification_head"]["head_dim"], config.num_labels)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.encoder.set_input_embeddings(value)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, output_fff_nodes: bool = False,
                return_dict: bool | None = None):
        if return_dict is None:
            return_dict = self.config.return_dict
        enc = self.encoder(input_ids, attention_mask, output_hidden_states=output_hidden_states,
                           output_fff_nodes=output_fff_nodes, return_dict=True)
        pooled = self.pooler(enc.last_hidden_state)  # (B, head_dim)
        logits = self.head(pooled)  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = self._loss(logits, labels)
        out = CrammedBertSequenceClassifierOutput(loss=loss, logits=logits, hidden_states=enc.hidden_states,
                                                  pooled_output=pooled, fff_visited_nodes=enc.fff_visited_nodes)
        return out if return_dict else out.to_tuple()

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        problem = self.config.problem_type
        if problem is None:
            if self.num_labels == 1:
                problem = "regression"
            elif labels.dtype in (torch.long, torch.int):
                problem = "single_label_classification"
            else:
                problem = "multi_label_classification"
        if problem == "regression":
            return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).reshape(-1))
        if problem == "single_label_classification":
            return F.cross_entropy(logits, labels.reshape(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
