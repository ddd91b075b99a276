"""Knowledge distillation (Hinton et al. 2015; TinyBERT's hidden loss) and BERT-of-Theseus (Xu et al. 2020) on tiny
random BERTs (hidden 32, 6 layers, 4 heads): losses by hand, the fast path, unlabeled rows, projections, caches,
and the exactness of the Theseus model at p = 0 and p = 1."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.nn import functional as F

from ufkit import UfkitError
from ufkit.compression.common import CompressionError
from ufkit.compression.distillation import (DistillConfig, distill, distillation_loss, load_or_distill,
                                            make_student, teacher_logits, uniform_layer_map, unlabeled)
from ufkit.compression.theseus import (TheseusModel, linear_schedule, load_or_theseus, partition_layers,
                                       replace_rate_at, theseus_compress)
from ufkit.distill import kd_loss

TEXTS = [f"a {'good' if i % 2 else 'bad'} {'long ' * (i % 5)}movie number {i}" for i in range(24)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these matrices are tiny, and on a shared 2-core machine two threads mostly wait for
    each other (a 30-step fine-tuning took 28 s with two, 2 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from ufkit.models import default_model_path

    return AutoTokenizer.from_pretrained(default_model_path())


def tiny_bert(tokenizer, *, layers=6, hidden=32, heads=4, seed=0, attn="sdpa"):
    """A random BertForSequenceClassification without dropout (so training-mode forwards are comparable)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=64,
                        num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        attn_implementation=attn)
    return BertForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def train_ds():
    import datasets

    return datasets.Dataset.from_dict({"text": TEXTS, "label": [i % 2 for i in range(len(TEXTS))]})


@pytest.fixture(scope="module")
def teacher(tokenizer, train_ds):
    """The tiny BERT fine-tuned for a few steps, so its logits separate the two labels (a random BERT gives
    nearly the same logits to every sentence)."""
    from ufkit.data import tokenize
    from ufkit.training import TrainConfig, finetune

    model = tiny_bert(tokenizer)
    finetune(model, tokenizer, tokenize(train_ds, tokenizer), TrainConfig(
        max_steps=30, batch_size=8, learning_rate=2e-3, warmup_ratio=0.0, mixed_precision="no"), progress=False)
    return model.eval()


def cfg(**kw):
    base = dict(max_steps=4, batch_size=8, learning_rate=1e-3, warmup_ratio=0.0, mixed_precision="no",
                log_every=1, seed=0)
    return DistillConfig(**{**base, **kw})


def batch(tokenizer, texts=("a good movie", "bad , long and dull , a waste of time")):
    return dict(tokenizer(list(texts), padding=True, return_tensors="pt"))


def logits(model, b):
    with torch.no_grad():
        return model(**b).logits


# ---------------------------------------------------------------------------------------------------- kd_loss


def test_kd_loss_by_hand():
    torch.manual_seed(1)
    s, t = torch.randn(5, 3), torch.randn(5, 3)
    assert kd_loss(t, t, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    assert kd_loss(s, t, 2.0).item() > 0
    T = 2.0
    p_t, p_s = F.softmax(t / T, -1), F.softmax(s / T, -1)
    by_hand = T * T * (p_t * (p_t.log() - p_s.log())).sum(-1).mean()
    assert kd_loss(s, t, T).item() == pytest.approx(by_hand.item(), rel=1e-5)
    # at fixed softened distributions the loss grows as T^2
    for T in (0.5, 3.0, 7.0):
        assert kd_loss(s * T, t * T, T).item() == pytest.approx(T * T * kd_loss(s, t, 1.0).item(), rel=1e-5)


def test_distillation_loss_soft_hard_and_unlabeled():
    torch.manual_seed(2)
    s, t = torch.randn(6, 3), torch.randn(6, 3)
    labels = torch.tensor([0, 2, -1, 1, -1, 0])
    lab = labels >= 0
    T, a = 3.0, 0.3
    kd_rows = torch.stack([kd_loss(s[i:i + 1], t[i:i + 1], T) for i in range(6)])
    ce_rows = torch.stack([F.cross_entropy(s[i:i + 1], labels[i:i + 1].clamp(min=0)) for i in range(6)])
    by_hand = torch.where(lab, a * kd_rows + (1 - a) * ce_rows, kd_rows).mean()
    got = distillation_loss(s, t, labels, temperature=T, alpha=a, mode="soft")
    assert got.item() == pytest.approx(by_hand.item(), rel=1e-5)
    # hard mode: cross-entropy against the teacher's argmax; all unlabeled: that alone, whatever alpha
    hard = distillation_loss(s, t, None, alpha=0.0, mode="hard")
    assert hard.item() == pytest.approx(F.cross_entropy(s, t.argmax(-1)).item(), rel=1e-6)
    soft_all = distillation_loss(s, t, torch.full((6,), -1), temperature=T, alpha=0.0)
    assert soft_all.item() == pytest.approx(kd_loss(s, t, T).item(), rel=1e-5)
    with pytest.raises(CompressionError, match="mode"):
        distillation_loss(s, t, None, mode="medium")
    with pytest.raises(CompressionError, match="student_logits"):
        distillation_loss(s, t[:, :2], None)


# ------------------------------------------------------------------------------------------- config, student


@pytest.mark.parametrize("field, value", [("temperature", 0.0), ("alpha", 1.5), ("mode", "medium"),
                                          ("hidden_weight", -1.0), ("layer_map", (0, -2))])
def test_distill_config_validation(field, value):
    with pytest.raises(CompressionError, match=field):
        DistillConfig(**{field: value}).validate()


def test_distill_config_training_fields_still_checked():
    with pytest.raises(UfkitError, match="batch_size"):
        DistillConfig(batch_size=0).validate()
    DistillConfig().validate()
    assert DistillConfig(layer_map=(1, 3, 5)).recipe()["layer_map"] == (1, 3, 5)


def test_make_student_keeps_the_chosen_layers(teacher):
    student = make_student(teacher, [0, 2, 5])
    assert student.config.num_hidden_layers == 3 and len(teacher.bert.encoder.layer) == 6
    for k, i in enumerate([0, 2, 5]):
        mine, theirs = student.bert.encoder.layer[k].state_dict(), teacher.bert.encoder.layer[i].state_dict()
        assert all(torch.equal(mine[n], theirs[n]) for n in theirs)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert student.bert.encoder.layer[0] is not teacher.bert.encoder.layer[0]
    for bad in ([], [0, 0], [6]):
        with pytest.raises(CompressionError, match="layers"):
            make_student(teacher, bad)


def test_uniform_layer_map():
    assert uniform_layer_map(3, 6) == (1, 3, 5)
    assert uniform_layer_map(2, 6) == (2, 5)
    assert uniform_layer_map(4, 6) == (1, 2, 4, 5)
    assert uniform_layer_map(6, 6) == tuple(range(6))
    with pytest.raises(CompressionError, match="student_layers"):
        uniform_layer_map(7, 6)


def test_teacher_logits_in_text_order(teacher, tokenizer):
    got = teacher_logits(teacher, tokenizer, TEXTS[:7], batch_size=3)
    assert got.shape == (7, 2) and got.dtype == torch.float32
    for i in (0, 4, 6):
        one = logits(teacher, batch(tokenizer, [TEXTS[i]]))[0]
        assert torch.allclose(got[i], one, atol=1e-5)
    with pytest.raises(CompressionError, match="texts"):
        teacher_logits(teacher, tokenizer, [])


# ------------------------------------------------------------------------------------------------ distilling


def kd_on(student, teacher, tokenizer, T=2.0):
    s = teacher_logits(student, tokenizer, TEXTS)
    return kd_loss(s, teacher_logits(teacher, tokenizer, TEXTS), T).item()


def test_distill_lowers_the_kd_loss(teacher, tokenizer, train_ds):
    student = make_student(teacher, [0, 3])
    before = kd_on(student, teacher, tokenizer)
    student, history = distill(student, teacher, tokenizer, train_ds, cfg(max_steps=12, alpha=1.0),
                               progress=False)
    assert history["steps"] == 12 and history["teacher_runs"] is True
    assert not student.training
    assert kd_on(student, teacher, tokenizer) < 0.5 * before


def test_fast_path_matches_the_live_teacher(teacher, tokenizer, train_ds):
    precomputed = teacher_logits(teacher, tokenizer, train_ds["text"])
    start = make_student(teacher, [1, 4])
    _, live = distill(copy.deepcopy(start), teacher, tokenizer, train_ds, cfg(max_steps=1), progress=False)
    silent = copy.deepcopy(teacher)

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher ran on the fast path")

    silent.forward = refuse
    _, fast = distill(copy.deepcopy(start), silent, tokenizer, train_ds, cfg(max_steps=1),
                      teacher_logits=precomputed, progress=False)
    assert fast["teacher_runs"] is False
    assert fast["losses"][0] == pytest.approx(live["losses"][0], rel=1e-4)
    with pytest.raises(CompressionError, match="teacher_logits"):
        distill(copy.deepcopy(start), teacher, tokenizer, train_ds, cfg(), teacher_logits=precomputed[:5])


def test_unlabeled_rows_get_the_kd_term_alone(teacher, tokenizer, train_ds):
    free = unlabeled(train_ds)
    assert free["text"] == train_ds["text"] and set(free["label"]) == {-1}
    start = make_student(teacher, [0, 5])
    # unlabeled with alpha = 0 is pure distillation: the same first loss as labeled data with alpha = 1
    _, a = distill(copy.deepcopy(start), teacher, tokenizer, free, cfg(max_steps=1, alpha=0.0), progress=False)
    _, b = distill(copy.deepcopy(start), teacher, tokenizer, train_ds, cfg(max_steps=1, alpha=1.0), progress=False)
    assert a["losses"][0] == pytest.approx(b["losses"][0], rel=1e-5)
    # hard mode on unlabeled data trains on the teacher's argmax
    _, h = distill(copy.deepcopy(start), teacher, tokenizer, free, cfg(max_steps=2, mode="hard"), progress=False)
    assert math.isfinite(h["final_loss"])
    bad = train_ds.map(lambda r: {"label": 5})
    with pytest.raises(CompressionError, match="labels"):
        distill(copy.deepcopy(start), teacher, tokenizer, bad, cfg())


def test_hidden_mse_with_a_narrower_student(teacher, tokenizer, train_ds):
    student = tiny_bert(tokenizer, layers=2, hidden=16, heads=2, seed=3)
    student, history = distill(student, teacher, tokenizer, train_ds,
                               cfg(max_steps=15, hidden_weight=1.0, alpha=1.0, learning_rate=3e-3),
                               progress=False)
    assert history["layer_map"] == [2, 5]
    assert history["losses"][-1] < history["losses"][0]
    assert not any("projection" in k for k in student.state_dict())  # projections are thrown away
    with pytest.raises(CompressionError, match="layer_map"):
        distill(student, teacher, tokenizer, train_ds, cfg(hidden_weight=1.0, layer_map=(0, 6)))


def test_load_or_distill_round_trip(teacher, tokenizer, train_ds, tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    import ufkit.compression.distillation as distillation

    folder = tmp_path / "student"
    student, _, info = load_or_distill(folder, teacher=teacher, tokenizer=tokenizer,
                                       student=make_student(teacher, [0, 3]), train_ds=train_ds,
                                       cfg=cfg(max_steps=2), progress=False)
    assert info["steps"] == 2 and info["train_seconds"] > 0 and len(info["losses"]) == 2
    b = batch(tokenizer)
    loaded = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert torch.equal(logits(loaded, b), logits(student, b))

    def no_training(*args, **kwargs):
        raise AssertionError("trained again although the cache was current")

    monkeypatch.setattr(distillation, "distill", no_training)
    again, _, info2 = load_or_distill(folder, teacher=teacher, tokenizer=tokenizer,
                                      student=make_student(teacher, [0, 3]), train_ds=train_ds,
                                      cfg=cfg(max_steps=2), progress=False)
    assert info2["created"] == info["created"]
    assert torch.equal(logits(again, b), logits(student, b))
    # another student, teacher or data set is another recipe
    for kw in ({"student": make_student(teacher, [1, 3])}, {"train_ds": train_ds.select(range(20))}):
        args = dict(teacher=teacher, tokenizer=tokenizer, student=make_student(teacher, [0, 3]),
                    train_ds=train_ds, cfg=cfg(max_steps=2), progress=False)
        with pytest.raises(AssertionError, match="trained again"):
            load_or_distill(folder, **{**args, **kw})


# -------------------------------------------------------------------------------------------- BERT-of-Theseus


def test_partition_layers():
    assert partition_layers(6, 3) == [[0, 1], [2, 3], [4, 5]]
    assert partition_layers(6, 2) == [[0, 1, 2], [3, 4, 5]]
    assert partition_layers(5, 2) == [[0, 1, 2], [3, 4]]
    assert [len(b) for b in partition_layers(6, 4)] == [2, 2, 1, 1]
    assert partition_layers(6, 6) == [[i] for i in range(6)]
    with pytest.raises(CompressionError, match="deeper than the teacher"):
        partition_layers(6, 7)
    with pytest.raises(CompressionError, match="num_successors"):
        partition_layers(6, 0)


def test_replace_rate_schedules():
    assert replace_rate_at(10, replace_rate=0.25) == 0.25
    assert replace_rate_at(0) == 0.5
    values = [replace_rate_at(t, schedule=(0.1, 0.3)) for t in range(10)]
    assert values == pytest.approx([0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.0, 1.0])
    k, b = linear_schedule(200, base_rate=0.3, full_at=0.5)
    assert (k, b) == pytest.approx((0.007, 0.3))
    assert replace_rate_at(100, schedule=(k, b)) == pytest.approx(1.0)
    assert replace_rate_at(50, schedule=(k, b)) == pytest.approx(0.65)
    with pytest.raises(CompressionError, match="replace_rate"):
        replace_rate_at(0, replace_rate=1.5)
    with pytest.raises(CompressionError, match="not both"):
        replace_rate_at(0, replace_rate=0.5, schedule=(0.1, 0.3))
    with pytest.raises(CompressionError, match="base rate"):
        replace_rate_at(0, schedule=(0.1, 1.3))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_theseus_p0_is_the_teacher_and_p1_the_successors(tokenizer, attn):
    teacher = tiny_bert(tokenizer, attn=attn)
    b = batch(tokenizer)  # padded: the second sentence is longer
    mixed = TheseusModel(teacher, 3, replace_rate=0.0).train()
    assert torch.equal(logits(mixed, b), logits(teacher, b))
    assert mixed.last_replaced == [False] * 3 and mixed.step == 1
    full = TheseusModel(teacher, 3, init_layers=[1, 2, 5], replace_rate=1.0).train()
    successor = full.successor_model()
    assert torch.equal(logits(full, b), logits(successor, b))
    assert torch.equal(logits(full.eval(), b), logits(successor, b))  # eval: successors alone
    # at p = 1 it is the teacher with only layers 1, 2, 5
    assert torch.allclose(logits(successor, b), logits(make_student(teacher, [1, 2, 5]), b), atol=1e-6)
    # the frozen predecessor keeps eval mode in training
    assert not full.train().predecessor.bert.encoder.training and full.successors.training


def test_theseus_mixes_blocks_with_a_seeded_draw(teacher, tokenizer):
    b = batch(tokenizer)
    draws = []
    for _ in range(2):
        model = TheseusModel(teacher, 3, replace_rate=0.5, seed=7).train()
        seen = []
        for _ in range(6):
            model(**b)
            seen.append(tuple(model.last_replaced))
        draws.append(seen)
    assert draws[0] == draws[1]
    assert len(set(draws[0])) > 1  # the blocks are not all replaced together


def test_successor_model_round_trip(teacher, tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

    model = TheseusModel(teacher, 2)
    assert model.blocks == [[0, 1, 2], [3, 4, 5]] and model.init_layers == [0, 3]
    with torch.no_grad():
        model.successors[1].output.dense.bias.add_(0.5)  # as if trained
    successor = model.successor_model()
    assert type(successor) is BertForSequenceClassification and successor.config.num_hidden_layers == 2
    assert teacher.config.num_hidden_layers == 6 and len(model.predecessor.bert.encoder.layer) == 6
    successor.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    b = batch(tokenizer)
    assert torch.equal(logits(loaded, b), logits(successor, b))
    assert torch.equal(logits(loaded, b), logits(model.eval(), b))


def test_theseus_errors(teacher):
    with pytest.raises(CompressionError, match="deeper than the teacher"):
        TheseusModel(teacher, 7)
    with pytest.raises(CompressionError, match="num_successors"):
        TheseusModel(teacher, 0)
    with pytest.raises(CompressionError, match="init_layers must give one"):
        TheseusModel(teacher, 3, init_layers=[0, 1])
    with pytest.raises(CompressionError, match=r"init_layers must be in \[0, 6\)"):
        TheseusModel(teacher, 3, init_layers=[0, 2, 6])
    with pytest.raises(CompressionError, match="replace_rate"):
        TheseusModel(teacher, 3, replace_rate=-0.1)
    with pytest.raises(CompressionError, match="BertForSequenceClassification"):
        TheseusModel(torch.nn.Linear(2, 2), 3)


def test_theseus_compress_and_cache(teacher, tokenizer, train_ds, tmp_path, monkeypatch):
    import ufkit.compression.theseus as theseus
    from ufkit.cache import fingerprint_model

    before = fingerprint_model(teacher)
    small, history = theseus_compress(teacher, tokenizer, train_ds, num_successors=2, replace_rate=1.0,
                                      cfg=cfg(max_steps=2), progress=False)
    assert small.config.num_hidden_layers == 2 and history["replace_rates"] == [1.0, 1.0]
    assert history["blocks"] == [[0, 1, 2], [3, 4, 5]]
    train_cfg = cfg(max_steps=3, log_every=1)
    model, _, info = load_or_theseus(tmp_path / "theseus", teacher=teacher, tokenizer=tokenizer,
                                     train_ds=train_ds, num_successors=3, schedule=(0.25, 0.5), cfg=train_cfg,
                                     progress=False)
    assert fingerprint_model(teacher) == before  # the teacher is not touched
    assert model.config.num_hidden_layers == 3 and info["steps"] == 3
    assert info["replace_rates"] == pytest.approx([0.5, 0.75, 1.0])
    assert info["init_layers"] == [0, 2, 4] and math.isfinite(info["final_loss"])

    def no_training(*args, **kwargs):
        raise AssertionError("trained again although the cache was current")

    monkeypatch.setattr(theseus, "theseus_compress", no_training)
    again, _, info2 = load_or_theseus(tmp_path / "theseus", teacher=teacher, tokenizer=tokenizer,
                                      train_ds=train_ds, num_successors=3, schedule=(0.25, 0.5), cfg=train_cfg,
                                      progress=False)
    b = batch(tokenizer)
    assert info2["created"] == info["created"] and torch.equal(logits(again, b), logits(model, b))
    with pytest.raises(CompressionError, match="labels"):
        theseus.load_or_theseus(tmp_path / "other", teacher=teacher, tokenizer=tokenizer,
                                train_ds=unlabeled(train_ds), cfg=train_cfg)
