import pytest

from ufkit import UfkitError
from ufkit.measure import ResultsStore, benchmark, machine_info, make_batches
from ufkit.models import load_model

TEXTS = ["a gorgeous , witty , seductive movie .", "it 's a bad sign .", "the film is strictly routine .",
         "one of the year 's best films ."]


def test_benchmark_columns_units_and_store(tiny_model_dir, tmp_path):
    model, tok = load_model(tiny_model_dir)
    store = ResultsStore(tmp_path)
    df = benchmark(model, tok, TEXTS, name="tiny", batch_size=2, n_warmup=1, n_iters=4, threads=1, table="bench",
                   store=store, extra={"variant": "fp32"})
    row = df.iloc[0]
    for col in ("latency_ms_mean", "latency_ms_std", "latency_ms_p50", "latency_ms_p95",
                "throughput_seq_per_s", "size_mb", "peak_mem_mb", "peak_rss_mb", "cpu_model", "cpu_flags", "threads",
                "torch_version", "date", "variant", "machine_id", "busy", "other_cores", "latency_ms_min"):
        assert col in df.columns
    assert row.threads == 1 and row.batch_size == 2 and row.n_calls == 4
    assert row.latency_ms_p50 <= row.latency_ms_p95
    assert 0 <= row.peak_mem_mb < row.peak_rss_mb
    assert row.throughput_seq_per_s == pytest.approx(2 * 1000 / row.latency_ms_mean)
    n_params = sum(p.numel() for p in model.parameters())
    assert row.size_mb == pytest.approx(n_params * 4 / 1e6, rel=0.05)  # fp32 parameters, MB = 10^6 bytes
    # a second run with a new column appends to the same table
    benchmark(model, tok, TEXTS, name="tiny", batch_size=1, seq_len=16, n_warmup=0, n_iters=2, threads=1,
              table="bench", store=store, extra={"new_column": 1})
    stored = store.read("bench")
    assert len(stored) == 2 and "new_column" in stored.columns


def test_fixed_seq_len_uses_real_tokens(tiny_model_dir):
    _, tok = load_model(tiny_model_dir)
    batches = make_batches(tok, TEXTS, batch_size=3, seq_len=20, n_batches=2)
    ids = batches[0]["input_ids"]
    assert ids.shape == (3, 20)
    assert (ids[:, 0] == tok.cls_token_id).all() and (ids[:, -1] == tok.sep_token_id).all()
    assert len(set(ids[0, 1:-1].tolist())) > 5  # real text, not a repeated word


def test_bad_arguments(tiny_model_dir):
    model, tok = load_model(tiny_model_dir)
    with pytest.raises(UfkitError, match="batch_size must be a positive integer"):
        benchmark(model, tok, TEXTS, batch_size=0, n_iters=1)
    with pytest.raises(UfkitError, match="threads"):
        benchmark(model, tok, TEXTS, threads=0, n_iters=1)
    with pytest.raises(UfkitError, match="texts is empty"):
        make_batches(tok, [], batch_size=1)


def test_machine_info():
    info = machine_info(threads=3)
    assert info["threads"] == 3 and info["cpu_model"] and "torch_version" in info
