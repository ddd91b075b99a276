"""FastBERT early exit (ufkit.early_exit) on tiny random BERTs: exactness at speed 0, compaction, FLOPs, save/load."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ufkit import UfkitError
from ufkit.measure import count_flops, measure_latency
from ufkit.early_exit import (EarlyExitError, EarlyExitModel, FastBertClassifier, calibrate_speed,
                              normalized_entropy, simulate_exits)

TEXTS = ["a great movie", "terrible , dull and far too long for what it is", "ok", "i loved it",
         "the plot is thin but the actors carry it with charm and wit", "no", "an utterly forgettable sequel",
         "funny , warm and sharp", "it is neither good nor bad , just there", "bad", "a small triumph",
         "two hours i will never get back"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def _deep(tiny_model_dir, layers=4, attn="sdpa"):
    """The fixture's config with more layers (so samples can exit at several depths), random weights."""
    from transformers import AutoConfig, BertForSequenceClassification

    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    cfg.num_hidden_layers = layers
    cfg._attn_implementation = attn
    torch.manual_seed(1)
    return BertForSequenceClassification(cfg).eval()


def _sharpen(ee, scale=40.0, seed=0):
    """Random students are unsure of everything; scaling their last layer spreads their entropies over [0, 1]."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for s in ee.students:
            s.classifier.weight.normal_(0, scale / math.sqrt(s.classifier.in_features))
    return ee


def _batch(tokenizer, texts=TEXTS):
    return dict(tokenizer(list(texts), padding=True, return_tensors="pt"))


def test_speed_zero_is_exactly_the_full_model(tiny):
    model, tok = tiny
    ee = EarlyExitModel(model, tokenizer=tok)
    batch = _batch(tok)
    with torch.inference_mode():
        ref = model(**batch).logits
        out = ee(**batch, speed=0.0)
    assert torch.equal(out.logits, ref)  # bit for bit, not approximately
    assert (out.exit_layer == 2).all()
    pred = ee.predict(TEXTS, speed=0.0, batch_size=5)
    assert np.array_equal(pred.labels, ref.argmax(-1).numpy())
    n_tok = batch["attention_mask"].sum(-1).numpy()
    assert np.array_equal(pred.flops, ee.analytic_flops(n_tok, np.full(len(TEXTS), 2), students=False))


@pytest.mark.parametrize("kwargs", [dict(speed=0.3), dict(speed=0.7), dict(speed=1.0), dict(patience=1),
                                    dict(patience=2, speed=0.2), dict(speed=0.6, top_k=2)])
def test_batched_with_compaction_equals_one_by_one(tiny_model_dir, tiny, kwargs):
    ee = _sharpen(EarlyExitModel(_deep(tiny_model_dir), tokenizer=tiny[1]))
    batched = ee.predict(TEXTS, batch_size=8, **kwargs)
    single = ee.predict(TEXTS, batch_size=1, **kwargs)
    assert np.array_equal(batched.labels, single.labels)
    assert np.array_equal(batched.exit_layer, single.exit_layer)
    assert np.array_equal(batched.flops, single.flops)
    np.testing.assert_allclose(batched.logits, single.logits, atol=1e-5)
    # and the precomputed-logits simulation used by calibrate_speed makes the same decisions
    all_logits, _ = ee.predict_all_layers(TEXTS)
    labels, exits = simulate_exits(all_logits, **kwargs)
    assert np.array_equal(exits, batched.exit_layer) and np.array_equal(labels, batched.labels)


def test_compaction_is_exercised(tiny_model_dir, tiny):
    """The settings above really mix exit layers inside one batch (else the equality test proves little)."""
    ee = _sharpen(EarlyExitModel(_deep(tiny_model_dir), tokenizer=tiny[1]))
    exits = ee.predict(TEXTS, batch_size=len(TEXTS), speed=0.3).exit_layer
    assert len(set(exits.tolist())) >= 2


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_flops_match_flop_counter(tiny_model_dir, tiny, attn):
    ee = _sharpen(EarlyExitModel(_deep(tiny_model_dir, layers=3, attn=attn), tokenizer=tiny[1]))
    seen_exits = set()
    for kwargs in (dict(speed=0.0), dict(speed=0.5), dict(speed=1.0), dict(patience=1)):
        for text in TEXTS[:6]:
            batch = _batch(tiny[1], [text])
            with torch.inference_mode():
                out = ee(**batch, **kwargs)
                counted = count_flops(ee, **batch, **kwargs)
            assert int(out.flops) == counted, (kwargs, text)
            assert int(out.flops_linear) < counted  # the paper's count leaves out the attention products
            seen_exits.add(int(out.exit_layer))
    assert len(seen_exits) >= 2


def test_linear_only_count_matches_linear_ops(tiny_model_dir, tiny):
    """flops_linear counts exactly the FLOPs of (add)mm ops: the linear layers."""
    from torch.utils.flop_counter import FlopCounterMode

    ee = EarlyExitModel(_deep(tiny_model_dir, layers=3, attn="eager"), tokenizer=tiny[1])
    batch = _batch(tiny[1], [TEXTS[4]])
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        out = ee(**batch, speed=1e-6)  # consult every student, exit at none
    per_op = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    linear = sum(v for k, v in per_op.items() if k in ("aten.addmm", "aten.mm"))
    assert int(out.exit_layer) == 3 and int(out.flops_linear) == linear


def test_save_load_round_trip(tmp_path, tiny_model_dir, tiny):
    ee = _sharpen(EarlyExitModel(_deep(tiny_model_dir), tokenizer=tiny[1]))
    ee.save_pretrained(tmp_path / "ee")
    files = {p.name for p in (tmp_path / "ee").iterdir()}
    assert {"early_exit.safetensors", "early_exit_config.json", "model.safetensors", "config.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)  # safetensors only, no pickle
    loaded = EarlyExitModel.from_pretrained(tmp_path / "ee")
    a, b = ee.predict(TEXTS, speed=0.5), loaded.predict(TEXTS, speed=0.5)
    assert np.array_equal(a.logits, b.logits) and np.array_equal(a.exit_layer, b.exit_layer)
    # branches only: small, and they need the backbone back
    ee.save_pretrained(tmp_path / "branches", save_backbone=False)
    assert not (tmp_path / "branches" / "model.safetensors").exists()
    with pytest.raises(EarlyExitError, match="pass the backbone"):
        EarlyExitModel.from_pretrained(tmp_path / "branches")
    again = EarlyExitModel.from_pretrained(tmp_path / "branches", model=ee.model, tokenizer=tiny[1])
    assert np.array_equal(again.predict(TEXTS, speed=0.5).logits, a.logits)
    with pytest.raises(EarlyExitError, match="not an early-exit model"):
        EarlyExitModel.from_pretrained(tiny_model_dir)


def test_fit_students_trains_only_students(tiny):
    model, tok = tiny
    ee = EarlyExitModel(model, tokenizer=tok)
    backbone = {k: v.clone() for k, v in model.state_dict().items()}
    before = [p.clone() for p in ee.students.parameters()]
    hist = ee.fit_students(TEXTS * 4, epochs=2, batch_size=8, progress=False)  # unlabeled text
    assert hist["steps"] == 12 and np.isfinite(hist["final_loss"])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in backbone.items())
    assert any(not torch.equal(a, b) for a, b in zip(before, ee.students.parameters()))
    assert all(p.requires_grad for p in model.parameters())  # the freeze is undone afterwards


def test_fastbert_teacher(tiny):
    model, tok = tiny
    ee = EarlyExitModel(model, teacher="fastbert", tokenizer=tok)
    with pytest.raises(EarlyExitError, match="labels"):
        ee.fit_teacher(TEXTS)
    hist = ee.fit_teacher(TEXTS, labels=[i % 2 for i in range(len(TEXTS))], epochs=1, batch_size=4, progress=False)
    assert hist["steps"] == 3
    batch = _batch(tok, TEXTS[:1])
    with torch.inference_mode():
        assert int(ee(**batch).flops) == count_flops(ee, **batch)


def test_entropy():
    logits = torch.tensor([[0.0, 0.0], [30.0, -30.0]])
    u = normalized_entropy(logits)
    assert u[0].item() == pytest.approx(1.0) and u[1].item() < 1e-6
    many = torch.full((1, 40), -5.0)
    many[0, :2] = 5.0  # two strong candidates, 38 weak ones
    assert torch.allclose(normalized_entropy(many, top_k=40), normalized_entropy(many))
    assert normalized_entropy(many, top_k=2).item() == pytest.approx(1.0, abs=1e-4)  # unsure between two
    assert normalized_entropy(many, top_k=5).item() < normalized_entropy(many, top_k=2).item()


def test_calibrate_speed(tiny_model_dir, tiny):
    ee = _sharpen(EarlyExitModel(_deep(tiny_model_dir), tokenizer=tiny[1]))
    full = ee.predict(TEXTS).labels
    speed, table = calibrate_speed(ee, TEXTS, full, budget=0.0, speeds=np.linspace(0, 1, 11))
    row = table.set_index("speed").loc[speed]
    assert row["drop"] <= 0 and table.loc[0, "accuracy"] == 100.0
    assert (table.loc[table.speed > speed, "drop"] > 0).all()
    assert calibrate_speed(ee, TEXTS, full, budget=100.0, speeds=[0, 0.5, 1.0])[0] == 1.0


def test_errors(tiny, tiny_model_dir):
    model, tok = tiny
    ee = EarlyExitModel(model, tokenizer=tok)
    batch = _batch(tok, TEXTS[:2])
    for bad in (-0.1, 1.5, float("nan"), "fast"):
        with pytest.raises(EarlyExitError, match=r"speed must be"):
            ee(**batch, speed=bad)
        with pytest.raises(EarlyExitError, match=r"speed must be"):
            ee.predict(TEXTS, speed=bad)
    with pytest.raises(EarlyExitError, match="patience must be"):
        ee(**batch, patience=0)
    with pytest.raises(EarlyExitError, match="top_k must be"):
        ee(**batch, speed=0.5, top_k=1)
    with pytest.raises(EarlyExitError, match="num_labels must be at least 2"):
        EarlyExitModel(model, num_labels=1)
    with pytest.raises(EarlyExitError, match="num_labels must be at least 2"):
        FastBertClassifier(32, 1)
    with pytest.raises(EarlyExitError, match="cannot find the transformer layers of Linear"):
        EarlyExitModel(torch.nn.Linear(3, 3))
    with pytest.raises(EarlyExitError, match="teacher='head' needs a model with a classification head"):
        EarlyExitModel(model.bert, num_labels=2)
    with pytest.raises(EarlyExitError, match="budget"):
        calibrate_speed(ee, TEXTS, [0] * len(TEXTS), budget=-1)
    assert issubclass(EarlyExitError, UfkitError) and issubclass(EarlyExitError, ValueError)
