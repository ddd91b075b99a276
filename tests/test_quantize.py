"""Deployment quantization on a tiny BERT: ONNX equivalence, every variant, the safety net, atomic writes, CLI."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from ufkit import quantization as Q

TEXTS = ["a good movie", "a very bad , long and dull film that never ends", "fine", "it 's \" great \" fun"]
# torchao and ONNX Runtime here; the variants for modern CPUs (bf16, compile, OpenVINO, CTranslate2) are tested in
# test_quantize_variants.py
CORE = ["pytorch_fp32", "torchao_int8", "onnx_fp32", "onnx_optimized", "onnx_int8_dynamic",
        "onnx_int8_dynamic_per_channel", "onnx_int8_static", "onnx_int8_auto"]
# torchao int8 is skipped on CPUs without AVX512-VNNI (slow there, not wrong): run it anyway on the tiny model
FORCE = ["torchao_int8"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from ufkit.models import load_model

    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def labeled():
    import datasets

    texts = [f"a {'good' if i % 2 else 'bad'} movie number {i} with {'fun' if i % 3 else 'dull'} parts" for i in
             range(40)]
    return datasets.Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(40)]})


@pytest.fixture(scope="module")
def variants_dir(tiny_model_dir, labeled, tmp_path_factory):
    out = tmp_path_factory.mktemp("variants")
    df = Q.quantize(tiny_model_dir, out, variants=CORE, calibration_texts=TEXTS * 4, validation=labeled, threads=1,
                    force=FORCE, progress=False)
    return out, df


def test_onnx_export_matches_pytorch(tiny, tmp_path):
    model, tok = tiny
    impl = model.config._attn_implementation
    info = Q.export_onnx(model, tok, tmp_path / "m.onnx", texts=TEXTS)
    assert info["max_abs_diff"] <= 1e-4
    fused = Q.optimize_onnx(tmp_path / "m.onnx", tmp_path / "opt.onnx", model.config)
    assert fused.get("Attention", 0) == model.config.num_hidden_layers
    # Other batch sizes and lengths than the export's (dynamic axes), with padding.
    for texts in (TEXTS[:1], TEXTS[1:], TEXTS * 3):
        batch = dict(tok(texts, padding=True, return_tensors="pt"))
        with torch.no_grad():
            ref = model(**batch).logits
        for f in ("m.onnx", "opt.onnx"):
            got = Q.OnnxClassifier(tmp_path / f, threads=1)(**batch).logits
            assert torch.allclose(got, ref, atol=1e-4, rtol=0), (f, (got - ref).abs().max())
    assert model.config._attn_implementation == impl  # the export's eager attention is undone


def test_every_variant_written_and_loadable(variants_dir, tiny):
    out, df = variants_dir
    assert list(df["variant"]) == CORE and df["skipped"].isna().all()
    assert Q.list_variants(out) == CORE
    assert not list(out.glob(".*"))  # no temporary folders left
    model, tok = tiny
    batch = dict(tok(TEXTS, padding=True, return_tensors="pt"))
    with torch.no_grad():
        ref = model(**batch).logits
    for name in CORE:
        net, _, info = Q.load_variant(out / name, threads=1, force=FORCE)
        assert info["variant"] == name and info["size_mb"] > 0
        with torch.inference_mode():
            got = net(**batch).logits.float()
        assert got.shape == ref.shape and torch.isfinite(got).all()
        # fp32 graphs match to rounding; int8 within 10 % of the largest logit (measured: 1-3 %). A bound in
        # absolute terms would be meaningless here: the tiny random model's logits are about 0.02.
        tol = 1e-4 if name in ("pytorch_fp32", "onnx_fp32", "onnx_optimized") else 0.1 * ref.abs().max()
        assert (got - ref).abs().max() <= tol, (name, (got - ref).abs().max(), tol)
    # int8 ONNX files hold int8 weights: smaller than fp32 (the tiny model's embeddings dominate)
    sizes = dict(zip(df["variant"], df["size_mb"]))
    assert sizes["onnx_int8_dynamic"] < sizes["onnx_optimized"]


def test_evaluate_and_benchmark_variants(variants_dir, labeled, tmp_path):
    out, _ = variants_dir
    ev = Q.evaluate_variants(out, labeled, threads=1, force=FORCE, progress=False)
    assert list(ev.index) == CORE
    assert ev.loc["pytorch_fp32", "accuracy_drop"] == 0 and ev.loc["onnx_fp32", "agreement"] == 100
    assert {"accuracy", "f1_macro", "accuracy_drop", "f1_drop", "agreement", "degraded"} <= set(ev.columns)
    auto = Q.variant_info(out / "onnx_int8_auto")
    assert auto["within_budget"] and auto["accuracy_drop"] <= 1.0
    bench = Q.benchmark_variants(out, TEXTS, batch_sizes=[1, 2], variants=["pytorch_fp32", "onnx_int8_dynamic"],
                                 threads=1, n_warmup=0, n_iters=2, progress=False)
    assert len(bench) == 4 and set(bench["threads"]) == {1}
    assert set(bench["variant"]) == {"pytorch_fp32", "onnx_int8_dynamic"}
    with pytest.raises(Q.QuantizeError, match="not in"):
        Q.benchmark_variants(out, TEXTS, variants=["nope"], progress=False)


def test_sensitivity_and_fallback_order(variants_dir, tiny, labeled, tmp_path):
    out, _ = variants_dir
    _, tok = tiny
    opt = out / "onnx_optimized" / Q.ONNX_FILE
    sens = Q.sensitivity(opt, tok, labeled, threads=1, progress=False)
    nodes = Q.quantizable_nodes(opt)
    assert sorted(sens["node"]) == sorted(nodes["node"])
    assert {"layer.0.attention.qkv", "layer.1.intermediate", "classifier"} <= set(sens["layer"])
    assert (sens["accuracy_drop"].diff().dropna() <= 1e-9).all()  # most sensitive first
    # budget 0 must be met (all-fp32 always is); the nodes return to fp32 in sensitivity order
    report = Q.auto_quantize(opt, tmp_path / "a.onnx", tok, labeled, budget=0.0, sensitivity_df=sens, threads=1,
                             progress=False)
    assert report["within_budget"].iloc[-1] and not report["within_budget"].iloc[:-1].any()
    k = int(report["n_fp32"].iloc[-1])
    assert report["kept_fp32"].iloc[-1] == list(sens["layer"][:k])
    generous = Q.auto_quantize(opt, tmp_path / "b.onnx", tok, labeled, budget=100.0, sensitivity_df=sens,
                               threads=1, progress=False)
    assert len(generous) == 1 and generous["n_fp32"].iloc[0] == 0
    with pytest.raises(Q.QuantizeError, match="budget"):
        Q.auto_quantize(opt, tmp_path / "c.onnx", tok, labeled, budget=-1, sensitivity_df=sens)


def test_interrupted_run_leaves_nothing_loadable(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Q.variants, "quantize_onnx_dynamic", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Q.quantize(tiny_model_dir, out, variants=["onnx_int8_dynamic"], progress=False)
    assert Q.list_variants(out) == ["onnx_fp32", "onnx_optimized"]  # finished before the interruption
    assert not (out / "onnx_int8_dynamic").exists() and not list(out.glob(".*"))
    # a folder without the marker (say, copied by hand half-way) is refused
    (out / "onnx_int8_dynamic").mkdir()
    (out / "onnx_int8_dynamic" / Q.ONNX_FILE).write_bytes(b"truncated")
    with pytest.raises(Q.QuantizeError, match="not a complete quantized variant"):
        Q.load_variant(out / "onnx_int8_dynamic")
    monkeypatch.undo()
    # resuming keeps the finished variants and completes the rest
    df = Q.quantize(tiny_model_dir, out, variants=["onnx_int8_dynamic"], skip_existing=True, progress=False)
    assert list(df["variant"]) == ["onnx_int8_dynamic"]
    Q.load_variant(out / "onnx_int8_dynamic", threads=1)
    assert Q.quantize(tiny_model_dir, out, variants=["onnx_int8_dynamic"], skip_existing=True,
                      progress=False).empty  # nothing left to do
    # a changed model (other weights; the cache compares content, not paths or times) is not a cache hit:
    # every variant is remade from it
    import shutil

    from safetensors.torch import load_file, save_file

    changed = tmp_path / "changed"
    shutil.copytree(tiny_model_dir, changed)
    assert Q.quantize(changed, out, variants=["onnx_int8_dynamic"], skip_existing=True, progress=False).empty
    weights = load_file(changed / "model.safetensors")
    weights["classifier.bias"] = weights["classifier.bias"] + 1.0
    save_file(weights, changed / "model.safetensors", metadata={"format": "pt"})
    df = Q.quantize(changed, out, variants=["onnx_int8_dynamic"], skip_existing=True, progress=False)
    assert list(df["variant"]) == ["onnx_fp32", "onnx_optimized", "onnx_int8_dynamic"]


def test_bad_models_and_folders(tiny_model_dir, tmp_path):
    from ufkit.models import default_model_path

    with pytest.raises(Q.QuantizeError, match="does not exist"):
        Q.check_classifier(tmp_path / "missing")
    with pytest.raises(Q.QuantizeError, match="not a sequence-classification model"):
        Q.check_classifier(default_model_path())  # MiniLM as shipped: a BertModel, no head
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(Q.QuantizeError, match="not writable"):
        Q.check_writable(blocker / "out")
    with pytest.raises(Q.QuantizeError, match="unknown variant"):
        Q.quantize(tiny_model_dir, tmp_path / "o", variants=["int4"])
    with pytest.raises(Q.QuantizeError, match="calibration"):
        Q.quantize(tiny_model_dir, tmp_path / "o", variants=["onnx_int8_static"])
    with pytest.raises(Q.QuantizeError, match="does not exist"):
        Q.OnnxClassifier(tmp_path / "none.onnx")


def ufkit(*args):
    return subprocess.run([sys.executable, "-m", "ufkit", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def _one_line(r):
    lines = r.stderr.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("error: ")


def test_cli_quantize_errors(tmp_path, tiny_model_dir):
    from ufkit.models import default_model_path

    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = [
        (["--model", tmp_path / "missing", "--output", tmp_path / "o"], "does not exist"),
        (["--model", default_model_path(), "--output", tmp_path / "o"], "not a sequence-classification model"),
        (["--model", tiny_model_dir, "--output", blocker / "o"], "is not writable"),
        (["--model", tiny_model_dir, "--output", tmp_path / "o", "--variant", "int4"], "--variant 'int4'"),
    ]
    for args, message in cases:
        r = ufkit("quantize", *args)
        assert r.returncode == 2 and _one_line(r) and message in r.stderr, r.stderr


def test_cli_end_to_end(tmp_path, tiny_model_dir, tiny_tsv_dir):
    out = tmp_path / "q"
    r = ufkit("quantize", "--model", tiny_model_dir, "--output", out, "--data", tiny_tsv_dir,
              "--variant", "pytorch_fp32", "--variant", "onnx_int8_dynamic", "--variant", "onnx_int8_auto",
              "--threads", 1)
    assert r.returncode == 0, r.stderr
    assert Q.list_variants(out) == ["pytorch_fp32", "onnx_fp32", "onnx_optimized", "onnx_int8_dynamic",
                                    "onnx_int8_auto"]
    r = ufkit("evaluate", "--model", out, "--data", tiny_tsv_dir, "--threads", 1, "--output", tmp_path / "ev")
    assert r.returncode == 0, r.stderr
    assert "agreement" in r.stdout and "onnx_int8_auto" in r.stdout
    assert (tmp_path / "ev" / "metrics.csv").is_file()
    r = ufkit("benchmark", "--model", out, "--data", tiny_tsv_dir, "--threads", 1, "-b", 1, "--warmup", 0,
              "--iters", 2, "--variant", "onnx_int8_dynamic", "--output", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "onnx_int8_dynamic" in r.stdout and "pytorch_fp32" not in r.stdout
    from ufkit.measure import ResultsStore

    assert len(ResultsStore(tmp_path).read("quantize_bench")) == 1
    r = ufkit("benchmark", "--model", tiny_model_dir, "--variant", "x")
    assert r.returncode == 2 and "--variant" in r.stderr
