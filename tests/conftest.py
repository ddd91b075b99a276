"""Shared fixtures: a tiny random BERT (hidden 32, 2 layers) saved in a temporary folder, and tiny TSV data."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny BertForSequenceClassification with the packaged MiniLM tokenizer, saved with save_pretrained."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from ufkit.models import default_model_path

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=128,
                        num_labels=2, id2label={0: "0", 1: "1"}, label2id={"0": 0, "1": 1})
    model = BertForSequenceClassification(config).eval()
    path = tmp_path_factory.mktemp("tiny-bert")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture()
def tiny_tsv_dir(tmp_path):
    """A GLUE-layout folder with a 12-row train.tsv and a 4-row dev.tsv."""
    train = ["sentence\tlabel"] + [f"a {'good' if i % 2 else 'bad'} movie number {i} \t{i % 2}" for i in range(12)]
    dev = ["sentence\tlabel", "great fun \t1", "dull and long \t0", "it 's \" fine \" \t1", "awful \t0"]
    (tmp_path / "train.tsv").write_text("\n".join(train) + "\n")
    (tmp_path / "dev.tsv").write_text("\n".join(dev) + "\n")
    return tmp_path
