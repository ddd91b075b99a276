"""Bring fast feedforward layers into a pretrained BERT: convert its dense feedforward blocks, with controls.

UltraFastBERT pretrains its FFF layers from scratch (Belcak & Wattenhofer 2023, arXiv:2311.10770); a fine-tuned
BERT's dense GELU feedforward does not split into single-neuron trees. What does work on a pretrained model is the
*leaf* FFF (Belcak & Wattenhofer, "Fast Feedforward Networks", arXiv:2308.14711; :mod:`ufkit.fff.leaf`) built the
way MoEfication (Zhang et al., ACL Findings 2022) builds experts from a dense layer:

1. **statistics** (:func:`collect_feedforward`): on training sentences, each layer's feedforward input x `(N, H)`
   and neuron activations a = GELU(W_in x + b_in) `(N, I)` for every real (non-padding) token;
2. **a balanced split** of the I neurons into 2**depth leaves of ``leaf_width`` (:func:`split_neurons`): balanced
   k-means on the neurons' co-activation profiles (each neuron: its positive activations over tokens, unit norm),
   so neurons that fire together share a leaf;
3. **per-leaf output biases and the oracle leaf** (:func:`oracle_leaves`): leaf l keeps its neurons' weights and
   gets the output bias ``b_out + mean(W_out[:, skipped] a[skipped])`` over the tokens it serves; a token's oracle
   leaf is the one whose output is closest to the dense output;
4. **routers** (:func:`fit_routers`): the tree's 2**depth - 1 linear routers, fitted to send each token to its oracle
   leaf (the log-likelihood of the oracle leaf under soft routing, full-batch Adam);
5. **distillation** from the dense teacher (logits plus hidden states, :mod:`ufkit.compression.distillation`),
   the leaves training in the masked form with the routers fixed.

Controls, trained with the same distillation (:func:`make_control`): a static dense feedforward of the same active
width (the neurons with the largest mean absolute activation times output-column norm), the feedforward removed (its mean output as a
bias), and UltraFastBERT's own FFF (one tree of depth 11) trained in place from a random initialisation.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Sequence

import torch
from torch import nn

from .. import UfkitError
from ..fff.bert import BiasedFFF, NoFeedforward, apply_fff, fff_spec
from ..fff.leaf import LeafFFF, leaf_route, leaf_soft_weights, n_leaves
from ..structure import prune_neurons, record_structure

__all__ = ["ConversionError", "CONTROLS", "dense_layers", "collect_feedforward", "split_neurons", "oracle_leaves",
           "fit_routers", "convert_layer", "convert_to_leaf_fff", "neuron_importance", "make_control",
           "check_conversion", "METHODS", "convert_fff"]

#: The controls of :func:`make_control`.
CONTROLS = ("static", "removed", "ultrafastbert")


class ConversionError(UfkitError, ValueError):
    """A conversion that cannot apply: a depth or width that does not fit the layer, a model without dense
    feedforward layers."""


def _has_dense_feedforward(layer) -> bool:
    return (isinstance(getattr(getattr(layer, "intermediate", None), "dense", None), nn.Linear)
            and isinstance(getattr(getattr(layer, "output", None), "dense", None), nn.Linear))


def dense_layers(model) -> list:
    """The model's encoder layers (``BertLayer`` modules) in order, each with its dense feedforward
    (``intermediate.dense`` and ``output.dense``, ``nn.Linear``): what conversion reads and replaces.

    Raises:
        ConversionError: a model that is not a BERT model (no ``bert`` encoder layers, or a config other than a
            ``BertConfig``), a pruned model (``config.ufkit_structure``), a model with no dense feedforward layer
            left (one already converted), or one whose feedforward layers are partly replaced (converting the
            rest would lose the record of the others: convert the dense model it came from).
    """
    from transformers import BertConfig

    base = getattr(model, "bert", None)
    if base is None and hasattr(model, "encoder") and hasattr(model, "embeddings"):
        base = model  # a BertModel itself
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    config = getattr(model, "config", None)
    if layers is None or len(layers) == 0 or not isinstance(config, BertConfig):
        kind = getattr(config, "model_type", None) or type(model).__name__
        raise ConversionError(f"model has no BERT encoder layers (got a {kind} model): the conversion needs a "
                              f"BERT-layout model with feedforward layers")
    if getattr(config, "ufkit_structure", None):
        raise ConversionError("model is pruned (config.ufkit_structure): convert the unpruned fine-tuned model")
    dense = [i for i, layer in enumerate(layers) if _has_dense_feedforward(layer)]
    spec = getattr(config, "ufkit_fff", None)
    where = f" (its config.ufkit_fff: kind {spec['kind']!r} in layers {spec['layers']})" if spec else ""
    if not dense:
        raise ConversionError(f"model has no dense feedforward layers left to convert{where}")
    if len(dense) < len(layers):
        other = [i for i in range(len(layers)) if i not in dense]
        raise ConversionError(f"model's layers {other} have no dense feedforward{where}: convert the dense model "
                              f"it came from")
    return list(layers)


def check_conversion(model, depth: int, leaf_width: int) -> int:
    """Check that 2**depth leaves of ``leaf_width`` neurons fit every layer; return the intermediate size.

    Raises:
        ConversionError: ``depth`` outside [1, 10], ``leaf_width`` < 1, or 2**depth * leaf_width above a layer's
            intermediate size (or a model without dense feedforward layers).
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 10:
        raise ConversionError(f"depth must be an integer in [1, 10], got {depth!r}")
    if isinstance(leaf_width, bool) or not isinstance(leaf_width, int) or leaf_width < 1:
        raise ConversionError(f"leaf_width must be a positive integer, got {leaf_width!r}")
    widths = [layer.intermediate.dense.out_features for layer in dense_layers(model)]
    if n_leaves(depth) * leaf_width > min(widths):
        raise ConversionError(f"2**depth * leaf_width = {n_leaves(depth)} * {leaf_width} = "
                              f"{n_leaves(depth) * leaf_width} neurons do not fit a feedforward layer of "
                              f"{min(widths)} neurons: lower depth or leaf_width")
    return min(widths)


@torch.no_grad()
def collect_feedforward(model, tokenizer, texts: Sequence[str], *, max_tokens: int = 16_384, batch_size: int = 32,
                        max_length: int = 128) -> list[dict]:
    """Each layer's feedforward inputs and activations on the real tokens of ``texts`` (statistics of step 1).

    Returns:
        one dict per encoder layer: ``x`` `(N, hidden_size)` (the feedforward's input: the attention block's
        output) and ``a`` `(N, intermediate_size)` (GELU(W_in x + b_in)), N <= ``max_tokens`` tokens in text order.

    Raises:
        ConversionError: no texts, or a model without dense feedforward layers.
    """
    if len(texts) == 0:
        raise ConversionError("texts is empty: the statistics need training sentences")
    layers = dense_layers(model)
    model.eval()
    stats = [{"x": [], "a": []} for _ in layers]
    keep = {}

    def hook(i):
        def fn(module, inputs, output):
            m = keep["mask"]
            stats[i]["x"].append(inputs[0][m].float())
            stats[i]["a"].append(output[m].float())
        return fn

    handles = [layer.intermediate.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    device = next(model.parameters()).device
    n = 0
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt").to(device)
            keep["mask"] = enc["attention_mask"].bool()
            model(**enc)
            n += int(keep["mask"].sum())
            if n >= max_tokens:
                break
    finally:
        for h in handles:
            h.remove()
    return [{k: torch.cat(v)[:max_tokens] for k, v in s.items()} for s in stats]


def split_neurons(a: torch.Tensor, n_groups: int, group_size: int, *, n_iter: int = 20, seed: int = 0,
                  max_tokens: int = 8_192) -> torch.Tensor:
    """Balanced co-activation clustering of the neurons: `(n_groups, group_size)` neuron indices.

    Each neuron is described by its positive activations over (up to ``max_tokens``) tokens, centred and scaled
    to unit norm; balanced k-means (cosine similarity, k-means++ start, each cluster filled greedily up to
    ``group_size`` by decreasing similarity) groups neurons that fire together. With fewer slots than neurons
    the least similar neurons are left out.

    Args:
        a: activations `(N, I)`.

    Raises:
        ConversionError: ``n_groups * group_size`` above I.
    """
    I = a.shape[1]
    if n_groups * group_size > I:
        raise ConversionError(f"{n_groups} groups of {group_size} neurons do not fit {I} neurons")
    gen = torch.Generator().manual_seed(seed)
    f = a[:max_tokens].clamp_min(0).t().contiguous()  # (I, M): when each neuron is active
    f = f - f.mean(1, keepdim=True)
    f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-8)
    # k-means++ start
    centres = [f[torch.randint(I, (1,), generator=gen)].squeeze(0)]
    for _ in range(1, n_groups):
        d = (1 - (f @ torch.stack(centres).t()).max(1).values).clamp_min(1e-12)
        centres.append(f[torch.multinomial(d, 1, generator=gen)].squeeze(0))
    centres = torch.stack(centres)  # (G, M)
    groups = None
    for _ in range(n_iter):
        sim = f @ centres.t()  # (I, G)
        order = torch.argsort(sim.flatten(), descending=True)
        owner = torch.full((I,), -1, dtype=torch.long)
        fill = [0] * n_groups
        members: list[list[int]] = [[] for _ in range(n_groups)]
        for k in order.tolist():
            i, g = divmod(k, n_groups)
            if owner[i] >= 0 or fill[g] >= group_size:
                continue
            owner[i], fill[g] = g, fill[g] + 1
            members[g].append(i)
            if sum(fill) == n_groups * group_size:
                break
        new = torch.tensor([sorted(m) for m in members], dtype=torch.long)
        if groups is not None and torch.equal(new, groups):
            break
        groups = new
        centres = f[groups].mean(1)
        centres = centres / centres.norm(dim=1, keepdim=True).clamp_min(1e-8)
    return groups


def oracle_leaves(a: torch.Tensor, y: torch.Tensor, groups: torch.Tensor, w_out: torch.Tensor,
                  b_out: torch.Tensor, *, n_iter: int = 2):
    """Per-leaf output biases and each token's best leaf (step 3).

    Leaf l computes ``W_out[:, groups[l]] a[groups[l]] + bias[l]``. The biases start as ``b_out`` plus the mean
    contribution of the leaf's skipped neurons over all tokens, then (``n_iter`` rounds) over the tokens whose
    oracle leaf it is; the oracle leaf of a token minimises ``||y - leaf output||``.

    Args:
        a: activations `(N, I)`; y: the dense feedforward's outputs `(N, H)`; groups: `(L, w)` neuron indices;
        w_out: `(H, I)`; b_out: `(H,)`.

    Returns:
        ``(oracle, bias, rel_error)``: oracle leaves `(N,)`, biases `(L, H)`, and the oracle's relative error
        ``||y - ŷ||_F / ||y||_F`` (a float).
    """
    L = groups.shape[0]
    partial = torch.stack([a[:, g] @ w_out[:, g].t() for g in groups])  # (L, N, H): each leaf's neuron sum
    skipped = (y - b_out).unsqueeze(0) - partial  # (L, N, H): what each leaf leaves out
    bias = b_out + skipped.mean(1)  # (L, H)
    oracle = None
    for _ in range(n_iter + 1):
        err = ((y.unsqueeze(0) - partial - bias.unsqueeze(1)) ** 2).sum(-1)  # (L, N)
        oracle = err.argmin(0)
        for l in range(L):
            sel = oracle == l
            if sel.any():
                bias[l] = b_out + skipped[l, sel].mean(0)
    err = ((y.unsqueeze(0) - partial - bias.unsqueeze(1)) ** 2).sum(-1)
    oracle = err.argmin(0)
    best = err.gather(0, oracle.unsqueeze(0)).sum()
    return oracle, bias, float(best.sqrt() / y.norm())


class _Routers(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(weight.shape[0]))


def fit_routers(x: torch.Tensor, oracle: torch.Tensor, depth: int, *, steps: int = 300, lr: float = 1e-2,
                weight_decay: float = 1e-4, seed: int = 0):
    """Routers that send each token to its oracle leaf (step 4): ``(router_weight (2**depth-1, H), router_bias)``.

    Maximises the log-likelihood of the oracle leaf under soft routing (:func:`ufkit.fff.leaf.leaf_soft_weights`),
    which is the sum of each router's logistic loss over the tokens whose oracle leaf lies below it: ``steps``
    full-batch steps of :func:`ufkit.training.train_loop` on standardised inputs, folded back into the weights.

    Args:
        x: feedforward inputs `(N, H)`; oracle: leaves `(N,)` in ``[0, 2**depth)``.
    """
    from ..training import TrainConfig, train_loop  # looked up when called, as the other trainers do

    gen = torch.Generator().manual_seed(seed)
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    xs = (x - mu) / sd
    routers = _Routers(torch.randn(n_leaves(depth) - 1, x.shape[1], generator=gen) * 0.01)

    def loss_fn(_):
        p = leaf_soft_weights(xs, routers.weight, routers.bias, depth)  # (N, L)
        return -torch.log(p.gather(1, oracle.unsqueeze(1)).clamp_min(1e-12)).mean()

    cfg = TrainConfig(learning_rate=lr, max_steps=steps, warmup_ratio=0.0, weight_decay=weight_decay,
                      max_grad_norm=10.0, mixed_precision="no", lr_scheduler_type="constant", seed=seed)
    train_loop(routers, [None] * steps, loss_fn, cfg, desc="routers", progress=False)  # full batch each step
    with torch.no_grad():
        weight = routers.weight / sd  # w . (x - mu) / sd = (w / sd) . x - (w / sd) . mu
        bias = routers.bias - weight @ mu
    return weight.detach(), bias.detach()


def convert_layer(layer, stats: dict, depth: int, leaf_width: int, *, router_steps: int = 300, seed: int = 0,
                  holdout: float = 0.1):
    """A :class:`ufkit.fff.leaf.LeafFFF` made from one ``BertLayer``'s dense feedforward (steps 2-4).

    Args:
        layer: the ``BertLayer`` (not modified).
        stats: its :func:`collect_feedforward` entry.
        holdout: fraction of the tokens (the last ones) kept out of the fit to measure router agreement.

    Returns:
        ``(leaf_fff, facts)``; facts: ``oracle_rel_error`` (on the fitted tokens), ``router_agreement`` (routers
        vs oracle leaf on the held-out tokens), ``routed_rel_error`` (held out, routers' leaves) and
        ``leaf_usage`` (fraction of held-out tokens per leaf).
    """
    dense_in, dense_out = layer.intermediate.dense, layer.output.dense
    w_in, b_in = dense_in.weight.detach().float(), dense_in.bias.detach().float()
    w_out, b_out = dense_out.weight.detach().float(), dense_out.bias.detach().float()
    x, a = stats["x"], stats["a"]
    y = a @ w_out.t() + b_out  # (N, H): the dense feedforward's output
    n_fit = max(1, int(len(x) * (1 - holdout)))
    L = n_leaves(depth)
    groups = split_neurons(a[:n_fit], L, leaf_width, seed=seed)
    oracle, bias, rel = oracle_leaves(a[:n_fit], y[:n_fit], groups, w_out, b_out)
    rw, rb = fit_routers(x[:n_fit], oracle, depth, steps=router_steps, seed=seed)
    H = w_in.shape[1]
    ffn = LeafFFF(H, w_out.shape[0], depth, leaf_width)
    with torch.no_grad():
        ffn.router_weight.copy_(rw)
        ffn.router_bias.copy_(rb)
        ffn.w1.copy_(w_in[groups])  # (L, w, H)
        ffn.b1.copy_(b_in[groups])
        ffn.w2.copy_(w_out[:, groups].permute(1, 0, 2))  # (L, H, w)
        ffn.b2.copy_(bias)
    facts = {"oracle_rel_error": rel}
    xh, ah, yh = x[n_fit:], a[n_fit:], y[n_fit:]
    if len(xh):
        partial = torch.stack([ah[:, g] @ w_out[:, g].t() for g in groups]) + bias.unsqueeze(1)
        err = ((yh.unsqueeze(0) - partial) ** 2).sum(-1)
        oracle_h = err.argmin(0)
        routed = leaf_route(xh, rw, rb, depth)
        facts["router_agreement"] = float((routed == oracle_h).float().mean())
        facts["routed_rel_error"] = float(err.gather(0, routed.unsqueeze(0)).sum().sqrt() / yh.norm())
        facts["heldout_oracle_rel_error"] = float(err.gather(0, oracle_h.unsqueeze(0)).sum().sqrt() / yh.norm())
        facts["leaf_usage"] = torch.bincount(routed, minlength=L).float().div(len(routed)).tolist()
    return ffn, facts


def convert_to_leaf_fff(model, tokenizer, texts: Sequence[str], depth: int, leaf_width: int, *,
                        layers: Sequence[int] | None = None, max_tokens: int = 16_384, router_steps: int = 300,
                        seed: int = 0, progress=None):
    """A copy of ``model`` whose dense feedforward layers are leaf FFFs (steps 1-4; distil it afterwards).

    Args:
        model: a BERT-layout sequence classifier (not modified).
        tokenizer, texts: the training sentences the statistics come from.
        depth, leaf_width: the tree (2**depth leaves of ``leaf_width`` neurons).
        layers: layer indices to convert (None: all).
        max_tokens: tokens of statistics per layer.
        progress: an optional callable ``(i, n_layers)`` called after each layer.

    Returns:
        ``(model, facts)``: an :class:`ufkit.fff.bert.FffBertForSequenceClassification` in eval mode, and one facts
        dict per converted layer (:func:`convert_layer`).

    Raises:
        ConversionError: a depth or width that does not fit (:func:`check_conversion`), a model without
            feedforward layers, or a layer index out of range.
    """
    check_conversion(model, depth, leaf_width)
    all_layers = dense_layers(model)
    chosen = list(range(len(all_layers))) if layers is None else sorted({int(i) for i in layers})
    if not chosen or chosen[0] < 0 or chosen[-1] >= len(all_layers):
        raise ConversionError(f"layers must be indices in [0, {len(all_layers)}), got {layers}")
    stats = collect_feedforward(model, tokenizer, texts, max_tokens=max_tokens)
    new = copy.deepcopy(model).cpu()
    modules, facts = {}, {}
    for k, i in enumerate(chosen):
        modules[i], facts[i] = convert_layer(all_layers[i], stats[i], depth, leaf_width, router_steps=router_steps,
                                             seed=seed + i)
        if progress is not None:
            progress(k + 1, len(chosen))
    apply_fff(new, fff_spec("leaf", chosen, depth=depth, leaf_width=leaf_width), modules)
    return new.eval(), facts


def neuron_importance(layer, stats: dict) -> torch.Tensor:
    """Each feedforward neuron's mean absolute activation times the norm of its output column: `(intermediate_size,)`."""
    return stats["a"].abs().mean(0) * layer.output.dense.weight.detach().float().norm(dim=0)


def make_control(model, tokenizer, texts: Sequence[str], control: str, *, width: int | None = None,
                 depth: int = 11, max_tokens: int = 16_384, seed: int = 0):
    """A copy of ``model`` with a control in place of every dense feedforward layer (distil it afterwards).

    Args:
        control: ``"static"`` (keep the ``width`` most important neurons of each layer, :func:`neuron_importance`:
            a dense feedforward of the leaf FFF's active width), ``"removed"`` (no feedforward: the layer's mean
            feedforward output on ``texts`` as a bias) or ``"ultrafastbert"`` (UltraFastBERT's FFF, one tree of
            ``depth``, randomly initialised, plus the dense output bias).

    Returns:
        the new model in eval mode (a pruned-BERT or FFF-BERT classifier that saves and loads).

    Raises:
        ConversionError: an unknown control, or ``width`` missing or above a layer's intermediate size.
    """
    if control not in CONTROLS:
        raise ConversionError(f"control must be one of {CONTROLS}, got {control!r}")
    layers = dense_layers(model)
    new = copy.deepcopy(model).cpu()
    new_layers = dense_layers(new)
    if control == "ultrafastbert":
        torch.manual_seed(seed)
        modules = {}
        for i, layer in enumerate(layers):
            ffn = BiasedFFF(model.config.hidden_size, depth)
            with torch.no_grad():
                ffn.out_bias.copy_(layer.output.dense.bias.detach())
            modules[i] = ffn
        apply_fff(new, fff_spec("fff", range(len(layers)), depth=depth), modules)
        return new.eval()
    stats = collect_feedforward(model, tokenizer, texts, max_tokens=max_tokens)
    if control == "static":
        if not (isinstance(width, int) and 1 <= width <= min(l.intermediate.dense.out_features for l in layers)):
            raise ConversionError(f"width must be a positive integer no larger than the feedforward layers, got "
                                  f"{width!r}")
        for layer, new_layer, s in zip(layers, new_layers, stats):
            keep = torch.topk(neuron_importance(layer, s), width).indices.sort().values
            prune_neurons(new_layer, keep.tolist())
        record_structure(new)
        return new.eval()
    modules = {}
    for i, (layer, s) in enumerate(zip(layers, stats)):
        ffn = NoFeedforward(model.config.hidden_size)
        with torch.no_grad():
            ffn.bias.copy_(layer.output.dense(s["a"]).mean(0))
        modules[i] = ffn
    apply_fff(new, fff_spec("none", range(len(layers))), modules)
    return new.eval()


#: What :func:`convert_fff` can make: the leaf FFF conversion and the controls.
METHODS = ("leaf",) + CONTROLS


def convert_fff(teacher, tokenizer, train_ds, *, method: str = "leaf", depth: int = 3, leaf_width: int = 192,
                width: int | None = None, fff_depth: int = 11, cfg=None, n_stats: int = 4_000,
                max_tokens: int = 16_384, teacher_logits: torch.Tensor | None = None, progress: bool = True):
    """Convert (or replace, for a control) the teacher's feedforward layers, then distil from the teacher.

    Args:
        teacher: the fine-tuned dense BERT classifier (not modified).
        tokenizer: its tokenizer.
        train_ds (`datasets.Dataset`): ``text`` and ``label``; the first ``n_stats`` sentences give the statistics.
        method: ``"leaf"`` (:func:`convert_to_leaf_fff`) or a control of :func:`make_control`.
        depth, leaf_width: the leaf FFF's tree; ``width`` (default ``leaf_width``) is the static control's width,
            ``fff_depth`` the UltraFastBERT control's depth.
        cfg (:class:`ufkit.compression.distillation.DistillConfig`): the distillation; None: soft targets at T = 2,
            alpha 0.8, hidden-state MSE (weight 1) layer to layer, learning rate 1e-4, one epoch. ``epochs = 0``
            skips it.
        teacher_logits: precomputed teacher logits on ``train_ds`` (used when ``cfg.hidden_weight`` is 0).
        progress: progress bars for the conversion (one step per layer) and the distillation.

    Returns:
        ``(model, info)``: the distilled model in eval mode and facts: ``method``, per-layer ``layers`` facts
        (leaf conversions), ``convert_seconds``, ``train_seconds`` and the distillation history.

    Raises:
        ConversionError: an unknown method, a size that does not fit, a model without dense feedforward layers
            (:func:`dense_layers`), an empty ``train_ds``; CompressionError: a bad ``cfg``.
    """
    import time

    from ..compression.distillation import DistillConfig, distill
    from ..progress import progress_bar

    if method not in METHODS:
        raise ConversionError(f"method must be one of {METHODS}, got {method!r}")
    if method == "leaf":
        check_conversion(teacher, depth, leaf_width)
    else:
        layers = dense_layers(teacher)
        if method == "static":  # before the statistics are collected
            width = width or leaf_width
            smallest = min(layer.intermediate.dense.out_features for layer in layers)
            if not (isinstance(width, int) and not isinstance(width, bool) and 1 <= width <= smallest):
                raise ConversionError(f"the static control's width must be a positive integer no larger than the "
                                      f"feedforward layers' {smallest} neurons, got {width!r}")
        if method == "ultrafastbert" and not (isinstance(fff_depth, int) and not isinstance(fff_depth, bool)
                                              and 0 <= fff_depth <= 16):
            raise ConversionError(f"fff_depth (the UltraFastBERT control's tree depth) must be an integer in "
                                  f"[0, 16], got {fff_depth!r}")
    cfg = cfg if cfg is not None else DistillConfig(learning_rate=1e-4, epochs=1.0, batch_size=32, warmup_ratio=0.1,
                                                    temperature=2.0, alpha=0.8, hidden_weight=1.0)
    train = cfg.epochs > 0 or bool(cfg.max_steps)
    if train:
        cfg.validate()  # before the conversion's work, not after it
    if len(train_ds) == 0:
        raise ConversionError("train_ds is empty: the statistics and the distillation need training sentences")
    texts = list(train_ds.select(range(min(n_stats, len(train_ds))))["text"])
    start = time.perf_counter()
    if method == "leaf":
        bar = progress_bar(total=teacher.config.num_hidden_layers, desc="converting", disable=not progress,
                           unit="layer")
        try:
            model, facts = convert_to_leaf_fff(teacher, tokenizer, texts, depth, leaf_width, max_tokens=max_tokens,
                                               progress=lambda i, n: bar.update(1))
        finally:
            bar.close()
    else:
        model, facts = make_control(teacher, tokenizer, texts, method, width=width or leaf_width, depth=fff_depth,
                                    max_tokens=max_tokens), {}
    info = {"method": method, "layers": facts, "convert_seconds": time.perf_counter() - start, "train_seconds": 0.0}
    if train:
        layer_map = tuple(range(teacher.config.num_hidden_layers)) if cfg.hidden_weight > 0 else None
        if layer_map is not None and cfg.layer_map is None:
            cfg = dataclasses.replace(cfg, layer_map=layer_map)
        model, history = distill(model, teacher, tokenizer, train_ds, cfg, teacher_logits=teacher_logits,
                                 progress=progress)
        info.update(history)
    return model.eval(), info
