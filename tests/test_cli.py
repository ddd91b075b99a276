"""The ``ufkit`` command end to end on a tiny model: exit codes and one-line messages."""

import subprocess
import sys

import numpy as np
import pytest

TOPICS = ["sports", "world", "business", "tech"]  # the id2label of the tiny_topic_model_dir fixture


def ufkit(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ufkit", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def cli(*args):
    """``ufkit ARGS`` in this process (typer's CliRunner): the same exit codes and messages, no torch import."""
    from typer.testing import CliRunner

    from ufkit.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(r, *fragments):
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def write_csv(path, header, rows):
    path.write_text("\n".join([header] + [f"{text},{label}" for text, label in rows]) + "\n")
    return path


def test_help():
    for cmd in ([], ["finetune"], ["evaluate"], ["benchmark"], ["quantize"], ["bench-fff"]):
        r = ufkit(*cmd, "--help")
        assert r.returncode == 0 and "Usage" in r.stdout
        assert r.stderr == ""


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


def test_evaluate_max_samples(tiny_model_dir, tiny_tsv_dir, tmp_path):
    r = cli("evaluate", "--model", tiny_model_dir, "--data", tiny_tsv_dir, "--max-samples", 3)
    assert r.exit_code == 0, r.output
    assert f"scored 3 of 4 rows of the validation split of {tiny_tsv_dir} (a seeded random sample)" in r.stdout
    assert r.stdout.splitlines()[1].split()[1] == "3"  # the table's n
    r = cli("evaluate", "--model", tiny_model_dir, "--data", tiny_tsv_dir, "--max-samples", 100)
    assert r.exit_code == 0 and "scored all 4 rows" in r.stdout
    for bad in (0, -2):
        r = cli("evaluate", "--model", tiny_model_dir, "--data", tiny_tsv_dir, "--max-samples", bad)
        assert_one_line_error(r, f"--max-samples must be a positive integer, got {bad}")

    variants = tmp_path / "q"
    assert cli("quantize", "--model", tiny_model_dir, "--output", variants, "--variant", "pytorch_fp32").exit_code == 0
    r = cli("evaluate", "--model", variants, "--data", tiny_tsv_dir, "--max-samples", 2)
    assert r.exit_code == 0, r.output
    assert "pytorch_fp32" in r.stdout and "scored 2 of 4 rows" in r.stdout


def test_single_file_is_evaluated_whole(tiny_model_dir, tmp_path):
    data = write_csv(tmp_path / "test.csv", "sentence,label", [(f"review {i}", i % 2) for i in range(12)])
    r = cli("evaluate", "--model", tiny_model_dir, "--data", data)
    assert r.exit_code == 0, r.output
    assert f"scored all 12 rows of {data}" in r.stdout and r.stdout.splitlines()[1].split()[1] == "12"
    r = cli("evaluate", "--model", tiny_model_dir, "--data", data, "--max-samples", 5)
    assert f"scored 5 of 12 rows of {data}" in r.stdout
    assert_one_line_error(cli("evaluate", "--model", tiny_model_dir, "--data", data, "--split", "train"),
                          "--split 'train': a single file")


def test_string_labels_are_numbered_as_the_model_numbers_them(tiny_topic_model_dir, tmp_path):
    """A test file holding two of the model's four classes: scored against the model's ids, not sorted ones."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = [(f"news story number {i}", ["world", "tech"][i % 3 == 0]) for i in range(9)]
    data = write_csv(tmp_path / "subset.csv", "text,topic", rows)
    r = cli("evaluate", "--model", tiny_topic_model_dir, "--data", data, "--text-column", "text",
            "--label-column", "topic")
    assert r.exit_code == 0, r.output
    assert f"scored all 9 rows of {data}" in r.stdout

    tokenizer = AutoTokenizer.from_pretrained(tiny_topic_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_topic_model_dir).eval()
    with torch.inference_mode():
        logits = model(**tokenizer([t for t, _ in rows], padding=True, return_tensors="pt")).logits
    expected = 100.0 * np.mean(logits.argmax(-1).numpy() == np.array([TOPICS.index(lab) for _, lab in rows]))
    assert float(r.stdout.splitlines()[1].split()[2]) == pytest.approx(expected, abs=0.01)


def test_model_and_data_labels_must_match(tiny_model_dir, tiny_topic_model_dir, tiny_tsv_dir, tmp_path,
                                          monkeypatch):
    monkeypatch.setenv("UFKIT_DATA", str(tiny_tsv_dir))  # the default data: a tiny SST-2
    topics = write_csv(tmp_path / "topics.csv", "text,topic", [(f"headline {i}", TOPICS[i % 4]) for i in range(16)])
    columns = ["--text-column", "text", "--label-column", "topic"]

    # a 2-class model against a 4-class file
    r = cli("evaluate", "--model", tiny_model_dir, "--data", topics, *columns)
    assert_one_line_error(r, "--data does not match --model", "topics.csv", "unknown labels 'sports', 'world'")
    # a 4-class model against SST-2, in every command that gives a model data
    assert_one_line_error(cli("evaluate", "--model", tiny_topic_model_dir),
                          "--data does not match --model", "has 2 labels ['0', '1'], not the 4 labels")
    out = tmp_path / "q"
    assert_one_line_error(cli("quantize", "--model", tiny_topic_model_dir, "--output", out),
                          "--data does not match --model", "has 2 labels")
    assert not any(out.iterdir())
    # a label the model does not know
    unknown = write_csv(tmp_path / "unknown.csv", "text,topic", [("a", "world"), ("b", "weather"), ("c", "tech")])
    assert_one_line_error(cli("evaluate", "--model", tiny_topic_model_dir, "--data", unknown, *columns),
                          "unknown.csv", "unknown label 'weather' on line(s) 3")

    # the model's own label set: calibrated and evaluated; an ONNX-only folder knows its labels from its source
    r = cli("quantize", "--model", tiny_topic_model_dir, "--output", out, "--data", topics, *columns,
            "--variant", "onnx_int8_static", "--calibration-size", 4)
    assert r.exit_code == 0, r.output
    r = cli("evaluate", "--model", out, "--data", topics, *columns)
    assert r.exit_code == 0, r.output
    assert "onnx_int8_static" in r.stdout and "scored all 16 rows" in r.stdout
    assert_one_line_error(cli("evaluate", "--model", out, "--data", unknown, *columns), "unknown label 'weather'")


def test_commands_print_only_their_own_output(tiny_model_dir, tiny_tsv_dir, tmp_path):
    """No torchao library-load failures, torch deprecation notes or Hugging Face progress bars."""
    r = ufkit("evaluate", "--model", tiny_model_dir, "--data", tiny_tsv_dir)
    assert r.returncode == 0 and r.stderr == ""
    r = ufkit("quantize", "--model", tiny_model_dir, "--output", tmp_path / "q", "--variant", "torchao_int8")
    assert r.returncode == 0, r.stderr
    for chatter in ("Failed to load", "register_constant", "Loading weights", "Writing model shards", "_pytree"):
        assert chatter not in r.stderr
