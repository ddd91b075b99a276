"""``ufkit distill``, ``prune``, ``theseus`` and ``qat`` on a tiny model: bad input exits 2 with one line, and the
outputs load in the other commands."""

from __future__ import annotations

import pytest
import torch

from test_cli import assert_one_line_error, cli


pytestmark = pytest.mark.usefixtures("no_loading_bars")


def test_help():
    for cmd in ("distill", "prune", "theseus", "qat"):
        r = cli(cmd, "--help")
        assert r.exit_code == 0 and "Usage" in r.output


@pytest.mark.parametrize("args, fragments", [
    (["prune", "--flops", "0"], ["--flops must be a budget in (0, 1]"]),
    (["prune", "--flops", "1.5"], ["--flops must be a budget in (0, 1]"]),
    (["prune", "--heads", "4"], ["--heads 4: a layer has 4 heads"]),
    (["prune", "--drop-layers", "1", "--strategy", "middle"], ["--strategy must be one of top, bottom"]),
    (["prune"], ["give --heads/--neurons/--drop-layers, or --sparsity, or --flops"]),
    (["prune", "--sparsity", "1.0"], ["--sparsity must be in (0, 1)"]),
    (["distill", "--num-layers", "3"], ["--num-layers 3: a student cannot be deeper than its 2-layer teacher"]),
    (["distill", "--layers", "0,5"], ["--layers must be distinct indices in [0, 1]"]),
    (["distill", "--mode", "warm"], ["--mode must be soft or hard"]),
    (["theseus", "--successors", "3"], ["--successors 3: the compressed model cannot be deeper"]),
    (["theseus", "--replace-rate", "0"], ["--replace-rate must be in (0, 1]"]),
])
def test_bad_input_one_line(tiny_model_dir, tiny_tsv_dir, tmp_path, args, fragments):
    r = cli(*args, "--model", tiny_model_dir, "--data", tiny_tsv_dir, "--output", tmp_path / "out")
    assert_one_line_error(r, *fragments)


def test_model_without_a_classification_head(tmp_path, tiny_tsv_dir):
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ufkit.models import default_model_path

    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64)
    BertModel(cfg).save_pretrained(tmp_path / "encoder")
    AutoTokenizer.from_pretrained(default_model_path()).save_pretrained(tmp_path / "encoder")
    for cmd in ("distill", "prune", "theseus", "qat"):
        extra = ["--heads", "0.5"] if cmd == "prune" else []
        r = cli(cmd, "--model", tmp_path / "encoder", "--data", tiny_tsv_dir, "--output", tmp_path / cmd, *extra)
        assert_one_line_error(r, "--model", "not a sequence-classification model")


def test_pruned_model_loads_in_evaluate_and_quantize(tiny_model_dir, tiny_tsv_dir, tmp_path):
    from ufkit.models import load_model
    from ufkit.structure import layer_structure

    out = tmp_path / "pruned"
    r = cli("prune", "--model", tiny_model_dir, "--data", tiny_tsv_dir, "--heads", "0.5", "--neurons", "0.5",
            "--no-recover", "--n-importance", "8", "--output", out)
    assert r.exit_code == 0, r.output
    model, _ = load_model(out)
    s = layer_structure(model)
    assert sum(s["num_heads"]) == 4 and sum(s["intermediate_sizes"]) == 64
    r = cli("evaluate", "--model", out, "--data", tiny_tsv_dir)
    assert r.exit_code == 0, r.output
    r = cli("quantize", "--model", out, "--output", tmp_path / "q", "--variant", "onnx_int8_dynamic")
    assert r.exit_code == 0, r.output
    r = cli("evaluate", "--model", tmp_path / "q", "--data", tiny_tsv_dir)
    assert r.exit_code == 0, r.output


def test_distill_and_theseus_write_loadable_students(tiny_model_dir, tiny_tsv_dir, tmp_path):
    from ufkit.models import load_model

    torch.set_num_threads(1)
    r = cli("distill", "--model", tiny_model_dir, "--data", tiny_tsv_dir, "--num-layers", "1", "--batch-size", "4",
            "--output", tmp_path / "kd")
    assert r.exit_code == 0, r.output
    assert load_model(tmp_path / "kd")[0].config.num_hidden_layers == 1
    r = cli("theseus", "--model", tiny_model_dir, "--data", tiny_tsv_dir, "--successors", "1", "--batch-size", "4",
            "--output", tmp_path / "th")
    assert r.exit_code == 0, r.output
    assert load_model(tmp_path / "th")[0].config.num_hidden_layers == 1
