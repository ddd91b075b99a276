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
# MiniLM-L6-H384 on the SST-2 training split, evaluates it on the dev split, and times it with the measurement
# layer every chapter uses ({mod}`ufkit.measure`). The fine-tuned model is cached and becomes the teacher of the
# later chapters. Every number the chapter's page quotes is computed here and passed to the page with
# MyST-NB's `glue`.
#
# Run size comes from `UFKIT_SMOKE` (see {mod}`ufkit.config`): the book runs at full size, the tests at smoke
# size, where the model trains on a few hundred sentences and its numbers mean nothing.

# %%
import dataclasses

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

from ufkit import config, measure
from ufkit.cache import fingerprint
from ufkit.data import load_sst2, make_dataloader, subset, tokenize
from ufkit.evaluate import confusion_matrix, evaluate, predict_logits
from ufkit.measure import ResultsStore
from ufkit.models import count_parameters
from ufkit.training import resolve_mixed_precision
from ufkit.zoo import TEACHER_NAME, load_teacher, teacher_config
from ufkit.measure.report import busy_note, other_machines, put

size = config.baseline_size()
machine = measure.machine_info()
threads = config.bench_threads()
store = ResultsStore()
print(f"run size: {config.size()}")
print(f"machine: {measure.machine_summary(machine)}")
print(f"vector units: {measure.isa_description()}")








put("run_size", config.size())
put("machine", measure.machine_summary(machine))
put("isa", measure.isa_description())

# %% [markdown]
# ## The model

# %%
model, tokenizer, info = load_teacher()
cfg = model.config
n_params = count_parameters(model)
n_embed = model.get_input_embeddings().weight.numel()
arch = pd.Series(dtype=object, data={"layers": cfg.num_hidden_layers, "hidden size": cfg.hidden_size,
                  "attention heads": cfg.num_attention_heads, "feedforward width": cfg.intermediate_size,
                  "parameters (M)": round(n_params / 1e6, 1), "of which word embeddings (M)": round(n_embed / 1e6, 1)},
                 name="MiniLM-L6-H384 + classification head")
for key, value in [("n_layers", cfg.num_hidden_layers), ("hidden_size", cfg.hidden_size),
                   ("n_heads", cfg.num_attention_heads), ("intermediate_size", cfg.intermediate_size),
                   ("params_m", n_params / 1e6), ("embedding_params_m", n_embed / 1e6)]:
    put(key, value)
arch.to_frame()

# %% [markdown]
# ## The data
#
# GLUE SST-2: single sentences from movie reviews (train: phrases of the parse trees as well), binary
# sentiment. The dev split is what GLUE papers report. Batches are padded only to their own longest sentence,
# and sentences of similar length are batched together ({func}`ufkit.data.make_dataloader`); the last column
# counts the token positions a training batch holds that way, against padding every sentence to the maximum
# length.

# %%
task = load_sst2()
dev = subset(task["validation"], size.n_eval)
tcfg = teacher_config()
rows = []
for name, ds in [("train", task["train"]), ("validation", task["validation"])]:
    sample = subset(ds, config.pick(None, 2000))
    tok = tokenize(sample, tokenizer, tcfg.max_length)
    lengths = np.asarray([len(x) for x in tok["input_ids"]])
    loader = make_dataloader(tok, tokenizer, tcfg.batch_size, shuffle=True, seed=tcfg.seed)
    positions = sum(b["input_ids"].numel() for b in loader)
    rows.append({"split": name, "rows": len(ds), "positive %": 100 * np.mean(ds["label"]),
                 "mean tokens": lengths.mean(),
                 f"padding to {tcfg.max_length}: x more positions": len(sample) * tcfg.max_length / positions})
data = pd.DataFrame(rows).set_index("split")
put("n_train_rows", int(data.loc["train", "rows"]))
put("n_dev_rows", int(data.loc["validation", "rows"]))
put("train_mean_tokens", data.loc["train", "mean tokens"])
put("dev_mean_tokens", data.loc["validation", "mean tokens"])
put("max_length", tcfg.max_length)
put("padding_ratio", data.iloc[0, -1])
data.round(1)

# %% [markdown]
# ## Fine-tuning
#
# {func}`ufkit.zoo.teacher_config` holds the recipe, and {func}`ufkit.training.train_loop` runs it, in bfloat16
# autocast on CPUs with native bf16 arithmetic and in float32 elsewhere (`mixed_precision="auto"`,
# {func}`ufkit.training.resolve_mixed_precision`). The checkpoint is cached: a rebuild loads it, on any machine,
# as long as the recipe, the starting weights and the data are unchanged.

# %%
recipe = pd.Series({"peak learning rate": tcfg.learning_rate, "epochs": tcfg.epochs, "batch size": tcfg.batch_size,
                    "warm-up (% of steps)": 100 * tcfg.warmup_ratio, "weight decay": tcfg.weight_decay,
                    "gradient clipping (L2 norm)": tcfg.max_grad_norm, "seed": tcfg.seed,
                    "mixed precision": info["mixed_precision"]}, name="recipe")
for key, value in [("lr", tcfg.learning_rate), ("epochs", tcfg.epochs), ("batch_size", tcfg.batch_size),
                   ("warmup_pct", 100 * tcfg.warmup_ratio), ("weight_decay", tcfg.weight_decay),
                   ("max_grad_norm", tcfg.max_grad_norm), ("seed", tcfg.seed),
                   ("mixed_precision", "bf16 autocast" if info["mixed_precision"] == "bf16" else "float32"),
                   ("n_train_used", info["recipe"]["n_train"]), ("train_steps", info["steps"]),
                   ("train_minutes", info["train_seconds"] / 60),
                   ("trained_on", measure.machine_summary(info["machine"]))]:
    put(key, value)
display(recipe.to_frame())
pd.Series({
    "training examples": info["recipe"]["n_train"],
    "optimizer steps": info["steps"],
    "training time (min)": round(info["train_seconds"] / 60, 1),
    "trained on": measure.machine_summary(info["machine"]),
    "trained": info["created"],
}, name="fine-tuning").to_frame()

# %%
fig, ax = plt.subplots(figsize=(6, 3))
every = tcfg.log_every
steps = np.minimum(np.arange(1, len(info["losses"]) + 1) * every, info["steps"])  # the last window may be partial
ax.plot(steps, info["losses"])
ax.set(xlabel="optimizer step", ylabel=f"training loss (mean of {every} steps)",
       title="Fine-tuning MiniLM-L6 on SST-2")
ax.grid(alpha=0.3)
put("loss_curve", fig)
plt.show()

# %% [markdown]
# ## Accuracy on the dev split

# %%
metrics = evaluate(model, tokenizer, dev, name="MiniLM-L6 fp32")
put("teacher_accuracy", metrics["accuracy"])
put("teacher_f1", metrics["f1_macro"])
put("n_eval", int(metrics["n"]))
metrics.to_frame().T.round(2)

# %%
dev_tok = tokenize(dev, tokenizer)
predictions = predict_logits(model, dev_tok, tokenizer).argmax(-1)
confusion_matrix(dev_tok["label"], predictions, ["negative", "positive"])

# %% [markdown]
# ### bf16 autocast against float32
#
# Where the baseline trained in bf16 autocast, the same recipe is also trained in float32 (cached too), to show
# what bf16 costs in accuracy and saves in time. A difference in accuracy is compared with the sampling noise of
# an accuracy measured on the dev split: two standard errors, $2\sqrt{p(1-p)/n}$.

# %%
std_err = 100 * np.sqrt(metrics["accuracy"] / 100 * (1 - metrics["accuracy"] / 100) / metrics["n"])
if resolve_mixed_precision() == "bf16" and info["mixed_precision"] == "bf16":
    m32, _, info32 = load_teacher(cfg=dataclasses.replace(teacher_config(), mixed_precision="no"))
    metrics32 = evaluate(m32, tokenizer, dev, name="float32")
    pred32 = predict_logits(m32, dev_tok, tokenizer).argmax(-1)
    diff = metrics["accuracy"] - metrics32["accuracy"]
    same_machine = info["machine"]["machine_id"] == info32["machine"]["machine_id"]
    precision = pd.DataFrame({
        "dev accuracy (%)": [metrics["accuracy"], metrics32["accuracy"]],
        "dev F1 macro (%)": [metrics["f1_macro"], metrics32["f1_macro"]],
        "training time (min)": [info["train_seconds"] / 60, info32["train_seconds"] / 60],
        "trained on": [measure.machine_summary(info["machine"]), measure.machine_summary(info32["machine"])],
    }, index=pd.Index(["bf16 autocast", "float32"], name="fine-tuned in"))
    verdict = "within" if abs(diff) <= 2 * std_err else "outside"
    times = (f"fine-tuning took {info['train_seconds'] / 60:.1f} min in bf16 autocast and "
             f"{info32['train_seconds'] / 60:.1f} min in float32"
             + ("" if same_machine else " (on different machines, so the times do not compare)"))
    sentence = (f"Trained in float32 instead, everything else equal, the baseline scores "
                f"{metrics32['accuracy']:.2f} % against {metrics['accuracy']:.2f} % in bf16 autocast: a difference "
                f"of {diff:+.2f} points, {verdict} two standard errors ({2 * std_err:.2f} points) of an accuracy "
                f"measured on {int(metrics['n'])} sentences; the two models disagree on "
                f"{int((pred32 != predictions).sum())} of them. {times[0].upper() + times[1:]}.")
else:
    precision = pd.DataFrame({"dev accuracy (%)": [metrics["accuracy"]],
                              "training time (min)": [info["train_seconds"] / 60]},
                             index=pd.Index([info["mixed_precision"]], name="fine-tuned in"))
    sentence = (f"This machine's CPU ({measure.isa_description()}) has no native bf16 arithmetic, so the baseline "
                f"trained in float32 and there is no bf16 run to compare it with.")
print(sentence)
put("precision_comparison", sentence)
put("precision_table", precision.round(2))
precision.round(2)

# %% [markdown]
# ### The learning rate
#
# {func}`ufkit.zoo.teacher_config` uses a larger peak learning rate than the usual range for BERT-base. The same
# recipe at the top of that range, one run each:

# %%
lr_alt = 5e-5
m_alt, _, info_alt = load_teacher(cfg=dataclasses.replace(teacher_config(), learning_rate=lr_alt))
metrics_alt = evaluate(m_alt, tokenizer, dev, name=f"lr {lr_alt:g}")
lrs = pd.DataFrame({"peak learning rate": [tcfg.learning_rate, lr_alt],
                    "dev accuracy (%)": [metrics["accuracy"], metrics_alt["accuracy"]],
                    "dev F1 macro (%)": [metrics["f1_macro"], metrics_alt["f1_macro"]]}).set_index("peak learning rate")
put("lr_alt", f"{lr_alt:g}")
put("lr_text", f"{tcfg.learning_rate:g}")
put("lr_alt_accuracy", metrics_alt["accuracy"])
put("accuracy_2se", 2 * std_err)
lrs.round(2)

# %% [markdown]
# ## Latency and throughput
#
# {func}`ufkit.measure.benchmark` runs the model on real SST-2 dev sentences at their natural lengths, after
# warm-up runs, at a fixed thread count, and records the machine and the machine's load beside each row.
# `peak_mem_mb` is how much the process's resident memory grows during a first call (activations and
# workspace); `peak_rss_mb` is the whole process at that moment, model, Python and libraries included.
#
# Rows live in the results store (`baseline` table, {class}`ufkit.measure.ResultsStore`), keyed by the model's
# files (`model_id`, {func}`ufkit.cache.fingerprint`) and the settings: measured on this machine for this
# checkpoint, they are reused; otherwise they are measured now and appended.

# %%
model_id = fingerprint(config.cache_dir() / TEACHER_NAME)
texts = list(task["validation"]["text"])
BIG_BATCH = 32
put("big_batch", BIG_BATCH)
put("model_id", model_id)
put("bench_threads", threads)


def bench(batch_size):
    return measure.benchmark(model, tokenizer, texts, name="MiniLM-L6 fp32", batch_size=batch_size,
                             n_warmup=size.bench_warmup, n_iters=size.bench_iters, threads=threads,
                             extra={"model_id": model_id})


results = pd.concat([
    store.load_or_measure("baseline", lambda b=b: bench(b), model_id=model_id, batch_size=b, threads=threads,
                          n_calls=size.bench_iters)
    for b in (1, BIG_BATCH)], ignore_index=True)
note = busy_note(results, "the baseline's latency")
print(f"measured {results['date'].min()} .. {results['date'].max()} on {measure.machine_summary(results.iloc[0])}; "
      f"{note}")
b1, b32 = (results[results.batch_size == b].iloc[-1] for b in (1, BIG_BATCH))
for key, value in [("latency_b1_ms", b1.latency_ms_mean), ("latency_b1_std", b1.latency_ms_std),
                   ("latency_b1_p50", b1.latency_ms_p50), ("latency_b32_ms", b32.latency_ms_mean),
                   ("throughput_b32", b32.throughput_seq_per_s), ("throughput_b1", b1.throughput_seq_per_s),
                   ("size_mb", b1.size_mb), ("latency_note", note)]:
    put(key, value)
results[["name", "batch_size", "seq_len", "latency_ms_mean", "latency_ms_std", "latency_ms_p50",
         "latency_ms_p95", "throughput_seq_per_s", "size_mb", "peak_mem_mb", "peak_rss_mb", "threads", "busy",
         "other_cores"]].round(2)

# %% [markdown]
# The same table from other machines, when the store has any (each row labelled with its machine; the model
# files may differ too, see `model_id`):

# %%
others = other_machines(store, "baseline")
if others.empty:
    print("no other machine's rows in the store")
else:
    display(others[[c for c in ("machine", "date", "model_id", "batch_size", "latency_ms_mean", "latency_ms_p50",
                                "throughput_seq_per_s", "busy") if c in others.columns]].round(2))

# %% [markdown]
# ## Latency against sequence length
#
# Rows of exactly *n* tokens of real text (consecutive dev sentences run together), batch 1 and batch 8.

# %%
seq_lens = config.pick([16, 32, 64, 128, 256], [16, 32])
curve_iters = max(3, size.bench_iters // 2)


def bench_curve():
    return pd.concat([
        measure.benchmark(model, tokenizer, texts, name="MiniLM-L6 fp32", batch_size=b, seq_len=n,
                          n_warmup=size.bench_warmup, n_iters=curve_iters, threads=threads,
                          extra={"model_id": model_id})
        for b in (1, 8) for n in seq_lens], ignore_index=True)


curve = store.load_or_measure("baseline_seq_len", bench_curve, model_id=model_id, threads=threads,
                              n_calls=curve_iters, seq_lens=" ".join(map(str, seq_lens)))
curve_note = busy_note(curve, "the latency-vs-length curve")
print(curve_note)
fig, ax = plt.subplots(figsize=(6, 3.5))
for b, part in curve.groupby("batch_size"):
    ax.errorbar(part["seq_len"], part["latency_ms_mean"], yerr=part["latency_ms_std"], marker="o",
                label=f"batch {b}", capsize=3)
ax.set(xscale="log", yscale="log", xlabel="sequence length (tokens)", ylabel="latency (ms)",
       title=f"MiniLM-L6 fp32, {threads} threads")
ax.set_xticks(seq_lens, [str(n) for n in seq_lens])
ax.grid(alpha=0.3, which="both")
ax.legend()
put("latency_curve", fig)
plt.show()
curve.pivot(index="seq_len", columns="batch_size", values="latency_ms_mean").round(2)

# %% [markdown]
# ## Summary

# %%
summary = pd.Series({
    "dev accuracy (%)": metrics["accuracy"],
    "dev F1 macro (%)": metrics["f1_macro"],
    "latency batch 1 (ms)": b1.latency_ms_mean,
    f"latency batch {BIG_BATCH} (ms)": b32.latency_ms_mean,
    f"throughput batch {BIG_BATCH} (seq/s)": b32.throughput_seq_per_s,
    "size (MB)": b1.size_mb,
    "training time (min)": info["train_seconds"] / 60,
}, name="MiniLM-L6 fp32").round(2)
print(f"machine: {measure.machine_summary(machine)}")
put("summary_table", summary.to_frame())
summary.to_frame()
