import pytest
import torch

from ufkit.models import ModelError, default_model_path, load_model, resolve_model, save_model


def test_default_model_is_packaged_minilm():
    path = default_model_path()
    assert (path / "model.safetensors").is_file()
    assert resolve_model(None) == str(path)


def test_save_load_round_trip_same_logits(tiny_model_dir, tmp_path):
    model, tok = load_model(tiny_model_dir)
    batch = tok(["a fine film", "not good at all"], padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**batch).logits
    out = save_model(model, tok, tmp_path / "saved")
    assert (out / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".saved.*"))  # no temporary folder left behind
    again, tok2 = load_model(out)
    with torch.no_grad():
        after = again(**tok2(["a fine film", "not good at all"], padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(before, after, rtol=0, atol=0)


def test_new_head_from_label_names(tiny_model_dir):
    model, _ = load_model(tiny_model_dir, label_names=["neg", "neu", "pos"])
    assert model.config.num_labels == 3 and model.config.id2label[2] == "pos"


def test_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(ModelError, match="num_labels must be at least 2"):
        load_model(None, num_labels=1)


def test_truncate_layers_round_trip(tiny_model_dir, tmp_path):
    import pytest
    import torch
    from transformers import AutoModelForSequenceClassification

    from ufkit.models import ModelError, load_model, save_model
    from ufkit.surgery import truncate_layers

    model, tok = load_model(tiny_model_dir)
    batch = dict(tok(["a fine film"], return_tensors="pt"))
    first = model.bert.encoder.layer[0]
    truncate_layers(model, 1)
    assert model.config.num_hidden_layers == 1 and len(model.bert.encoder.layer) == 1
    assert model.bert.encoder.layer[0] is first
    save_model(model, tok, tmp_path / "l1")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "l1").eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, again(**batch).logits)
    with pytest.raises(ModelError, match="num_hidden_layers must be an integer in \\[1, 1\\]"):
        truncate_layers(model, 2)
