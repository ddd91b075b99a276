"""Converting a dense BERT feedforward into leaf FFFs (``ufkit.ultrafastbert.convert``) and ``ufkit convert-fff``, on
the tiny random classifier of conftest.py (hidden 32, 2 layers, intermediate size 64) and a few sentences: the
neuron split, the oracle leaf, the controls, the refusals, the distillation end to end, and the command's output
loading in ``ufkit evaluate`` and ``ufkit quantize``."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from test_cli import assert_one_line_error, cli
from ufkit.ultrafastbert.convert import (ConversionError, check_conversion, collect_feedforward, convert_fff,
                                         convert_to_leaf_fff, dense_layers, make_control, oracle_leaves,
                                         split_neurons)

TEXTS = [f"a {'good' if i % 2 else 'bad'} {'long ' * (i % 5)}movie number {i}" for i in range(24)]
INTERMEDIATE = 64  # conftest's tiny classifier


pytestmark = pytest.mark.usefixtures("one_thread", "no_loading_bars")


@pytest.fixture(scope="module")
def teacher(tiny_model_dir):
    """``(model, tokenizer)``: the tiny dense classifier."""
    from ufkit.models import load_model

    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def converted(teacher):
    """``(model, facts)`` of a depth-2 conversion with leaves of 16 neurons (all 64 neurons used)."""
    model, tokenizer = teacher
    return convert_to_leaf_fff(model, tokenizer, TEXTS, depth=2, leaf_width=16, router_steps=30)


def logits(model, tokenizer, texts=TEXTS[:5]):
    with torch.no_grad():
        return model(**tokenizer(list(texts), padding=True, return_tensors="pt")).logits


# ---- the conversion ------------------------------------------------------------------------------------------


def test_convert_to_leaf_fff(teacher, converted):
    from ufkit.fff.bert import FffBertForSequenceClassification, feedforward_modules
    from ufkit.fff.leaf import LeafFFF

    dense, tokenizer = teacher
    model, facts = converted
    assert type(dense).__name__ == "BertForSequenceClassification"  # the teacher is not modified
    assert all(isinstance(layer.intermediate.dense, torch.nn.Linear) for layer in dense.bert.encoder.layer)
    assert isinstance(model, FffBertForSequenceClassification) and not model.training
    ffns = feedforward_modules(model)
    assert sorted(ffns) == [0, 1] and sorted(facts) == [0, 1]
    for i, ffn in ffns.items():
        assert isinstance(ffn, LeafFFF) and (ffn.depth, ffn.leaf_width, ffn.n_leaves) == (2, 16, 4)
        # each leaf holds 16 of the dense layer's neurons, every neuron in one leaf
        w_in = dense.bert.encoder.layer[i].intermediate.dense.weight
        rows = ffn.w1.reshape(-1, w_in.shape[1])
        match = (rows.unsqueeze(1) == w_in.unsqueeze(0)).all(-1)  # (64, 64): leaf row r is neuron n
        assert (match.sum(1) == 1).all() and (match.sum(0) == 1).all()
        f = facts[i]
        assert 0 <= f["router_agreement"] <= 1
        assert f["oracle_rel_error"] >= 0 and f["routed_rel_error"] >= 0
        assert f["routed_rel_error"] >= f["heldout_oracle_rel_error"] - 1e-6  # the oracle is the best leaf
        assert len(f["leaf_usage"]) == 4 and abs(sum(f["leaf_usage"]) - 1) < 1e-6
    assert torch.isfinite(logits(model, tokenizer)).all()


def test_collect_feedforward_shapes(teacher):
    model, tokenizer = teacher
    stats = collect_feedforward(model, tokenizer, TEXTS[:4], max_tokens=20)
    assert len(stats) == 2
    for s in stats:
        assert s["x"].shape == (20, 32) and s["a"].shape == (20, INTERMEDIATE)
    with pytest.raises(ConversionError, match="texts is empty"):
        collect_feedforward(model, tokenizer, [])


def test_split_neurons_is_a_balanced_partition():
    a = torch.randn(300, INTERMEDIATE, generator=torch.Generator().manual_seed(0))
    groups = split_neurons(a, 4, 16)
    assert groups.shape == (4, 16) and sorted(groups.flatten().tolist()) == list(range(INTERMEDIATE))
    fewer = split_neurons(a, 4, 6)  # fewer slots than neurons: disjoint, some neurons left out
    assert fewer.shape == (4, 6) and len(set(fewer.flatten().tolist())) == 24
    assert fewer.min() >= 0 and fewer.max() < INTERMEDIATE
    with pytest.raises(ConversionError, match="do not fit"):
        split_neurons(a, 5, 16)


def test_split_neurons_groups_neurons_that_fire_together():
    """Four blocks of 8 neurons, each block active on its own quarter of the tokens: the split finds the blocks."""
    gen = torch.Generator().manual_seed(1)
    a = torch.full((400, 32), -0.1)
    for block in range(4):
        tokens = slice(100 * block, 100 * (block + 1))
        a[tokens, 8 * block:8 * (block + 1)] = torch.rand(100, 8, generator=gen) + 0.5
    perm = torch.randperm(32, generator=gen)  # neurons in a shuffled order
    groups = perm[split_neurons(a[:, perm], 4, 8)]
    assert sorted(sorted(g.tolist()) for g in groups) == [list(range(8 * b, 8 * b + 8)) for b in range(4)]


def test_the_oracle_picks_the_only_live_group(teacher):
    """Depth 1, two leaves of I/2 neurons; with every neuron outside one leaf silenced (its output weights zeroed),
    that leaf reproduces the dense output exactly and is every token's oracle."""
    model, tokenizer = teacher
    layer = model.bert.encoder.layer[0]
    a = collect_feedforward(model, tokenizer, TEXTS)[0]["a"]
    groups = split_neurons(a, 2, INTERMEDIATE // 2)
    w_out = layer.output.dense.weight.detach().clone()
    b_out = layer.output.dense.bias.detach()
    for live in (0, 1):
        w = w_out.clone()
        w[:, groups[1 - live]] = 0
        y = a @ w.t() + b_out
        oracle, bias, rel = oracle_leaves(a, y, groups, w, b_out)
        assert (oracle == live).all()
        assert rel < 1e-5
        torch.testing.assert_close(bias[live], b_out, atol=1e-5, rtol=0)


# ---- the controls --------------------------------------------------------------------------------------------


def test_static_control_is_a_pruned_model_of_the_width(teacher, tmp_path):
    from ufkit.models import load_model, save_model

    model, tokenizer = teacher
    static = make_control(model, tokenizer, TEXTS, "static", width=16)
    for layer in static.bert.encoder.layer:
        assert layer.intermediate.dense.out_features == 16 and layer.output.dense.in_features == 16
    assert static.config.ufkit_structure["intermediate_sizes"] == [16, 16]
    save_model(static, tokenizer, tmp_path / "static")
    loaded, _ = load_model(tmp_path / "static")
    assert loaded.bert.encoder.layer[0].intermediate.dense.out_features == 16
    torch.testing.assert_close(logits(loaded, tokenizer), logits(static, tokenizer), atol=1e-6, rtol=0)


@pytest.mark.parametrize("control", ["removed", "ultrafastbert"])
def test_removed_and_ultrafastbert_controls_save_and_load(control, teacher, tmp_path):
    from ufkit.fff.bert import BiasedFFF, NoFeedforward, feedforward_modules
    from ufkit.models import load_model, save_model

    model, tokenizer = teacher
    new = make_control(model, tokenizer, TEXTS, control, depth=2)
    kind = {"removed": NoFeedforward, "ultrafastbert": BiasedFFF}[control]
    assert all(isinstance(m, kind) for m in feedforward_modules(new).values()) and len(feedforward_modules(new)) == 2
    if control == "ultrafastbert":
        assert feedforward_modules(new)[0].depth == 2
        torch.testing.assert_close(feedforward_modules(new)[1].out_bias, model.bert.encoder.layer[1].output.dense.bias)
    save_model(new, tokenizer, tmp_path / control)
    loaded, _ = load_model(tmp_path / control)
    assert all(isinstance(m, kind) for m in feedforward_modules(loaded).values())
    torch.testing.assert_close(logits(loaded, tokenizer), logits(new, tokenizer), atol=1e-6, rtol=0)


# ---- refusals ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth, width, fragment", [
    (0, 16, "depth must be an integer in [1, 10]"),
    (11, 1, "depth must be an integer in [1, 10]"),
    (2, 0, "leaf_width must be a positive integer"),
    (3, 100_000, "do not fit a feedforward layer of 64 neurons"),
    (2, 17, "4 * 17 = 68 neurons do not fit"),
])
def test_sizes_that_do_not_fit(teacher, depth, width, fragment):
    model, tokenizer = teacher
    with pytest.raises(ConversionError) as e:
        check_conversion(model, depth, width)
    assert fragment in str(e.value)
    with pytest.raises(ConversionError):
        convert_to_leaf_fff(model, tokenizer, TEXTS, depth, width)


def test_bad_method_control_width_and_layers(teacher):
    import datasets

    model, tokenizer = teacher
    assert check_conversion(model, 2, 16) == INTERMEDIATE
    with pytest.raises(ConversionError, match="control must be one of"):
        make_control(model, tokenizer, TEXTS, "moe")
    with pytest.raises(ConversionError, match="width"):
        make_control(model, tokenizer, TEXTS, "static", width=65)
    with pytest.raises(ConversionError, match="layers must be indices"):
        convert_to_leaf_fff(model, tokenizer, TEXTS, 1, 8, layers=[2])
    ds = datasets.Dataset.from_dict({"text": TEXTS, "label": [i % 2 for i in range(len(TEXTS))]})
    with pytest.raises(ConversionError, match="method must be one of"):
        convert_fff(model, tokenizer, ds, method="moe")
    with pytest.raises(ConversionError, match="static control's width"):
        convert_fff(model, tokenizer, ds, method="static", leaf_width=65)
    with pytest.raises(ConversionError, match="fff_depth"):
        convert_fff(model, tokenizer, ds, method="ultrafastbert", fff_depth=-1)


def test_dense_layers_refuses_what_it_cannot_convert(teacher, converted):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    from ufkit.fff.bert import apply_fff, fff_spec

    model, tokenizer = teacher
    assert len(dense_layers(model)) == 2
    with pytest.raises(ConversionError, match="no dense feedforward layers left to convert .*kind 'leaf'"):
        dense_layers(converted[0])
    partly = apply_fff(copy.deepcopy(model), fff_spec("none", [1]))
    with pytest.raises(ConversionError, match=r"layers \[1\] have no dense feedforward"):
        dense_layers(partly)
    with pytest.raises(ConversionError, match="pruned"):
        dense_layers(make_control(model, tokenizer, TEXTS, "static", width=8))
    distil = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=50, dim=32, n_layers=1, n_heads=4,
                                                                  hidden_dim=64))
    with pytest.raises(ConversionError, match="no BERT encoder layers .*distilbert"):
        dense_layers(distil)
    with pytest.raises(ConversionError):
        convert_to_leaf_fff(converted[0], tokenizer, TEXTS, 1, 8)


# ---- conversion + distillation -------------------------------------------------------------------------------


def test_convert_fff_end_to_end(teacher):
    import datasets

    from ufkit.compression.distillation import DistillConfig
    from ufkit.fff.bert import feedforward_modules
    from ufkit.fff.leaf import LeafFFF

    model, tokenizer = teacher
    ds = datasets.Dataset.from_dict({"text": TEXTS, "label": [i % 2 for i in range(len(TEXTS))]})
    cfg = DistillConfig(max_steps=2, batch_size=4, learning_rate=1e-3, warmup_ratio=0.0, hidden_weight=1.0,
                        alpha=0.8, temperature=2.0)
    net, info = convert_fff(model, tokenizer, ds, depth=2, leaf_width=8, cfg=cfg, n_stats=12, progress=False)
    assert not net.training and isinstance(feedforward_modules(net)[0], LeafFFF)
    assert info["method"] == "leaf" and info["steps"] == 2 and sorted(info["layers"]) == [0, 1]
    assert info["convert_seconds"] > 0 and info["train_seconds"] > 0
    before = convert_to_leaf_fff(model, tokenizer, TEXTS[:12], depth=2, leaf_width=8)[0]
    assert not torch.equal(feedforward_modules(before)[0].w1, feedforward_modules(net)[0].w1)  # it trained
    net, info = convert_fff(model, tokenizer, ds, method="removed", cfg=DistillConfig(epochs=0), progress=False)
    assert info["train_seconds"] == 0.0 and "steps" not in info and info["layers"] == {}


# ---- the command line ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_output(tiny_model_dir, tmp_path_factory):
    """``(result, folder, data)``: ``ufkit convert-fff`` of the tiny model, two distillation steps."""
    data = tmp_path_factory.mktemp("convert-data")
    train = ["sentence\tlabel"] + [f"a {'good' if i % 2 else 'bad'} movie number {i} \t{i % 2}" for i in range(12)]
    dev = ["sentence\tlabel", "great fun \t1", "dull and long \t0", "it 's \" fine \" \t1", "awful \t0"]
    (data / "train.tsv").write_text("\n".join(train) + "\n")
    (data / "dev.tsv").write_text("\n".join(dev) + "\n")
    out = tmp_path_factory.mktemp("convert") / "leaf"
    r = cli("convert-fff", "--model", tiny_model_dir, "--data", data, "--depth", "2", "--leaf-width", "16",
            "--max-steps", "2", "--batch-size", "4", "--n-stats", "12", "--output", out)
    return r, out, data


def test_help():
    r = cli("convert-fff", "--help")
    assert r.exit_code == 0 and "--leaf-width" in r.output and "--method" in r.output


def test_cli_writes_a_model_and_a_report(cli_output):
    from ufkit.fff.bert import FffBertForSequenceClassification, feedforward_modules
    from ufkit.fff.leaf import LeafFFF
    from ufkit.models import load_model

    r, out, _ = cli_output
    assert r.exit_code == 0, r.output
    assert "router agreement" in r.output
    for name in ("config.json", "model.safetensors", "tokenizer.json", "metrics.json", "convert_fff.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "convert_fff.json").read_text())
    assert (report["method"], report["depth"], report["leaf_width"], report["steps"]) == ("leaf", 2, 16, 2)
    assert sorted(report["layers"]) == ["0", "1"]
    for facts in report["layers"].values():
        assert 0 <= facts["router_agreement"] <= 1
        assert {"oracle_rel_error", "routed_rel_error"} <= set(facts)
    assert report["convert_seconds"] > 0 and report["train_seconds"] > 0
    assert 0 <= report["validation"]["accuracy"] <= 100
    model, _ = load_model(out)
    assert isinstance(model, FffBertForSequenceClassification)
    assert all(isinstance(m, LeafFFF) and m.depth == 2 and m.leaf_width == 16
               for m in feedforward_modules(model).values())


def test_cli_output_loads_in_evaluate_and_quantize(cli_output, tmp_path):
    """`ufkit quantize` exports the converted model with the TorchScript exporter (the leaf FFF's masked form);
    ONNX Runtime's fp32 logits match PyTorch's kernels to 1e-4."""
    pytest.importorskip("onnxruntime")
    from ufkit.models import load_model
    from ufkit.quantization.onnx import OnnxClassifier

    r, out, data = cli_output
    assert r.exit_code == 0, r.output
    r = cli("evaluate", "--model", out, "--data", data)
    assert r.exit_code == 0, r.output
    assert "accuracy" in r.output
    r = cli("quantize", "--model", out, "--output", tmp_path / "q", "--variant", "onnx_fp32")
    assert r.exit_code == 0, r.output
    model, tokenizer = load_model(out)
    batch = dict(tokenizer(["one more sentence , longer than the ones the export saw", "ok"], padding=True,
                           return_tensors="pt"))
    batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    got = torch.as_tensor(OnnxClassifier(tmp_path / "q" / "onnx_fp32" / "model.onnx", threads=1)(**batch).logits)
    with torch.no_grad():
        torch.testing.assert_close(got, model(**batch).logits, atol=1e-4, rtol=0)
    r = cli("evaluate", "--model", tmp_path / "q", "--data", data)
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("method, extra, check", [
    ("static", ["--leaf-width", "16", "--epochs", "0"], "static"),
    ("ultrafastbert", ["--fff-depth", "2", "--hidden-weight", "0", "--max-steps", "1"], "ultrafastbert"),
])
def test_cli_controls(method, extra, check, cli_output, tiny_model_dir, tmp_path):
    from ufkit.fff.bert import BiasedFFF, feedforward_modules
    from ufkit.models import load_model

    _, _, data = cli_output
    r = cli("convert-fff", "--model", tiny_model_dir, "--data", data, "--method", method, "--batch-size", "4",
            "--n-stats", "12", *extra, "--output", tmp_path / method)
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / method / "convert_fff.json").read_text())
    assert report["method"] == method and report["layers"] == {}
    model, _ = load_model(tmp_path / method)
    if check == "static":
        assert report["distillation"] is None and report["steps"] == 0
        assert model.bert.encoder.layer[0].intermediate.dense.out_features == 16
    else:
        assert report["steps"] == 1 and report["fff_depth"] == 2
        assert all(isinstance(m, BiasedFFF) and m.depth == 2 for m in feedforward_modules(model).values())


@pytest.mark.parametrize("args, fragments", [
    (["--depth", "3", "--leaf-width", "100000"], ["--depth 3 --leaf-width 100000", "do not fit a feedforward layer"]),
    (["--depth", "0"], ["--depth must be a positive integer"]),
    (["--depth", "11", "--leaf-width", "1"], ["--depth 11", "depth must be an integer in [1, 10]"]),
    (["--leaf-width", "0"], ["--leaf-width must be a positive integer"]),
    (["--method", "moe"], ["--method must be one of leaf, static, removed, ultrafastbert"]),
    (["--method", "static", "--leaf-width", "65"], ["--leaf-width 65", "64 neurons"]),
    (["--alpha", "2"], ["--alpha must be in [0, 1]"]),
])
def test_bad_input_one_line(args, fragments, tiny_model_dir, cli_output, tmp_path):
    _, _, data = cli_output
    r = cli("convert-fff", "--model", tiny_model_dir, "--data", data, *args, "--output", tmp_path / "out")
    assert_one_line_error(r, *fragments)
    assert not (tmp_path / "out").exists()


def test_models_without_dense_feedforward_layers(cli_output, tmp_path):
    """An already converted model, and a model without a BERT encoder (a tiny DistilBERT classifier)."""
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    from ufkit.models import default_model_path

    _, converted_dir, data = cli_output
    r = cli("convert-fff", "--model", converted_dir, "--data", data, "--depth", "1", "--leaf-width", "4",
            "--output", tmp_path / "again")
    assert_one_line_error(r, "--model", "no dense feedforward layers left to convert")
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(0)
    distil = DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=tokenizer.vocab_size, dim=32, n_layers=1, n_heads=4, hidden_dim=64, max_position_embeddings=64))
    distil.save_pretrained(tmp_path / "distil")
    tokenizer.save_pretrained(tmp_path / "distil")
    r = cli("convert-fff", "--model", tmp_path / "distil", "--data", data, "--output", tmp_path / "d-out")
    assert_one_line_error(r, "--model", "no BERT encoder layers", "distilbert")
