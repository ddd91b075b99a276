"""The inference form of a fast feedforward layer as a registered ``torch.library`` op: ``torch.ops.ufkit.fff``.

Belcak & Wattenhofer, "Exponentially Faster Language Modelling", 2023, arXiv:2311.10770.

``torch.ops.ufkit.fff(x, w_in, b_in, w_out, depth, n_trees, backend) -> (y, route)`` runs
:func:`ufkit.fff.kernels.fff_forward` (``backend="auto"``: the native C++ kernel for float32 on the CPU, the CUDA
kernel on a GPU, the PyTorch gather form otherwise). Registering it gives what a plain Python call into a compiled
extension lacks:

* a fake (meta) kernel, so ``torch.compile(model, fullgraph=True)`` traces through it without a graph break;
* an autograd formula, so the compiled form is differentiable. It differentiates the same function as the masked
  training form (:func:`ufkit.fff.reference.fff_training_form`): the routing is a hard choice, and for each
  token only its K*(D+1) visited neurons get gradients. With B tokens and L = K*(D+1)::

      z_j = w_in[r_j] . x + b_in[r_j],   y = sum_j GELU(z_j) w_out[:, r_j]
      dz_j = (w_out[:, r_j] . dy) GELU'(z_j),   dx = sum_j dz_j w_in[r_j]
      dw_in[r_j] += dz_j x,   db_in[r_j] += dz_j,   dw_out[:, r_j] += GELU(z_j) dy

  (gathers of `(B, L, H)` rows: O(B L H) work, like the forward).

The route output holds global node indices ``t * N + i`` (int32, tree by tree, root first), as the kernels return.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..fff import fff_forward
from ..fff.kernels import BACKENDS
from ..fff.reference import check_fff_args

__all__ = ["fff"]


def _check(x: Tensor, w_in: Tensor, b_in: Tensor, w_out: Tensor, depth: int, n_trees: int, backend: str) -> None:
    if backend not in ("auto",) + BACKENDS:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {backend!r}")
    check_fff_args(x, w_in, b_in, w_out, depth, n_trees, require_float32=backend in ("native", "mkl", "cuda"))


@torch.library.custom_op("ufkit::fff", mutates_args=())
def fff(x: Tensor, w_in: Tensor, b_in: Tensor, w_out: Tensor, depth: int, n_trees: int,
        backend: str = "auto") -> tuple[Tensor, Tensor]:
    """FFF inference form as a torch op.

    Args:
        x: `(..., H_in)`; w_in: `(K*N, H_in)`; b_in: `(K*N,)`; w_out: `(H_out, K*N)` with N = 2**(depth+1) - 1 and
            K = ``n_trees`` (the ``linear_in`` / ``linear_out`` tensors of UltraFastBERT).
        backend: as in :func:`ufkit.fff.kernels.fff_forward`.

    Returns:
        ``(y, route)``: y `(..., H_out)` in x's dtype; route `torch.IntTensor` `(..., K*(D+1))` of visited global
        node indices.

    Raises:
        ValueError: bad shapes, dtypes, devices or backend (see :func:`ufkit.fff.reference.check_fff_args`).
    """
    y, route = fff_forward(x, w_in, b_in, w_out, depth, n_trees, backend=backend, return_route=True)
    return y, route


@fff.register_fake
def _fff_fake(x, w_in, b_in, w_out, depth, n_trees, backend="auto"):
    _check(x, w_in, b_in, w_out, depth, n_trees, backend)
    lead = x.shape[:-1]
    y = x.new_empty(*lead, w_out.shape[0])
    route = x.new_empty(*lead, n_trees * (depth + 1), dtype=torch.int32)
    return y, route


def _setup_context(ctx, inputs, output):
    x, w_in, b_in, w_out, depth, n_trees, _ = inputs
    ctx.save_for_backward(x, w_in, b_in, w_out, output[1])
    ctx.depth, ctx.n_trees = depth, n_trees


def _backward(ctx, grad_y, grad_route):
    x, w_in, b_in, w_out, route = ctx.saved_tensors
    H_in, H_out = w_in.shape[1], w_out.shape[0]
    x2 = x.reshape(-1, H_in)  # (B, H_in)
    gy = grad_y.reshape(-1, H_out)  # (B, H_out)
    r = route.reshape(x2.shape[0], -1).long()  # (B, L)
    w = w_in[r]  # (B, L, H_in)
    z = torch.matmul(w, x2.unsqueeze(-1)).squeeze(-1) + b_in[r]  # (B, L)
    wo = w_out.t()[r]  # (B, L, H_out)
    cdf = 0.5 * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0))))
    pdf = torch.exp(-0.5 * z * z) * (1.0 / math.sqrt(2.0 * math.pi))
    gz = torch.matmul(wo, gy.unsqueeze(-1)).squeeze(-1) * (cdf + z * pdf)  # (B, L): dy . w_out[:, r] * GELU'(z)
    flat = r.reshape(-1)  # (B*L,)
    gx = gw_in = gb_in = gw_out = None
    if ctx.needs_input_grad[0]:
        gx = torch.matmul(gz.unsqueeze(1), w).squeeze(1).reshape(x.shape)  # (..., H_in)
    if ctx.needs_input_grad[1]:
        gw_in = torch.zeros_like(w_in).index_add_(0, flat, (gz.unsqueeze(-1) * x2.unsqueeze(1)).reshape(-1, H_in))
    if ctx.needs_input_grad[2]:
        gb_in = torch.zeros_like(b_in).index_add_(0, flat, gz.reshape(-1))
    if ctx.needs_input_grad[3]:
        a = z * cdf  # GELU(z), exact erf form
        rows = (a.unsqueeze(-1) * gy.unsqueeze(1)).reshape(-1, H_out)  # (B*L, H_out)
        gw_out = torch.zeros(w_out.shape[1], H_out, dtype=w_out.dtype, device=w_out.device).index_add_(0, flat, rows).t()
    return gx, gw_in, gb_in, gw_out, None, None, None


fff.register_autograd(_backward, setup_context=_setup_context)
