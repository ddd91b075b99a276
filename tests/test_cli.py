"""The ``ufkit`` command end to end on a tiny model: exit codes and one-line messages."""

import subprocess
import sys

import pytest


def ufkit(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ufkit", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_help():
    for cmd in ([], ["finetune"], ["evaluate"], ["benchmark"], ["bench-fff"]):
        r = ufkit(*cmd, "--help")
        assert r.returncode == 0 and "Usage" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["evaluate", "--model", "/no/such/model"], "error: model path '/no/such/model' does not exist"),
    (["evaluate", "--data", "/no/such/data.tsv"], "error: data path '/no/such/data.tsv' does not exist"),
    (["benchmark", "--batch-size", "0"], "error: --batch-size must be a positive integer, got 0"),
    (["benchmark", "--batch-size", "x"], "error: Invalid value for '--batch-size'"),
])
def test_bad_input_one_line(args, message):
    r = ufkit(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), r.stderr


def test_unknown_column_and_end_to_end(tiny_model_dir, tiny_tsv_dir, tmp_path):
    r = ufkit("evaluate", "--model", tiny_model_dir, "--data", tiny_tsv_dir, "--text-column", "review")
    assert r.returncode == 2 and "text column 'review' not found" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    out = tmp_path / "ft"
    r = ufkit("finetune", "--model", tiny_model_dir, "--data", tiny_tsv_dir, "--output", out, "--max-steps", 2,
              "--batch-size", 4)
    assert r.returncode == 0, r.stderr
    assert (out / "model.safetensors").is_file() and (out / "metrics.json").is_file()

    r = ufkit("evaluate", "--model", out, "--data", tiny_tsv_dir, "--output", tmp_path / "ev")
    assert r.returncode == 0, r.stderr
    assert "accuracy" in r.stdout and (tmp_path / "ev" / "metrics.csv").is_file()

    r = ufkit("benchmark", "--model", out, "--data", tiny_tsv_dir, "-b", 1, "-b", 2, "--iters", 2, "--warmup", 1,
              "--threads", 1, "--output", tmp_path / "bench")
    assert r.returncode == 0, r.stderr
    assert "latency_ms_mean" in r.stdout and (tmp_path / "bench" / "benchmark.csv").is_file()


def test_bench_fff(tmp_path):
    r = ufkit("bench-fff", "--backend", "torch_gather", "--backend", "dense_torch", "-c", "2x3", "--batch", 5,
              "--hidden-size", 17, "--iters", 2, "--warmup", 0, "--threads", 1, "--output", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "torch_gather" in r.stdout and (tmp_path / "fff_bench.csv").is_file()
    r = ufkit("bench-fff", "-c", "11", "--output", tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == "error: --config must look like KxD (n_trees x depth, e.g. 1x11), got '11'"
