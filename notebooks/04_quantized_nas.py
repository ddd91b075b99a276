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
# Run size comes from `UFKIT_SMOKE` ({mod}`ufkit.config`); at smoke size the numbers mean nothing.

# %%
import hashlib

import datasets
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from ufkit import config, measure
from ufkit.data import load_sst2, subset
from ufkit.nas import (SupernetTrainConfig, accuracy, baseline_archs, build_latency_dataset, fit_predictor,
                       load_or_search, load_or_train, make_fitness, mape, minilm_space, pareto_front, split_archs,
                       time_architecture)
from ufkit.quantization import quantize_int8
from ufkit.zoo import load_teacher

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
TARGETS = config.pick((0.25, 0.5), (0.5,))  # latency targets, as fractions of the teacher's int8 latency (the issue: 1/4 and 1/2)
machine = measure.machine_info(THREADS)
print(f"run size: {config.size()}")
print(f"machine: {measure.machine_summary(machine)}")

# %% [markdown]
# ## The teacher, the data, the space
#
# The super-model learns from training sentences; the search's fitness is measured on *other* training
# sentences, held out; the dev split is only for the final report. The teacher was fine-tuned on the whole
# training split, so held-out training sentences flatter every sub-model a little (all of them alike).

# %%
task = load_sst2()
teacher, tokenizer, teacher_info = load_teacher()
train = task["train"].shuffle(seed=0)
distill = train.select(range(N_SUPERNET))
heldout = train.select(range(N_SUPERNET, N_SUPERNET + N_HELDOUT))
dev = subset(task["validation"], N_DEV)
space = minilm_space()
baselines = baseline_archs(space)
print(f"{len(space)} architectures: layers {list(space.num_hidden_layers)}, hidden {list(space.hidden_size)} "
      f"(heads of {space.head_size}), intermediate {list(space.intermediate_size)}")
print(f"super-model: {len(distill)} sentences; fitness: {len(heldout)} held-out training sentences; "
      f"report: {len(dev)} dev sentences")
baselines.drop(columns="arch")

# %% [markdown]
# ## Stage 1: the super-model
#
# The teacher's heads, feedforward neurons and hidden dimensions are first reordered by importance (a
# permutation: the function does not change), so that narrow slices keep what matters most. Every depth gets its
# own classification head, first fitted on frozen features of 2,000 sentences. Then every step trains the largest
# sub-model, the smallest and two random ones on the same batch (the sandwich rule), each distilling the teacher's
# logits. The super-model is cached.

# %%
recipe = SupernetTrainConfig(epochs=1.0, batch_size=32, learning_rate=3e-4, n_random=2, head_warmup_texts=2000)
supernet, sn_info = load_or_train(config.cache_dir() / f"nas-supernet-{N_SUPERNET}", teacher, tokenizer, distill,
                                  space=space, cfg=recipe)
print(f"stage 1: {sn_info['steps']} steps on {sn_info['n_texts']} sentences in {sn_info['train_seconds'] / 60:.1f} "
      f"min on {sn_info['machine']['cpu_model']} ({sn_info['machine']['threads']} threads)")
warm = sn_info["head_warmup"]
print(f"head warm-up: {warm['seconds']:.0f} s on {warm['n_texts']} sentences; final loss per depth:",
      {k: round(v, 3) for k, v in warm["final_loss"].items()})
fig, ax = plt.subplots(figsize=(6, 3))
for kind, values in sn_info["losses"].items():
    ax.plot(np.arange(1, len(values) + 1) * 20, values, label=kind)
ax.set(xlabel="step", ylabel="loss (mean of 20 steps)", title="Sandwich training")
ax.legend()
plt.show()

# %% [markdown]
# Every sub-model is a plain Hugging Face BERT once extracted, and computes what the super-model's slice computes:

# %%
batch = dict(tokenizer(list(dev["text"][:16]), padding=True, return_tensors="pt"))
with torch.inference_mode():
    gaps = {a.short(): (supernet.extract(a)(**batch).logits - supernet(**batch, arch=a)).abs().max().item()
            for a in (space.largest, space.arch(3, 256, 768), space.smallest)}
assert max(gaps.values()) < 1e-4
pd.Series(gaps, name="max |logit difference|").to_frame()

# %% [markdown]
# ## Stage 2a: a latency table and a predictor
#
# A sample of the space is timed at batch 1 and 128 tokens of real text, in float32 and in int8 (dynamic
# quantization of every linear layer, {func}`~ufkit.quantization.torch_int8.quantize_int8`), the two in turns, call by call,
# in two rounds of different random orders. This machine's speed drifts over minutes, so a fixed reference model
# (`L3-H256-F768`, float32) is timed in the same turns as every measurement and each latency is scaled by
# median(reference) / reference at that moment. The table is a data file of the book: delete
# `results/nas_latency.csv` to measure again.

# %%
lat_batch = measure.make_batches(tokenizer, measure.sample_texts(), 1, SEQ_LEN, n_batches=1)[0]
latency_path = config.results_dir() / "nas_latency.csv"
latency = build_latency_dataset(N_LATENCY_ARCHS, teacher.config, space=space, seq_len=SEQ_LEN, threads=THREADS,
                                n_warmup=LATENCY_WARMUP, n_repeats=LATENCY_REPEATS, rounds=LATENCY_ROUNDS,
                                batch=lat_batch, reference=space.arch(3, 256, 768), path=latency_path)
drift = latency["reference_ms"]
print(f"reference L3-H256-F768 between measurements: {drift.min():.2f} to {drift.max():.2f} ms "
      f"(median {drift.median():.2f}): the drift divided out")
wide = latency.pivot_table(index=["num_hidden_layers", "hidden_size", "intermediate_size"], columns="quant",
                           values="latency_ms").reset_index()
wide["int8 speedup"] = wide["fp32"] / wide["int8"]
full_ms = wide.set_index(["num_hidden_layers", "hidden_size", "intermediate_size"]).loc[(6, 384, 1536)]
print(f"{len(wide)} architectures timed; the teacher: {full_ms['fp32']:.1f} ms float32, {full_ms['int8']:.1f} ms int8 "
      f"({full_ms['int8 speedup']:.2f}x)")
fig, ax = plt.subplots(figsize=(6, 3.5))
sc = ax.scatter(wide["fp32"], wide["int8 speedup"], c=wide["hidden_size"], s=12, cmap="viridis")
ax.axhline(1.0, color="grey", lw=0.8)
ax.set(xscale="log", xlabel="float32 latency (ms)", ylabel="int8 speed-up (×)", title="What int8 buys, by size")
fig.colorbar(sc, label="hidden_size")
plt.show()

# %% [markdown]
# Two predictors are fitted on 80 % of the timed architectures and scored on the other 20 %: the papers' small
# MLP on the three sizes, and a linear model on FLOP-like terms. Their error is the mean absolute percentage error
# (MAPE); the search then uses the better one, refitted on the whole table.

# %%
lat_train, lat_test = split_archs(latency, 0.2, seed=0)
scores, fitted = [], {}
for quant in ("fp32", "int8"):
    for kind in ("mlp", "linear"):
        p = fitted[quant, kind] = fit_predictor(lat_train, kind, quant=quant)
        scores.append({"quant": quant, "predictor": kind, "MAPE train (%)": mape(p, lat_train),
                       "MAPE held-out (%)": mape(p, lat_test)})
scores = pd.DataFrame(scores).set_index(["quant", "predictor"])
best_kind = {q: scores.loc[q, "MAPE held-out (%)"].idxmin() for q in ("fp32", "int8")}
predictors = {q: fit_predictor(latency, best_kind[q], quant=q) for q in ("fp32", "int8")}
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
# For each target $C$ (a fraction of the teacher's int8 latency), 25 architectures whose predicted int8 latency
# lies in $[0.85\,C, 1.1\,C]$ evolve for a few generations; the fitness is the held-out accuracy of the
# int8-quantized sub-model ({func}`~ufkit.nas.search.search`). The same search in float32 (float32 predictor,
# float32 fitness) is AutoTinyBERT's. Searches are cached; fitness values are shared between targets. The space
# is small enough to count how many architectures each window holds: the search cannot do better than trying
# them all, and with a few dozen in a window it comes close to that.

# %%
key = {"supernet": sn_info["recipe"], "n_heldout": N_HELDOUT,
       "latency_table": hashlib.sha1(latency.to_csv(index=False).encode()).hexdigest()[:16],
       "predictors": best_kind}
searches, caches = {}, {"fp32": {}, "int8": {}}
for quant in ("int8", "fp32"):
    fitness = make_fitness(supernet, tokenizer, heldout, quant=quant)
    for frac in TARGETS:
        target = frac * full_ms["int8"]
        searches[quant, frac] = load_or_search(
            config.cache_dir() / f"nas-search-{quant}-{frac:.2f}.csv", fitness, predictors[quant], target, space,
            key=key, population=POPULATION, generations=GENERATIONS, explore_rate=0.5, seed=0, cache=caches[quant])
every = list(space)
in_window = {(q, f): int(((predictors[q].predict(every) >= r.window_ms[0]) &
                          (predictors[q].predict(every) <= r.window_ms[1])).sum()) for (q, f), r in searches.items()}
pd.DataFrame([{"search": quant, "target": f"{frac:.2f} × int8 teacher", "target (ms)": r.target_ms,
               "architectures in the window": in_window[quant, frac], "fitness evaluations": r.n_evaluations,
               "best": r.best.short(), "held-out accuracy (%)": r.best_fitness,
               "predicted latency (ms)": r.best_predicted_latency_ms}
              for (quant, frac), r in searches.items()]).round(2)

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
rows, timed = [], {}
for family, name, arch, quant in candidates:
    model = teacher if family == "teacher" else supernet.extract(arch)
    n_encoder = sum(p.numel() for p in model.bert.encoder.parameters()) / 1e6  # what the latency pays for
    model = quantize_int8(model) if quant == "int8" else model
    if (arch, quant) not in timed:
        timed[arch, quant] = time_architecture(arch, supernet, quant=quant, seq_len=SEQ_LEN, threads=THREADS,
                                             n_warmup=LATENCY_WARMUP, n_repeats=LATENCY_REPEATS,
                                             batch=lat_batch).loc[0, "latency_ms"]
    rows.append({"family": family, "name": name, "arch": arch.short(), "quant": quant,
                 "encoder params (M)": n_encoder,
                 "latency_ms": timed[arch, quant], "dev accuracy (%)": accuracy(model, tokenizer, dev),
                 "held-out accuracy (%)": accuracy(model, tokenizer, heldout)})
report = pd.DataFrame(rows)
report["pareto"] = pareto_front(report["latency_ms"], report["dev accuracy (%)"])
report.to_csv(config.results_dir() / "nas_report.csv", index=False)
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
    base = report[report.family.isin(["depth (int8)", "width (int8)"]) & (report.latency_ms <= mine.latency_ms * 1.05)]
    best_base = base.loc[base["dev accuracy (%)"].idxmax()] if len(base) else None
    summary.append({"target (ms)": frac * full_ms["int8"], "int8 search": mine.arch,
                    "its latency (ms)": mine.latency_ms, "its dev accuracy (%)": mine["dev accuracy (%)"],
                    "its encoder params (M)": mine["encoder params (M)"],
                    "best baseline no slower": None if best_base is None else f"{best_base['name']} ({best_base.arch})",
                    "baseline dev accuracy (%)": np.nan if best_base is None else best_base["dev accuracy (%)"],
                    "fp32 search": fp.arch, "fp32 latency (ms)": fp.latency_ms,
                    "fp32 dev accuracy (%)": fp["dev accuracy (%)"],
                    "fp32 encoder params (M)": fp["encoder params (M)"]})
print(f"machine: {measure.machine_summary(machine)}")
pd.DataFrame(summary).round(2).T
