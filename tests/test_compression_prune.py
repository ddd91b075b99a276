"""Structured pruning (Michel et al. 2019) and post-training pruning (Kwon et al. 2022) on tiny BERTs."""

import pytest
import torch

from ufkit.compression.common import CompressionError
from ufkit.compression.post_training import post_training_prune, search_mask, tune_masks
from ufkit.compression.structured import (encoder_flops, gates, importance, keep_masks, masked, prune,
                                          prune_by_importance, select, unit_flops)
from ufkit.models import load_model, save_model
from ufkit.structure import layer_structure

TEXTS = [f"{w} film number {i} was {'really ' * (i % 4)}{v}" for i, (w, v) in
         enumerate([("a", "good"), ("the", "bad"), ("one", "dull"), ("this", "great")] * 6)]


@pytest.fixture()
def tiny(tiny_model_dir):
    model, tok = load_model(tiny_model_dir)
    torch.manual_seed(1)
    with torch.no_grad():  # random biases, so that a missing bias or a wrong slice shows
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(0, 0.1)
    return model, tok


def _batch(tok):
    return dict(tok(["a fine film", "not good at all , and long"], padding=True, return_tensors="pt"))


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


HEADS = [[0, 2, 3], [1]]
NEURONS = [list(range(0, 64, 2)), [5, 7, 11, 60]]


@pytest.mark.parametrize("heads,neurons", [(HEADS, None), (None, NEURONS), (HEADS, NEURONS)],
                         ids=["heads", "neurons", "both"])
def test_physical_pruning_equals_masking(tiny, heads, neurons):
    model, tok = tiny
    batch = _batch(tok)
    hm = keep_masks([4, 4], heads) if heads else None
    nm = keep_masks([64, 64], neurons) if neurons else None
    with masked(model, heads=hm, neurons=nm):
        reference = _logits(model, batch)
    assert not torch.allclose(reference, _logits(model, batch))  # masking changed something, and hooks are gone
    prune(model, heads=heads, neurons=neurons)
    s = layer_structure(model)
    assert s["num_heads"] == ([3, 1] if heads else [4, 4])
    assert s["intermediate_sizes"] == ([32, 4] if neurons else [64, 64])
    torch.testing.assert_close(_logits(model, batch), reference, atol=1e-5, rtol=0)
    # a second round prunes the already pruned model (indices of its current units) and still matches masking
    again = [[0], [0]]
    with masked(model, heads=keep_masks(s["num_heads"], again)):
        reference = _logits(model, batch)
    prune(model, heads=again)
    torch.testing.assert_close(_logits(model, batch), reference, atol=1e-5, rtol=0)


def test_gates_at_one_and_their_gradients(tiny):
    model, tok = tiny
    batch = _batch(tok)
    plain = _logits(model, batch)
    with gates(model) as g:
        assert [x.shape for x in g.heads] == [(4,), (4,)] and [x.shape for x in g.neurons] == [(64,), (64,)]
        out = model(**batch).logits
        torch.testing.assert_close(out, plain, atol=0, rtol=0)
        out.sum().backward()
        assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in g.heads + g.neurons)
    prune(model, heads=HEADS)
    with gates(model) as g:  # per-layer counts
        assert [x.shape for x in g.heads] == [(3,), (1,)]


@pytest.mark.parametrize("kind", ["gradient", "fisher"])
def test_importance_shapes_and_dead_head(tiny, kind):
    model, tok = tiny
    d = 8
    with torch.no_grad():  # head 2 of layer 0 writes nothing
        model.bert.encoder.layer[0].attention.output.dense.weight[:, 2 * d:3 * d] = 0
    flags = [p.requires_grad for p in model.parameters()]
    labels = [i % 2 for i in range(len(TEXTS))]
    hs, ns = importance(model, tok, TEXTS, labels=labels if kind == "gradient" else None, batch_size=7, kind=kind)
    assert [x.shape for x in hs] == [(4,), (4,)] and [x.shape for x in ns] == [(64,), (64,)]
    assert hs[0][2] <= 1e-6 * hs[0].max() and (hs[0][[0, 1, 3]] > 0).all() and (hs[1] > 0).all()
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training
    # the per-example gates make the score independent of how examples are batched
    hs1, _ = importance(model, tok, TEXTS, labels=labels if kind == "gradient" else None, batch_size=24, kind=kind)
    torch.testing.assert_close(hs1[1], hs[1], rtol=1e-4, atol=1e-7)


def test_select_ratio_scope_min_keep():
    scores = [torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 0.1, 0.2, 0.3])]
    assert select(scores, 0.0) == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert select(scores, 0.5, scope="per_layer") == [[2, 3], [0, 3]]
    g = select(scores, 0.5)  # normalised per layer: layer 1's small scores go first
    assert sum(map(len, g)) == 4 and g[1] == [0] and g[0] == [1, 2, 3]
    g = select(scores, 0.99, min_keep=2)  # can prune only down to two per layer
    assert [len(k) for k in g] == [2, 2] and g == [[2, 3], [0, 3]]
    assert [len(k) for k in select(scores, 0.75, scope="per_layer", min_keep=1)] == [1, 1]


def test_encoder_flops_matches_counter(tiny):
    from ufkit.measure import count_flops

    model, tok = tiny
    prune(model, heads=HEADS, neurons=NEURONS)
    batch = dict(tok(["a rather long sentence about a fine film that goes on"], return_tensors="pt"))
    L = batch["input_ids"].shape[1]
    with torch.no_grad():
        counted = count_flops(model, **batch)
    H, C = 32, 2
    counted -= 2 * H * H + 2 * H * C  # pooler and classifier
    predicted = encoder_flops(layer_structure(model), hidden_size=H, head_dim=8, seq_len=L)
    assert abs(predicted - counted) / counted < 0.03
    fh, fn = unit_flops(hidden_size=H, head_dim=8, seq_len=L)
    assert predicted == pytest.approx(4 * fh + 36 * fn)


def test_pruned_model_round_trip(tiny, tmp_path):
    model, tok = tiny
    model, info = prune_by_importance(model, tok, TEXTS, head_ratio=0.5, neuron_ratio=0.5, batch_size=8)
    assert sum(info["num_heads"]) == 4 and sum(info["intermediate_sizes"]) == 64 and info["seconds"] > 0
    batch = _batch(tok)
    save_model(model, tok, tmp_path / "pruned")
    again, tok2 = load_model(tmp_path / "pruned")
    assert layer_structure(again) == layer_structure(model)
    torch.testing.assert_close(_logits(again, batch), _logits(model, batch), atol=0, rtol=0)


def test_search_mask_fits_budget_and_prefers_importance():
    hs = [torch.tensor([5.0, 1.0, 4.0]), torch.tensor([0.5, 3.0, 0.1])]
    ns = [torch.tensor([1.0, 0.2, 0.3, 0.4]), torch.tensor([2.0, 0.1, 0.1, 0.1])]
    keep_h, keep_n = search_mask(hs, ns, head_flops=10.0, neuron_flops=1.0, budget=2 * 11 + 10 + 2)
    assert keep_h == [[0, 2], [1]] and keep_n == [[0, 2, 3], [0]]  # one more head (4.0) beats 6 neurons (1.2)
    keep_h, keep_n = search_mask(hs, ns, head_flops=10.0, neuron_flops=1.0, budget=1e9)
    assert [len(k) for k in keep_h] == [3, 3] and [len(k) for k in keep_n] == [4, 4]
    with pytest.raises(CompressionError, match="below"):
        search_mask(hs, ns, head_flops=10.0, neuron_flops=1.0, budget=21)


def _attention_out(model, batch, layer=0):
    """The input to layer ``layer``'s attention output projection times its weight (no bias): (B, L, hidden)."""
    out = {}
    dense = model.bert.encoder.layer[layer].attention.output.dense
    h = dense.register_forward_hook(lambda m, a, y: out.setdefault("y", y - m.bias))
    try:
        _logits(model, batch)
    finally:
        h.remove()
    return out["y"]


def test_tune_masks_lowers_the_error_of_masking(tiny):
    model, tok = tiny
    batch = _batch(tok)
    reference = _attention_out(model, batch)
    keep_h, keep_n = [[1, 3], [0, 2]], [list(range(20)), list(range(30, 64))]
    hm, nm, errors = tune_masks(model, tok, TEXTS, keep_h, keep_n, n_tokens=200)
    assert [x.shape for x in hm] == [(4,), (4,)] and hm[0][0] == 0 and hm[0][1] != 0
    for part in ("attention", "ffn"):
        assert all(after < before for before, after in errors[part])
    with masked(model, heads=keep_masks([4, 4], keep_h), neurons=keep_masks([64, 64], keep_n)):
        plain = (_attention_out(model, batch) - reference).square().sum()
    with masked(model, heads=hm, neurons=nm):
        tuned = (_attention_out(model, batch) - reference).square().sum()
    assert tuned < plain  # on sentences it was not fitted on, too


def test_post_training_prune_budget_and_rescaling(tiny):
    import copy

    model, tok = tiny
    batch = _batch(tok)
    reference = _attention_out(model, batch)
    runs = {}
    for rescale in (False, True):
        pruned, report = post_training_prune(copy.deepcopy(model), tok, TEXTS, flops_ratio=0.6, rescale=rescale,
                                             batch_size=8, n_tokens_ls=200, progress=False)
        assert report["flops_after"] <= report["flops_budget"] * (1 + 1e-9) < report["flops_before"]
        assert report["flops_ratio"] <= 0.6 + 1e-9
        assert min(report["num_heads"]) >= 1 and min(report["intermediate_sizes"]) >= 1
        assert layer_structure(pruned) == {k: report[k] for k in ("num_heads", "intermediate_sizes")}
        assert set(report["seconds"]) >= {"importance", "search", "rescale", "total"}
        runs[rescale] = (pruned, report)
    assert runs[True][1]["num_heads"] == runs[False][1]["num_heads"]  # the same masks, tuned or not
    for part in ("attention", "ffn"):
        assert all(after <= before for before, after in runs[True][1]["reconstruction"][part])
    assert sum(b - a for b, a in runs[True][1]["reconstruction"]["attention"]) > 0
    errors = {r: (_attention_out(p, batch) - reference).square().sum() for r, (p, _) in runs.items()}
    assert errors[True] < errors[False]  # layer 0's attention output is closer to the unpruned model's
    pruned = runs[True][0]
    with pytest.raises(CompressionError, match="below"):  # one head and one neuron per layer cost more
        post_training_prune(pruned, tok, TEXTS, flops_ratio=0.01, progress=False)


def test_errors(tiny):
    model, tok = tiny
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(CompressionError, match="flops_ratio must be a number in \\(0, 1\\]"):
            post_training_prune(model, tok, TEXTS, flops_ratio=bad, progress=False)
    for bad in (1.0, -0.2):
        with pytest.raises(CompressionError, match="ratio must be a number in \\[0, 1\\)"):
            select([torch.ones(4)], bad)
    with pytest.raises(CompressionError, match="scope must be one of"):
        select([torch.ones(4)], 0.5, scope="everywhere")
    with pytest.raises(CompressionError, match="head_ratio must be"):
        prune_by_importance(model, tok, TEXTS, head_ratio=1.0)
    with pytest.raises(CompressionError, match="heads\\[0\\] keeps 5 units but layer 0 has only 4"):
        prune(model, heads=[[0, 1, 2, 3, 4], None])
    with pytest.raises(CompressionError, match="heads\\[1\\] keeps nothing"):
        prune(model, heads=[None, []])
    with pytest.raises(CompressionError, match="neurons\\[0\\] must hold distinct indices in \\[0, 64\\)"):
        prune(model, neurons=[[64], None])
    with pytest.raises(CompressionError, match="one keep list per layer \\(2\\)"):
        prune(model, heads=[[0]])
    assert layer_structure(model) == {"num_heads": [4, 4], "intermediate_sizes": [64, 64]}  # nothing changed
    with pytest.raises(CompressionError, match="kind must be one of"):
        importance(model, tok, TEXTS, kind="taylor")
    with pytest.raises(CompressionError, match="labels must have one id per text"):
        importance(model, tok, TEXTS, labels=[0, 1])
    with pytest.raises(CompressionError, match="labels must be ids in \\[0, 2\\)"):
        importance(model, tok, TEXTS, labels=[-1] * len(TEXTS))
    with pytest.raises(CompressionError, match="texts must be"):
        importance(model, tok, "one sentence")
    with pytest.raises(CompressionError, match="heads\\[0\\] must have shape \\(4,\\)"):
        with masked(model, heads=[torch.ones(3), None]):
            pass
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    other = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2,
                                                                 hidden_dim=32))
    for call in (lambda: prune(other, heads=[[0]]), lambda: importance(other, tok, TEXTS),
                 lambda: post_training_prune(other, tok, TEXTS, progress=False)):
        with pytest.raises(CompressionError, match="BERT-family encoder"):
            call()
    with pytest.raises(CompressionError, match="BERT-family encoder"):
        with gates(torch.nn.Linear(2, 2)):
            pass
