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
# # Baseline: MiniLM-L6 fine-tuned on SST-2
#
# Every later chapter makes this model faster and is measured against it. This notebook fine-tunes
# MiniLM-L6-H384 on the SST-2 training split, evaluates it on the dev split, and times it with the harness
# that every chapter uses ({mod}`ufkit.bench`). The fine-tuned model is cached and becomes the teacher of
# chapters 2 to 5.
#
# Run size comes from `UFKIT_SMOKE` (see {mod}`ufkit.config`): the book runs at full size, the tests at smoke
# size, where the model trains on a few hundred sentences and its numbers mean nothing.

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ufkit import config, measure
from ufkit.data import load_sst2, subset, tokenize
from ufkit.evaluate import confusion_matrix, evaluate, predict_logits
from ufkit.models import count_parameters
from ufkit.zoo import load_teacher

size = config.baseline_size()
machine = measure.machine_info()
print(f"run size: {config.size()}")
print(f"machine: {measure.machine_summary(machine)}")

# %% [markdown]
# ## The data
#
# GLUE SST-2: single sentences from movie reviews (train: phrases of the parse trees as well), binary
# sentiment. The dev split is what GLUE papers report. Sentences are short, so batches are padded only to
# their own longest sentence, and sentences of similar length are batched together.

# %%
task = load_sst2()
dev = subset(task["validation"], size.n_eval)
rows = []
for name, ds in [("train", task["train"]), ("validation", task["validation"])]:
    labels = np.asarray(ds["label"])
    rows.append({"split": name, "rows": len(ds), "positive %": 100 * labels.mean()})
pd.DataFrame(rows).set_index("split").round(1)

# %% [markdown]
# ## Fine-tuning
#
# AdamW, learning rate 1e-4 with 10 % linear warm-up and linear decay, batch 32, one epoch, gradient clipping
# at 1.0, seed 42 ({func}`ufkit.zoo.teacher_config`). The checkpoint is cached: a rebuild loads it.

# %%
model, tokenizer, info = load_teacher()
print(f"parameters: {count_parameters(model) / 1e6:.1f} M")
pd.Series({
    "training examples": info["n_train"],
    "optimizer steps": info["steps"],
    "training time (min)": round(info["train_seconds"] / 60, 1),
    "trained on": info["machine"]["cpu_model"],
    "threads": info["machine"]["threads"],
}, name="fine-tuning").to_frame()

# %%
fig, ax = plt.subplots(figsize=(6, 3))
steps = np.minimum(np.arange(1, len(info["losses"]) + 1) * 50, info["steps"])  # the last window may be partial
ax.plot(steps, info["losses"])
ax.set(xlabel="optimizer step", ylabel="training loss (mean of 50 steps)", title="Fine-tuning MiniLM-L6 on SST-2")
ax.grid(alpha=0.3)
plt.show()

# %% [markdown]
# ## Accuracy on the dev split

# %%
metrics = evaluate(model, tokenizer, dev, name="MiniLM-L6 fp32")
metrics.to_frame().T.round(2)

# %%
dev_tok = tokenize(dev, tokenizer)
predictions = predict_logits(model, dev_tok, tokenizer).argmax(-1)
confusion_matrix(dev_tok["label"], predictions, ["negative", "positive"])

# %% [markdown]
# ## Latency and throughput
#
# {func}`ufkit.measure.benchmark` runs the model on real SST-2 dev sentences at their natural lengths, after
# warm-up runs, at a fixed thread count, and records the machine beside each row. `peak_mem_mb` is how much the
# process's resident memory grows during a first call (activations and workspace); `peak_rss_mb` is the whole
# process at that moment, model, Python and libraries included.

# %%
texts = list(task["validation"]["text"])
results = pd.concat([
    measure.benchmark(model, tokenizer, texts, name="MiniLM-L6 fp32", batch_size=b, n_warmup=size.bench_warmup,
                    n_iters=size.bench_iters, table="baseline")
    for b in (1, 32)
], ignore_index=True)
results[["name", "batch_size", "seq_len", "latency_ms_mean", "latency_ms_std", "latency_ms_p50",
         "latency_ms_p95", "throughput_seq_per_s", "size_mb", "peak_mem_mb", "peak_rss_mb", "threads"]].round(2)

# %% [markdown]
# ## Latency against sequence length
#
# Rows of exactly *n* tokens of real text (consecutive dev sentences run together), batch 1 and batch 8.

# %%
seq_lens = config.pick([16, 32, 64, 128, 256], [16, 32])
curve = pd.concat([
    measure.benchmark(model, tokenizer, texts, name="MiniLM-L6 fp32", batch_size=b, seq_len=n,
                    n_warmup=size.bench_warmup, n_iters=max(3, size.bench_iters // 2),
                    table="baseline_seq_len")
    for b in (1, 8) for n in seq_lens
], ignore_index=True)
fig, ax = plt.subplots(figsize=(6, 3.5))
for b, part in curve.groupby("batch_size"):
    ax.errorbar(part["seq_len"], part["latency_ms_mean"], yerr=part["latency_ms_std"], marker="o",
                label=f"batch {b}", capsize=3)
ax.set(xscale="log", yscale="log", xlabel="sequence length (tokens)", ylabel="latency (ms)",
       title=f"MiniLM-L6 fp32, {machine['threads']} threads")
ax.set_xticks(seq_lens, [str(n) for n in seq_lens])
ax.grid(alpha=0.3, which="both")
ax.legend()
plt.show()
curve.pivot(index="seq_len", columns="batch_size", values="latency_ms_mean").round(2)

# %% [markdown]
# ## Summary

# %%
summary = pd.Series({
    "dev accuracy (%)": metrics["accuracy"],
    "dev F1 macro (%)": metrics["f1_macro"],
    "latency batch 1 (ms)": results.loc[results.batch_size == 1, "latency_ms_mean"].item(),
    "latency batch 32 (ms)": results.loc[results.batch_size == 32, "latency_ms_mean"].item(),
    "throughput batch 32 (seq/s)": results.loc[results.batch_size == 32, "throughput_seq_per_s"].item(),
    "size (MB)": results["size_mb"].iloc[0],
    "training time (min)": info["train_seconds"] / 60,
}, name="MiniLM-L6 fp32").round(2)
print(f"machine: {measure.machine_summary(machine)}")
summary.to_frame()
