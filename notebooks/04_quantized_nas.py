# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Quantization-aware architecture search (Bigger&Faster)
#
# A weight-sharing super-model is distilled from the fine-tuned MiniLM-L6 of chapter 0; every smaller BERT of the
# search space (fewer layers, narrower hidden and feedforward sizes) is a slice of it. A latency table measured
# on this CPU, in float32 and in int8, trains a latency predictor, and an evolutionary search looks for the most
# accurate *int8* sub-model under a latency target ({mod}`ufkit.nas`). The result is compared with hand-made
# baselines from the same super-model (fewer layers; every layer narrower) and with the same search done in
# float32, as AutoTinyBERT does.
#
# Run size comes from `UFKIT_SMOKE` ({mod}`ufkit.config`); at smoke size the numbers mean nothing. Every number
# the chapter's page quotes is computed here and passed to it with `glue`.

# %%
import copy
import hashlib

import datasets
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import display

from ufkit import config, measure, zoo
from ufkit.cache import fingerprint, fingerprint_texts
from ufkit.data import length_matched, load_sst2, subset, word_counts
from ufkit.nas import (LINEAR_FEATURE_NAMES, SuperBert, SupernetTrainConfig, accuracy, baseline_archs,
                       build_latency_dataset, fit_predictor, load_or_search, load_or_train, make_fitness, mape,
                       minilm_space, pareto_front, split_archs, time_architecture)
from ufkit.quantization import quantize_int8
from ufkit.surgery import rewire
from ufkit.measure.report import busy_note, put

datasets.disable_progress_bar()
THREADS = config.bench_threads()
torch.set_num_threads(THREADS)  # UFKIT_THREADS governs every cell, not only the timings
N_SUPERNET = config.pick(12_000, 96)  # SST-2 training sentences for the super-model (one epoch, batches of 32)
N_HELDOUT = config.pick(1_000, 48)  # other training sentences, with labels: the search's fitness
N_DEV = config.pick(None, 64)  # dev sentences for the final report (None: all 872)
N_LATENCY_ARCHS = config.pick(120, 12)  # architectures in the latency table (of 330)
LATENCY_WARMUP, LATENCY_REPEATS, LATENCY_ROUNDS = config.pick((5, 15, 2), (1, 3, 1))
SEQ_LEN = 128  # tokens per sequence for every timing, at batch 1
POPULATION = config.pick(25, 6)  # Bigger&Faster's population
GENERATIONS = config.pick(5, 2)
EXPLORE_RATE = 0.5  # probability that a child redraws each of its three sizes
TARGETS = config.pick((0.25, 0.5), (0.5,))  # latency targets, as fractions of the teacher's int8 latency
TEST_FRACTION = 0.2  # share of the timed architectures held out to score the latency predictors
BASELINE_SLACK = 1.05  # a baseline counts as "no slower" up to 5 % above the searched model's measured latency
machine = measure.machine_info(THREADS)
store = measure.ResultsStore()  # config.results_dir(): results/ at full size, the smoke cache at smoke size




print(f"run size: {config.size()}")
print(f"machine: {measure.machine_summary(machine)} (id {machine['machine_id']})")
print(f"vector and matrix units: {measure.isa_description(machine['cpu_flags'])}")
put("machine", measure.machine_summary(machine))
put("isa", measure.isa_description(machine["cpu_flags"]))
put("threads", THREADS)
put("run_size", config.size())
for key, value in {"n_supernet": N_SUPERNET, "n_heldout": N_HELDOUT, "n_latency_archs": N_LATENCY_ARCHS,
                   "latency_warmup": LATENCY_WARMUP, "latency_repeats": LATENCY_REPEATS,
                   "latency_rounds": LATENCY_ROUNDS, "seq_len": SEQ_LEN, "population": POPULATION,
                   "generations": GENERATIONS, "explore_rate": EXPLORE_RATE,
                   "baseline_slack_pct": 100 * (BASELINE_SLACK - 1), "test_pct": 100 * TEST_FRACTION,
                   "train_pct": 100 * (1 - TEST_FRACTION)}.items():
    put(key, value)

# %% [markdown]
# ## The teacher, the data, the space
#
# The super-model learns from training sentences; the search's fitness is measured on *other* training
# sentences, held out and drawn so that their word counts follow dev's ({func}`~ufkit.data.length_matched`:
# SST-2's training split is mostly short phrases, far easier than dev's whole sentences); the dev split is only
# for the final report. The teacher was fine-tuned on the whole
# training split, so held-out training sentences flatter every sub-model a little (all of them alike).

# %%
task = load_sst2()
teacher, tokenizer, teacher_info = zoo.load_teacher()
teacher_id = fingerprint(config.cache_dir() / zoo.TEACHER_NAME)  # the teacher's model files
train = task["train"].shuffle(seed=0)
distill = train.select(range(N_SUPERNET))
rest = train.select(range(N_SUPERNET, len(train)))
# held-out sentences drawn to look like dev (its word counts, not its labels): random training rows are mostly
# short phrases, about 10 points easier than dev (chapter 7)
heldout = rest.select(length_matched(rest, task["validation"]["text"], N_HELDOUT, seed=0))
dev = subset(task["validation"], N_DEV)
dev_id = fingerprint_texts(dev["text"], dev["label"])
heldout_id = fingerprint_texts(heldout["text"], heldout["label"])
space = minilm_space()
baselines = baseline_archs(space)
t = teacher.config
print(f"{len(space)} architectures: layers {list(space.num_hidden_layers)}, hidden {list(space.hidden_size)} "
      f"(heads of {space.head_size}), intermediate {list(space.intermediate_size)}")
put("heldout_words", word_counts(heldout["text"]).mean())
put("dev_words", word_counts(task["validation"]["text"]).mean())
print(f"super-model: {len(distill)} sentences; fitness: {len(heldout)} held-out training sentences; "
      f"report: {len(dev)} dev sentences")
put("teacher_arch", f"L{t.num_hidden_layers}-H{t.hidden_size}-F{t.intermediate_size}")
put("teacher_layers", t.num_hidden_layers)
put("teacher_hidden", t.hidden_size)
put("teacher_intermediate", t.intermediate_size)
put("n_space", len(space))
put("n_dev", len(dev))
put("head_size", space.head_size)
put("space_layers", ", ".join(map(str, space.num_hidden_layers)))
put("space_hidden", ", ".join(f"{h} ({h // space.head_size} heads)" for h in space.hidden_size))
f_sizes = list(space.intermediate_size)
put("space_intermediate", f"{f_sizes[0]} to {f_sizes[-1]} in steps of {f_sizes[1] - f_sizes[0]} "
                                f"({len(f_sizes)} values)")
put("example_hidden", space.hidden_size[2])
put("example_heads", space.hidden_size[2] // space.head_size)
baselines.drop(columns="arch")

# %% [markdown]
# ## Rewiring: what a slice keeps
#
# A slice keeps the *first* heads, neurons and hidden dimensions. {func}`~ufkit.surgery.rewire` reorders the
# teacher's by a weight-magnitude importance first. The permutation does not change what the full model computes
# (checked below); it changes only what a narrow slice keeps. Both untrained super-models here are the teacher
# itself, before any sandwich training; the narrow slice keeps every layer and the teacher's own head.

# %%
narrow = space.arch(space.largest.num_hidden_layers, space.hidden_size[2], space.intermediate_size[4])
rewired_teacher = rewire(copy.deepcopy(teacher))
batch = dict(tokenizer(list(dev["text"][:16]), padding=True, return_tensors="pt"))
with torch.inference_mode():
    permutation_gap = (teacher(**batch).logits - rewired_teacher(**batch).logits).abs().max().item()
assert permutation_gap < 1e-3, permutation_gap
untrained = {"as trained (no rewiring)": SuperBert(teacher, space, head_per_depth=False),
             "rewired": SuperBert(rewired_teacher, space, head_per_depth=False, copy_model=False)}
rewiring = pd.DataFrame([{"super-model": name, "slice": narrow.short(),
                          "held-out accuracy (%)": accuracy(net.extract(narrow), tokenizer, heldout)}
                         for name, net in untrained.items()]).set_index("super-model")
teacher_heldout = accuracy(teacher, tokenizer, heldout)
del untrained
put("rewire_slice", narrow.short())
put("rewire_gap", permutation_gap)
put("rewire_acc_plain", rewiring.iloc[0]["held-out accuracy (%)"])
put("rewire_acc_rewired", rewiring.iloc[1]["held-out accuracy (%)"])
put("teacher_heldout_acc", teacher_heldout)
print(f"the teacher on the same {len(heldout)} held-out sentences: {teacher_heldout:.2f} %; largest logit change "
      f"from the permutation: {permutation_gap:.2e}")
rewiring.round(2)

# %% [markdown]
# ## Stage 1: the super-model
#
# The teacher's heads, feedforward neurons and hidden dimensions are first reordered by importance (above), so
# that narrow slices keep what matters most. Every depth gets its own classification head, first fitted on frozen
# features of training sentences. Then every step trains the largest sub-model, the smallest and two random ones
# on the same batch (the sandwich rule), each distilling the teacher's logits. The super-model is cached and reused
# on any machine; where it was trained is printed.

# %%
recipe = SupernetTrainConfig(epochs=1.0, batch_size=32, learning_rate=3e-4, n_random=2, head_warmup_texts=2000)
supernet_dir = config.cache_dir() / f"nas-supernet-{N_SUPERNET}"
supernet, sn_info = load_or_train(supernet_dir, teacher, tokenizer, distill, space=space, cfg=recipe)
supernet_id = fingerprint(supernet_dir)  # the super-model's files: the key of every accuracy stored below
trained_on = measure.machine_summary(sn_info["machine"])
print(f"stage 1: {sn_info['steps']} steps on {sn_info['n_texts']} sentences in {sn_info['train_seconds'] / 60:.1f} "
      f"min on {trained_on}")
warm = sn_info["head_warmup"]
head_loss = pd.Series({int(k): v for k, v in warm["final_loss"].items()}, name="final distillation loss")
head_loss.index.name = "depth"
print(f"head warm-up: {warm['seconds']:.0f} s on {warm['n_texts']} sentences")
put("sn_steps", sn_info["steps"])
put("sn_texts", sn_info["n_texts"])
put("sn_minutes", sn_info["train_seconds"] / 60)
put("sn_machine", trained_on)
put("sn_batch_size", recipe.batch_size)
put("sn_n_random", recipe.n_random)
put("head_warmup_seconds", warm["seconds"])
put("head_warmup_texts", warm["n_texts"])
shallow = np.arange(len(head_loss)) < (len(head_loss) + 1) // 2  # the shallower half of the depths
put("head_loss_shallow_depths", ", ".join(map(str, head_loss.index[shallow])))
put("head_loss_deep_depths", ", ".join(map(str, head_loss.index[~shallow])))
put("head_loss_shallow", head_loss[shallow].mean())
put("head_loss_deep", head_loss[~shallow].mean())
put("head_loss_table", head_loss.round(3).to_frame().T)
display(head_loss.round(3).to_frame().T)
fig, ax = plt.subplots(figsize=(6, 3))
for kind, values in sn_info["losses"].items():
    ax.plot(np.arange(1, len(values) + 1) * 20, values, label=kind)
ax.set(xlabel="step", ylabel="loss (mean of 20 steps)", title="Sandwich training")
ax.legend()
plt.show()

# %% [markdown]
# Every sub-model is a plain Hugging Face BERT once extracted, and computes what the super-model's slice computes:

# %%
with torch.inference_mode():
    gaps = {a.short(): (supernet.extract(a)(**batch).logits - supernet(**batch, arch=a)).abs().max().item()
            for a in (space.largest, space.arch(3, 256, 768), space.smallest)}
assert max(gaps.values()) < 1e-4
pd.Series(gaps, name="max |logit difference|").to_frame()

# %% [markdown]
# ## Stage 2a: a latency table and a predictor
#
# A sample of the space is timed at batch 1 and 128 tokens of real text, in float32 and in int8 (dynamic
# quantization of every linear layer, {func}`~ufkit.quantization.torch_int8.quantize_int8`), the two in turns,
# call by call, in rounds of different random orders. The machine's speed may drift over minutes, so a fixed
# reference model (`L3-H256-F768`, float32) is timed in the same turns as every measurement and each latency is
# scaled by median(reference) / reference at that moment.
#
# The table is a data file of the book, one per machine: `results/nas_latency-<machine_id>.csv` (with its recipe in
# `<file>.json`). {func}`~ufkit.nas.build_latency_dataset` reuses a file only when its recipe matches (the
# architectures, the settings, the CPU *model name* and torch version); the CPU name alone does not tell an
# AVX2-only EPYC from an AVX-512 one, so the file name carries the full {func}`~ufkit.measure.machine_id` (CPU
# model, its ISA flags, threads, torch) and another machine never reads this one's table. Delete the file to
# measure again.

# %%
lat_batch = measure.make_batches(tokenizer, measure.sample_texts(), 1, SEQ_LEN, n_batches=1)[0]
latency_path = config.results_dir() / f"nas_latency-{machine['machine_id']}.csv"
mtime_before = latency_path.stat().st_mtime if latency_path.is_file() else None
latency = build_latency_dataset(N_LATENCY_ARCHS, teacher.config, space=space, seq_len=SEQ_LEN, threads=THREADS,
                                n_warmup=LATENCY_WARMUP, n_repeats=LATENCY_REPEATS, rounds=LATENCY_ROUNDS,
                                batch=lat_batch, reference=space.arch(3, 256, 768), path=latency_path)
assert set(latency["machine_id"].astype(str)) == {machine["machine_id"]}, "a latency table of another machine"
reused = mtime_before is not None and latency_path.stat().st_mtime == mtime_before
print(f"latency table: {latency_path.name}, {'reused' if reused else 'measured now'} "
      f"(measured {latency['date'].iloc[0][:10]})")
_ = busy_note(latency, "the latency table")
drift = latency["reference_ms"]
print(f"reference L3-H256-F768 between measurements: {drift.min():.2f} to {drift.max():.2f} ms "
      f"(median {drift.median():.2f}): the drift divided out")
wide = latency.pivot_table(index=["num_hidden_layers", "hidden_size", "intermediate_size"], columns="quant",
                           values="latency_ms").reset_index()
wide["int8 speedup"] = wide["fp32"] / wide["int8"]
big = space.largest
full_ms = wide.set_index(["num_hidden_layers", "hidden_size", "intermediate_size"]).loc[
    (big.num_hidden_layers, big.hidden_size, big.intermediate_size)]
small_ms = wide.sort_values("fp32").iloc[0]
print(f"{len(wide)} architectures timed; the teacher: {full_ms['fp32']:.1f} ms float32, {full_ms['int8']:.1f} ms int8 "
      f"({full_ms['int8 speedup']:.2f}x)")
put("lat_n_archs", len(wide))
put("teacher_fp32_ms", full_ms["fp32"])
put("teacher_int8_ms", full_ms["int8"])
put("teacher_int8_speedup", full_ms["int8 speedup"])
put("smallest_timed", f"L{int(small_ms.num_hidden_layers)}-H{int(small_ms.hidden_size)}-"
                            f"F{int(small_ms.intermediate_size)}")
put("smallest_int8_speedup", small_ms["int8 speedup"])
put("ref_ms_min", drift.min())
put("ref_ms_max", drift.max())
put("ref_ms_median", drift.median())
put("ref_drift_pct", 100 * (drift.max() - drift.min()) / drift.median())
fig, ax = plt.subplots(figsize=(6, 3.5))
sc = ax.scatter(wide["fp32"], wide["int8 speedup"], c=wide["hidden_size"], s=12, cmap="viridis")
ax.axhline(1.0, color="grey", lw=0.8)
ax.set(xscale="log", xlabel="float32 latency (ms)", ylabel="int8 speed-up (×)", title="What int8 buys, by size")
fig.colorbar(sc, label="hidden_size")
fig.suptitle(measure.machine_summary(machine), fontsize=7)
plt.show()

# %% [markdown]
# Other machines' latency tables stay in the results folder; the teacher's latency on each, side by side with this
# machine's, each row labelled with the machine it was measured on. (A file without a machine id in its name is
# from before tables were kept per machine.)

# %%
others = []
for path in sorted(config.results_dir().glob("nas_latency*.csv")):
    df = pd.read_csv(path)
    if not {"cpu_model", "latency_ms", "quant"} <= set(df.columns):
        continue
    df["machine_id"] = [measure.machine_id(r) for r in df.to_dict("records")]
    for mid, part in df.groupby("machine_id"):
        row = part[(part.num_hidden_layers == big.num_hidden_layers) & (part.hidden_size == big.hidden_size) &
                   (part.intermediate_size == big.intermediate_size)].set_index("quant")
        if row.empty or mid == machine["machine_id"] and path != latency_path:
            continue
        first = part.iloc[0].to_dict()
        others.append({"machine": measure.machine_summary(first), "machine_id": mid,
                       "this machine": mid == machine["machine_id"], "file": path.name,
                       "date": str(first.get("date", ""))[:10], "architectures": len(part) // part["quant"].nunique(),
                       "teacher fp32 (ms)": row.loc["fp32", "latency_ms"],
                       "teacher int8 (ms)": row.loc["int8", "latency_ms"]})
by_machine = pd.DataFrame(others)
by_machine["int8 speed-up"] = by_machine["teacher fp32 (ms)"] / by_machine["teacher int8 (ms)"]
by_machine = by_machine.sort_values("this machine", ascending=False).reset_index(drop=True)
put("n_machines", by_machine["machine_id"].nunique())
put("latency_by_machine", by_machine.drop(columns="machine_id").round(2))
by_machine.round(2)

# %% [markdown]
# Two predictors are fitted on most of the timed architectures and scored on the others (`TEST_FRACTION`): the papers' small
# MLP on the three sizes, and a linear model on FLOP-like terms. Their error is the mean absolute percentage error
# (MAPE); the search then uses the better one, refitted on the whole table.

# %%
lat_train, lat_test = split_archs(latency, TEST_FRACTION, seed=0)
scores, fitted = [], {}
for quant in ("fp32", "int8"):
    for kind in ("mlp", "linear"):
        p = fitted[quant, kind] = fit_predictor(lat_train, kind, quant=quant)
        scores.append({"quant": quant, "predictor": kind, "MAPE train (%)": mape(p, lat_train),
                       "MAPE held-out (%)": mape(p, lat_test)})
scores = pd.DataFrame(scores).set_index(["quant", "predictor"])
best_kind = {q: scores.loc[q, "MAPE held-out (%)"].idxmin() for q in ("fp32", "int8")}
predictors = {q: fit_predictor(latency, best_kind[q], quant=q) for q in ("fp32", "int8")}
put("linear_features", ", ".join(LINEAR_FEATURE_NAMES))
put("n_linear_features", len(LINEAR_FEATURE_NAMES))
put("n_lat_test_archs", len(lat_test) // lat_test["quant"].nunique())
for (quant, kind), r in scores.iterrows():
    put(f"mape_{quant}_{kind}", r["MAPE held-out (%)"])
put("best_predictor_fp32", best_kind["fp32"])
put("best_predictor_int8", best_kind["int8"])
put("mape_table", scores.round(2))
scores.round(2)

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for ax, quant in zip(axes, ("fp32", "int8")):
    part = lat_test[lat_test.quant == quant]
    for kind, marker in (("mlp", "o"), ("linear", "x")):
        ax.scatter(part["latency_ms"], fitted[quant, kind].predict(part), marker=marker, s=16, label=kind)
    lim = [part["latency_ms"].min() * 0.9, part["latency_ms"].max() * 1.1]
    ax.plot(lim, lim, color="grey", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="measured (ms)", ylabel="predicted (ms)",
           title=f"{quant}: held-out architectures")
    ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Stage 2b: the search
#
# For each target $C$ (a fraction of the teacher's int8 latency), a population of architectures whose predicted
# int8 latency lies in a window around $C$ evolves for a few generations; the fitness is the held-out accuracy of
# the int8-quantized sub-model ({func}`~ufkit.nas.search.search`). The same search in float32 (float32 predictor,
# float32 fitness) is AutoTinyBERT's. Searches are cached; fitness values are shared between targets. The space
# is small enough to count how many architectures each window holds: the search cannot do better than trying
# them all.

# %%
key = {"supernet": sn_info["recipe"], "n_heldout": N_HELDOUT, "heldout_id": heldout_id,
       "latency_table": hashlib.sha1(latency.to_csv(index=False).encode()).hexdigest()[:16],
       "predictors": best_kind}
searches, caches = {}, {"fp32": {}, "int8": {}}
for quant in ("int8", "fp32"):
    fitness = make_fitness(supernet, tokenizer, heldout, quant=quant)
    for frac in TARGETS:
        target = frac * full_ms["int8"]
        searches[quant, frac] = load_or_search(
            config.cache_dir() / f"nas-search-{machine['machine_id']}-{quant}-{frac:.2f}.csv", fitness,
            predictors[quant], target, space, key=key, population=POPULATION, generations=GENERATIONS,
            explore_rate=EXPLORE_RATE, seed=0, cache=caches[quant])
every = list(space)
in_window = {(q, f): int(((predictors[q].predict(every) >= r.window_ms[0]) &
                          (predictors[q].predict(every) <= r.window_ms[1])).sum()) for (q, f), r in searches.items()}
search_table = pd.DataFrame([{"search": quant, "target": f"{frac:.2f} × int8 teacher", "target (ms)": r.target_ms,
                              "architectures in the window": in_window[quant, frac],
                              "fitness evaluations": r.n_evaluations, "best": r.best.short(),
                              "held-out accuracy (%)": r.best_fitness,
                              "predicted latency (ms)": r.best_predicted_latency_ms}
                             for (quant, frac), r in searches.items()])
first = next(iter(searches.values()))
put("window_lo", first.window_ms[0] / first.target_ms)
put("window_hi", first.window_ms[1] / first.target_ms)
put("targets", " and ".join(f"{f:.2f}" for f in TARGETS))
put("n_targets", len(TARGETS))
int8_rows = search_table[search_table.search == "int8"]
put("window_min_archs", int8_rows["architectures in the window"].min())
put("window_max_archs", int8_rows["architectures in the window"].max())
put("evaluated_share_pct", 100 * (int8_rows["fitness evaluations"] / int8_rows["architectures in the window"])
          .clip(upper=1).min())
put("search_table", search_table.round(2))
search_table.round(2)

# %%
fig, axes = plt.subplots(1, len(TARGETS), figsize=(5 * len(TARGETS), 3.2), squeeze=False)
for ax, frac in zip(axes[0], TARGETS):
    for quant, color in (("int8", "C0"), ("fp32", "C1")):
        h = searches[quant, frac].history
        g = h.groupby("generation")["fitness"]
        ax.plot(g.max(), color=color, marker="o", label=f"{quant}: best")
        ax.plot(g.mean(), color=color, ls="--", label=f"{quant}: population mean")
    ax.set(xlabel="generation", ylabel="held-out accuracy (%)", title=f"target {frac:.2f} × int8 teacher")
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The result on dev
#
# Every candidate is extracted from the same super-model, deployed as it would be (the searched models in the
# precision they were searched for; everything else in int8) and measured again: dev accuracy and latency at
# batch 1, 128 tokens, on this machine. The teacher itself, in float32 and int8, is the reference.
#
# Both kinds of result go to the results store ({class}`~ufkit.measure.ResultsStore`), each reused only where it
# is still true: latencies (`nas_report_latency`) only on the same machine, for the same model files and timing
# settings; accuracies (`nas_report_accuracy`) for the same model files and the same sentences, on the same
# machine too: int8 kernels differ between instruction sets (AVX2's 16-bit intermediate sums can saturate where
# VNNI's cannot), and so can a prediction on the edge.

# %%
candidates = [("teacher", "MiniLM-L6 (teacher)", space.largest, q) for q in ("fp32", "int8")]
candidates += [(f"{r.family} (int8)", r.name, r.arch, "int8") for r in baselines.itertuples()]
for (quant, frac), r in searches.items():
    name = f"{r.best.short()} @ {frac:.2f}"
    if quant == "int8":
        candidates.append(("searched in int8 (Bigger&Faster)", name, r.best, "int8"))
    else:
        candidates.append(("searched in fp32 (AutoTinyBERT)", name, r.best, "fp32"))
        candidates.append(("searched in fp32, then int8", name, r.best, "int8"))
timing_settings = f"b1-seq{SEQ_LEN}-warmup{LATENCY_WARMUP}-calls{LATENCY_REPEATS}"


def stored_accuracy(model_id, arch, quant, make):
    """This model's accuracies from the store (this machine), else computed now and stored."""
    key = {"model_id": model_id, "arch": arch.short(), "quant": quant, "dev_id": dev_id, "heldout_id": heldout_id}
    hit = store.read("nas_report_accuracy", machine="current", **key)
    if len(hit):
        return hit.iloc[0], True
    model = make()
    model = quantize_int8(model) if quant == "int8" else model
    row = pd.DataFrame([{**key, "dev accuracy (%)": accuracy(model, tokenizer, dev),
                         "held-out accuracy (%)": accuracy(model, tokenizer, heldout)}])
    return store.append("nas_report_accuracy", row).iloc[0], False


rows, lat_rows, n_reused = [], [], {"latency": 0, "accuracy": 0}
for family, name, arch, quant in candidates:
    is_teacher = family == "teacher"
    model_id = teacher_id if is_teacher else supernet_id
    make = (lambda: teacher) if is_teacher else (lambda a=arch: supernet.extract(a))
    n_encoder = sum(p.numel() for p in make().bert.encoder.parameters()) / 1e6  # what the latency pays for
    lat_key = {"model_id": supernet_id, "arch": arch.short(), "quant": quant, "settings": timing_settings}
    n_reused["latency"] += not store.read("nas_report_latency", machine="current", **lat_key).empty
    lat = store.load_or_measure(
        "nas_report_latency",
        lambda: time_architecture(arch, supernet, quant=quant, seq_len=SEQ_LEN, threads=THREADS,
                                  n_warmup=LATENCY_WARMUP, n_repeats=LATENCY_REPEATS, batch=lat_batch),
        **lat_key)
    acc, hit = stored_accuracy(model_id, arch, quant, make)
    n_reused["accuracy"] += hit
    lat_rows.append(lat.iloc[[-1]])
    rows.append({"family": family, "name": name, "arch": arch.short(), "quant": quant,
                 "encoder params (M)": n_encoder, "latency_ms": float(lat["latency_ms"].iloc[-1]),
                 "dev accuracy (%)": float(acc["dev accuracy (%)"]),
                 "held-out accuracy (%)": float(acc["held-out accuracy (%)"])})
report = pd.DataFrame(rows)
report["pareto"] = pareto_front(report["latency_ms"], report["dev accuracy (%)"])
print(f"{len(report)} candidates: latencies reused from the store for {n_reused['latency']} (this machine), "
      f"accuracies for {n_reused['accuracy']}")
_ = busy_note(pd.concat(lat_rows, ignore_index=True), "the report")
teacher_rows = report[report.family == "teacher"].set_index("quant")
largest_slice = report[(report.arch == space.largest.short()) & (report.family != "teacher")
                       & (report.quant == "int8")]
put("report_teacher_fp32_ms", teacher_rows.loc["fp32", "latency_ms"])
put("report_teacher_int8_ms", teacher_rows.loc["int8", "latency_ms"])
put("teacher_dev_fp32", teacher_rows.loc["fp32", "dev accuracy (%)"])
put("teacher_dev_int8", teacher_rows.loc["int8", "dev accuracy (%)"])
put("largest_slice_dev_int8", largest_slice["dev accuracy (%)"].iloc[0])
depth_rows = report[report.family == "depth (int8)"][["name", "arch", "latency_ms", "dev accuracy (%)"]]
put("depth_baselines", depth_rows.set_index("name").round(2).T)
put("report_table", report.round(2))
report.round(2)

# %%
fig, ax = plt.subplots(figsize=(8, 5))
style = {"teacher": dict(marker="*", s=160, color="k"), "depth (int8)": dict(marker="^", color="C2"),
         "width (int8)": dict(marker="v", color="C3"),
         "searched in int8 (Bigger&Faster)": dict(marker="o", s=70, color="C0"),
         "searched in fp32 (AutoTinyBERT)": dict(marker="s", s=50, color="C1"),
         "searched in fp32, then int8": dict(marker="s", s=50, facecolors="none", edgecolors="C1")}
for family, part in report.groupby("family", sort=False):
    ax.scatter(part["latency_ms"], part["dev accuracy (%)"], label=family, **style.get(family, {}))
front = report[report.pareto].sort_values("latency_ms")
ax.plot(front["latency_ms"], front["dev accuracy (%)"], color="grey", lw=0.8, ls=":", label="Pareto front")
for _, r in report[report.family.str.startswith("searched")].iterrows():
    ax.annotate(r["arch"], (r["latency_ms"], r["dev accuracy (%)"]), fontsize=7, xytext=(4, -8),
                textcoords="offset points")
for frac in TARGETS:
    ax.axvline(frac * full_ms["int8"], color="C0", lw=0.6, ls="--")
ax.set(xscale="log", xlabel="measured latency, batch 1, 128 tokens (ms; dashed: int8 targets)",
       ylabel="SST-2 dev accuracy (%)", title="Accuracy against latency")
ax.grid(alpha=0.3)
ax.legend(fontsize=7)
fig.suptitle(measure.machine_summary(machine), fontsize=8)
plt.show()

# %% [markdown]
# At each target: the int8 search's model against the best baseline that is no slower, and against the float32
# search's model in float32 ("bigger": int8 affords more parameters in the same time).

# %%
summary = []
for frac in TARGETS:
    r8, r32 = searches["int8", frac], searches["fp32", frac]
    mine = report[(report.family == "searched in int8 (Bigger&Faster)") & (report.arch == r8.best.short())].iloc[0]
    fp = report[(report.family == "searched in fp32 (AutoTinyBERT)") & (report.arch == r32.best.short())].iloc[0]
    base = report[report.family.isin(["depth (int8)", "width (int8)"])
                  & (report.latency_ms <= mine.latency_ms * BASELINE_SLACK)]
    best_base = base.loc[base["dev accuracy (%)"].idxmax()] if len(base) else None
    summary.append({"target": f"{frac:.2f} × int8 teacher", "target (ms)": frac * full_ms["int8"],
                    "int8 search": mine.arch, "its latency (ms)": mine.latency_ms,
                    "its dev accuracy (%)": mine["dev accuracy (%)"],
                    "its encoder params (M)": mine["encoder params (M)"],
                    "best baseline no slower": None if best_base is None else f"{best_base['name']} ({best_base.arch})",
                    "baseline latency (ms)": np.nan if best_base is None else best_base.latency_ms,
                    "baseline dev accuracy (%)": np.nan if best_base is None else best_base["dev accuracy (%)"],
                    "fp32 search": fp.arch, "fp32 latency (ms)": fp.latency_ms,
                    "fp32 dev accuracy (%)": fp["dev accuracy (%)"],
                    "fp32 encoder params (M)": fp["encoder params (M)"]})
summary = pd.DataFrame(summary)
margin_base = summary["its dev accuracy (%)"] - summary["baseline dev accuracy (%)"]
margin_fp32 = summary["its dev accuracy (%)"] - summary["fp32 dev accuracy (%)"]
summary["margin over baseline (points)"] = margin_base
summary["margin over fp32 search (points)"] = margin_fp32
bigger = summary["its encoder params (M)"] > summary["fp32 encoder params (M)"]
put("n_beats_baseline", int((margin_base > 0).sum()))
put("n_beats_fp32", int((margin_fp32 > 0).sum()))
put("n_bigger_than_fp32", int(bigger.sum()))
put("margin_base_min", margin_base.min())
put("margin_base_max", margin_base.max())
put("margin_fp32_min", margin_fp32.min())
put("margin_fp32_max", margin_fp32.max())
put("summary_table", summary.set_index("target").round(2).T)
print(f"machine: {measure.machine_summary(machine)}")
summary.set_index("target").round(2).T


# %% [markdown]
# ## The last step: distil the found architectures
#
# Bigger&Faster (Chai et al. 2022) and AutoTinyBERT (Yin et al. 2021) do not deploy a super-model's slice as it
# is: they finish by training the found architecture with distillation from the teacher. Here each searched model
# starts from its slice and learns with chapter 3's distillation: the same training sentences and the teacher's
# cached soft labels, temperature 2, weight 0.8 on the distillation term, one epoch
# ({func}`~ufkit.compression.distillation.load_or_distill`). It is scored again in the precision it was searched
# for, at the latency measured above (distillation changes the weights, not the shapes). The checkpoints stay
# in the cache, where chapter 7 puts them on one Pareto front with chapter 3's students.

# %%
from ufkit.compression import distillation as D
from ufkit.training import TrainConfig

N_KD = config.pick(20_000, 64)  # chapter 3's students' sentences
kd_train = subset(task["train"], N_KD, seed=1)
kd_logits = D.teacher_logits(teacher, tokenizer, kd_train["text"],
                             cache=config.cache_dir() / "teacher-logits-sst2-recovery")
kd_cfg = D.DistillConfig(**{**TrainConfig(learning_rate=1e-4, epochs=1.0, batch_size=32, warmup_ratio=0.1,
                                          seed=42, max_steps=config.pick(None, 2)).__dict__,
                            "temperature": 2.0, "alpha": 0.8})
NAS_DISTILLED = config.cache_dir() / "nas-distilled"
found = {}
for (quant, frac), r in searches.items():
    found.setdefault(r.best.short(), (r.best, []))[1].append(f"{quant} @ {frac:.2f}")
kd_rows = []
for short, (arch, from_searches) in found.items():
    student, _, info = D.load_or_distill(NAS_DISTILLED / short, teacher=teacher, tokenizer=tokenizer,
                                         student=supernet.extract(arch), train_ds=kd_train, cfg=kd_cfg,
                                         teacher_logits=kd_logits, progress=False)
    for quant in ("int8", "fp32"):
        before = report[(report.arch == short) & (report.quant == quant) & (report.family != "teacher")]
        if before.empty:
            continue
        deployed = quantize_int8(student) if quant == "int8" else student
        kd_rows.append({"arch": short, "found by": ", ".join(from_searches), "quant": quant,
                        "latency_ms": float(before["latency_ms"].iloc[0]),
                        "dev, slice (%)": float(before["dev accuracy (%)"].iloc[0]),
                        "dev, distilled (%)": accuracy(deployed, tokenizer, dev),
                        "distil (min)": info["train_seconds"] / 60})
kd_table = pd.DataFrame(kd_rows)
kd_table["gain (points)"] = kd_table["dev, distilled (%)"] - kd_table["dev, slice (%)"]
put("kd_table", kd_table.round(2))
put("kd_gain_min", kd_table["gain (points)"].min())
put("kd_gain_max", kd_table["gain (points)"].max())
put("kd_best_dev", kd_table["dev, distilled (%)"].max())
put("n_kd", N_KD)
kd_table.round(2)

