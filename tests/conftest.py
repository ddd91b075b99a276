"""Shared fixtures: tiny random BERT classifiers (hidden 32, 2 layers) saved in temporary folders, and tiny data."""

from __future__ import annotations

import pytest


@pytest.fixture()
def no_loading_bars():
    """No transformers loading bars while a test runs (``ufkit``'s main silences them; the tests call the library and
    CliRunner, which skip main)."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    yield
    logging.enable_progress_bar()


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models (``pytestmark = pytest.mark.usefixtures("one_thread")``): the
    matrices are tiny, and a shared machine's second core is better left alone."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def save_tiny_classifier(path, label_names):
    """A tiny BertForSequenceClassification (hidden 32, 2 layers) with the packaged MiniLM tokenizer, whose
    ``config.id2label`` is ``label_names``, saved in ``path`` with save_pretrained."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from ufkit.models import default_model_path

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=128,
                        num_labels=len(label_names), id2label=dict(enumerate(label_names)),
                        label2id={name: i for i, name in enumerate(label_names)})
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny binary classifier (labels "0", "1", as SST-2's)."""
    return save_tiny_classifier(tmp_path_factory.mktemp("tiny-bert"), ["0", "1"])


TOPICS = ["sports", "world", "business", "tech"]  # id order; not sorted, as a model trained elsewhere may have it


@pytest.fixture(scope="session")
def tiny_topic_model_dir(tmp_path_factory):
    """A tiny 4-class classifier whose labels are the strings in ``TOPICS``, in that id order."""
    return save_tiny_classifier(tmp_path_factory.mktemp("tiny-topic-bert"), TOPICS)


@pytest.fixture()
def tiny_tsv_dir(tmp_path):
    """A GLUE-layout folder with a 12-row train.tsv and a 4-row dev.tsv."""
    train = ["sentence\tlabel"] + [f"a {'good' if i % 2 else 'bad'} movie number {i} \t{i % 2}" for i in range(12)]
    dev = ["sentence\tlabel", "great fun \t1", "dull and long \t0", "it 's \" fine \" \t1", "awful \t0"]
    (tmp_path / "train.tsv").write_text("\n".join(train) + "\n")
    (tmp_path / "dev.tsv").write_text("\n".join(dev) + "\n")
    return tmp_path
