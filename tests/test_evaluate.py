import numpy as np
import pytest

from ufkit import UfkitError
from ufkit.data import load_local
from ufkit.evaluate import compute_metrics, confusion_matrix, evaluate, predict_logits
from ufkit.models import load_model


def test_metrics_against_hand_computed_values():
    y = [0, 0, 0, 1, 1, 1, 1, 1]
    p = [0, 1, 0, 1, 1, 0, 1, 1]
    m = compute_metrics(y, p, num_labels=2)
    # class 0: tp=2 fp=1 fn=1 -> P=2/3 R=2/3 F=2/3; class 1: tp=4 fp=1 fn=1 -> P=R=F=4/5
    assert m["n"] == 8
    assert m["accuracy"] == pytest.approx(75.0)
    assert m["precision_macro"] == pytest.approx(100 * (2 / 3 + 4 / 5) / 2)
    assert m["f1_macro"] == pytest.approx(100 * (2 / 3 + 4 / 5) / 2)
    assert m["recall_weighted"] == pytest.approx(100 * (3 * 2 / 3 + 5 * 4 / 5) / 8)
    cm = confusion_matrix(y, p, ["neg", "pos"])
    assert cm.loc["neg", "neg"] == 2 and cm.loc["neg", "pos"] == 1 and cm.loc["pos", "neg"] == 1
    assert cm.loc["pos", "pos"] == 4


def test_metric_errors():
    with pytest.raises(UfkitError, match="same length"):
        compute_metrics([0, 1], [0])
    with pytest.raises(UfkitError, match="zero examples"):
        compute_metrics([], [])


def test_evaluate_returns_row_in_split_order(tiny_model_dir, tiny_tsv_dir):
    import torch

    model, tok = load_model(tiny_model_dir)
    task = load_local(tiny_tsv_dir)
    row = evaluate(model, tok, task["train"], batch_size=5, name="tiny")
    assert row.name == "tiny" and row["n"] == 12
    assert {"accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted"} <= set(row.index)
    # logits come back in the split's order even though batches are sorted by length
    from ufkit.data import tokenize

    tokenized = tokenize(task["train"], tok)
    logits = predict_logits(model, tokenized, tok, batch_size=5)
    with torch.no_grad():
        one = model(**tok(task["train"][7]["text"], return_tensors="pt")).logits.numpy()
    np.testing.assert_allclose(logits[7], one[0], rtol=1e-4, atol=1e-5)
