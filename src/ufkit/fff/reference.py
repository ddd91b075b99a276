"""Fast feedforward (FFF) layers: the conditional matrix multiplication of UltraFastBERT.

Belcak & Wattenhofer, "Exponentially Faster Language Modelling", 2023, arXiv:2311.10770.

A FFF layer of width ``in_features -> out_features`` holds ``n_trees`` (K) binary trees of depth ``depth``
(D). Each tree has N = 2**(D+1) - 1 nodes, and every node is one neuron of an ordinary feedforward layer:
a row of ``linear_in`` (with a bias) and a column of ``linear_out`` (no bias). Nodes are heap-indexed (the
children of node n are 2n+1 and 2n+2); tree t's node i sits at index ``t * N + i``. These names and layouts
are UltraFastBERT's, so its checkpoints load.

For one input row x (shape ``(in_features,)``)::

    z = W_in x + b_in                     # pre-activations, one per node
    a = GELU(z)                           # exact (erf) GELU
    in each tree: n = 0; D times: n = 2n+2 if z_n > 0 else 2n+1      # a tie (z_n == 0) goes left
    y = sum over the D+1 visited nodes n of every tree of a_n * W_out[:, n]

so a token uses K*(D+1) of the K*N neurons: 12 of 4,095 for UltraFastBERT-1x11.

Two ways to compute the same function:

* the *training form* (:meth:`ufkit.fff.layer.FFF.forward` in ``train()`` mode, :func:`fff_training_form`) computes every z
  densely, masks a to the visited nodes and multiplies densely by W_out. It is what the paper trains with
  and is never faster than a dense layer;
* the *inference form* (``eval()`` mode, :func:`ufkit.fff.kernels.fff_forward`) touches only the visited nodes:
  K*(D+1) rows of W_in and K*(D+1) columns of W_out per token.

:func:`fff_reference` is the plain-PyTorch definition every backend is tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "n_nodes",
    "check_fff_args",
    "check_tensors",
    "fff_route",
    "fff_reference",
    "fff_training_form",
    "node_usage",
    "conformance",
]


def n_nodes(depth: int) -> int:
    """Nodes (neurons) in one tree of depth ``depth``: ``2**(depth+1) - 1``."""
    return 2 ** (depth + 1) - 1


def _check_int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def check_tensors(named, *, require_float32: bool = False) -> None:
    """Check ``(name, tensor)`` pairs, the first being ``x`` `(..., H_in)`: every one a floating-point
    ``torch.Tensor`` of ``x``'s dtype (float32 with ``require_float32``) on ``x``'s device, and ``x`` at least 1-d.

    Raises:
        ValueError: naming the first bad argument.
    """
    x = named[0][1]
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if require_float32 and t.dtype != torch.float32:
            raise ValueError(f"{name} must be float32 for this backend, got dtype {t.dtype}")
        if t.dtype != x.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but x has dtype {x.dtype}; use one dtype")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; use one device")
    if x.dim() < 1:
        raise ValueError("x must have shape (..., H_in), got a 0-d tensor")


def check_fff_args(x, w_in, b_in, w_out, depth, n_trees, *, require_float32: bool = False) -> None:
    """Validate the arguments of a FFF forward; raise ``ValueError`` naming the first bad argument.

    Expected: ``x`` of shape ``(..., H_in)``, ``w_in`` ``(K*N, H_in)``, ``b_in`` ``(K*N,)``, ``w_out``
    ``(H_out, K*N)`` with N = 2**(depth+1) - 1 and K = ``n_trees``; all floating point, one dtype, one
    device. ``require_float32`` is set by the compiled backends, which only implement float32.
    """
    depth = _check_int("depth", depth, 0, 20)
    n_trees = _check_int("n_trees", n_trees, 1, 1 << 20)
    width = n_trees * n_nodes(depth)
    check_tensors((("x", x), ("w_in", w_in), ("b_in", b_in), ("w_out", w_out)), require_float32=require_float32)
    if w_in.dim() != 2:
        raise ValueError(f"w_in must have shape (n_trees * N, H_in), got {tuple(w_in.shape)}")
    if w_in.shape[0] != width:
        raise ValueError(
            f"w_in has {w_in.shape[0]} rows but n_trees={n_trees}, depth={depth} needs "
            f"n_trees * (2**(depth+1) - 1) = {width}"
        )
    if w_in.shape[1] != x.shape[-1]:
        raise ValueError(f"w_in has H_in={w_in.shape[1]} columns but x has last dimension {x.shape[-1]}")
    if tuple(b_in.shape) != (width,):
        raise ValueError(f"b_in must have shape ({width},), got {tuple(b_in.shape)}")
    if w_out.dim() != 2 or w_out.shape[1] != width:
        raise ValueError(f"w_out must have shape (H_out, {width}), got {tuple(w_out.shape)}")


def _walk(z: torch.Tensor, depth: int, n_trees: int) -> torch.Tensor:
    """Visited nodes from all pre-activations ``z`` (shape ``(B, K*N)``): ``(B, K, D+1)`` global indices."""
    n = n_nodes(depth)
    B = z.shape[0]
    offset = torch.arange(n_trees, device=z.device) * n  # (K,)
    node = torch.zeros(B, n_trees, dtype=torch.long, device=z.device)  # node within its tree
    visited = [node + offset]
    for _ in range(depth):
        right = z.gather(1, node + offset) > 0  # (B, K); strictly greater: a tie goes left
        node = 2 * node + 1 + right.long()
        visited.append(node + offset)
    return torch.stack(visited, dim=-1)  # (B, K, D+1)


@torch.no_grad()
def fff_route(x, w_in, b_in, depth: int, n_trees: int) -> torch.Tensor:
    """Nodes each token visits.

    Args:
        x: `torch.FloatTensor` of shape `(..., H_in)`.
        w_in, b_in: `linear_in` weight `(K*N, H_in)` and bias `(K*N,)`.

    Returns:
        `torch.LongTensor` of shape `(..., n_trees, depth + 1)`: global node indices ``t * N + i``, root
        first. Raises ``ValueError`` on bad arguments.
    """
    dummy_out = w_in.new_empty(1, w_in.shape[0]) if isinstance(w_in, torch.Tensor) else None
    check_fff_args(x, w_in, b_in, dummy_out, depth, n_trees)
    x2 = x.reshape(-1, x.shape[-1])
    z = F.linear(x2, w_in, b_in)
    return _walk(z, depth, n_trees).reshape(*x.shape[:-1], n_trees, depth + 1)


@torch.no_grad()
def node_usage(x, w_in, b_in, depth: int, n_trees: int) -> torch.Tensor:
    """How many tokens of ``x`` visit each node: `torch.LongTensor` of shape `(n_trees, N)`.

    Every token visits exactly one node per level, so each level's counts sum to the number of tokens;
    a uniform tree spreads them evenly over the 2**level nodes of that level.
    """
    visited = fff_route(x, w_in, b_in, depth, n_trees).reshape(-1)
    counts = torch.bincount(visited, minlength=n_trees * n_nodes(depth))
    return counts.reshape(n_trees, n_nodes(depth))


def fff_reference(x, w_in, b_in, w_out, depth: int, n_trees: int) -> torch.Tensor:
    """The definition of a FFF layer in plain PyTorch (inference semantics; any float dtype, any device).

    Args:
        x: `torch.FloatTensor` of shape `(..., H_in)`, e.g. `(batch_size, sequence_length, hidden_size)`.
        w_in: `linear_in.weight`, shape `(n_trees * N, H_in)` with N = 2**(depth+1) - 1.
        b_in: `linear_in.bias`, shape `(n_trees * N,)`.
        w_out: `linear_out.weight`, shape `(H_out, n_trees * N)`.
        depth, n_trees: D and K.

    Returns:
        `torch.FloatTensor` of shape `(..., H_out)`: for each token the sum over its K*(D+1) visited nodes n of
        ``GELU(z_n) * w_out[:, n]``, where ``z = w_in x + b_in`` and the walk goes right iff ``z_n > 0``.

    Raises:
        ValueError: wrong shapes, dtypes or devices, or a weight size that does not match (n_trees, depth).

    Computes all K*N pre-activations (that is what keeps it obviously right); use
    :func:`ufkit.fff.kernels.fff_forward` for speed.
    """
    check_fff_args(x, w_in, b_in, w_out, depth, n_trees)
    x2 = x.reshape(-1, x.shape[-1])  # (B, H_in)
    z = F.linear(x2, w_in, b_in)  # (B, K*N)
    visited = _walk(z, depth, n_trees).reshape(x2.shape[0], n_trees * (depth + 1))  # (B, K*(D+1))
    a = F.gelu(z.gather(1, visited))  # (B, K*(D+1)), exact erf GELU
    y = x2.new_zeros(x2.shape[0], w_out.shape[0])  # (B, H_out)
    for j in range(visited.shape[1]):
        y += a[:, j : j + 1] * w_out.t()[visited[:, j]]  # (B, 1) * (B, H_out)
    return y.reshape(*x.shape[:-1], w_out.shape[0])


def fff_training_form(x, w_in, b_in, w_out, depth: int, n_trees: int) -> torch.Tensor:
    """The paper's training form: dense z, GELU, mask to the visited nodes, dense output matmul.

    Same shapes, result and errors as :func:`fff_reference`; differentiable in ``x`` and the weights
    (the routing itself is a hard, non-differentiable choice, as in the paper). Costs as much as a dense
    layer of width K*N plus the walk.
    """
    check_fff_args(x, w_in, b_in, w_out, depth, n_trees)
    x2 = x.reshape(-1, x.shape[-1])  # (B, H_in)
    z = F.linear(x2, w_in, b_in)  # (B, K*N)
    with torch.no_grad():
        visited = _walk(z, depth, n_trees).reshape(x2.shape[0], n_trees * (depth + 1))  # (B, K*(D+1))
        mask = torch.zeros_like(z).scatter_(1, visited, 1.0)  # (B, K*N), K*(D+1) ones per row
    y = F.linear(F.gelu(z) * mask, w_out)  # (B, H_out)
    return y.reshape(*x.shape[:-1], w_out.shape[0])


@torch.no_grad()
def conformance(y, route, x, w_in, b_in, w_out, depth: int, n_trees: int) -> dict:
    """Compare a backend's output with the float64 reference; the measure the tests and the CUDA check use.

    Args:
        y: the backend's output, `(B, H_out)`; route: its visited nodes, `(B, n_trees * (depth + 1))`.
        x, w_in, b_in, w_out, depth, n_trees: the inputs it was given (any device; compared on the CPU).

    Returns:
        dict with ``max_rel_err`` (per token, over the tokens whose route matches the reference, of
        ``||y - y_ref|| / sum_n (|GELU(z_n)| + |x|.|w_n| + |b_n|) * ||w_out[:, n]||``: the error against the size
        of the token's terms and of the rounding its dot products carry; a float32 sum can be no more
        accurate), ``route_mismatches`` (tokens whose route differs), ``non_tie_mismatches`` (those whose
        first differing decision was not a near-tie, ``|z| > 1e-5 * (|x|.|w| + |b|)``: these are bugs) and
        ``tokens``.
    """
    x64, w64, b64, o64 = (t.detach().cpu().double() for t in (x, w_in, b_in, w_out))
    x64 = x64.reshape(-1, x64.shape[-1])
    B, L = x64.shape[0], n_trees * (depth + 1)
    y = y.detach().cpu().double().reshape(B, w_out.shape[0])
    got = route.detach().cpu().long().reshape(B, L)
    z = F.linear(x64, w64, b64)  # (B, K*N)
    mag = F.linear(x64.abs(), w64.abs(), b64.abs())  # (B, K*N), size of each dot product's terms
    want = _walk(z, depth, n_trees).reshape(B, L)
    same = (got == want).all(dim=1)
    non_tie = 0
    for t in torch.nonzero(~same).flatten().tolist():
        j = int(torch.nonzero(got[t] != want[t])[0])
        parent = int(want[t, j - 1]) if j % (depth + 1) else -1
        if parent < 0 or abs(z[t, parent]) > 1e-5 * mag[t, parent]:
            non_tie += 1
    ref = fff_reference(x64, w64, b64, o64, depth, n_trees)  # (B, H_out)
    scale = ((F.gelu(z.gather(1, want)).abs() + mag.gather(1, want)) * o64.norm(dim=0)[want]).sum(dim=1)
    err = (y - ref)[same].norm(dim=1) / scale[same].clamp_min(1e-300)
    return {
        "max_rel_err": float(err.max()) if err.numel() else 0.0,
        "route_mismatches": int((~same).sum()),
        "non_tie_mismatches": non_tie,
        "tokens": B,
    }
