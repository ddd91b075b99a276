"""The deployment variants for modern CPUs on a tiny BERT: bf16, torch.compile, OpenVINO, CTranslate2 round trips;
skips with reasons (CPU flags and packages mocked); `--select fastest`; the command line's errors."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ufkit import quantization as Q
from ufkit.measure import machine

TEXTS = ["a good movie", "a very bad , long and dull film that never ends", "fine", "it 's \" great \" fun"]
NEW = ["pytorch_fp32", "pytorch_bf16", "torch_compile_fp32", "torch_compile_bf16", "openvino_fp32", "openvino_int8",
       "ctranslate2_int8"]
# bf16 runs (emulated, slowly) on any CPU: force it so that the round trip is tested everywhere
FORCE = ["pytorch_bf16", "torch_compile_bf16"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from ufkit.models import load_model

    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def made(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("variants")
    df = Q.quantize(tiny_model_dir, out, variants=NEW, calibration_texts=TEXTS * 4, threads=1, force=FORCE,
                    progress=False)
    return out, df


def _reference(tiny, texts=TEXTS):
    model, tok = tiny
    batch = dict(tok(texts, padding=True, return_tensors="pt"))
    with torch.no_grad():
        return batch, model(**batch).logits


def _logits(net, batch):
    with torch.inference_mode():
        return net(**batch).logits.float()


def _agree(got, ref, err):
    """Argmax agreement, except on rows whose top two logits are closer than the error allows."""
    top2 = ref.topk(2, dim=-1).values
    return bool(((got.argmax(-1) == ref.argmax(-1)) | (top2[:, 0] - top2[:, 1] < 2 * err)).all())


def test_report_lists_every_variant(made):
    out, df = made
    assert list(df["variant"]) == [v for v in Q.VARIANTS if v in set(NEW) | {"onnx_fp32"}]
    report = Q.read_report(out)
    assert [r["variant"] for r in report["variants"]] == list(df["variant"])
    assert report["machine"]["machine_id"]
    for row in df.itertuples():  # written, or skipped with a reason (a package missing here)
        assert pd.isna(row.skipped) == (row.variant in Q.list_variants(out)), row
        if not pd.isna(row.skipped):
            assert "not installed" in row.skipped


def test_pytorch_bf16_round_trip(made, tiny):
    out, _ = made
    batch, ref = _reference(tiny)
    net, _, info = Q.load_variant(out / "pytorch_bf16", threads=1, force=FORCE)
    assert isinstance(net, Q.TorchClassifier) and net.bf16 and not net.compiled
    assert info["runtime"] == {"autocast": "bfloat16", "compile": None}
    linear = net.core.model.classifier
    assert linear.weight.dtype == torch.bfloat16
    assert net.core.model.bert.embeddings.word_embeddings.weight.dtype == torch.float32
    got = _logits(net, batch)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    # bf16 keeps 8 bits of mantissa: within 5 % of the largest logit (measured: about 0.5 %)
    assert (got - ref).abs().max() <= 0.05 * ref.abs().max()


@pytest.mark.skipif(Q.support.cxx_compiler() is None, reason="no C++ compiler for inductor")
def test_torch_compile_round_trip_without_recompiling(made, tiny):
    """The one compile test (about 10-20 s on the tiny model): one graph for every batch >= 2 and every length."""
    from torch._dynamo.utils import counters

    out, _ = made
    net, _, info = Q.load_variant(out / "torch_compile_fp32", threads=1)
    assert net.compiled and net.warmup_per_shape and info["runtime"]["compile"]["dynamic"] is True
    before = counters["stats"]["unique_graphs"]
    for texts in (TEXTS[:2], TEXTS, TEXTS[2:] * 2):  # batch 2, 4, 4 at three lengths
        batch, ref = _reference(tiny, texts)
        got = _logits(net, batch)
        assert (got - ref).abs().max() <= 1e-4
    assert counters["stats"]["unique_graphs"] - before == 1  # new lengths and batch sizes did not recompile
    # the bf16 variant is compiled by its marker too (not called here: a second compilation)
    bf16, _, info = Q.load_variant(out / "torch_compile_bf16", threads=1, force=FORCE)
    assert bf16.compiled and bf16.bf16 and info["runtime"]["autocast"] == "bfloat16"


def test_openvino_round_trip(made, tiny):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    out, _ = made
    for texts in (TEXTS, TEXTS[:1]):  # dynamic batch and length
        batch, ref = _reference(tiny, texts)
        fp32, _, info = Q.load_variant(out / "openvino_fp32", threads=1)
        assert str(fp32.compiled.get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32")
        assert int(fp32.compiled.get_property("INFERENCE_NUM_THREADS")) == 1 and fp32.warmup_per_shape
        assert (_logits(fp32, batch) - ref).abs().max() <= 1e-4
        int8, _, info8 = Q.load_variant(out / "openvino_int8", threads=1)
        got = _logits(int8, batch)
        err = float((got - ref).abs().max())
        assert err <= 0.1 * ref.abs().max() and _agree(got, ref, err)
    assert info["precision"] == "f32" and info8["precision"] == "int8" and info8["fake_quantize"] > 0
    sizes = {r["variant"]: r["size_mb"] for r in Q.read_report(out)["variants"]}
    assert sizes["openvino_int8"] < sizes["openvino_fp32"]


def test_ctranslate2_round_trip_and_head(made, tiny, tmp_path):
    pytest.importorskip("ctranslate2")
    from ufkit.quantization.ctranslate2 import CTranslate2Classifier, check_convertible, convert_ctranslate2

    out, _ = made
    model, tok = tiny
    batch, ref = _reference(tiny)
    int8, _, info = Q.load_variant(out / "ctranslate2_int8", threads=2)
    assert info["runtime"]["inter_threads"] == 1
    assert int8.threads_for(1) == 1 and int8.threads_for(4) == 2  # one OpenMP thread for a single sentence
    got = _logits(int8, batch)
    err = float((got - ref).abs().max())
    assert err <= 0.1 * ref.abs().max() and _agree(got, ref, err)
    assert torch.allclose(_logits(int8, {k: v[:1] for k, v in batch.items()}), got[:1], atol=0.02 * float(
        ref.abs().max()))  # batch 1 (another encoder) agrees with the batched rows
    # the head: the encoder in fp32 gives PyTorch's pooled output and logits to 1e-4
    convert_ctranslate2(model, tok, tmp_path / "f32", quantization="float32")
    f32 = CTranslate2Classifier(tmp_path / "f32", threads=1)
    with torch.no_grad():
        pooled = model.bert(**batch).pooler_output
    assert (f32.pooled(batch) - pooled).abs().max() <= 1e-4
    assert (_logits(f32, batch) - ref).abs().max() <= 1e-4
    # models CTranslate2 cannot run are skipped with the reason
    import copy

    pruned = copy.deepcopy(model)
    pruned.config.ufkit_structure = {"num_heads": [4, 2]}
    with pytest.raises(Q.VariantSkipped, match="structurally pruned"):
        check_convertible(pruned)


@pytest.fixture()
def avx2_only(monkeypatch):
    """This CPU, as seen by ufkit, is an AVX2-only one (no AVX-512, VNNI, bf16 or AMX)."""
    monkeypatch.setattr(machine, "cpu_model_and_flags", lambda: ("Test AVX2 CPU", ["avx2", "fma"]))


def test_unsupported_cpu_is_skipped_with_reason(avx2_only, tiny_model_dir, tmp_path):
    labeled = pytest.importorskip("datasets").Dataset.from_dict({"text": TEXTS, "label": [1, 0, 1, 1]})
    assert "native bf16" in Q.skip_reason("pytorch_bf16") and "force" in Q.skip_reason("pytorch_bf16")
    assert "AVX512-VNNI" in Q.skip_reason("torchao_int8") and "AVX512-VNNI" in Q.skip_reason(Q.COMPILED)
    assert Q.skip_reason("pytorch_bf16", force=["pytorch_bf16"]) is None and Q.skip_reason("onnx_fp32") is None
    assert Q.skip_reason(Q.COMPILED, force=["torchao_int8"]) is None
    assert Q.skip_reason("torchao_int8", force=True) is None
    out = tmp_path / "q"
    df = Q.quantize(tiny_model_dir, out, variants=["pytorch_fp32", "pytorch_bf16", "torchao_int8"], threads=1,
                    progress=False).set_index("variant")
    assert pd.isna(df.loc["pytorch_fp32", "skipped"])
    assert "native bf16" in df.loc["pytorch_bf16", "skipped"] and "AVX512-VNNI" in df.loc["torchao_int8", "skipped"]
    assert Q.list_variants(out) == ["pytorch_fp32"]
    status = {r["variant"]: (r["status"], r["reason"]) for r in Q.read_report(out)["variants"]}
    assert status["pytorch_bf16"][0] == "skipped" and "native bf16" in status["pytorch_bf16"][1]
    # forced, it is made; evaluated and timed only when forced again, else skipped with the reason
    Q.quantize(tiny_model_dir, out, variants=["pytorch_bf16"], force=["pytorch_bf16"], progress=False)
    ev = Q.evaluate_variants(out, labeled, threads=1, progress=False)
    assert "native bf16" in ev.loc["pytorch_bf16", "skipped"] and np.isnan(ev.loc["pytorch_bf16", "accuracy"])
    assert pd.isna(ev.loc["pytorch_fp32", "skipped"]) and ev.loc["pytorch_fp32", "accuracy_drop"] == 0
    ev = Q.evaluate_variants(out, labeled, threads=1, force=["pytorch_bf16"], progress=False)
    assert ev["skipped"].isna().all() and ev.loc["pytorch_bf16", "agreement"] >= 0
    bench = Q.benchmark_variants(out, TEXTS, batch_sizes=[1, 2], threads=1, n_warmup=0, n_iters=2, progress=False)
    skipped = bench[bench["variant"] == "pytorch_bf16"]
    assert len(skipped) == 2 and skipped["skipped"].str.contains("native bf16").all()
    assert skipped["latency_ms_mean"].isna().all() and (skipped["cpu_model"] == "Test AVX2 CPU").all()
    assert bench.loc[bench["variant"] == "pytorch_fp32", "skipped"].isna().all()
    with pytest.raises(Q.VariantSkipped, match="native bf16"):
        Q.load_variant(out / "pytorch_bf16")


def test_missing_package_is_skipped_with_reason(monkeypatch, tiny_model_dir, tmp_path):
    real = Q.support._has_module
    monkeypatch.setattr(Q.support, "_has_module", lambda name: False if name in ("openvino", "ctranslate2")
                        else real(name))
    out = tmp_path / "q"
    df = Q.quantize(tiny_model_dir, out, variants=["openvino_fp32", "ctranslate2_int8"], force=True,
                    progress=False).set_index("variant")
    assert "pip install 'ufkit[openvino]'" in df.loc["openvino_fp32", "skipped"]
    assert "pip install 'ufkit[ctranslate2]'" in df.loc["ctranslate2_int8", "skipped"]
    assert Q.list_variants(out) == []  # nothing made, not even the ONNX export openvino would build on
    assert {r["status"] for r in Q.read_report(out)["variants"]} == {"skipped"}


def _fake_tables(monkeypatch, rows):
    """Make select_variant's evaluation and timing return ``rows``: variant -> (latency ms, drop, skipped)."""
    def evaluate(folder, dataset, *, variants=None, **kwargs):
        names = [n for n in rows if variants is None or n in variants]
        return pd.DataFrame({"accuracy": [90.0 - rows[n][1] if rows[n][2] is None else np.nan for n in names],
                             "accuracy_drop": [rows[n][1] if rows[n][2] is None else np.nan for n in names],
                             "agreement": [100.0 if rows[n][2] is None else np.nan for n in names],
                             "skipped": [rows[n][2] for n in names]}, index=pd.Index(names, name="variant"))

    def bench(folder, texts, *, batch_sizes, variants=None, **kwargs):
        names = [n for n in rows if variants is None or n in variants]
        return pd.DataFrame({"variant": names, "batch_size": batch_sizes[0],
                             "latency_ms_mean": [rows[n][0] for n in names],
                             "latency_ms_p50": [rows[n][0] for n in names],
                             "throughput_seq_per_s": [batch_sizes[0] * 1e3 / rows[n][0] for n in names],
                             "skipped": [rows[n][2] for n in names]})

    monkeypatch.setattr(Q.selection, "evaluate_variants", evaluate)
    monkeypatch.setattr(Q.selection, "benchmark_variants", bench)


ROWS = {"pytorch_fp32": (10.0, 0.0, None), "onnx_fp32": (6.0, 0.0, None), "onnx_int8_dynamic": (3.0, 2.5, None),
        "pytorch_bf16": (np.nan, np.nan, "this CPU has no native bf16")}


def test_select_fastest_within_budget(monkeypatch, tmp_path):
    labeled = pytest.importorskip("datasets").Dataset.from_dict({"text": TEXTS, "label": [1, 0, 1, 1]})
    _fake_tables(monkeypatch, ROWS)
    (tmp_path / Q.REPORT_FILE).write_text(json.dumps({"variants": [
        {"variant": "openvino_int8", "status": "skipped", "reason": "the openvino package is not installed"}]}))
    sel = Q.select_variant(tmp_path, labeled, budget=1.0, threads=1, progress=False)
    assert sel["choice"] == "onnx_fp32" and sel["batch_size"] == 1 and sel["metric"] == "latency_ms_p50"
    assert "onnx_int8_dynamic (drop 2.50)" in sel["why"] and "1.67x" in sel["why"]  # faster, over budget
    saved = json.loads((tmp_path / Q.SELECTION_FILE).read_text())
    assert saved["choice"] == "onnx_fp32"
    table = {r["variant"]: r for r in saved["table"]}
    assert set(table) == set(ROWS) | {"openvino_int8"}
    assert table["pytorch_bf16"]["skipped"] and "not installed" in table["openvino_int8"]["skipped"]
    assert not table["onnx_int8_dynamic"]["within_budget"] and table["onnx_fp32"]["within_budget"]
    assert Q.select_variant(tmp_path, labeled, budget=3.0, threads=1, write=False,
                            progress=False)["choice"] == "onnx_int8_dynamic"
    thr = Q.select_variant(tmp_path, labeled, budget=1.0, objective="throughput", threads=1, write=False,
                           progress=False)
    assert thr["choice"] == "onnx_fp32" and thr["batch_size"] == 32
    for bad in ({"budget": 0}, {"budget": -1.0}, {"objective": "speed"}):
        with pytest.raises(Q.QuantizeError, match="budget|objective"):
            Q.select_variant(tmp_path, labeled, **bad)


def test_cli_select_and_errors(monkeypatch, tiny_model_dir, tiny_tsv_dir, tmp_path):
    from typer.testing import CliRunner

    from ufkit.cli import app

    runner = CliRunner()
    base = ["quantize", "--model", str(tiny_model_dir), "--output", str(tmp_path / "o")]
    cases = [(["--select", "fastest", "--budget", "0"], "--budget must be a positive number"),
             (["--select", "fastest", "--budget", "-2"], "--budget must be a positive number"),
             (["--select", "slowest"], "--select must be 'fastest'"),
             (["--objective", "speed"], "--objective must be 'latency' or 'throughput'"),
             (["--force", "int4"], "--force 'int4' is not one of")]
    for args, message in cases:
        r = runner.invoke(app, base + args)
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and message in lines[0], (args, r.stderr)
    _fake_tables(monkeypatch, {k: v for k, v in ROWS.items() if k in ("pytorch_fp32", "onnx_fp32")})
    r = runner.invoke(app, base + ["--data", str(tiny_tsv_dir), "--variant", "pytorch_fp32", "--variant",
                                   "onnx_fp32", "--threads", "1", "--select", "fastest"])
    assert r.exit_code == 0, r.stderr
    picked = [line for line in r.stdout.splitlines() if line.startswith("selected ")]
    assert len(picked) == 1 and picked[0].startswith("selected onnx_fp32: ")
    assert json.loads((tmp_path / "o" / Q.SELECTION_FILE).read_text())["choice"] == "onnx_fp32"
