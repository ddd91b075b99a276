"""Leaf fast feedforward layers: a tree of routers whose leaves are small feedforward blocks.

Belcak & Wattenhofer, "Fast Feedforward Networks", 2023, arXiv:2308.14711. UltraFastBERT's FFF
(:mod:`ufkit.fff.reference`) makes every tree node a single neuron; the earlier *leaf* FFF keeps the tree for
routing only and puts a feedforward block of width ``leaf_width`` (w) at each of its 2**depth leaves. A token
visits ``depth`` routers and one leaf, so it uses w of the 2**depth * w neurons.

Parameters (L = 2**depth leaves, H_in / H_out the widths, heap-numbered routers: the children of router r are
2r+1 and 2r+2, and the routers' children at the last level are the leaves, leaf l sitting at heap index
``L - 1 + l``)::

    router_weight (L-1, H_in), router_bias (L-1,)
    w1 (L, w, H_in), b1 (L, w)          # leaf l's first linear layer, nn.Linear layout
    w2 (L, H_out, w), b2 (L, H_out)     # leaf l's second linear layer, nn.Linear layout

For one input row x::

    n = 0; depth times: n = 2n+2 if router_weight[n] . x + router_bias[n] > 0 else 2n+1   # a tie goes left
    l = n - (L - 1)
    y = w2[l] act(w1[l] x + b1[l]) + b2[l]           # act: exact (erf) GELU or ReLU

Three forms compute it:

* *hard* (:func:`leaf_fff_reference`, and the kernels of :func:`leaf_fff_forward`): each token through its leaf
  only; what inference runs;
* *masked* (:func:`leaf_fff_masked`): every leaf on every token, then each token keeps its own leaf's output. Same
  values as hard, differentiable in the leaves (not the routers), never faster than dense; what distillation
  trains with once the routers are fixed, and what an ONNX export traces;
* *soft* (:func:`leaf_fff_soft`): the mixture of all leaves weighted by the product of the router sigmoids along
  each leaf's path (the paper's training form), differentiable in the routers as well.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .reference import _check_int, check_tensors

__all__ = ["ACTIVATIONS", "LEAF_BACKENDS", "n_leaves", "check_leaf_args", "leaf_route", "leaf_soft_weights",
           "leaf_fff_reference", "leaf_fff_masked", "leaf_fff_soft", "leaf_fff_forward", "LeafFFF"]

#: Activations of the leaf blocks: exact (erf) GELU, as BERT's feedforward, or ReLU (MoEfication's conversions).
ACTIVATIONS = ("gelu", "relu")
#: Inference backends of :func:`leaf_fff_forward`.
LEAF_BACKENDS = ("auto", "torch", "native")


def n_leaves(depth: int) -> int:
    """Leaves (blocks) of a tree of depth ``depth``: ``2**depth``."""
    return 2 ** depth


def _act(name: str):
    if name == "gelu":
        return F.gelu
    if name == "relu":
        return F.relu
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def check_leaf_args(x, router_weight, router_bias, w1, b1, w2, b2, depth, activation) -> None:
    """Validate a leaf FFF's arguments; raise ``ValueError`` naming the first bad one.

    Expected: ``x`` `(..., H_in)`; ``router_weight`` `(L-1, H_in)`, ``router_bias`` `(L-1,)`; ``w1`` `(L, w, H_in)`,
    ``b1`` `(L, w)`, ``w2`` `(L, H_out, w)`, ``b2`` `(L, H_out)` with L = 2**depth; one floating dtype and one
    device; ``activation`` in :data:`ACTIVATIONS`.
    """
    depth = _check_int("depth", depth, 1, 16)
    _act(activation)
    L = n_leaves(depth)
    check_tensors((("x", x), ("router_weight", router_weight), ("router_bias", router_bias), ("w1", w1), ("b1", b1),
                   ("w2", w2), ("b2", b2)))
    h_in = x.shape[-1]
    if w1.dim() != 3 or w1.shape[0] != L or w1.shape[2] != h_in:
        raise ValueError(f"w1 must have shape (2**depth, leaf_width, H_in) = ({L}, w, {h_in}), got {tuple(w1.shape)}")
    w = w1.shape[1]
    if w2.dim() != 3 or w2.shape[0] != L or w2.shape[2] != w:
        raise ValueError(f"w2 must have shape (2**depth, H_out, leaf_width) = ({L}, H_out, {w}), got "
                         f"{tuple(w2.shape)}")
    h_out = w2.shape[1]
    for name, t, shape in (("router_weight", router_weight, (L - 1, h_in)), ("router_bias", router_bias, (L - 1,)),
                           ("b1", b1, (L, w)), ("b2", b2, (L, h_out))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")


def leaf_route(x: torch.Tensor, router_weight: torch.Tensor, router_bias: torch.Tensor, depth: int) -> torch.Tensor:
    """Leaf each token visits: `torch.LongTensor` `(...)` with values in ``[0, 2**depth)``, from ``x`` `(..., H_in)`.

    Raises:
        ValueError: ``router_weight`` / ``router_bias`` do not have shapes `(2**depth - 1, H_in)` / `(2**depth - 1,)`.
    """
    depth = _check_int("depth", depth, 1, 16)
    n_routers = n_leaves(depth) - 1
    if router_weight.dim() != 2 or tuple(router_weight.shape) != (n_routers, x.shape[-1]):
        raise ValueError(f"router_weight must have shape (2**depth - 1, H_in) = ({n_routers}, {x.shape[-1]}), got "
                         f"{tuple(router_weight.shape)}")
    if tuple(router_bias.shape) != (n_routers,):
        raise ValueError(f"router_bias must have shape ({n_routers},), got {tuple(router_bias.shape)}")
    z = F.linear(x, router_weight, router_bias)  # (..., L-1): a handful of routers, cheap to compute densely
    node = torch.zeros(x.shape[:-1], dtype=torch.long, device=x.device)
    for _ in range(depth):
        right = (z.gather(-1, node.unsqueeze(-1)).squeeze(-1) > 0).long()
        node = 2 * node + 1 + right
    return node - n_routers


def leaf_soft_weights(x: torch.Tensor, router_weight: torch.Tensor, router_bias: torch.Tensor,
                      depth: int) -> torch.Tensor:
    """Soft routing: `(..., 2**depth)`, leaf l's weight the product of ``sigmoid(±z)`` of the routers on its path
    (``sigmoid(z)`` going right). Rows sum to 1; as the router logits grow, it tends to the hard route's one-hot."""
    depth = _check_int("depth", depth, 1, 16)
    z = F.linear(x, router_weight, router_bias)  # (..., L-1)
    p_right = torch.sigmoid(z)
    weights = torch.ones(*x.shape[:-1], 1, dtype=x.dtype, device=x.device)  # level 0: the root, weight 1
    for level in range(depth):
        first = 2 ** level - 1  # heap index of the level's first router
        pr = p_right[..., first:first + 2 ** level]  # (..., 2**level)
        weights = torch.stack((weights * (1 - pr), weights * pr), dim=-1).flatten(-2)  # left child 2r+1, right 2r+2
    return weights


def _all_leaves(x, w1, b1, w2, b2, activation):
    """Every leaf on every token: `(..., L, H_out)` (what the masked and soft forms share)."""
    h = _act(activation)(torch.einsum("...i,lwi->...lw", x, w1) + b1)  # (..., L, w)
    return torch.einsum("...lw,low->...lo", h, w2) + b2  # (..., L, H_out)


def leaf_fff_reference(x, router_weight, router_bias, w1, b1, w2, b2, depth: int,
                       activation: str = "gelu") -> torch.Tensor:
    """The definition (hard form): `(..., H_in)` -> `(..., H_out)`, each token through its own leaf, one token at
    a time in plain PyTorch. Slow; the tests' reference. Raises ``ValueError`` as :func:`check_leaf_args`."""
    check_leaf_args(x, router_weight, router_bias, w1, b1, w2, b2, depth, activation)
    act = _act(activation)
    rows = x.reshape(-1, x.shape[-1])
    leaf = leaf_route(rows, router_weight, router_bias, depth)
    out = [F.linear(act(F.linear(r, w1[l], b1[l])), w2[l], b2[l]) for r, l in zip(rows, leaf.tolist())]
    y = torch.stack(out) if out else rows.new_zeros(0, w2.shape[1])
    return y.reshape(*x.shape[:-1], w2.shape[1])


def leaf_fff_masked(x, router_weight, router_bias, w1, b1, w2, b2, depth: int, activation: str = "gelu",
                    leaf: torch.Tensor | None = None) -> torch.Tensor:
    """Masked form: every leaf on every token, each token keeping its own leaf's output; `(..., H_out)`.

    Equal to the hard form; differentiable in ``w1, b1, w2, b2`` (the routing is a hard, piecewise-constant
    choice). ``leaf`` `(...)` overrides the routers' choice (e.g. the oracle leaf while fitting). Raises
    ``ValueError`` as :func:`check_leaf_args`.
    """
    check_leaf_args(x, router_weight, router_bias, w1, b1, w2, b2, depth, activation)
    if leaf is None:
        leaf = leaf_route(x.detach(), router_weight.detach(), router_bias.detach(), depth)
    out = _all_leaves(x, w1, b1, w2, b2, activation)  # (..., L, H_out)
    index = leaf.unsqueeze(-1).unsqueeze(-1).expand(*leaf.shape, 1, out.shape[-1])
    return out.gather(-2, index).squeeze(-2)


def leaf_fff_soft(x, router_weight, router_bias, w1, b1, w2, b2, depth: int, activation: str = "gelu"):
    """Soft form (Belcak & Wattenhofer's training form): ``sum_l leaf_soft_weights[..., l] * leaf_l(x)``,
    `(..., H_out)`, differentiable in every parameter. Raises ``ValueError`` as :func:`check_leaf_args`."""
    check_leaf_args(x, router_weight, router_bias, w1, b1, w2, b2, depth, activation)
    p = leaf_soft_weights(x, router_weight, router_bias, depth)  # (..., L)
    return (p.unsqueeze(-1) * _all_leaves(x, w1, b1, w2, b2, activation)).sum(-2)


def _torch_grouped(x2, router_weight, router_bias, w1, b1, w2, b2, depth, activation):
    """Hard form by grouping tokens per leaf: one pair of matrix products per visited leaf. `(T, H_in)` in."""
    act = _act(activation)
    leaf = leaf_route(x2, router_weight, router_bias, depth)
    y = x2.new_empty(x2.shape[0], w2.shape[1])
    order = torch.argsort(leaf, stable=True)
    counts = torch.bincount(leaf, minlength=w1.shape[0]).tolist()
    start = 0
    for l, c in enumerate(counts):
        if c:
            idx = order[start:start + c]
            h = act(torch.addmm(b1[l], x2.index_select(0, idx), w1[l].t()))
            y.index_copy_(0, idx, torch.addmm(b2[l], h, w2[l].t()))
            start += c
    return y


def leaf_fff_forward(x, router_weight, router_bias, w1, b1, w2, b2, depth: int, activation: str = "gelu",
                     backend: str = "auto") -> torch.Tensor:
    """Hard form for inference, `(..., H_in)` -> `(..., H_out)`: route every token, group tokens by leaf, one
    matrix product per leaf and layer, scatter back. No autograd.

    Backends: ``"torch"`` (those steps as PyTorch ops), ``"native"`` (the same fused into one C++ op,
    ``torch.ops.ufkit_native.leaf_fff``, float32 CPU), ``"auto"`` (native where it applies, else torch).

    Raises:
        ValueError: bad arguments (:func:`check_leaf_args`) or an unknown ``backend``.
        RuntimeError: ``backend="native"`` when the extension cannot be built or the input is not float32 on CPU.
    """
    if backend not in LEAF_BACKENDS:
        raise ValueError(f"backend must be one of {LEAF_BACKENDS}, got {backend!r}")
    check_leaf_args(x, router_weight, router_bias, w1, b1, w2, b2, depth, activation)
    x2 = x.reshape(-1, x.shape[-1])
    if backend in ("auto", "native"):
        native_ok = x.device.type == "cpu" and x.dtype == torch.float32
        if backend == "native" and not native_ok:
            raise RuntimeError(f"backend 'native' takes float32 CPU tensors, got {x.dtype} on {x.device}")
        op = _native_op() if native_ok else None
        if op is None and backend == "native":
            raise RuntimeError("backend 'native': the leaf FFF op of the native extension is not available")
        if op is not None:
            args = [t.contiguous() for t in (x2, router_weight, router_bias, w1, b1, w2, b2)]
            y = op(*args, depth, ACTIVATIONS.index(activation))
            return y.reshape(*x.shape[:-1], w2.shape[1])
    y = _torch_grouped(x2, router_weight, router_bias, w1, b1, w2, b2, depth, activation)
    return y.reshape(*x.shape[:-1], w2.shape[1])


def _native_op():
    """``torch.ops.ufkit_native.leaf_fff`` when the native extension builds and has it, else None."""
    try:
        from .kernels import load_extension

        load_extension("native")
        return getattr(torch.ops.ufkit_native, "leaf_fff", None)
    except (RuntimeError, AttributeError):
        return None


class LeafFFF(nn.Module):
    """A leaf fast feedforward layer (Belcak & Wattenhofer 2023, arXiv:2308.14711): `(..., H_in)` -> `(..., H_out)`.

    Args:
        in_features: H_in (``hidden_size`` in a BERT layer).
        out_features: H_out.
        depth: levels of routers; 2**depth leaves.
        leaf_width: w, neurons per leaf; a token uses w of the 2**depth * w neurons.
        activation: ``"gelu"`` or ``"relu"``.
        training_form: what ``train()`` mode computes: ``"masked"`` (hard routing, routers frozen in effect) or
            ``"soft"`` (differentiable routing).
        backend: what ``eval()`` mode runs (:func:`leaf_fff_forward`).

    Parameters: ``router_weight`` `(2**depth - 1, H_in)`, ``router_bias``, ``w1`` `(L, w, H_in)`, ``b1`` `(L, w)`,
    ``w2`` `(L, H_out, w)`, ``b2`` `(L, H_out)`. In ``eval()`` mode under an ONNX export or a TorchScript trace the
    masked form runs (plain tensor ops, the same values), since the kernels do not trace.

    Raises:
        ValueError: a non-positive size, a depth outside [1, 16], an unknown activation, form or backend.
    """

    def __init__(self, in_features: int, out_features: int, depth: int, leaf_width: int, activation: str = "gelu",
                 training_form: str = "masked", backend: str = "auto"):
        super().__init__()
        _check_int("in_features", in_features, 1, 1 << 24)
        _check_int("out_features", out_features, 1, 1 << 24)
        _check_int("depth", depth, 1, 16)
        _check_int("leaf_width", leaf_width, 1, 1 << 24)
        _act(activation)
        if training_form not in ("masked", "soft"):
            raise ValueError(f"training_form must be 'masked' or 'soft', got {training_form!r}")
        if backend not in LEAF_BACKENDS:
            raise ValueError(f"backend must be one of {LEAF_BACKENDS}, got {backend!r}")
        self.in_features, self.out_features, self.depth, self.leaf_width = in_features, out_features, depth, leaf_width
        self.activation, self.training_form, self.backend = activation, training_form, backend
        L = n_leaves(depth)
        bound = in_features ** -0.5
        self.router_weight = nn.Parameter(torch.empty(L - 1, in_features).uniform_(-bound, bound))
        self.router_bias = nn.Parameter(torch.zeros(L - 1))
        self.w1 = nn.Parameter(torch.empty(L, leaf_width, in_features).uniform_(-bound, bound))
        self.b1 = nn.Parameter(torch.zeros(L, leaf_width))
        self.w2 = nn.Parameter(torch.empty(L, out_features, leaf_width).uniform_(-leaf_width ** -0.5,
                                                                                 leaf_width ** -0.5))
        self.b2 = nn.Parameter(torch.zeros(L, out_features))

    @property
    def n_leaves(self) -> int:
        """2**depth."""
        return n_leaves(self.depth)

    def _params(self):
        return (self.router_weight, self.router_bias, self.w1, self.b1, self.w2, self.b2)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.training and self.training_form == "soft":
            return leaf_fff_soft(hidden_states, *self._params(), self.depth, self.activation)
        if self.training or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
            return leaf_fff_masked(hidden_states, *self._params(), self.depth, self.activation)
        # the kernels compute in the weights' dtype: under autocast (bf16 evaluation) they run unautocast and the
        # result takes the input's dtype back
        with torch.no_grad(), torch.autocast(hidden_states.device.type, enabled=False):
            w_dtype = self.w1.dtype
            y = leaf_fff_forward(hidden_states.to(w_dtype), *self._params(), self.depth, self.activation,
                                 backend=self.backend)
        return y.to(hidden_states.dtype)

    def route(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Leaf of each token, `(...)` (:func:`leaf_route`)."""
        return leaf_route(hidden_states, self.router_weight.detach(), self.router_bias.detach(), self.depth)

    def flops_per_token(self) -> int:
        """Multiply-adds x2 a token costs in the hard form: its routers, then one leaf's two products."""
        return 2 * self.depth * self.in_features + 2 * self.leaf_width * (self.in_features + self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, depth={self.depth}, "
                f"leaf_width={self.leaf_width}, activation={self.activation!r}, backend={self.backend!r}")
