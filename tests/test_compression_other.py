"""Chapter 3's unstructured pruning (masks, schedule, CSR path), vocabulary pruning and quantization-aware training,
on the tiny classifier (hidden 32, 2 layers)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from ufkit.compression import CompressionError
from ufkit.compression.qat import FakeQuantLinear, convert_qat, load_or_qat, prepare_qat, qat_finetune
from ufkit.compression.sparsity import (SparseLinear, apply_masks_, csr_size_mb, load_or_sparse_finetune,
                                        magnitude_masks, prunable_weights, sparse_finetune, sparsity_at,
                                        sparsity_report, to_sparse_csr)
from ufkit.compression.vocabulary import prune_vocabulary
from ufkit.models import load_model
from ufkit.training import TrainConfig

TEXTS = ["a gripping , beautifully acted film", "dull and overlong", "naïve café déjà vu , unbelievably good",
         "it 's not bad at all", "the worst movie of the year", "an utterly charming surprise !",
         "flat , lifeless and predictable", "warm , funny and smart"]


@pytest.fixture()
def tiny(tiny_model_dir):
    """A fresh copy of the tiny classifier and its tokenizer."""
    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def train_ds(tiny_model_dir):
    import datasets

    from ufkit.data import tokenize

    _, tok = load_model(tiny_model_dir)
    ds = datasets.Dataset.from_dict({"text": TEXTS * 2, "label": [1, 0, 1, 1, 0, 1, 0, 1] * 2})
    return tokenize(ds, tok, 32)


def _batch(tok, texts=TEXTS[:3]):
    return dict(tok(list(texts), padding=True, return_tensors="pt"))


def _cfg(**kw):
    return TrainConfig(**{"max_steps": 4, "batch_size": 4, "learning_rate": 1e-3, "warmup_ratio": 0.0,
                          "mixed_precision": "no", "log_every": 2, **kw})


# ------------------------------------------------------------------------------------------------ magnitude masks


def test_prunable_weights_are_encoder_and_pooler_linears(tiny):
    model, _ = tiny
    names = list(prunable_weights(model))
    assert len(names) == 2 * 6 + 1 and names[-1] == "bert.pooler.dense.weight"
    assert all(n.endswith(".weight") for n in names)
    assert not any("embeddings" in n or "LayerNorm" in n or "classifier" in n for n in names)


@pytest.mark.parametrize("scope", ["global", "per_layer"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.8])
def test_magnitude_masks_hit_the_sparsity(tiny, scope, sparsity):
    model, _ = tiny
    weights = prunable_weights(model)
    masks = magnitude_masks(model, sparsity, scope=scope)
    assert masks.keys() == weights.keys()
    assert all(m.dtype == torch.bool and m.shape == weights[n].shape for n, m in masks.items())
    total = sum(w.numel() for w in weights.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    if scope == "global":
        assert pruned == round(sparsity * total)
        kept = torch.cat([weights[n].detach().abs()[m] for n, m in masks.items()])
        gone = torch.cat([weights[n].detach().abs()[~m] for n, m in masks.items()])
        assert not len(gone) or gone.max() <= kept.min()  # the smallest weights go, whichever matrix they are in
    else:
        assert all(int((~m).sum()) == round(sparsity * m.numel()) for m in masks.values())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_masks_(model, masks)
    report = sparsity_report(model)
    assert report["sparsity"] == pytest.approx(sparsity, abs=len(weights) / total)
    for n, p in model.named_parameters():  # embeddings, LayerNorm, biases and the head are untouched
        if n not in weights:
            assert torch.equal(p, before[n]), n


def test_sparsity_schedule_endpoints_and_monotone():
    total = 100
    values = [sparsity_at(s, total, 0.9, start=0.1, end=0.7) for s in range(total + 5)]
    assert values[0] == 0.0 and values[10] == 0.0 and values[70] == 0.9 and values[-1] == 0.9
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert 0.0 < values[20] < values[40] < 0.9
    assert sparsity_at(40, total, 0.9, initial=0.5, start=0.0, end=0.8) == pytest.approx(0.9 - 0.4 * 0.5 ** 3)
    assert sparsity_at(0, 1, 0.5, start=0.0, end=0.0) == 0.5  # no ramp: prune at once


# ------------------------------------------------------------------------------------------------ sparse fine-tuning


def test_sparse_finetune_ends_at_target_and_masked_weights_stay_zero(tiny, train_ds, monkeypatch):
    import ufkit.training as training

    model, tok = tiny
    zeros_after_step = []
    real = training.train_loop

    def spy(model_, loader, loss_fn, cfg, **kw):
        after = kw.pop("after_step")

        def checked(step):
            after(step)
            zeros_after_step.append(sparsity_report(model_)["zeros"])

        return real(model_, loader, loss_fn, cfg, after_step=checked, **kw)

    monkeypatch.setattr(training, "train_loop", spy)
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(len(train_ds), 2)).astype(np.float32)
    model, history = sparse_finetune(model, tok, train_ds, sparsity=0.7, cfg=_cfg(max_steps=6), update_every=2,
                                     end=0.5, teacher_logits=teacher, progress=False)
    total = sum(w.numel() for w in prunable_weights(model).values())
    target = round(0.7 * total)
    assert sparsity_report(model)["zeros"] == target and history["sparsity"] == pytest.approx(target / total)
    assert history["steps"] == 6 and [s for s, _ in history["schedule"]] == [0, 2, 4, 6]
    # masks re-applied after every step: the zero count never drops although AdamW updates every weight
    assert len(zeros_after_step) == 6
    assert all(b >= a for a, b in zip(zeros_after_step, zeros_after_step[1:]))
    assert zeros_after_step[3:] == [target] * 3  # the ramp ends at step 3; the update at step 4 reaches it
    assert not model.training


def test_teacher_rows_follow_the_batches(tiny, train_ds):
    """Gradual pruning and QAT train with distillation's objective: each batch carries its rows' indices."""
    from ufkit.compression.distillation import ROW_COLUMN
    from ufkit.compression.sparsity import _objective

    model, tok = tiny
    _, loader, _ = _objective(model, tok, train_ds, _cfg(), torch.zeros(len(train_ds), 2), 2.0, 0.5)
    rows = []
    for batch in loader:
        for row, ids, mask, label in zip(batch[ROW_COLUMN], batch["input_ids"], batch["attention_mask"],
                                         batch["labels"]):
            assert ids[mask.bool()].tolist() == train_ds[int(row)]["input_ids"]
            assert int(label) == train_ds[int(row)]["label"]
            rows.append(int(row))
    assert sorted(rows) == list(range(len(train_ds)))


def test_sparse_finetune_per_layer_without_teacher(tiny, train_ds):
    model, tok = tiny
    model, _ = sparse_finetune(model, tok, train_ds, sparsity=0.5, scope="per_layer", cfg=_cfg(max_steps=2),
                               update_every=1, progress=False)
    report = sparsity_report(model)
    weights = prunable_weights(model)
    assert all(report["per_weight"][n] == round(0.5 * w.numel()) / w.numel() for n, w in weights.items())


def test_load_or_sparse_finetune_caches(tiny, train_ds, tmp_path):
    model, tok = tiny
    original = copy.deepcopy(model.state_dict())
    kw = dict(model=model, tokenizer=tok, train_ds=train_ds, sparsity=0.6, cfg=_cfg(max_steps=2), progress=False)
    pruned, _, info = load_or_sparse_finetune(tmp_path / "sparse", **kw)
    assert all(torch.equal(original[k], v) for k, v in model.state_dict().items())  # the input is not changed
    again, _, info2 = load_or_sparse_finetune(tmp_path / "sparse", **kw)
    assert info2["created"] == info["created"]  # loaded, not retrained
    assert sparsity_report(again)["sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert info["recipe"]["teacher_id"] is None and info["recipe"]["model_id"]
    _, _, info3 = load_or_sparse_finetune(tmp_path / "sparse", **{**kw, "sparsity": 0.5})
    assert info3["recipe"]["sparsity"] == 0.5


# ------------------------------------------------------------------------------------------------ the CSR path


def test_sparse_linear_equals_dense_on_odd_shapes():
    torch.manual_seed(0)
    dense = nn.Linear(5, 17)
    with torch.no_grad():
        dense.weight[dense.weight.abs() < 0.2] = 0
    x = torch.randn(3, 7, 5)                                                            # (batch, seq, in)
    sparse = SparseLinear(dense)
    assert sparse.weight.layout == torch.sparse_csr and sparse.weight.col_indices().dtype == torch.int32
    with torch.inference_mode():
        assert torch.allclose(sparse(x), dense(x), atol=1e-5)
        assert torch.allclose(sparse(x[0, 0]), dense(x[0, 0]), atol=1e-5)                 # 1-D input too
    no_bias = nn.Linear(5, 17, bias=False)
    assert torch.allclose(SparseLinear(no_bias)(x), no_bias(x), atol=1e-5)


def test_to_sparse_csr_matches_dense_and_is_smaller(tiny):
    from ufkit.measure.inputs import model_size_mb

    model, tok = tiny
    apply_masks_(model, magnitude_masks(model, 0.8))
    sparse = to_sparse_csr(model)
    assert sum(isinstance(m, SparseLinear) for m in sparse.modules()) == len(prunable_weights(model))
    assert type(model.bert.encoder.layer[0].attention.self.query) is nn.Linear  # the original is unchanged
    batch = _batch(tok)
    with torch.inference_mode():
        assert torch.allclose(sparse(**batch).logits, model(**batch).logits, atol=1e-5)
    assert csr_size_mb(model) < model_size_mb(model)
    assert csr_size_mb(sparse) == pytest.approx(csr_size_mb(model))


# ------------------------------------------------------------------------------------------------ vocabulary


def test_prune_vocabulary_keeps_logits_and_round_trips(tiny, tmp_path):
    model, tok = tiny
    texts = TEXTS + ["x" * 130 + " antidisestablishmentarianism 漢字 🙂"]
    old_model = copy.deepcopy(model)
    old = [old_model(**tok(t, return_tensors="pt")).logits for t in texts]
    model, new_tok = prune_vocabulary(model, tok, texts)
    n_kept = model.get_input_embeddings().num_embeddings
    assert n_kept < tok.vocab_size and model.config.vocab_size == n_kept == len(new_tok)
    assert set(tok.all_special_tokens) <= set(new_tok.get_vocab())
    assert model.config.pad_token_id == new_tok.pad_token_id
    for t, logits in zip(texts, old):
        assert new_tok.tokenize(t) == tok.tokenize(t)
        assert torch.equal(model(**new_tok(t, return_tensors="pt")).logits, logits)
    batch_old, batch_new = _batch(tok, texts), _batch(new_tok, texts)
    expected = model(**batch_new).logits
    assert torch.equal(old_model(**batch_old).logits, expected)
    model.save_pretrained(tmp_path)
    new_tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(tmp_path)
    assert loaded.get_input_embeddings().num_embeddings == n_kept
    assert torch.equal(loaded(**_batch(loaded_tok, texts)).logits, expected)


# ------------------------------------------------------------------------------------------------ QAT


def test_prepare_qat_is_close_but_not_equal_and_convert_restores(tiny):
    model, tok = tiny
    batch = _batch(tok)
    with torch.no_grad():
        fp32 = model(**batch).logits
        prepare_qat(model)
        fq = model(**batch).logits
    n_linear = 2 * 6 + 2  # encoder, pooler and classifier
    assert sum(isinstance(m, FakeQuantLinear) for m in model.modules()) == n_linear
    q = model.bert.encoder.layer[0].attention.self.query
    assert torch.equal(q.weight_scale(), model.bert.encoder.layer[0].attention.self.value.weight_scale())
    assert not torch.equal(fq, fp32) and torch.allclose(fq, fp32, atol=1e-2)
    with pytest.raises(CompressionError, match="already prepared"):
        prepare_qat(model)
    convert_qat(model)
    assert not any(isinstance(m, FakeQuantLinear) for m in model.modules())
    assert sum(type(m) is nn.Linear for m in model.modules()) == n_linear
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, fp32)


def test_prepare_qat_gradients_pass_straight_through(tiny):
    model, tok = tiny
    prepare_qat(model, per_channel=True)
    model(**_batch(tok)).logits.sum().backward()
    layer = model.bert.encoder.layer[0]
    assert layer.attention.self.query.weight.grad.abs().sum() > 0
    assert model.bert.embeddings.word_embeddings.parametrizations.weight.original.grad.abs().sum() > 0


@pytest.mark.parametrize("per_channel", [False, True])
def test_qat_model_matches_onnx_runtime_int8(tiny, tmp_path, per_channel):
    """The fake-quantized model predicts what ORT's dynamic int8 quantization of the exported model computes."""
    pytest.importorskip("onnxruntime")
    from ufkit.quantization.onnx import OnnxClassifier, export_onnx, optimize_onnx, quantize_onnx_dynamic

    model, tok = tiny
    with torch.no_grad():  # larger weights than the random init's, so that int8 rounding shows in the logits
        for p in model.parameters():
            p.mul_(5.0 if p.dim() == 2 else 1.0)
    batch = _batch(tok, TEXTS[:4])
    with torch.no_grad():
        fp32 = model(**batch).logits
        fq = prepare_qat(model, per_channel=per_channel)(**batch).logits
    convert_qat(model)
    export_onnx(model, tok, tmp_path / "fp32.onnx")
    optimize_onnx(tmp_path / "fp32.onnx", tmp_path / "opt.onnx", model.config)
    quantize_onnx_dynamic(tmp_path / "opt.onnx", tmp_path / "int8.onnx", per_channel=per_channel)
    ort = OnnxClassifier(tmp_path / "int8.onnx", threads=1)(**batch).logits
    gap = (ort - fp32).abs().max().item()
    assert gap > 1e-4  # int8 does change the logits ...
    assert (ort - fq).abs().max().item() < 1e-3 * max(1.0, fp32.abs().max().item())  # ... as fake quant predicts


def test_qat_finetune_trains_in_float32_and_returns_plain_linears(tiny, train_ds, tmp_path):
    model, tok = tiny
    before = model.bert.encoder.layer[0].intermediate.dense.weight.detach().clone()
    teacher = torch.randn(len(train_ds), 2)
    model, history = qat_finetune(model, tok, train_ds, _cfg(max_steps=2, mixed_precision="auto"),
                                  teacher_logits=teacher, progress=False)
    assert history["mixed_precision"] == "no" and history["steps"] == 2
    assert type(model.bert.encoder.layer[0].intermediate.dense) is nn.Linear
    assert not torch.equal(model.bert.encoder.layer[0].intermediate.dense.weight, before)
    kw = dict(model=model, tokenizer=tok, train_ds=train_ds, cfg=_cfg(max_steps=1), progress=False)
    _, _, info = load_or_qat(tmp_path / "qat", **kw)
    _, _, info2 = load_or_qat(tmp_path / "qat", **kw)
    assert info2["created"] == info["created"] and info["recipe"]["config"]["mixed_precision"] == "no"


# ------------------------------------------------------------------------------------------------ train_loop hook


def test_after_step_is_called_once_per_step(tiny, train_ds):
    from ufkit.data import make_dataloader
    from ufkit.training import train_loop

    model, tok = tiny
    calls = []
    history = train_loop(model, make_dataloader(train_ds, tok, 4, shuffle=True), lambda b: model(**b).loss,
                         _cfg(max_steps=5), progress=False, after_step=calls.append)
    assert calls == [1, 2, 3, 4, 5] == list(range(1, history["steps"] + 1))


# ------------------------------------------------------------------------------------------------ errors


def test_errors_name_the_argument(tiny, train_ds):
    model, tok = tiny
    for bad in (1.0, -0.1, 1.5, "x"):
        with pytest.raises(CompressionError, match="sparsity"):
            magnitude_masks(model, bad)
    with pytest.raises(CompressionError, match="scope"):
        magnitude_masks(model, 0.5, scope="rows")
    with pytest.raises(CompressionError, match="scope"):
        sparse_finetune(model, tok, train_ds, sparsity=0.5, scope="rows", cfg=_cfg(), progress=False)
    with pytest.raises(CompressionError, match="sparsity"):
        sparse_finetune(model, tok, train_ds, sparsity=1.0, cfg=_cfg(), progress=False)
    with pytest.raises(CompressionError, match="teacher_logits"):
        sparse_finetune(model, tok, train_ds, sparsity=0.5, cfg=_cfg(), teacher_logits=np.zeros((3, 2)),
                        progress=False)
    with pytest.raises(CompressionError, match="update_every"):
        sparse_finetune(model, tok, train_ds, sparsity=0.5, cfg=_cfg(), update_every=0, progress=False)
    with pytest.raises(CompressionError, match="start"):
        sparsity_at(1, 10, 0.5, start=0.8, end=0.2)
    with pytest.raises(CompressionError, match="initial"):
        sparsity_at(1, 10, 0.5, initial=0.6)
    with pytest.raises(CompressionError, match="masks"):
        apply_masks_(model, {"bert.pooler.dense.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(CompressionError, match="texts"):
        prune_vocabulary(model, tok, [])
    with pytest.raises(CompressionError, match="texts"):
        prune_vocabulary(model, tok, "one string")
    with pytest.raises(CompressionError, match="not prepared"):
        convert_qat(model)
    with pytest.raises(CompressionError, match="alpha"):
        qat_finetune(model, tok, train_ds, _cfg(), alpha=2.0, progress=False)
    assert not any(isinstance(m, FakeQuantLinear) for m in model.modules())
