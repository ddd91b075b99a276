"""Quantization-aware architecture search (ufkit.nas) on tiny random BERTs: the space, slicing exactness, training,
save/load, latency tables, predictors and the evolutionary search."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ufkit import UfkitError
from ufkit.nas import (ARCH_FIELDS, ArchConfig, LinearLatencyPredictor, NasError, SearchSpace, SuperBert, archs_of,
                       SupernetTrainConfig, accuracy, baseline_archs, build_latency_dataset, build_model, fit_predictor,
                       linear_features, load_or_search, load_or_train, make_fitness, mape, time_architecture,
                       minilm_space, pareto_front, sample_archs, search, split_archs)
from ufkit.distill import kd_loss
from ufkit.measure import Timing
from ufkit.surgery import rewire

TEXTS = ["a great movie", "terrible , dull and far too long for what it is", "ok", "i loved it",
         "the plot is thin but the actors carry it with charm and wit", "no", "an utterly forgettable sequel",
         "funny , warm and sharp", "it is neither good nor bad , just there", "bad", "a small triumph",
         "two hours i will never get back"]
LABELS = [1, 0, 1, 1, 1, 0, 0, 1, 0, 0, 1, 0]


def _tiny_config(tiny_model_dir, attn="sdpa", layers=3, hidden=64, heads=2, intermediate=96):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads = layers, hidden, heads
    cfg.intermediate_size = intermediate
    cfg._attn_implementation = attn
    return cfg


def _teacher(tiny_model_dir, attn="sdpa", seed=0, **kw):
    """Hidden 64 in heads of 32 (as MiniLM's), 3 layers, intermediate 96, random weights."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(_tiny_config(tiny_model_dir, attn, **kw)).eval()


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def teacher(tiny_model_dir):
    return _teacher(tiny_model_dir)


@pytest.fixture(scope="module")
def space(teacher):
    return SearchSpace.from_config(teacher.config, intermediate_size=(32, 64, 96))


def _padded_batch(tok, texts=TEXTS):
    batch = dict(tok(list(texts), padding=True, return_tensors="pt"))
    assert (batch["attention_mask"] == 0).any()  # the batch really is padded
    return batch


def _dataset(texts=TEXTS, labels=LABELS):
    import datasets

    return datasets.Dataset.from_dict({"text": list(texts), "label": list(labels)})


# ---------------------------------------------------------------------------------------------- the space


def test_arch_config_validation():
    a = ArchConfig(4, 256, 768)
    assert a.num_attention_heads == 8 and a.short() == "L4-H256-F768"
    assert a.to_dict() == {"num_hidden_layers": 4, "hidden_size": 256, "intermediate_size": 768,
                           "num_attention_heads": 8}
    with pytest.raises(NasError, match="num_hidden_layers must be a positive integer"):
        ArchConfig(0, 256, 768)
    with pytest.raises(NasError, match="intermediate_size must be a positive integer"):
        ArchConfig(2, 256, 76.8)
    with pytest.raises(NasError, match="hidden_size must be a multiple of head_size=32"):
        ArchConfig(2, 100, 768)
    space = minilm_space()
    with pytest.raises(NasError, match=r"hidden_size=448 is not in the search space; allowed values: "
                                       r"\[128, 192, 256, 320, 384\]"):
        space.validate(ArchConfig(2, 448, 768))
    with pytest.raises(NasError, match=r"num_hidden_layers=7 .* allowed values: \[1, 2, 3, 4, 5, 6\]"):
        space.arch(7, 384, 1536)
    with pytest.raises(NasError, match="intermediate_size=700"):
        space.validate((2, 256, 700))
    with pytest.raises(NasError, match="head_size"):
        space.validate(ArchConfig(2, 256, 768, head_size=64))
    as_dict = {"num_hidden_layers": 2, "hidden_size": 256, "intermediate_size": 768}
    assert space.validate(as_dict) == ArchConfig(2, 256, 768)
    assert ArchConfig(2, 256, 768) in space and ArchConfig(2, 256, 700) not in space
    assert issubclass(NasError, UfkitError) and issubclass(NasError, ValueError)
    with pytest.raises(NasError, match="distinct and ascending"):
        SearchSpace((1, 2), (128, 64), (256,))


def test_default_space_over_minilm():
    from transformers import BertConfig

    cfg = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    space = SearchSpace.from_config(cfg)
    assert space == minilm_space() and len(space) == 330 == len(list(space))
    assert space.largest == ArchConfig(6, 384, 1536) and space.smallest == ArchConfig(1, 128, 256)
    assert SearchSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space
    with pytest.raises(NasError, match="exceed the base model's hidden_size=384"):
        SearchSpace.from_config(cfg, hidden_size=(128, 512))


def test_space_operators_stay_inside_and_are_seeded():
    space = minilm_space()
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(50)]
    assert all(a in space for a in archs) and len(set(archs)) > 20
    assert archs == [space.sample(r) for r in [np.random.default_rng(0)] for _ in range(50)]
    for a in archs[:20]:
        m = space.mutate(a, rng, rate=0.5)
        assert m in space and m != a
        c = space.crossover(a, m, rng)
        assert all(getattr(c, f) in (getattr(a, f), getattr(m, f)) for f in ARCH_FIELDS)
    only_depth = [space.mutate(a, rng, rate=0.0) for a in archs[:20]]  # rate 0 still changes one field
    assert all(sum(getattr(x, f) != getattr(a, f) for f in ARCH_FIELDS) == 1 for x, a in zip(only_depth, archs))
    with pytest.raises(NasError, match=r"rate must be in \[0, 1\]"):
        space.mutate(archs[0], rng, rate=1.5)


# ---------------------------------------------------------------------------------------- the super-model


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_extracted_model_equals_supernet_slice(tiny_model_dir, tok, attn):
    teacher = _teacher(tiny_model_dir, attn)
    space = SearchSpace.from_config(teacher.config)
    supernet = SuperBert(teacher, space)
    assert sorted(supernet.heads) == ["1", "2"]  # depth 3 uses the base model's own head
    batch = _padded_batch(tok)
    with torch.inference_mode():
        for p in supernet.heads.parameters():  # make the per-depth heads differ from the base model's
            p.normal_(0, 0.5)
        # the largest slice is the base model
        torch.testing.assert_close(supernet(**batch), teacher(**batch).logits, atol=1e-6, rtol=0)
        for arch in [space.largest, space.smallest, ArchConfig(2, 64, 40), ArchConfig(3, 32, 96),
                     ArchConfig(1, 64, 16)]:
            sub = supernet.extract(arch)
            assert type(sub).__name__ == "BertForSequenceClassification"
            assert (sub.config.num_hidden_layers, sub.config.hidden_size, sub.config.intermediate_size,
                    sub.config.num_attention_heads) == (arch.num_hidden_layers, arch.hidden_size,
                                                        arch.intermediate_size, arch.num_attention_heads)
            ref = supernet(**batch, arch=arch)
            torch.testing.assert_close(sub(**batch).logits, ref, atol=1e-5, rtol=0)
            # padding does not leak: each sentence alone gives the same logits as inside the padded batch
            one = dict(tok([TEXTS[4]], return_tensors="pt"))
            torch.testing.assert_close(supernet(**one, arch=arch)[0], ref[4], atol=1e-5, rtol=0)


def test_other_head_size(tiny_model_dir, tok):
    """The conftest model: hidden 32 in 4 heads of 8; the space follows the base config."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    supernet = SuperBert(model, head_per_depth=False)
    assert len(supernet.heads) == 0  # every depth reads the base model's head
    assert supernet.space.head_size == 8 and supernet.space.hidden_size == (16, 24, 32)
    batch = _padded_batch(tok)
    arch = supernet.space.arch(1, 24, supernet.space.intermediate_size[3])
    with torch.inference_mode():
        torch.testing.assert_close(supernet.extract(arch)(**batch).logits, supernet(**batch, arch=arch),
                                   atol=1e-5, rtol=0)


def test_extracted_model_round_trips_with_plain_transformers(tmp_path, teacher, space, tok):
    from transformers import AutoModelForSequenceClassification

    supernet = SuperBert(teacher, space)
    arch = ArchConfig(2, 32, 64)
    sub = supernet.extract(arch)
    sub.save_pretrained(tmp_path / "sub")
    files = {p.name for p in (tmp_path / "sub").iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "sub").eval()
    batch = _padded_batch(tok)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(**batch).logits, supernet(**batch, arch=arch), atol=1e-5, rtol=0)


def test_supernet_rejects_bad_input(teacher, space, tok):
    supernet = SuperBert(teacher, space)
    batch = _padded_batch(tok, TEXTS[:2])
    with pytest.raises(NasError, match=r"hidden_size=96 is not in the search space; allowed values: \[32, 64\]"):
        supernet(**batch, arch=ArchConfig(1, 96, 96))
    with pytest.raises(NasError, match=r"intermediate_size=40 is not in the search space; allowed values: "
                                       r"\[32, 64, 96\]"):
        supernet.extract(ArchConfig(1, 64, 40))
    with pytest.raises(NasError, match="needs a BertForSequenceClassification"):
        SuperBert(torch.nn.Linear(3, 3))
    with pytest.raises(NasError, match="exceeds the base model"):
        SuperBert(teacher, minilm_space())


def test_rewire_keeps_the_function(tiny_model_dir, tok):
    model = _teacher(tiny_model_dir, seed=3)
    with torch.no_grad():  # trained LayerNorms scale dimensions unequally; fresh ones (all 1) would tie
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.uniform_(0.5, 1.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = _padded_batch(tok)
    with torch.inference_mode():
        ref = model(**batch).logits
        rewire(model)
        torch.testing.assert_close(model(**batch).logits, ref, atol=1e-5, rtol=0)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any("intermediate" in k for k in changed) and any("query" in k for k in changed)
    assert any("word_embeddings" in k for k in changed)  # the hidden dimension was reordered too
    # the most important feedforward neuron now comes first
    layer = model.bert.encoder.layer[0]
    score = layer.intermediate.dense.weight.norm(dim=1) * layer.output.dense.weight.norm(dim=0)
    assert torch.all(score[:-1] >= score[1:])


def test_sandwich_training_reduces_distillation_loss(teacher, space, tok):
    supernet = SuperBert(teacher, space)
    before_teacher = {k: v.clone() for k, v in teacher.state_dict().items()}
    batch = _padded_batch(tok)
    probe = [space.smallest, ArchConfig(1, 64, 32), ArchConfig(2, 32, 96)]

    keep = batch["attention_mask"].unsqueeze(-1)

    def losses():
        """Distillation loss on the logits and on the hidden states, summed over the probe's sub-models."""
        kd, hid = 0.0, 0.0
        with torch.inference_mode():
            t = teacher(**batch, output_hidden_states=True)
            for a in probe:
                logits, states = supernet(**batch, arch=a, output_hidden=True)
                kd += kd_loss(logits, t.logits).item()
                hid += sum((((x - y[..., :a.hidden_size]) ** 2) * keep).sum().item()
                           for x, y in zip(states, t.hidden_states))
        return kd, hid

    kd0, hid0 = losses()
    cfg = SupernetTrainConfig(max_steps=30, batch_size=12, learning_rate=1e-3, warmup_ratio=0.0, n_random=1)
    hist = supernet.fit(teacher, tok, _dataset(), cfg, progress=False)
    assert hist["steps"] == 30 and set(hist["losses"]) == {"largest", "smallest", "random"}
    assert hist["head_warmup"]["steps"] == 300 and set(hist["head_warmup"]["final_loss"]) == {"1", "2"}
    kd1, _ = losses()
    assert kd1 < 0.5 * kd0, (kd0, kd1)
    # with the hidden-state term (and no head warm-up) the hidden states move towards the teacher's
    supernet = SuperBert(teacher, space)
    supernet.fit(teacher, tok, _dataset(), SupernetTrainConfig(max_steps=30, batch_size=12, learning_rate=1e-3,
                                                               warmup_ratio=0.0, n_random=1, hidden_weight=1.0,
                                                               head_warmup_texts=0), progress=False)
    _, hid1 = losses()
    assert hid1 < 0.95 * hid0, (hid0, hid1)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before_teacher.items())  # the teacher is untouched
    assert not supernet.training and kd_loss(torch.zeros(2, 2), torch.zeros(2, 2)).item() == 0.0
    with pytest.raises(NasError, match="alpha must be in"):
        supernet.fit(teacher, tok, _dataset(), SupernetTrainConfig(alpha=0.0), progress=False)


def test_supernet_save_load_and_cache(tmp_path, teacher, space, tok, monkeypatch):
    cfg = SupernetTrainConfig(max_steps=2, batch_size=6)
    net, info = load_or_train(tmp_path / "sn", teacher, tok, _dataset(), space=space, cfg=cfg, progress=False)
    files = {p.name for p in (tmp_path / "sn").iterdir()}
    assert {"model.safetensors", "config.json", "supernet_config.json", "supernet_heads.safetensors",
            "cache_info.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    assert info["steps"] == 2 and info["recipe"]["rewire"] is True
    loaded = SuperBert.from_pretrained(tmp_path / "sn")
    assert loaded.space == space
    batch = _padded_batch(tok)
    with torch.inference_mode():
        for arch in (space.largest, ArchConfig(2, 32, 64)):
            assert torch.equal(loaded(**batch, arch=arch), net(**batch, arch=arch))
    # a second call loads instead of training; another recipe trains again
    monkeypatch.setattr(SuperBert, "fit", lambda *a, **k: pytest.fail("trained although cached"))
    again, info2 = load_or_train(tmp_path / "sn", teacher, tok, _dataset(), space=space, cfg=cfg, progress=False)
    assert info2 == info
    with pytest.raises(pytest.fail.Exception, match="trained although cached"):
        load_or_train(tmp_path / "sn", teacher, tok, _dataset(), space=space,
                      cfg=SupernetTrainConfig(max_steps=3, batch_size=6), progress=False)
    with pytest.raises(NasError, match="not a super-model"):
        SuperBert.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------- latency


def test_latency_dataset(tmp_path, teacher, space, monkeypatch):
    archs = [space.largest, space.smallest, ArchConfig(2, 32, 64)]
    kw = dict(seq_len=16, threads=1, n_warmup=1, n_repeats=3, rounds=2, progress=False)
    df = build_latency_dataset(archs, teacher.config, path=tmp_path / "lat.csv", **kw)
    assert len(df) == 6 and set(df["quant"]) == {"fp32", "int8"} and (df["rounds"] == 2).all()
    assert [a.short() for a in archs_of(df)[::2]] == [a.short() for a in archs]  # in the order asked for
    assert (df["latency_ms_min"] <= df["latency_ms"]).all()
    for col in (*ARCH_FIELDS, "num_attention_heads", "quant", "seq_len", "batch_size", "threads", "latency_ms",
                "latency_ms_iqr", "cpu_model", "torch_version"):
        assert col in df.columns, col
    assert (df["latency_ms"] > 0).all() and (df["seq_len"] == 16).all() and (df["batch_size"] == 1).all()
    assert (tmp_path / "lat.csv").is_file() and (tmp_path / "lat.csv.json").is_file()
    # present and measured the same way: loaded, not measured again
    import ufkit.nas.latency as lat

    monkeypatch.setattr(lat, "time_architecture", lambda *a, **k: pytest.fail("measured although cached"))
    pd.testing.assert_frame_equal(build_latency_dataset(archs, teacher.config, path=tmp_path / "lat.csv", **kw), df)
    with pytest.raises(pytest.fail.Exception):
        build_latency_dataset(archs, teacher.config, path=tmp_path / "lat.csv", **{**kw, "seq_len": 8})


def test_latency_dataset_divides_out_drift(teacher, space, monkeypatch):
    """With a reference, each run is scaled by median(reference) / reference at that moment."""
    import ufkit.nas.latency as lat

    archs = [space.largest, space.smallest]
    # the machine gets twice as slow for the second architecture timed: reference and model alike
    speed = iter([1.0, 2.0])

    def drifting(fns, inputs, **kwargs):
        factor = next(speed)
        return Timing({k: np.full(len(inputs), (10.0 if k == "reference" else 4.0) * factor) for k in fns})

    monkeypatch.setattr(lat, "time_calls", drifting)
    df = build_latency_dataset(archs, teacher.config, quant="fp32", seq_len=8, threads=1, n_warmup=0, n_repeats=2,
                               reference=ArchConfig(1, 32, 32), progress=False)
    assert sorted(df["latency_ms_raw"]) == [4.0, 8.0]
    assert np.allclose(df["latency_ms"], 4.0 * 15.0 / 10.0)  # both scaled to the reference's median, 15 ms
    assert sorted(df["reference_ms"]) == [10.0, 20.0]


def test_time_architecture_and_int8_model(teacher, space):
    q = build_model(ArchConfig(1, 32, 32), teacher.config, "int8")
    assert any("quantized" in type(m).__module__ for m in q.modules())
    df = time_architecture(ArchConfig(1, 32, 32), SuperBert(teacher, space), quant="fp32", seq_len=8, threads=1,
                         n_warmup=0, n_repeats=2)
    assert len(df) == 1 and df.loc[0, "quant"] == "fp32" and df.loc[0, "latency_ms"] > 0
    with pytest.raises(NasError, match="quant must be one of"):
        time_architecture(space.smallest, teacher.config, quant="int4")
    with pytest.raises(NasError, match="seq_len must be an integer >= 1"):
        time_architecture(space.smallest, teacher.config, seq_len=0)
    with pytest.raises(NasError, match="exceeds the model's max_position_embeddings"):
        time_architecture(space.smallest, teacher.config, seq_len=10_000)
    assert len(sample_archs(space, 4)) == 4 and sample_archs(space, 4)[:2] == [space.largest, space.smallest]


def _synthetic_table(space, coef, quant="int8", seq_len=128):
    archs = list(space)
    df = pd.DataFrame([a.to_dict() for a in archs])
    df["latency_ms"] = linear_features(archs) @ coef
    df["quant"], df["seq_len"], df["batch_size"], df["threads"] = quant, seq_len, 1, 1
    return df


COEF = np.array([2e-7, 1.5e-7, 3e-5, 2e-6, 0.3, 1e-7, 1e-4, 0.5])  # ms per unit of each FLOP-like feature


def test_linear_predictor_is_exact_on_linear_data():
    df = _synthetic_table(minilm_space(), COEF)
    train, test = split_archs(df, test_fraction=0.3, seed=1)
    assert len(train) + len(test) == len(df) and not set(map(tuple, train[list(ARCH_FIELDS)].values)) & set(
        map(tuple, test[list(ARCH_FIELDS)].values))
    pred = fit_predictor(train, "linear", quant="int8")
    assert isinstance(pred, LinearLatencyPredictor) and pred.seq_len == 128
    np.testing.assert_allclose(pred.coef, COEF, rtol=1e-6)
    assert mape(pred, test) < 1e-6
    assert pred(ArchConfig(6, 384, 1536)) == pytest.approx((linear_features([ArchConfig(6, 384, 1536)]) @ COEF)[0])
    with pytest.raises(NasError, match="no rows with quant='fp32'"):
        fit_predictor(train, "linear", quant="fp32")
    with pytest.raises(NasError, match="kind must be 'mlp' or 'linear'"):
        fit_predictor(train, "forest")
    with pytest.raises(NasError, match="no column 'latency_ms_p99'"):
        fit_predictor(train, "linear", column="latency_ms_p99")


def test_mlp_predictor_learns_a_smooth_surface():
    df = _synthetic_table(minilm_space(), COEF)
    train, test = split_archs(df, test_fraction=0.2, seed=0)
    pred = fit_predictor(train, "mlp", quant="int8", steps=300, seed=0)
    assert mape(pred, test) < 3.0
    again = fit_predictor(train, "mlp", quant="int8", steps=300, seed=0)
    np.testing.assert_array_equal(pred.predict(test), again.predict(test))  # seeded


# ----------------------------------------------------------------------------------------------- search


def _toy_fitness(arch):
    """Deterministic: bigger is better, with diminishing returns in depth and a preference for wide hidden sizes."""
    return 80 + 3 * np.log(arch.num_hidden_layers) + arch.hidden_size / 64 + arch.intermediate_size / 1024


def test_search_respects_the_window_and_is_reproducible():
    space = minilm_space()
    pred = LinearLatencyPredictor("int8", 128, 1, 1)
    pred.coef = COEF
    target = float(np.median(pred.predict(list(space))))
    calls = []

    def fitness(a):
        calls.append(a)
        return _toy_fitness(a)

    res = search(fitness, pred, target, space, population=8, generations=5, seed=3, progress=False)
    lo, hi = 0.85 * target, 1.1 * target
    assert res.window_ms == pytest.approx((lo, hi))
    h = res.history
    assert set(h["generation"]) == set(range(6)) and (h.groupby("generation").size() <= 8).all()
    assert h["predicted_latency_ms"].between(lo, hi).all()
    assert len(calls) == len(set(calls)) == res.n_evaluations  # fitness computed once per architecture
    best_per_gen = h.groupby("generation")["fitness"].max()
    assert (best_per_gen.diff().dropna() >= 0).all()  # elitist
    assert res.best_fitness == h["fitness"].max() and lo <= pred(res.best) <= hi
    top = res.top(3)
    assert len(top) == 3 and top.loc[0, "fitness"] == res.best_fitness
    # the same seed gives the same run; another seed another
    again = search(_toy_fitness, pred, target, space, population=8, generations=5, seed=3, progress=False)
    pd.testing.assert_frame_equal(again.history, h)
    other = search(_toy_fitness, pred, target, space, population=8, generations=5, seed=4, progress=False)
    assert not other.history.equals(h)
    # exhaustive check: the search found the best architecture inside the window
    inside = [a for a in space if lo <= pred(a) <= hi]
    assert res.best_fitness >= max(map(_toy_fitness, inside)) - 1.0


def test_search_cache_and_saved_result(tmp_path):
    space = minilm_space()
    pred = LinearLatencyPredictor("int8", 128, 1, 1)
    pred.coef = COEF
    target = float(np.median(pred.predict(list(space))))
    kw = dict(population=6, generations=2, seed=0, progress=False)
    cache = {}
    first = search(_toy_fitness, pred, target, space, cache=cache, **kw)
    assert first.n_evaluations == len(cache) > 0
    again = search(lambda a: pytest.fail("evaluated although cached"), pred, target, space, cache=cache, **kw)
    assert again.n_evaluations == 0 and again.best == first.best
    pd.testing.assert_frame_equal(again.history, first.history)
    path = tmp_path / "search.csv"
    saved = load_or_search(path, _toy_fitness, pred, target, space, key={"supernet": "a"}, **kw)
    loaded = load_or_search(path, lambda a: pytest.fail("searched although saved"), pred, target, space,
                            key={"supernet": "a"}, **kw)
    assert loaded.best == saved.best == first.best and loaded.best_fitness == saved.best_fitness
    pd.testing.assert_frame_equal(loaded.history, saved.history, check_dtype=False)
    with pytest.raises(pytest.fail.Exception):  # another key: searched again
        load_or_search(path, lambda a: pytest.fail("searched"), pred, target, space, key={"supernet": "b"}, **kw)


def test_search_errors():
    space = minilm_space()
    pred = LinearLatencyPredictor("int8", 128, 1, 1)
    pred.coef = COEF
    with pytest.raises(NasError, match=r"no architecture has a predicted latency in .* span \["):
        search(_toy_fitness, pred, 0.01, space, population=4, generations=1, progress=False)
    for kwargs, msg in ((dict(target_ms=-1.0), "target_ms must be a positive"),
                        (dict(target_ms=float("nan")), "target_ms must be a positive"),
                        (dict(window=(1.1, 0.85)), "window must be"), (dict(population=1), "population must be"),
                        (dict(explore_rate=2.0), "explore_rate must be in")):
        args = {"target_ms": 10.0, **kwargs}
        with pytest.raises(NasError, match=msg):
            search(_toy_fitness, pred, args.pop("target_ms"), space, progress=False, **args)


def test_baselines_and_pareto_front():
    space = minilm_space()
    b = baseline_archs(space)
    assert list(b["family"]).count("depth") == 6 and list(b["family"]).count("width") == 5
    assert all(a in space for a in b["arch"])
    depth3 = b.set_index("name").loc["depth 3", "arch"]
    assert depth3 == ArchConfig(3, 384, 1536)
    assert b.set_index("name").loc["width 192", "arch"] == ArchConfig(6, 192, 768)  # half the width, half the FFN
    assert (b.groupby("family")["arch"].apply(lambda s: space.largest in set(s))).all()
    mask = pareto_front([1, 2, 3, 2.5, 4], [80, 85, 84, 86, 86])
    assert mask.tolist() == [True, True, False, True, False]


def test_fitness_is_int8_accuracy(teacher, space, tok):
    supernet = SuperBert(teacher, space)
    ds = _dataset()
    fit = make_fitness(supernet, tok, ds)
    arch = ArchConfig(2, 32, 64)
    acc = fit(arch)
    assert 0.0 <= acc <= 100.0 and acc == fit(arch)
    from ufkit.quantization import quantize_int8

    assert acc == accuracy(quantize_int8(supernet.extract(arch)), tok, ds)
    fp = make_fitness(supernet, tok, ds, quant="fp32")(arch)
    assert fp == accuracy(supernet.extract(arch), tok, ds)
    with pytest.raises(NasError, match="labeled"):
        make_fitness(supernet, tok, _dataset(labels=[-1] * len(TEXTS)))
