"""The FFF layer as a ``torch.nn.Module``: training form in ``train()`` mode, compiled inference form in ``eval()``."""

from __future__ import annotations

import torch
from torch import nn

from .kernels import fff_forward
from .reference import _check_int, fff_route, fff_training_form, n_nodes, node_usage

__all__ = ["FFF"]


class FFF(nn.Module):
    """A fast feedforward layer (UltraFastBERT's FFF): K trees of depth D in place of a dense FF.

    Args:
        in_features: H_in (``hidden_size`` in a BERT layer).
        out_features: H_out (``hidden_size`` again in a BERT layer).
        depth: D, levels below the root; each tree has N = 2**(D+1) - 1 neurons.
        n_trees: K. UltraFastBERT-1x11 is ``n_trees=1, depth=11`` (4,095 neurons, 12 used per token).
        backend: inference backend used in ``eval()`` mode: ``"auto"``, ``"torch_gather"``, ``"native"``,
            ``"mkl"`` or ``"cuda"`` (see :func:`ufkit.fff.kernels.fff_forward`). Assignable later.

    Parameters ``linear_in`` (weight `(K*N, H_in)`, bias `(K*N,)`) and ``linear_out`` (weight
    `(H_out, K*N)`, no bias) have UltraFastBERT's names and layouts.

    ``forward(hidden_states)`` takes `(..., H_in)` and returns `(..., H_out)`. In ``train()`` mode it runs the
    training form (dense, masked, differentiable); in ``eval()`` mode the inference form through the chosen
    backend, without autograd (the kernels have no backward). Both compute the same function (see
    :func:`fff_reference`).

    Belcak & Wattenhofer 2023, arXiv:2311.10770.
    """

    def __init__(self, in_features: int, out_features: int, depth: int, n_trees: int = 1, backend: str = "auto"):
        super().__init__()
        _check_int("in_features", in_features, 1, 1 << 24)
        _check_int("out_features", out_features, 1, 1 << 24)
        _check_int("depth", depth, 0, 20)
        _check_int("n_trees", n_trees, 1, 1 << 20)
        self.in_features, self.out_features = in_features, out_features
        self.depth, self.n_trees = depth, n_trees
        self.n_nodes = n_nodes(depth)
        self.linear_in = nn.Linear(in_features, n_trees * self.n_nodes, bias=True)
        self.linear_out = nn.Linear(n_trees * self.n_nodes, out_features, bias=False)
        self.backend = backend

    @property
    def width(self) -> int:
        """Neurons in the layer, K*N (the dense layer it replaces would have this intermediate_size)."""
        return self.n_trees * self.n_nodes

    def _weights(self):
        return self.linear_in.weight, self.linear_in.bias, self.linear_out.weight

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        w_in, b_in, w_out = self._weights()
        if self.training:
            return fff_training_form(hidden_states, w_in, b_in, w_out, self.depth, self.n_trees)
        with torch.no_grad():
            return fff_forward(hidden_states, w_in, b_in, w_out, self.depth, self.n_trees, backend=self.backend)

    def visited_nodes(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Nodes each token visits: `torch.LongTensor` `(..., n_trees, depth + 1)` (see :func:`fff_route`)."""
        w_in, b_in, _ = self._weights()
        return fff_route(hidden_states, w_in.detach(), b_in.detach(), self.depth, self.n_trees)

    def node_usage(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Tokens per node: `torch.LongTensor` `(n_trees, N)` (see :func:`node_usage`)."""
        w_in, b_in, _ = self._weights()
        return node_usage(hidden_states, w_in.detach(), b_in.detach(), self.depth, self.n_trees)

    def flops_per_token(self) -> dict:
        """Multiply-adds x2 per token: ``{"dense": 2*H_in*K*N + 2*K*N*H_out, "fff": same with K*(D+1)}``.

        The ratio of the two is the speedup limit of conditional matrix multiplication: N/(D+1) = 341.25 for 1x11.
        """
        used = self.n_trees * (self.depth + 1)
        per_neuron = 2 * self.in_features + 2 * self.out_features
        return {"dense": per_neuron * self.width, "fff": per_neuron * used}

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, depth={self.depth}, "
            f"n_trees={self.n_trees}, width={self.width}, backend={self.backend!r}"
        )
