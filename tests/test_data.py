import json

import pytest

from ufkit import config
from ufkit.data import (DataError, LabelError, LengthBucketBatchSampler, infer_label_names, load_local,
                        load_sst2, load_task, make_dataloader, tokenize)


def test_glue_folder(tiny_tsv_dir):
    task = load_local(tiny_tsv_dir, label_names=["0", "1"])
    assert set(task.splits) == {"train", "validation"}
    assert len(task["train"]) == 12 and len(task["validation"]) == 4
    assert task.num_labels == 2
    # bare quotes inside a TSV field are text, not delimiters
    assert task["validation"][2] == {"text": 'it \'s " fine " ', "label": 1}


def test_single_csv_string_labels(tmp_path):
    rows = ["review,stars"] + [f"text {i},{['bad', 'good', 'meh'][i % 3]}" for i in range(30)]
    (tmp_path / "r.csv").write_text("\n".join(rows) + "\n")
    task = load_task(tmp_path / "r.csv", text_column="review", label_column="stars")
    assert task.label_names == ["bad", "good", "meh"]
    assert task.num_labels == 3
    assert len(task["train"]) + len(task["validation"]) == 30
    assert set(task["train"]["label"]) <= {0, 1, 2}


def test_jsonl(tmp_path):
    lines = [json.dumps({"t": f"x{i}", "y": i % 4}) for i in range(20)]
    (tmp_path / "train.jsonl").write_text("\n".join(lines))
    (tmp_path / "dev.jsonl").write_text("\n".join(lines[:5]))
    task = load_local(tmp_path, text_column="t", label_column="y")
    assert task.label_names == ["0", "1", "2", "3"]
    assert task["validation"]["label"] == [0, 1, 2, 3, 0]


def test_integer_labels_sort_numerically():
    assert infer_label_names([10, 2, 1, "2"]) == ["1", "2", "10"]


def test_bad_rows_reported_with_line_numbers(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\nok \t0\n\t1\nfine \t1\nodd \t7\n")
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nok \t0\n")
    with pytest.raises(DataError, match=r"missing text on line\(s\) 3.*unknown label '7' on line\(s\) 5"):
        load_local(tmp_path, label_names=["0", "1"])
    with pytest.warns(UserWarning, match="line"):
        task = load_local(tmp_path, label_names=["0", "1"], on_bad_rows="skip")
    assert task["train"]["text"] == ["ok ", "fine "]
    assert task.skipped == {"train": [3, 5]}


TOPICS = ["sports", "world", "business", "tech"]  # a classifier's id2label, not in sorted order


def write_csv(path, labels):
    path.write_text("\n".join(["text,topic"] + [f"headline {i},{lab}" for i, lab in enumerate(labels)]) + "\n")
    return path


def test_string_labels_follow_the_given_label_names(tmp_path):
    """A test file with a subset of a classifier's classes keeps the classifier's ids, not sorted ones."""
    csv = write_csv(tmp_path / "test.csv", ["world", "tech", "tech", "world", "tech"])
    task = load_local(csv, text_column="text", label_column="topic", label_names=TOPICS, validation_fraction=1.0)
    assert list(task.splits) == ["validation"]  # 1.0: the whole file, nothing held out for training
    assert task["validation"]["label"] == [1, 3, 3, 1, 3]
    assert task.label_names == TOPICS and task.num_labels == 4
    # without label_names the file's own two labels would have been 0 and 1
    assert load_local(csv, text_column="text", label_column="topic", validation_fraction=1.0).label_names == \
        ["tech", "world"]


def test_label_outside_the_given_names_is_a_label_error(tmp_path):
    csv = write_csv(tmp_path / "test.csv", ["world", "weather", "tech", "weather"])
    with pytest.raises(LabelError) as e:
        load_task(csv, text_column="text", label_column="topic", label_names=TOPICS)
    assert "test.csv" in str(e.value) and "unknown label 'weather' on line(s)" in str(e.value)
    assert "on_bad_rows" not in e.value.reason and "--" not in str(e.value)


def test_integer_labels_are_ids_for_placeholder_names(tmp_path):
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nfine \t1\nbad \t0\n")
    task = load_local(tmp_path, label_names=["LABEL_0", "LABEL_1"])
    assert task["validation"]["label"] == [1, 0]
    with pytest.raises(LabelError, match="unknown label '1'"):
        load_local(tmp_path, label_names=["0", "2"])  # integer names are names


def test_declared_label_set_must_have_as_many_labels(tiny_tsv_dir, monkeypatch):
    monkeypatch.setenv("UFKIT_DATA", str(tiny_tsv_dir))
    with pytest.raises(LabelError, match=r"has 2 labels \['0', '1'\], not the 4 labels"):
        load_task(None, label_names=["a", "b", "c", "d"])
    sst2 = load_task(None)
    swapped = load_task(None, label_names=["1", "0"])  # same names, other order: renumbered by name
    assert swapped["validation"]["label"] == [1 - i for i in sst2["validation"]["label"]]
    named = load_task(None, label_names=["NEGATIVE", "POSITIVE"])  # other names: ids kept
    assert named["validation"]["label"] == sst2["validation"]["label"] and named.label_names[0] == "NEGATIVE"


def test_validation_fraction_bounds(tmp_path):
    csv = write_csv(tmp_path / "t.csv", TOPICS * 3)
    with pytest.raises(DataError, match=r"validation_fraction must be in \(0, 1\]"):
        load_local(csv, text_column="text", label_column="topic", validation_fraction=0.0)
    task = load_local(csv, text_column="text", label_column="topic")
    assert len(task["train"]) + len(task["validation"]) == 12 and len(task["validation"]) == 1


def test_unknown_column(tiny_tsv_dir):
    with pytest.raises(DataError, match="text column 'review' not found"):
        load_local(tiny_tsv_dir, text_column="review")


def test_missing_data_error_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("UFKIT_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr(config, "data_candidates", lambda: [tmp_path / "nowhere"])
    with pytest.raises(DataError) as e:
        load_sst2(hub=False)
    assert "nowhere" in str(e.value) and "UFKIT_DATA" in str(e.value)
    with pytest.raises(DataError, match="does not exist"):
        load_task(str(tmp_path / "missing.tsv"))


def test_sst2_from_env(tiny_tsv_dir, monkeypatch):
    monkeypatch.setenv("UFKIT_DATA", str(tiny_tsv_dir))
    task = load_sst2(hub=False)
    assert len(task["train"]) == 12 and task.label_names == ["0", "1"]


def test_real_sst2_is_found():
    from ufkit import config

    if not any((p / "train.tsv").is_file() for p in config.data_candidates()):
        pytest.skip("SST-2 is not beside the checkout (../shared/data/sst2) nor in UFKIT_DATA")
    task = load_sst2(hub=False)
    assert len(task["train"]) == 67_349 and len(task["validation"]) == 872


def test_dynamic_padding_and_buckets(tiny_tsv_dir, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    task = load_local(tiny_tsv_dir)
    tokenized = tokenize(task["train"], tok)
    loader = make_dataloader(tokenized, tok, batch_size=4, shuffle=True)
    seen = []
    for batch in loader:
        lengths = batch["attention_mask"].sum(1)
        assert batch["input_ids"].shape[1] == lengths.max()  # padded to its own longest row only
        seen += batch["labels"].tolist()
    assert sorted(seen) == sorted(task["train"]["label"])


def test_length_bucket_sampler_covers_everything_once():
    lengths = [5, 40, 7, 39, 6, 41, 8, 38] * 10
    sampler = LengthBucketBatchSampler(lengths, 8, seed=1, bucket_batches=10)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(80))
    assert max(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) <= 3
    assert len(sampler) == 10
    with pytest.raises(DataError, match="batch_size"):
        LengthBucketBatchSampler(lengths, 0)


def test_hub_path_with_class_labels(monkeypatch):
    """load_task on a hub name goes through datasets.load_dataset; simulated offline with a local DatasetDict."""
    import datasets

    feats = datasets.Features({"sentence": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["negative", "positive"])})
    fake = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"sentence": ["good", "bad", "fine"], "label": [1, 0, 1]}, features=feats),
        "validation": datasets.Dataset.from_dict({"sentence": ["meh"], "label": [0]}, features=feats),
        "test": datasets.Dataset.from_dict({"sentence": ["?"], "label": [-1]},
                                           features=datasets.Features({"sentence": datasets.Value("string"),
                                                                       "label": datasets.Value("int64")})),
    })
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, subset=None: calls.append((name, subset)) or fake)
    task = load_task("glue", subset="sst2")
    assert calls == [("glue", "sst2")]
    assert task.label_names == ["negative", "positive"]
    assert task["train"]["label"] == [1, 0, 1]
    assert task["test"]["label"] == [-1]
    renamed = load_task("glue", subset="sst2", label_names=["positive", "negative"])
    assert renamed["train"]["label"] == [0, 1, 0] and renamed.label_names == ["positive", "negative"]
    with pytest.raises(LabelError, match="has 2 labels"):
        load_task("glue", subset="sst2", label_names=["a", "b", "c"])


def test_hub_unreachable_is_a_clear_error(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="cannot load 'someone/reviews' from the Hugging Face Hub: ConnectionError"):
        load_task("someone/reviews")


def test_malformed_file_is_a_data_error(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\nok \t0\ntoo\tmany\tfields\n")
    with pytest.raises(DataError, match=r"train.tsv: cannot parse as TSV: .*line 3"):
        load_local(tmp_path)


def test_holdout_is_disjoint_and_length_matched():
    """Held-out rows drawn to look like a reference split follow its word counts; the three parts are disjoint."""
    import numpy as np
    from datasets import Dataset

    from ufkit.data import holdout, word_counts

    rng = np.random.default_rng(0)
    texts = [" ".join(["w"] * int(n)) + f" {i}" for i, n in enumerate(rng.integers(1, 40, size=2000))]
    ds = Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(2000)]})
    like = [" ".join(["w"] * 24)] * 50 + [" ".join(["w"] * 30)] * 50  # long sentences only
    train, held, cal = holdout(ds, 100, 50, 500, seed=3, like=like)
    assert (len(train), len(held), len(cal)) == (500, 100, 50)
    assert not (set(train["text"]) & set(held["text"])) and not (set(held["text"]) & set(cal["text"]))
    assert not (set(train["text"]) & set(cal["text"]))
    assert word_counts(held["text"]).min() >= 24 > word_counts(train["text"]).mean()  # like: 24 and 30 words
    again = holdout(ds, 100, 50, 500, seed=3, like=like)
    assert again[1]["text"] == held["text"]  # seeded
    plain = holdout(ds, 100, 0, None, seed=3)
    assert len(plain[0]) == 1900 and len(plain[2]) == 0


def test_holdout_errors_name_the_problem():
    from datasets import Dataset

    from ufkit.data import DataError, LabelError, holdout

    ds = Dataset.from_dict({"text": ["a", "b", "c"], "label": [0, 1, -1]})
    with pytest.raises(LabelError, match="unlabeled"):
        holdout(ds, 1)
    ds = Dataset.from_dict({"text": ["a", "b", "c"], "label": [0, 1, 0]})
    with pytest.raises(DataError, match="fewer than the 3 held out"):
        holdout(ds, 2, 1)
