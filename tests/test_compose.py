"""Composed recipes (``ufkit.compose``) and ``ufkit optimize`` on the tiny random classifier of conftest.py (hidden 32,
2 layers): a recipe equals its steps applied by hand, the cache is reused only for the same prefix and inputs, steps
that do not compose are refused with the reason, the search keeps its budget on held-out sentences and returns a
front, and the command writes a loadable model and its report, for SST-2-like data and any CSV/TSV."""

from __future__ import annotations

import copy
import json

import datasets
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import save_tiny_classifier
from test_cli import assert_one_line_error, cli
from ufkit import compose as C
from ufkit.compose import ComposeError, Recipe

TEXTS = [f"a {'good' if i % 2 else 'bad'} {'long ' * (i % 5)}movie number {i}" for i in range(40)]
SETTINGS = C.TrainSettings(max_steps=2, batch_size=8, n_importance=16, n_stats=16, mixed_precision="no")


pytestmark = pytest.mark.usefixtures("one_thread", "no_loading_bars")
datasets.disable_progress_bar()  # no mapping bars either (ufkit's main silences them; the tests skip main)


@pytest.fixture(scope="module")
def teacher(tiny_model_dir):
    from ufkit.models import load_model

    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def data():
    """``(train, heldout, dev)``: 24, 8 and 8 labeled sentences."""
    ds = datasets.Dataset.from_dict({"text": TEXTS, "label": [i % 2 for i in range(len(TEXTS))]})
    return ds.select(range(24)), ds.select(range(24, 32)), ds.select(range(32, 40))


def cheap(artifact, *, heldout_ds, dev_ds=None, threads=None):
    """A measurement that costs nothing: accuracy only."""
    return {"heldout_accuracy": C.accuracy(artifact, heldout_ds)}


def logits(model, tokenizer, texts=TEXTS[:6]):
    batch = dict(tokenizer(list(texts), padding=True, return_tensors="pt"))
    with torch.no_grad():
        out = model(**batch)
    return out.logits


# ---- a recipe is its steps ---------------------------------------------------------------------------------------


def test_two_step_recipe_equals_the_steps_by_hand(teacher, data, tmp_path):
    from ufkit.compression.distillation import DistillConfig, distill, teacher_logits
    from ufkit.compression.structured import prune_by_importance
    from ufkit.data import subset
    from ufkit.surgery import truncate_layers

    model, tokenizer = teacher
    train, heldout, dev = data
    recipe = Recipe("prune-then-truncate", (C.prune(heads=0.5, neurons=0.5), C.truncate(1)))
    run = C.run_recipe(recipe, model, tokenizer, train, heldout, dev, tmp_path / "cache", settings=SETTINGS,
                       measure=cheap, threads=1, progress=False)
    assert [s.label for s in run.steps] == ["prune-h50-n50", "prune-h50-n50 → truncate-1"]
    assert [s.state for s in run.steps] == ["pruned", "pruned"] and run.error is None

    # by hand, with the chapter functions
    texts = subset(train, 16, seed=43)
    pruned, _ = prune_by_importance(copy.deepcopy(model), tokenizer, list(texts["text"]), head_ratio=0.5,
                                    neuron_ratio=0.5, labels=list(texts["label"]), n_samples=16)
    cfg = DistillConfig(epochs=1.0, max_steps=2, batch_size=8, learning_rate=1e-4, seed=42, warmup_ratio=0.1,
                        mixed_precision="no", temperature=2.0, alpha=0.8)
    pruned, _ = distill(pruned, model, tokenizer, train, cfg,
                        teacher_logits=teacher_logits(model, tokenizer, list(train["text"])), progress=False)
    by_hand = truncate_layers(pruned.eval(), 1)

    expected = logits(by_hand, tokenizer)
    torch.testing.assert_close(logits(run.final, tokenizer), expected, rtol=0, atol=1e-6)
    # the cached folder holds the same model, and reloads as the same artifact
    again = C.load_artifact(run.steps[-1].path)
    assert again.state == "pruned" and again.num_layers == 1
    torch.testing.assert_close(logits(again, tokenizer), expected, rtol=0, atol=1e-6)
    assert not torch.equal(logits(model, tokenizer), expected)


def test_the_cache_is_reused_only_for_the_same_prefix_and_inputs(teacher, data, tmp_path, monkeypatch):
    import ufkit.compose.run as R

    made = []
    real = R.apply_step

    def counting(step, artifact, **kw):
        made.append(step.label)
        return real(step, artifact, **kw)

    monkeypatch.setattr(R, "apply_step", counting)
    model, tokenizer = teacher
    train, heldout, dev = data

    def run(recipe, teacher_model=model, train_ds=train):
        made.clear()
        out = C.run_recipe(recipe, teacher_model, tokenizer, train_ds, heldout, dev, tmp_path / "cache",
                           settings=SETTINGS, measure=cheap, threads=1, progress=False)
        return list(made), out

    r1 = Recipe("r1", (C.truncate(1), C.prune(heads=0.5, recover=False)))
    assert run(r1)[0] == ["truncate-1", "prune-h50-nokd"]
    calls, out = run(r1)
    assert calls == [] and all(s.reused for s in out.steps)
    # another recipe with the same first step: only its own second step is made
    assert run(Recipe("r2", (C.truncate(1), C.distil(1))))[0] == ["distil-1"]
    # the same step behind another prefix is another model
    assert run(Recipe("r3", (C.prune(heads=0.5, recover=False),)))[0] == ["prune-h50-nokd"]
    # other training sentences: the pruning (its importance reads them) is made again, the truncation is not
    assert run(r1, train_ds=train.select(range(20)))[0] == ["prune-h50-nokd"]
    # another teacher: everything is made again
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.classifier.bias.add_(0.5)
    assert run(r1, teacher_model=other)[0] == ["truncate-1", "prune-h50-nokd"]
    # training settings re-make the steps that read them only
    def run_with(**over):
        made.clear()
        C.run_recipe(r1, model, tokenizer, train, heldout, dev, tmp_path / "cache", measure=cheap, threads=1,
                     settings=C.TrainSettings(**{**SETTINGS.recipe(), **over}), progress=False)
        return list(made)

    assert run_with(max_steps=3) == []  # no step of r1 distils
    assert run_with(n_importance=8) == ["prune-h50-nokd"]
    assert len(list((tmp_path / "cache").glob("truncate-1-*"))) == 2  # one folder per teacher


def test_a_recipe_can_start_from_another_model(teacher, data, tmp_path):
    """``Composer.run(start=...)`` runs a recipe on another chapter's model: its steps equal the same steps by hand
    from that model, its folders are its own, and a step that does not take the start's state is refused."""
    from ufkit.compose.steps import apply_step, as_artifact

    model, tokenizer = teacher
    train, heldout, dev = data
    composer = C.Composer(model, tokenizer, train, heldout, dev, tmp_path / "cache", settings=SETTINGS,
                          measure=cheap, threads=1, progress=False)
    pruned = apply_step(C.prune(heads=0.5, recover=False), as_artifact(model, tokenizer), train_ds=train,
                        settings=SETTINGS, progress=False)
    run = composer.run(Recipe("t", (C.truncate(1),)), start=pruned, start_label="ch3 student")
    assert [r.label for r in run.steps] == ["ch3 student → truncate-1"]
    assert run.final.model.config.num_hidden_layers == 1
    assert run.final.state == "pruned"
    from_teacher = composer.run(Recipe("t", (C.truncate(1),)))
    assert from_teacher.steps[0].path != run.steps[0].path  # one folder per starting model
    assert not torch.allclose(logits(run.final.model, tokenizer), logits(from_teacher.final.model, tokenizer))
    with pytest.raises(ComposeError, match="cannot run on a runtime model|must be a PyTorch classifier"):
        composer.run(Recipe("t", (C.truncate(1),)), start=C.steps.Artifact(None, tokenizer, "runtime"))
    fff_start = C.steps.Artifact(model, tokenizer, "pruned")
    with pytest.raises(ComposeError, match="FFF and pruning do not compose"):
        composer.run(Recipe("f", (C.fff(1),)), start=fff_start)


# ---- what does not compose ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps, fragment", [
    ([C.quantize("onnx_fp32"), C.distil(1)], "quantize must be the last step"),
    ([C.exits(), C.quantize()], "Python control flow"),
    ([C.exits(), C.truncate(1)], "exits must be the last step"),
    ([C.fff(2), C.distil(1)], "config.ufkit_fff"),
    ([C.fff(2), C.truncate(1)], "truncate before converting"),
    ([C.fff(2), C.prune(heads=0.5)], "fast feedforward layers do not have"),
    ([C.prune(heads=0.5), C.fff(2)], "converts only unpruned models"),
    ([C.fff(2), C.fff(2)], "fast feedforward layers already"),
])
def test_steps_that_do_not_compose(steps, fragment):
    with pytest.raises(ComposeError, match="cannot run") as e:
        Recipe("bad", tuple(steps))
    assert fragment in str(e.value)


def test_the_rules_say_what_each_step_leaves():
    assert C.check_steps([C.distil(3), C.prune(heads=0.5), C.quantize()]) == ["dense", "pruned", "runtime"]
    assert C.check_steps([C.fff(3), C.exits()]) == ["fff", "exits"]
    assert C.check_steps([C.truncate(2)], start="pruned") == ["pruned"]
    for recipe in C.DEFAULT_RECIPES.values():  # every default recipe composes (checked when made)
        assert recipe.steps and recipe.name


@pytest.mark.parametrize("make, fragment", [
    (lambda: C.prune(heads=1.5), "heads must be a fraction"),
    (lambda: C.prune(), "give heads or neurons"),
    (lambda: C.Step("sparsify"), "unknown step kind"),
    (lambda: C.distil(0), "positive number of layers"),
    (lambda: C.distil([0, 0]), "distinct"),
    (lambda: C.truncate(1, foo=2), "unknown setting(s) foo"),
    (lambda: C.quantize("int4"), "unknown variant"),
    (lambda: C.fff(0), "depth must be an integer"),
    (lambda: C.exits(budget=-1), "non-negative"),
    (lambda: C.distil(2, max_steps=0), "max_steps must be a positive integer"),
    (lambda: C.exits(max_steps=2), "unknown setting(s) max_steps"),
    (lambda: Recipe("empty", ()), "has no steps"),
    (lambda: Recipe("two words", (C.distil(1),)), "recipe name"),
    (lambda: C.parse_recipe("nope"), "unknown recipe 'nope'"),
    (lambda: C.parse_recipe("distil:3+sparsify:0.5"), "unknown step 'sparsify'"),
    (lambda: C.parse_recipe("distil:3:2"), "only the first value may be unnamed"),
])
def test_bad_steps_and_recipes(make, fragment):
    with pytest.raises(ComposeError) as e:
        make()
    assert fragment in str(e.value)


def test_every_quantization_variant_has_a_label():
    from ufkit.compose.recipe import VARIANT_LABELS
    from ufkit.quantization import VARIANTS

    assert list(VARIANT_LABELS) == list(VARIANTS)
    assert len(set(VARIANT_LABELS.values())) == len(VARIANT_LABELS)


def test_recipe_syntax():
    r = C.parse_recipe("distil:0/2/4:epochs=2+prune:heads=0.5:neurons=0.25+int8")
    assert [s.to_dict() for s in r.steps] == [
        {"kind": "distil", "layers": [0, 2, 4], "epochs": 2},
        {"kind": "prune", "heads": 0.5, "neurons": 0.25, "recover": True},
        {"kind": "quantize", "variant": "onnx_int8_dynamic_per_channel", "budget": None}]
    assert r.label == "distil-0.2.4 → prune-h50-n25 → int8"
    assert C.parse_recipe("distil3-int8") is C.DEFAULT_RECIPES["distil3-int8"]
    assert C.parse_step("truncate:2:recover=true").settings == {"layers": 2, "recover": True}
    assert C.parse_step("exits:budget=0.5").label == "exits-b0.5"
    assert C.Step.from_dict(r.steps[0].to_dict()) == r.steps[0]
    ts = SETTINGS.for_step(C.exits(epochs=3, learning_rate=0.01))
    assert (ts.exit_epochs, ts.exit_learning_rate, ts.epochs) == (3, 0.01, SETTINGS.epochs)
    assert SETTINGS.for_step(r.steps[0]).epochs == 2
    json.dumps(r.to_dict())  # JSON-serialisable


def test_steps_the_model_cannot_take_at_run_time(teacher, data, tmp_path):
    from ufkit.compose.steps import as_artifact
    from ufkit.compression.structured import prune

    model, tokenizer = teacher
    train, heldout, dev = data

    def run(*steps):
        return C.run_recipe(Recipe("r", steps), model, tokenizer, train, heldout, dev, tmp_path / "cache",
                            settings=SETTINGS, measure=cheap, threads=1, progress=False)

    with pytest.raises(ComposeError, match="cannot be deeper than its 2-layer input"):
        run(C.distil(3))
    with pytest.raises(ComposeError, match="layer indices \\[5\\] do not exist"):
        run(C.distil([0, 5]))
    with pytest.raises(ComposeError, match="one-layer model has no layer to exit after"):
        run(C.truncate(1), C.exits())
    with pytest.raises(ComposeError, match="step fff-d2w64: .*do not fit"):
        run(C.fff(2, leaf_width=64))
    pruned = prune(copy.deepcopy(model), heads=[[0, 1], [0, 1]])
    with pytest.raises(ComposeError, match="cannot take a pruned model: ufkit.ultrafastbert.convert converts only"):
        C.apply_step(C.fff(2), as_artifact(pruned, tokenizer), train_ds=train, progress=False)
    with pytest.raises(ComposeError, match="heldout_ds has unlabeled rows"):
        C.run_recipe(Recipe("r", (C.truncate(1),)), model, tokenizer, train,
                     heldout.map(lambda r: {"label": -1}), None, tmp_path / "cache", measure=cheap)


# ---- the search --------------------------------------------------------------------------------------------------


def fake_measure(artifact, *, heldout_ds, dev_ds=None, threads=None):
    """Made-up measurements by what a model is: a layer less costs 2 points and halves the latency, pruning costs
    1.5 points and 30 % of the latency. Dev accuracy is far worse for the 1-layer models: a search that looked at it
    would choose otherwise."""
    layers, pruned = artifact.num_layers, artifact.state == "pruned"
    acc = 90.0 - 2.0 * (2 - layers) - (1.5 if pruned else 0.0)
    latency = 5.0 * layers * (0.7 if pruned else 1.0)
    return {"heldout_accuracy": acc, "dev_accuracy": acc - (20.0 if layers == 1 else 0.0), "latency_ms": latency,
            "throughput_seq_per_s": 1e3 / latency, "size_mb": 4.0 * layers, "flops_per_sample": 1e5 * layers}


def test_search_keeps_the_budget_on_heldout_sentences_and_returns_a_front(teacher, data, tmp_path):
    model, tokenizer = teacher
    train, heldout, dev = data
    recipes = [Recipe("a", (C.truncate(1),)), Recipe("b", (C.prune(heads=0.5, recover=False),)),
               Recipe("c", (C.prune(heads=0.5, recover=False), C.truncate(1))), Recipe("d", (C.distil(5),))]
    result = C.search(recipes, model, tokenizer, train, heldout, dev, tmp_path / "cache", budget=2.0,
                      objective="latency", settings=SETTINGS, measure=fake_measure, threads=1, progress=False)
    # teacher 90 % / 10 ms; a: 88 / 5; b: 88.5 / 7; c: 86.5 / 3.5; d stopped
    assert result.chosen["label"] == "truncate-1" and result.chosen["heldout_drop"] == pytest.approx(2.0)
    assert result.chosen["dev_drop"] == pytest.approx(22.0)  # dev was measured, not used to choose
    assert "truncate-1 is the best on latency per call at batch 1" in result.reason
    assert len(result.table) == 5 and len(result.candidates) == 4  # b and c share their first step
    shared = result.candidates.set_index("label").loc["prune-h50-nokd", "recipes"]
    assert shared == ["b", "c"]
    assert list(result.front["label"]) == ["prune-h50-nokd → truncate-1", "truncate-1", "prune-h50-nokd", "teacher"]
    within = result.candidates.set_index("label")["within_budget"].to_dict()
    assert within == {"teacher": True, "truncate-1": True, "prune-h50-nokd": True,
                      "prune-h50-nokd → truncate-1": False}
    assert result.runs[3].error and "deeper" in result.runs[3].error and result.runs[3].steps == []
    # other budgets and objectives on the same runs
    from ufkit.compose.search import summarize as tight

    assert tight(result.teacher, result.runs, budget=1.0, objective="latency").chosen["label"] == "teacher"
    assert tight(result.teacher, result.runs, budget=4.0, objective="latency").chosen["label"] == \
        "prune-h50-nokd → truncate-1"
    assert tight(result.teacher, result.runs, budget=2.0, objective="size").chosen["label"] == "truncate-1"
    assert tight(result.teacher, result.runs, budget=2.0, objective="throughput").chosen["label"] == "truncate-1"
    # the report
    paths = C.write_report(result, tmp_path / "out", model="tiny")
    report = json.loads(paths["json"].read_text())
    assert report["chosen"]["label"] == "truncate-1" and report["model"] == "tiny"
    assert [r["name"] for r in report["recipes"]] == ["a", "b", "c", "d"]
    assert report["recipes"][2]["results"][1]["label"] == "prune-h50-nokd → truncate-1"
    assert report["budget_check_on_dev"]["difference"] == pytest.approx(20.0)
    assert "| truncate-1 |" in paths["md"].read_text() and paths["png"].stat().st_size > 1000
    for budget, objective, fragment in ((0, "latency", "budget must be a positive"),
                                        (1.0, "speed", "objective must be one of")):
        with pytest.raises(ComposeError, match=fragment):
            C.search(recipes, model, tokenizer, train, heldout, dev, tmp_path / "cache", budget=budget,
                     objective=objective, measure=fake_measure)


def test_pareto_front():
    df = pd.DataFrame({"heldout_accuracy": [90, 88, 88, 85, 91, np.nan], "latency_ms": [10, 5, 6, 5, 20, 1]})
    assert C.pareto_front(df, "latency_ms").tolist() == [True, True, False, False, True, False]
    assert C.pareto_front(df.assign(t=1 / df["latency_ms"]), "t", "max").tolist() == \
        [True, True, False, False, True, False]


def test_the_default_measurement(teacher, data, tmp_path):
    """Measurer through the one measurement layer: accuracies, FLOPs, latencies, size; a runtime variant takes its
    input's FLOPs; measurements kept in a results store are reused."""
    from ufkit.measure import ResultsStore

    model, tokenizer = teacher
    train, heldout, dev = data
    m = C.Measurer(n_timed=4, throughput_batch_size=2, n_warmup=0, n_flops=2)
    store = ResultsStore(tmp_path / "store")
    run = C.run_recipe(Recipe("r", (C.truncate(1), C.quantize("onnx_fp32"))), model, tokenizer, train, heldout,
                       dev, tmp_path / "cache", settings=SETTINGS, measure=m, threads=1, store=store,
                       progress=False)
    first, second = (s.measurement for s in run.steps)
    for row in (first, second):
        assert 0 <= row["heldout_accuracy"] <= 100 and 0 <= row["dev_accuracy"] <= 100
        assert row["latency_ms"] > 0 and row["throughput_seq_per_s"] > 0 and row["size_mb"] > 0
        assert row["n_heldout"] == 8 and row["n_dev"] == 8 and row["throughput_batch_size"] == 2
    assert second["flops_per_sample"] == first["flops_per_sample"] > 0
    assert run.steps[1].state == "runtime" and run.steps[1].path.name.startswith("truncate-1__onnx-fp32")
    n_rows = len(store.read("compose"))
    assert n_rows == 3  # the teacher and two steps
    C.run_recipe(Recipe("r", (C.truncate(1), C.quantize("onnx_fp32"))), model, tokenizer, train, heldout, dev,
                 tmp_path / "cache", settings=SETTINGS, measure=m, threads=1, store=store, progress=False)
    assert len(store.read("compose")) == n_rows  # nothing measured twice


# ---- the command line --------------------------------------------------------------------------------------------


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UFKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cli_optimize_writes_a_model_and_its_report(tiny_model_dir, tiny_tsv_dir, tmp_path, cache):
    out = tmp_path / "opt"
    args = ["optimize", "--model", tiny_model_dir, "--data", tiny_tsv_dir, "--recipes",
            "truncate:1+onnx-fp32,int8", "--n-train", "4", "--n-heldout", "4", "--threads", "1", "--n-timed", "4",
            "--budget", "100", "--objective", "size", "--output", out]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    assert "chosen:" in r.stdout and "report in" in r.stdout
    for name in ("report.json", "report.md", "pareto.png", "model"):
        assert (out / name).exists(), name
    report = json.loads((out / "report.json").read_text())
    assert [x["name"] for x in report["recipes"]] == ["truncate:1+onnx-fp32", "int8"]
    assert [x["label"] for x in report["recipes"][0]["results"]] == ["truncate-1", "truncate-1 → onnx-fp32"]
    for x in report["recipes"][0]["results"]:
        assert {"heldout_accuracy", "dev_accuracy", "flops_per_sample", "latency_ms", "throughput_seq_per_s",
                "size_mb", "within_budget", "on_front"} <= set(x)
    assert report["chosen"]["label"] == "int8"  # the smallest, and a 100-point budget keeps everything
    assert (report["n_train"], report["n_heldout"], report["n_calibration"], report["n_dev"]) == (4, 4, 4, 4)
    assert report["front"] and report["reason"]
    # the chosen model loads in `ufkit evaluate` and `ufkit benchmark`
    assert (out / "model" / "onnx_int8_dynamic_per_channel" / "ufkit_variant.json").is_file()
    r = cli("evaluate", "--model", out / "model", "--data", tiny_tsv_dir, "--threads", "1")
    assert r.exit_code == 0, r.output
    r = cli("benchmark", "--model", out / "model", "--data", tiny_tsv_dir, "--threads", "1", "-b", "1",
            "--warmup", "0", "--iters", "2", "--output", tmp_path / "bench")
    assert r.exit_code == 0, r.output
    # a second run into the same folder needs --resume; with it, every step and measurement is reused
    assert_one_line_error(cli(*args), "--output", "is not empty", "--resume")
    r = cli(*args, "--resume")
    assert r.exit_code == 0, r.output
    assert "making" not in r.stderr and "measuring" not in r.stderr
    report = json.loads((out / "report.json").read_text())
    assert all(x["reused"] for rec in report["recipes"] for x in rec["results"])


def test_cli_optimize_any_tsv_with_text_and_label_columns(tmp_path, cache):
    """A TREC-like task: a single TSV with a text and a label column, three classes."""
    classes = ["HUM", "LOC", "NUM"]
    model_dir = save_tiny_classifier(tmp_path / "trec-model", classes)
    rows = ["text\tlabel"] + [f"{q} question number {i} ?\t{classes[i % 3]}"
                              for i, q in zip(range(30), ["who", "where", "how many"] * 10)]
    (tmp_path / "trec.tsv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "opt"
    r = cli("optimize", "--model", model_dir, "--data", tmp_path / "trec.tsv", "--text-column", "text",
            "--recipes", "truncate:1", "--n-heldout", "3", "--n-train", "10", "--objective", "size", "--threads", "1",
            "--n-timed", "3", "--output", out)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["label_names"] == classes and report["n_dev"] == 3  # 10 % of the file is the dev split
    assert report["chosen"]["label"] in ("teacher", "truncate-1")
    assert (out / "model" / "config.json").is_file()
    r = cli("evaluate", "--model", out / "model", "--data", tmp_path / "trec.tsv", "--text-column", "text")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("extra, fragments", [
    (["--budget", "0"], ["--budget must be a positive number", "got 0"]),
    (["--budget", "-1"], ["--budget must be a positive number"]),
    (["--objective", "speed"], ["--objective must be one of latency, throughput, size", "'speed'"]),
    (["--recipes", "int8,nope"], ["--recipes: unknown recipe 'nope'"]),
    (["--recipes", "int8+distil:1"], ["--recipes:", "quantize must be the last step"]),
    (["--recipes", "int8,int8"], ["--recipes names 'int8' twice"]),
    (["--n-heldout", "0"], ["--n-heldout must be a positive integer"]),
    (["--n-heldout", "6"], ["--n-heldout 6: the training split has 12 sentences"]),
])
def test_cli_optimize_bad_input_one_line(extra, fragments, tiny_model_dir, tiny_tsv_dir, tmp_path, cache):
    r = cli("optimize", "--model", tiny_model_dir, "--data", tiny_tsv_dir, "--output", tmp_path / "o", *extra)
    assert_one_line_error(r, *fragments)


def test_cli_optimize_refuses_data_without_labels(tiny_model_dir, tmp_path, cache):
    (tmp_path / "texts.csv").write_text("sentence\n" + "\n".join(f"sentence {i}" for i in range(20)) + "\n")
    r = cli("optimize", "--model", tiny_model_dir, "--data", tmp_path / "texts.csv", "--output", tmp_path / "o")
    assert_one_line_error(r, "label")
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "x").write_text("")
    r = cli("optimize", "--model", tiny_model_dir, "--output", tmp_path / "o2" / "x")
    assert_one_line_error(r, "is a file")


def test_an_early_exit_folder_runs_its_exits_in_evaluate_and_benchmark(teacher, data, tiny_tsv_dir, tmp_path):
    """A chosen ``exits`` model is written as an early-exit folder; ``ufkit evaluate`` and ``ufkit benchmark`` run it
    at its calibrated speed (not its backbone alone)."""
    from ufkit.compose.steps import as_artifact

    model, tokenizer = teacher
    train, heldout, _ = data
    art = C.apply_step(C.exits(budget=100.0), as_artifact(model, tokenizer), train_ds=train, calibration_ds=heldout,
                       settings=SETTINGS, progress=False)
    assert art.state == "exits" and art.speed == 1.0  # a 100-point budget allows the fastest exits
    C.save_artifact(art, tmp_path / "ee")
    again = C.load_artifact(tmp_path / "ee")
    assert again.state == "exits" and again.speed == 1.0
    torch.testing.assert_close(logits(again, tokenizer), logits(art, tokenizer))
    r = cli("evaluate", "--model", tmp_path / "ee", "--data", tiny_tsv_dir)
    assert r.exit_code == 0, r.output
    assert "exits at speed 1" in r.stderr and "accuracy" in r.stdout
    r = cli("benchmark", "--model", tmp_path / "ee", "--data", tiny_tsv_dir, "--threads", "1", "-b", "1",
            "--warmup", "0", "--iters", "2", "--output", tmp_path / "bench")
    assert r.exit_code == 0, r.output


def test_cli_optimize_help():
    r = cli("optimize", "--help")
    assert r.exit_code == 0
    for option in ("--budget", "--objective", "--recipes", "--resume", "--n-train", "--n-heldout", "--output"):
        assert option in r.output, option
    text = "".join(r.output.split())  # the help wraps lines (at hyphens too)
    listed = text.split("defaultset(")[1].split(";default:all)")[0].split(",")
    assert listed == list(C.DEFAULT_RECIPES)  # the help names the current default recipes
