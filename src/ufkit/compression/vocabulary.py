"""Vocabulary pruning: keep only the word pieces a task's texts use (TextPruner's vocabulary pruning).

A BERT classifier's word-embedding matrix is ``vocab_size x hidden_size``: for MiniLM-L6-H384, 30,522 x 384 =
11.7M of its 22.7M parameters, most of them rows for word pieces a given task never sees. Yang, Cui, Chen & Wang
("TextPruner: A Model Pruning Toolkit for Pre-Trained Language Models", ACL 2022 System Demonstrations) drop those
rows: the model gets smaller on disk and in memory, and computes exactly what it computed before on every text
whose word pieces were kept. Nothing gets faster: an embedding lookup costs the same in a smaller table.

Public functions:

* :func:`prune_vocabulary`: slice the embedding matrix to the pieces some texts use, and build the matching
  tokenizer.
"""

from __future__ import annotations

import json

import torch
from torch import nn

from .common import CompressionError


def _backend_spec(tokenizer) -> dict:
    """The ``tokenizers`` JSON of a fast BERT tokenizer, checked to be WordPiece with BERT's normaliser."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise CompressionError(f"tokenizer must be a fast (tokenizers-backed) BERT tokenizer, got "
                               f"{type(tokenizer).__name__}")
    spec = json.loads(backend.to_str())
    model_type = spec.get("model", {}).get("type")
    normalizer_type = (spec.get("normalizer") or {}).get("type")
    if model_type != "WordPiece" or normalizer_type != "BertNormalizer":
        raise CompressionError(f"tokenizer must be a WordPiece tokenizer with BERT's normaliser, got a {model_type} "
                               f"model with a {normalizer_type} normaliser")
    return spec


def _comparable(spec: dict) -> dict:
    """The parts of a tokenizer's JSON that decide how text is split, without the vocabulary and the ids."""
    model = {k: v for k, v in spec["model"].items() if k != "vocab"}
    post = json.loads(json.dumps(spec.get("post_processor")))
    for token in (post or {}).get("special_tokens", {}).values():
        token.pop("ids", None)
    return {"normalizer": spec.get("normalizer"), "pre_tokenizer": spec.get("pre_tokenizer"), "model": model,
            "post_processor": post, "decoder": spec.get("decoder")}


def prune_vocabulary(model: nn.Module, tokenizer, texts, *, max_length: int | None = None):
    """Keep the word pieces ``texts`` use (and every special token); shrink the model's word embeddings to them.

    The kept pieces keep their relative order (old-id order), so the new vocabulary is the old one with rows
    struck out. The new tokenizer is a ``BertTokenizerFast`` (transformers 5: ``BertTokenizer``) with the old
    normalisation (``do_lower_case``, ``strip_accents``, ``tokenize_chinese_chars``), special tokens and maximum
    length; the model's ``embeddings.word_embeddings`` becomes the matching rows, and ``config.vocab_size`` and
    ``config.pad_token_id`` follow.

    Guarantee, checked before returning: every text in ``texts`` splits into the same pieces as before, so
    ``model(**new_tokenizer(text))`` gives exactly (bit for bit) the logits the old pair gave. WordPiece splits a
    word greedily, longest piece first; a smaller vocabulary can split a word differently only if it lost one of
    the pieces the old split used, and those are all kept. A text outside ``texts`` may meet a missing piece: its
    word then becomes ``[UNK]`` (or splits into shorter pieces).

    Args:
        model: a BERT-family model with ``get_input_embeddings`` (e.g. ``BertForSequenceClassification``); changed
            in place.
        tokenizer: its fast WordPiece tokenizer; not changed.
        texts: the sentences to keep pieces for, e.g. the task's training, validation and test texts.
        max_length: count only the pieces of each text's first ``max_length`` tokens, as a model truncating there
            sees them; None (default) counts every piece, so that the guarantee holds whatever the truncation (a
            word cut by the truncation could otherwise lose its later pieces and become ``[UNK]``).

    Returns:
        ``(model, tokenizer)``: the same model with a `(n_kept, hidden_size)` word-embedding matrix, and the new
        tokenizer; both save with ``save_pretrained`` and load with :func:`ufkit.models.load_model`.

    Raises:
        CompressionError: ``texts`` empty or not strings, a tokenizer that is not a fast WordPiece BERT tokenizer
            or has tokens added beyond its vocabulary, a model whose embedding matrix does not match the
            tokenizer's vocabulary or that has output embeddings (a language-model head), a ``max_length`` below 2.
    """
    from transformers import BertTokenizerFast

    if isinstance(texts, str):
        raise CompressionError("texts must be a list of strings, got one string")
    texts = list(texts) if texts is not None else []
    if not texts:
        raise CompressionError("texts must contain at least one text, got none")
    if not all(isinstance(t, str) for t in texts):
        bad = next(type(t).__name__ for t in texts if not isinstance(t, str))
        raise CompressionError(f"texts must all be strings, found a {bad}")
    if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
        raise CompressionError(f"max_length must be an integer >= 2 or None, got {max_length!r}")
    spec = _backend_spec(tokenizer)
    vocab = spec["model"]["vocab"]                                                            # piece -> old id
    if len(tokenizer) != len(vocab):
        raise CompressionError(f"tokenizer has {len(tokenizer) - len(vocab)} tokens added beyond its "
                               f"{len(vocab)}-piece vocabulary; vocabulary pruning supports plain BERT tokenizers")
    if getattr(model, "get_output_embeddings", lambda: None)() is not None:
        raise CompressionError("model has output embeddings (a language-model head); prune a classifier")
    embeddings = model.get_input_embeddings()
    if not isinstance(embeddings, nn.Embedding) or embeddings.num_embeddings != len(vocab):
        rows = getattr(embeddings, "num_embeddings", None)
        raise CompressionError(f"model's word embeddings have {rows} rows but the tokenizer has {len(vocab)} pieces")

    def encode(tok, batch):
        return tok(batch, truncation=max_length is not None, max_length=max_length, verbose=False)["input_ids"]

    old_ids = encode(tokenizer, texts)
    keep = sorted(set().union(*map(set, old_ids)) | set(tokenizer.all_special_ids))          # old ids, in order
    old_to_new = {old: new for new, old in enumerate(keep)}
    piece = {i: p for p, i in vocab.items()}
    norm = spec["normalizer"]
    new_tok = BertTokenizerFast(
        vocab={piece[old]: new for new, old in enumerate(keep)},
        do_lower_case=norm["lowercase"], strip_accents=norm["strip_accents"],
        tokenize_chinese_chars=norm["handle_chinese_chars"],
        unk_token=tokenizer.unk_token, sep_token=tokenizer.sep_token, pad_token=tokenizer.pad_token,
        cls_token=tokenizer.cls_token, mask_token=tokenizer.mask_token,
        model_max_length=tokenizer.model_max_length, padding_side=tokenizer.padding_side,
        truncation_side=tokenizer.truncation_side)
    if _comparable(_backend_spec(new_tok)) != _comparable(spec):
        raise CompressionError("cannot rebuild this tokenizer with BertTokenizerFast's options (its normaliser, "
                               "pre-tokeniser, WordPiece settings or special tokens differ)")
    # the guarantee, checked: every text maps to the old pieces under the new ids
    if encode(new_tok, texts) != [[old_to_new[i] for i in ids] for ids in old_ids]:
        raise CompressionError("the pruned tokenizer splits some texts differently; please report this")

    pad = embeddings.padding_idx
    new_embeddings = nn.Embedding(len(keep), embeddings.embedding_dim,
                                  padding_idx=old_to_new[pad] if pad is not None else None,
                                  device=embeddings.weight.device, dtype=embeddings.weight.dtype)
    with torch.no_grad():
        index = torch.tensor(keep, device=embeddings.weight.device)
        new_embeddings.weight.copy_(embeddings.weight.index_select(0, index))               # (n_kept, hidden)
    new_embeddings.weight.requires_grad_(embeddings.weight.requires_grad)
    model.set_input_embeddings(new_embeddings)
    model.config.vocab_size = len(keep)
    if getattr(model.config, "pad_token_id", None) is not None:
        model.config.pad_token_id = old_to_new.get(model.config.pad_token_id, new_tok.pad_token_id)
    return model, new_tok
