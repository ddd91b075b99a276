"""Pruned-BERT shapes (ufkit.structure), layer selection (ufkit.surgery.keep_layers, layers_to_keep), the teacher's
cached logits (ufkit.compression.distillation.teacher_logits) and the store's busy-row rule."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch

from ufkit.models import ModelError, load_model
from ufkit.structure import (STRUCTURE_KEY, StructureError, head_size, layer_structure, prune_heads, prune_neurons,
                             record_structure)
from ufkit.surgery import DROP_STRATEGIES, keep_layers, layers_to_keep

TEXTS = ["a good movie", "bad , long and dull film", "it is fine"]


@pytest.fixture()
def model_and_tok(tiny_model_dir):
    return load_model(tiny_model_dir)


def _batch(tok):
    return tok(TEXTS, padding=True, return_tensors="pt")


def _zeroed(model, keep_heads, keep_neurons):
    """The reference: the same model with the other heads' and neurons' outputs zeroed (nothing removed)."""
    ref = copy.deepcopy(model)
    d = head_size(ref.config)
    with torch.no_grad():
        for layer, kh, kn in zip(ref.bert.encoder.layer, keep_heads, keep_neurons):
            h = torch.zeros(ref.config.num_attention_heads)
            h[kh] = 1
            layer.attention.output.dense.weight.mul_(h.repeat_interleave(d))
            n = torch.zeros(ref.config.intermediate_size)
            n[kn] = 1
            layer.output.dense.weight.mul_(n)
    return ref


def test_pruning_equals_zeroing_and_round_trips(model_and_tok, tmp_path):
    model, tok = model_and_tok
    keep_heads, keep_neurons = [[0, 2], [1, 2, 3]], [list(range(0, 64, 2)), list(range(10))]
    ref = _zeroed(model, keep_heads, keep_neurons)
    d = head_size(model.config)
    for layer, kh, kn in zip(model.bert.encoder.layer, keep_heads, keep_neurons):
        prune_heads(layer, kh, d)
        prune_neurons(layer, kn)
    structure = record_structure(model)
    assert structure == {"num_heads": [2, 3], "intermediate_sizes": [32, 10]}
    assert type(model).__name__ == "PrunedBertForSequenceClassification"
    with torch.no_grad():
        got, want = model(**_batch(tok)).logits, ref(**_batch(tok)).logits
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, _ = load_model(tmp_path)
    assert layer_structure(again) == structure
    assert getattr(again.config, STRUCTURE_KEY) == structure
    with torch.no_grad():
        torch.testing.assert_close(again(**_batch(tok)).logits, got, atol=0, rtol=0)
    from transformers import AutoModelForSequenceClassification  # plain transformers after `import ufkit.structure`

    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(**_batch(tok)).logits, got, atol=0, rtol=0)


def test_keep_list_errors(model_and_tok):
    model, _ = model_and_tok
    layer, d = model.bert.encoder.layer[0], head_size(model.config)
    with pytest.raises(StructureError, match="at least one head"):
        prune_heads(layer, [], d)
    with pytest.raises(StructureError, match=r"in \[0, 4\)"):
        prune_heads(layer, [0, 4], d)
    with pytest.raises(StructureError, match="distinct"):
        prune_neurons(layer, [1, 1])


def test_layers_to_keep_strategies():
    assert layers_to_keep(6, 3, "top") == [0, 1, 2]
    assert layers_to_keep(6, 3, "bottom") == [3, 4, 5]
    assert layers_to_keep(6, 3, "alternate") == [0, 2, 4]
    assert layers_to_keep(6, 2, "symmetric") == [0, 1, 4, 5]
    for s in DROP_STRATEGIES:
        for n in range(6):
            assert len(layers_to_keep(6, n, s)) == 6 - n
    with pytest.raises(ModelError, match="strategy must be one of"):
        layers_to_keep(6, 1, "middle")
    with pytest.raises(ModelError, match="n_drop"):
        layers_to_keep(6, 6)


def test_keep_layers_keeps_weights_and_structure(model_and_tok, tmp_path):
    model, tok = model_and_tok
    prune_neurons(model.bert.encoder.layer[1], range(7))
    record_structure(model)
    second = copy.deepcopy(model.bert.encoder.layer[1])
    keep_layers(model, [1])
    assert model.config.num_hidden_layers == 1
    assert model.config.ufkit_structure["intermediate_sizes"] == [7]
    for a, b in zip(model.bert.encoder.layer[0].parameters(), second.parameters()):
        assert torch.equal(a, b)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, _ = load_model(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again(**_batch(tok)).logits, model(**_batch(tok)).logits, atol=0, rtol=0)
    with pytest.raises(ModelError, match="distinct"):
        keep_layers(model, [0, 0])


def test_teacher_logits_are_cached(model_and_tok, tmp_path, monkeypatch):
    from ufkit.compression.distillation import teacher_logits
    from ufkit.evaluate import predict_logits

    model, tok = model_and_tok
    first = teacher_logits(model, tok, TEXTS, cache=tmp_path / "t")
    assert first.shape == (3, 2)
    calls = []
    monkeypatch.setattr("ufkit.evaluate.predict_logits", lambda *a, **k: calls.append(1) or predict_logits(*a, **k))
    again = teacher_logits(model, tok, TEXTS, cache=tmp_path / "t")
    assert torch.equal(first, again) and not calls
    assert torch.equal(teacher_logits(model, tok, TEXTS), first) and calls  # no cache: computed again
    with torch.no_grad():
        direct = model(**_batch(tok)).logits
    torch.testing.assert_close(first, direct, atol=1e-5, rtol=0)


def test_busy_rows_are_remeasured_on_request(tmp_path):
    from ufkit.measure import ResultsStore

    store = ResultsStore(tmp_path)
    busy = lambda: pd.DataFrame([{"x": 1.0, "busy": True}])  # noqa: E731
    quiet = lambda: pd.DataFrame([{"x": 2.0, "busy": False}])  # noqa: E731
    assert store.load_or_measure("t", busy, k="a")["x"].tolist() == [1.0]
    assert store.load_or_measure("t", quiet, k="a")["x"].tolist() == [1.0]  # reused by default
    assert store.load_or_measure("t", quiet, k="a", reuse_busy=False)["x"].tolist() == [2.0]
    assert len(store.read("t")) == 1
