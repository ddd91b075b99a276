"""Retraining-free structured pruning under a FLOPs budget (Kwon et al., "A Fast Post-Training Pruning Framework
for Transformers", NeurIPS 2022).

No fine-tuning, no labels, a couple of thousand sentences and a few minutes on a CPU:

1. the Fisher information of a mask on every head and neuron (:func:`ufkit.compression.structured.importance`,
   ``kind="fisher"``) estimates how much the loss grows when the unit goes;
2. :func:`search_mask` (the paper's Algorithm 1) keeps, for every possible number of heads, the most important
   heads and as many of the most important neurons as the FLOPs budget still affords, and picks the split that
   prunes the least importance;
3. the paper's mask rearrangement (a refinement of the masks inside each layer using the off-diagonal Fisher
   blocks) is skipped;
4. :func:`tune_masks` turns each kept unit's 0/1 mask into a real scale, by least squares, layer by layer, so that
   each pruned sublayer reproduces what the unpruned sublayer computes on the same inputs; the scales are folded
   into the output projections and the model is pruned physically.

Public functions: :func:`post_training_prune` (the whole pipeline), :func:`search_mask`, :func:`tune_masks`.
"""

from __future__ import annotations

import math
import random
import time
from typing import Sequence

import torch

from ..progress import progress_bar
from ..structure import head_size, layer_structure
from .common import CompressionError
from .structured import (_check_keep, _check_texts, _counts, _positive_int, bert_layers, encoder_flops, importance,
                         keep_masks, masked, prune, text_batches, unit_flops)

#: least-squares scales are clipped to this range (a larger one means an ill-conditioned layer, not a better fit)
SCALE_RANGE = (-10.0, 10.0)


# ------------------------------------------------------------------------------------------------ mask search


def search_mask(head_scores: Sequence[torch.Tensor], neuron_scores: Sequence[torch.Tensor], *, head_flops: float,
                neuron_flops: float, budget: float) -> tuple[list[list[int]], list[list[int]]]:
    """The heads and neurons to keep so that the kept FLOPs fit ``budget`` and the pruned importance is least.

    Kwon et al. (NeurIPS 2022), Algorithm 1: every head costs ``head_flops`` and every neuron ``neuron_flops``
    (:func:`ufkit.compression.structured.unit_flops`), whatever its layer. For each number ``n`` of kept heads, the
    ``n`` most important heads (across layers) are kept and the budget left buys the ``k`` most important neurons;
    the ``(n, k)`` that keeps the largest total importance wins. Here every layer keeps at least its most important
    head and its most important neuron (a physically pruned layer needs one of each); they are paid for first.

    Args:
        head_scores, neuron_scores: one 1-D tensor per layer, shapes ``(H_l,)`` and ``(I_l,)``; higher is more
            important (e.g. the Fisher information).
        head_flops, neuron_flops: FLOPs one head / one neuron costs (positive).
        budget: FLOPs the kept units may cost.

    Returns:
        ``(heads, neurons)``: sorted indices to keep, one list per layer.

    Raises:
        CompressionError: lists of different or zero length, non-positive costs, or a budget below the cost of one
            head and one neuron per layer.
    """
    if len(head_scores) != len(neuron_scores) or not len(head_scores):
        raise CompressionError(f"head_scores and neuron_scores must have one tensor per layer each, got "
                               f"{len(head_scores)} and {len(neuron_scores)}")
    for name, v in (("head_flops", head_flops), ("neuron_flops", neuron_flops)):
        if not v > 0:
            raise CompressionError(f"{name} must be positive, got {v!r}")
    hs = [torch.as_tensor(x, dtype=torch.float64).detach().cpu().reshape(-1) for x in head_scores]
    ns = [torch.as_tensor(x, dtype=torch.float64).detach().cpu().reshape(-1) for x in neuron_scores]
    n_layers = len(hs)
    base = n_layers * (head_flops + neuron_flops)
    if budget < base * (1 - 1e-9):
        raise CompressionError(f"the FLOPs budget {budget:.4g} is below {base:.4g}, the cost of one head and one "
                               f"neuron per layer; raise flops_ratio")

    def rest(scores):
        """The units other than each layer's best, sorted by score (desc), and the best of each layer."""
        best = [int(torch.argmax(x)) for x in scores]
        units = [(float(x[j]), i, j) for i, x in enumerate(scores) for j in range(len(x)) if j != best[i]]
        units.sort(key=lambda u: -u[0])
        cum = torch.tensor([0.0] + [u[0] for u in units], dtype=torch.float64).cumsum(0)  # (n_units + 1,)
        return best, units, cum

    best_h, rest_h, cum_h = rest(hs)
    best_n, rest_n, cum_n = rest(ns)
    n = torch.arange(len(rest_h) + 1, dtype=torch.float64)  # extra heads kept
    left = budget - base - n * head_flops  # FLOPs left for extra neurons
    k = torch.floor(left / neuron_flops + 1e-9).clamp(0, len(rest_n)).long()
    value = cum_h + cum_n[k]
    value[left < -1e-9 * budget] = -math.inf  # these head counts alone exceed the budget
    n_best = int(torch.argmax(value))
    k_best = int(k[n_best])
    keep_h = [{b} for b in best_h]
    keep_n = [{b} for b in best_n]
    for _, i, j in rest_h[:n_best]:
        keep_h[i].add(j)
    for _, i, j in rest_n[:k_best]:
        keep_n[i].add(j)
    return [sorted(s) for s in keep_h], [sorted(s) for s in keep_n]


# ------------------------------------------------------------------------------------------------ mask tuning


class _Stop(Exception):
    """Raised by a capture hook: the layers above the one being tuned need not run."""


def _solve(G: torch.Tensor, b: torch.Tensor, c: float, ridge: float) -> tuple[torch.Tensor, float, float]:
    """Minimise ``s^T G s - 2 b^T s + c`` (a squared error); returns the scales and the relative error at
    all-ones and at the solution. Falls back to ones when clipping makes the solution worse."""
    n = len(b)
    ones = torch.ones(n, dtype=torch.float64)

    def err(s):
        return float(s @ G @ s - 2 * b @ s + c)

    damp = ridge * float(G.diagonal().mean().clamp_min(1e-30))
    try:
        s = torch.linalg.solve(G + damp * torch.eye(n, dtype=torch.float64), b).clamp(*SCALE_RANGE)
    except RuntimeError:  # singular even with damping: keep the mask as it is
        s = ones
    e1, es = err(ones), err(s)
    if not math.isfinite(es) or es > e1:
        s, es = ones, e1
    scale = max(c, 1e-30)
    return s, max(e1, 0.0) / scale, max(es, 0.0) / scale


def _ls_texts(tokenizer, texts: list[str], n_tokens: int, max_length: int, seed: int) -> list[str]:
    """A seeded random subset of ``texts`` with at least ``n_tokens`` tokens in all (all of them if fewer)."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    lengths = [len(x) for x in tokenizer([texts[i] for i in order], truncation=True,
                                         max_length=max_length)["input_ids"]]
    chosen, total = [], 0
    for i, n in zip(order, lengths):
        if total >= n_tokens:
            break
        chosen.append(texts[i])
        total += n
    return chosen


def _layer_inputs(model, layer, batches) -> list[tuple[tuple, dict, torch.Tensor]]:
    """The arguments ``layer`` is called with on each batch (the hidden states first, then the attention mask
    in the form the encoder prepared it), and the batch's ``(batch_size, seq_len)`` token mask."""
    seen = []

    def hook(mod, args, kwargs):
        seen.append((args, kwargs))
        raise _Stop

    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    out = []
    try:
        with torch.inference_mode():
            for batch in batches:
                try:
                    model(**batch)
                except _Stop:
                    pass
                args, kwargs = seen.pop()
                out.append((args, kwargs, batch["attention_mask"].bool()))
    finally:
        handle.remove()
    return out


def _run_layer(layer, inputs, module=None, update=None) -> list[tuple[tuple, dict, torch.Tensor]]:
    """Run ``layer`` on cached ``inputs``. With ``module``: pass its input at real tokens, ``(T, F)``, to
    ``update`` and stop there; without: return the inputs of the next layer."""
    out = []

    def hook(mod, args):
        update(args[0][current["mask"]].double())  # (T, F): padding positions dropped
        raise _Stop

    current = {}
    handle = module.register_forward_pre_hook(hook) if module is not None else None
    try:
        with torch.inference_mode():
            for args, kwargs, mask in inputs:
                current["mask"] = mask
                try:
                    y = layer(*args, **kwargs)
                except _Stop:
                    continue
                y = y[0] if isinstance(y, tuple) else y  # (batch_size, seq_len, hidden_size)
                out.append(((y,) + tuple(args[1:]), kwargs, mask))
    finally:
        if handle is not None:
            handle.remove()
    return out


def tune_masks(model, tokenizer, texts: Sequence[str], heads, neurons, *, n_tokens: int = 8192,
               batch_size: int = 32, max_length: int = 128, ridge: float = 1e-4, seed: int = 0,
               progress: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor], dict]:
    """Real-valued masks for the kept heads and neurons that best reproduce each unpruned sublayer (Kwon et al.).

    Layer by layer, bottom up, with the earlier layers already pruned and tuned, on the tokens of a random subset
    of ``texts`` (about ``n_tokens`` tokens):

    * attention: with ``c_h`` the context of head ``h`` at a token and ``y_h = W_O[:, h] c_h`` (`(hidden_size,)`)
      its contribution to the output projection, find one scale ``s_h`` per kept head minimising
      ``sum_tokens || sum_{h kept} s_h y_h - sum_{all h} y_h ||^2``; the ``y_h`` are built explicitly;
    * feedforward (with this layer's attention tuned): with ``A`` the activations, `(tokens, I)`, and ``W`` the
      output projection, `(hidden_size, I)`, find one scale per kept neuron minimising
      ``|| A_K diag(s) W_K^T - A W^T ||^2``: normal equations ``G = (A_K^T A_K) * (W_K^T W_K)``,
      ``b_j = sum_n a_nj (w_j . y_n)`` with ``y_n = W a_n``.

    Each layer's inputs are cached and the layer alone is run (up to the projection being fitted), so the cost is
    about three forward passes of the model over the chosen tokens. Both are solved in float64 with ridge damping ``ridge * mean(diag G)``; scales are clipped to
    :data:`SCALE_RANGE`, and a layer keeps its 0/1 mask when the clipped solution fits worse. The paper matches the
    unpruned model's own activations (which also corrects the drift of earlier layers) with LSMR; this matches
    the unpruned sublayer on the pruned model's inputs, which needs one model and never fits worse than the 0/1
    mask on these tokens.

    Args:
        heads, neurons: kept indices per layer (``None`` entries keep the whole layer), e.g. from
            :func:`search_mask`.
        n_tokens: tokens (over a subset of sentences) that the least squares are fitted on.
        ridge: relative damping of the normal equations.

    Returns:
        ``(head_masks, neuron_masks, errors)``: masks of shapes ``(H_l,)`` and ``(I_l,)``, 0 at pruned units and
        the scale at kept ones, for :func:`ufkit.compression.structured.masked`; ``errors`` holds ``attention`` and
        ``ffn``: per layer, ``[before, after]``, the squared reconstruction error relative to the squared norm of
        the unpruned sublayer's output, with the 0/1 mask and with the scales.

    Raises:
        CompressionError: not a BERT-family encoder, no texts, or keep lists that do not fit the model.
    """
    texts = _check_texts(texts)
    _positive_int(n_tokens, "n_tokens")
    h, n, d = _counts(model)
    heads, neurons = _check_keep(heads, h, "heads"), _check_keep(neurons, n, "neurons")
    layers = bert_layers(model)
    model.eval()
    device = next(model.parameters()).device
    chosen = _ls_texts(tokenizer, texts, n_tokens, max_length, seed)
    batches = [{k: v.to(device) for k, v in b.items()}
               for b, _ in text_batches(tokenizer, chosen, batch_size=batch_size, max_length=max_length)]
    head_masks = [torch.ones(x) for x in h]
    neuron_masks = [torch.ones(x) for x in n]
    inputs = _layer_inputs(model, layers[0], batches)  # then each layer's output, pruned and tuned, feeds the next
    errors = {"attention": [], "ffn": []}
    for i in progress_bar(range(len(layers)), desc="mask tuning", disable=not progress, leave=False):
        layer = layers[i]

        def only(mask, i=i):
            """A mask list for :func:`masked` that masks layer ``i`` alone (the only layer that runs)."""
            return [mask if j == i else None for j in range(len(layers))]

        # attention, on the outputs of the layers below (pruned and tuned)
        kh = heads[i] if heads[i] is not None else list(range(h[i]))
        if len(kh) < h[i]:
            W = layer.attention.output.dense.weight.detach().double().view(-1, h[i], d)  # (hidden, H_l, d)
            acc = {"G": 0.0, "b": 0.0, "c": 0.0}

            def update(x, W=W, kh=kh, acc=acc, nh=h[i]):
                y = torch.einsum("thd,Dhd->thD", x.view(len(x), nh, d), W)  # (T, H_l, hidden): each head's part
                target = y.sum(1)  # (T, hidden)
                yk = y[:, kh]  # (T, kept, hidden)
                acc["G"] = acc["G"] + torch.einsum("tkD,tjD->kj", yk, yk)
                acc["b"] = acc["b"] + torch.einsum("tkD,tD->k", yk, target)
                acc["c"] += float(target.square().sum())

            with masked(model):  # no masks: the capture sees every head
                _run_layer(layer, inputs, layer.attention.output.dense, update)
            s, before, after = _solve(acc["G"].cpu(), acc["b"].cpu(), acc["c"], ridge)
            head_masks[i] = torch.zeros(h[i])
            head_masks[i][kh] = s.float()
            errors["attention"].append([before, after])
        else:
            errors["attention"].append([0.0, 0.0])
        # feedforward: this layer's attention now tuned
        kn = neurons[i] if neurons[i] is not None else list(range(n[i]))
        if len(kn) < n[i]:
            W = layer.output.dense.weight.detach().double()  # (hidden, I_l)
            WK = W[:, kn]  # (hidden, kept)
            acc = {"AtA": 0.0, "b": 0.0, "c": 0.0}

            def update(a, W=W, WK=WK, kn=kn, acc=acc):
                y = a @ W.T  # (T, hidden): the unpruned sublayer's output before its bias
                ak = a[:, kn]  # (T, kept)
                acc["AtA"] = acc["AtA"] + ak.T @ ak
                acc["b"] = acc["b"] + ((y @ WK) * ak).sum(0)
                acc["c"] += float(y.square().sum())

            with masked(model, heads=only(head_masks[i])):
                _run_layer(layer, inputs, layer.output.dense, update)
            G = (acc["AtA"] * (WK.T @ WK)).cpu()
            s, before, after = _solve(G, acc["b"].cpu(), acc["c"], ridge)
            neuron_masks[i] = torch.zeros(n[i])
            neuron_masks[i][kn] = s.float()
            errors["ffn"].append([before, after])
        else:
            errors["ffn"].append([0.0, 0.0])
        if i + 1 < len(layers):
            with masked(model, heads=only(head_masks[i]), neurons=only(neuron_masks[i])):
                inputs = _run_layer(layer, inputs)
    return head_masks, neuron_masks, errors


def _fold(model, head_masks, neuron_masks) -> None:
    """Multiply the output projections' columns by the masks (in place): the model then computes what
    :func:`masked` with these masks computes."""
    d = head_size(model.config)
    with torch.no_grad():
        for layer, hm, nm in zip(bert_layers(model), head_masks, neuron_masks):
            w = layer.attention.output.dense.weight  # (hidden, H_l * d)
            w.mul_(hm.to(w).repeat_interleave(d)[None, :])
            w = layer.output.dense.weight  # (hidden, I_l)
            w.mul_(nm.to(w)[None, :])


# ------------------------------------------------------------------------------------------------- the method


def post_training_prune(model, tokenizer, texts: Sequence[str], *, flops_ratio: float = 0.75,
                        seq_len: float | None = None, rescale: bool = True, n_tokens_ls: int = 8192,
                        n_samples: int = 2048, batch_size: int = 32, max_length: int = 128, seed: int = 0,
                        progress: bool = True):
    """Prune heads and neurons to a FLOPs budget without retraining (Kwon et al., NeurIPS 2022), in place.

    Fisher importance of every head and neuron on ``texts`` (unlabeled: the loss is the cross-entropy against the
    model's own predictions), the mask search of :func:`search_mask`, the least-squares mask tuning of
    :func:`tune_masks` (when ``rescale``), then physical pruning (:func:`ufkit.compression.structured.prune`);
    the model saves and loads like any pruned BERT. The paper's mask rearrangement step is skipped.

    FLOPs are those of the encoder layers on a sequence of ``seq_len`` tokens
    (:func:`ufkit.compression.structured.encoder_flops`); attention's cost grows with ``seq_len``, so the split
    between heads and neurons depends on it.

    Args:
        texts: a sample of the task's sentences, labels not needed (the paper uses 2K training examples).
        flops_ratio: the fraction of the encoder's FLOPs to keep, in ``(0, 1]``.
        seq_len: the sequence length the FLOPs are counted at (default: the mean token count of ``texts``).
        rescale: tune the kept units' masks by least squares (step 4); False keeps 0/1 masks.
        n_tokens_ls: tokens the least squares are fitted on.
        n_samples: sentences used for the Fisher information (the first ones).
        batch_size, max_length: batching and truncation of the sentences.
        seed: picks the least-squares sentences.
        progress: show progress bars.

    Returns:
        ``(model, report)``: the same model, pruned; ``report`` holds ``flops_before``, ``flops_budget``,
        ``flops_after`` (encoder FLOPs per sequence), ``flops_ratio`` (after / before), ``seq_len``,
        ``num_heads`` and ``intermediate_sizes`` (kept per layer), ``n_samples``, ``rescaled``,
        ``reconstruction`` (see :func:`tune_masks`; empty without rescaling) and ``seconds``: ``importance``,
        ``search``, ``rescale``, ``prune`` and ``total`` (wall time, s).

    Raises:
        CompressionError: ``flops_ratio`` outside ``(0, 1]``, a budget below one head and one neuron per layer, a
            non-positive ``seq_len``, no texts, or a model that is not a BERT-family encoder.
    """
    start = time.perf_counter()
    if isinstance(flops_ratio, bool) or not isinstance(flops_ratio, (int, float)) or not 0.0 < flops_ratio <= 1.0:
        raise CompressionError(f"flops_ratio must be a number in (0, 1], got {flops_ratio!r}")
    texts = _check_texts(texts)
    _positive_int(n_samples, "n_samples")
    _positive_int(n_tokens_ls, "n_tokens_ls")
    texts = texts[:n_samples]
    h, n, d = _counts(model)
    if seq_len is None:
        ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        seq_len = sum(len(x) for x in ids) / len(ids)
    hidden = model.config.hidden_size
    fh, fn = unit_flops(hidden_size=hidden, head_dim=d, seq_len=seq_len)
    before = encoder_flops(layer_structure(model), hidden_size=hidden, head_dim=d, seq_len=seq_len)
    budget = flops_ratio * before
    seconds = {}

    t = time.perf_counter()
    hs, ns = importance(model, tokenizer, texts, n_samples=n_samples, batch_size=batch_size, kind="fisher",
                        max_length=max_length, progress=progress)
    seconds["importance"] = time.perf_counter() - t

    t = time.perf_counter()
    keep_h, keep_n = search_mask(hs, ns, head_flops=fh, neuron_flops=fn, budget=budget)
    seconds["search"] = time.perf_counter() - t

    t = time.perf_counter()
    errors = {}
    if rescale:
        head_masks, neuron_masks, errors = tune_masks(model, tokenizer, texts, keep_h, keep_n, n_tokens=n_tokens_ls,
                                                      batch_size=batch_size, max_length=max_length, seed=seed,
                                                      progress=progress)
    else:
        head_masks, neuron_masks = keep_masks(h, keep_h), keep_masks(n, keep_n)
    seconds["rescale"] = time.perf_counter() - t

    t = time.perf_counter()
    _fold(model, head_masks, neuron_masks)
    prune(model, heads=keep_h, neurons=keep_n)
    seconds["prune"] = time.perf_counter() - t
    s = layer_structure(model)
    after = encoder_flops(s, hidden_size=hidden, head_dim=d, seq_len=seq_len)
    seconds["total"] = time.perf_counter() - start
    report = {"flops_before": before, "flops_budget": budget, "flops_after": after, "flops_ratio": after / before,
              "seq_len": float(seq_len), **s, "n_samples": len(texts), "rescaled": bool(rescale),
              "reconstruction": errors, "seconds": seconds}
    return model, report
