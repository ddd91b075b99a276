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
# # FastBERT: exits after every layer
#
# The fine-tuned MiniLM-L6 of chapter 0 becomes the teacher; a small classifier after each of its first five
# layers learns to imitate it (stage 2, self-distillation, on unlabeled text), and at inference each sentence
# leaves the model as soon as its classifier is sure enough ({mod}`ufkit.early_exit`). We measure the result
# twice: in FLOPs, as the paper does, and in wall-clock time on this machine, at batch 1 and batch 32.
#
# Run size comes from `UFKIT_SMOKE` ({mod}`ufkit.config`); at smoke size the numbers mean nothing.

# %%
import datasets
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
import torch

from ufkit import config, measure
from ufkit.data import load_sst2, subset
from ufkit.early_exit import calibrate_speed, exit_curves, load_or_fit
from ufkit.measure import count_flops, measure_latency
from ufkit.zoo import load_teacher

datasets.disable_progress_bar()
torch.set_num_threads(config.bench_threads())  # UFKIT_THREADS governs every cell, not only the timings
N_DISTILL = config.pick(20_000, 128)  # SST-2 training sentences for stage 2 (their labels are not used)
N_HELDOUT = config.pick(2_000, 64)  # other training sentences, with labels, for calibrate_speed
N_DEV = config.pick(None, 64)  # dev sentences evaluated (None: all 872)
N_LATENCY = config.pick(320, 16)  # dev sentences timed, at batch 1 and in batches of 32
LATENCY_ROUNDS = 1
SPEEDS = config.pick(np.round(np.linspace(0, 1, 11), 2), np.array([0.0, 0.5, 1.0]))  # the table's speeds
PATIENCES = config.pick([1, 2, 3, 4], [1, 2])
machine = measure.machine_info()
print(f"run size: {config.size()}")
print(f"machine: {measure.machine_summary(machine)}")

# %% [markdown]
# ## Stage 1: the teacher
#
# The fine-tuned baseline is stage 1: backbone and head trained together with cross-entropy. Its own head
# (the pooler and a linear layer on the first token) is the teacher, so speed 0 reproduces the baseline's
# predictions exactly.

# %%
task = load_sst2()
model, tokenizer, teacher_info = load_teacher()
train = task["train"].shuffle(seed=0)
distill = train.select(range(N_DISTILL))
heldout = train.select(range(N_DISTILL, N_DISTILL + N_HELDOUT))
dev = subset(task["validation"], N_DEV)
y_dev = np.asarray(dev["label"])
print(f"teacher trained on {teacher_info['n_train']} sentences; stage 2 uses {len(distill)}, calibration "
      f"{len(heldout)}, evaluation {len(dev)} dev sentences")

# %% [markdown]
# ## Stage 2: self-distillation
#
# Backbone and teacher are frozen; the five students learn $\sum_i \mathrm{KL}(p_\text{teacher} \,\|\,
# p_{\text{student}_i})$ on training sentences whose labels are never read. The students are cached: a rebuild
# loads them.

# %%
students_dir = config.cache_dir() / f"fastbert-students-{N_DISTILL}"
ee, info = load_or_fit(students_dir, model, tokenizer, distill, epochs=1.0, batch_size=32, learning_rate=1e-3)
print(f"stage 2: {info['steps']} steps on {info['n_texts']} sentences in {info['train_seconds'] / 60:.1f} min "
      f"on {info['machine']['cpu_model']}, final loss {info['final_loss']:.4f}")

# %% [markdown]
# ## The speed sweep
#
# Each speed is a real run of {meth}`~ufkit.early_exit.EarlyExitModel.predict` over the dev split, in batches
# of 32 with compaction. FLOPs are per sentence at its own length: every matrix product (linear layers,
# attention products, classifiers), and, in the last column, only the linear layers, as the paper counts them.

# %%
runs = {s: ee.predict(dev, speed=s, batch_size=32) for s in SPEEDS}
full_flops = runs[0.0].flops.mean()
sweep = pd.DataFrame([{
    "speed": s,
    "accuracy (%)": p.accuracy(y_dev),
    "FLOPs (M)": p.flops.mean() / 1e6,
    "speedup (FLOPs)": full_flops / p.flops.mean(),
    "mean exit layer": p.exit_layer.mean(),
    "FLOPs, linear only (M)": p.flops_linear.mean() / 1e6,
} for s, p in runs.items()]).set_index("speed")
sweep.round(2)

# %% [markdown]
# The analytic count is checked against PyTorch's own counter ({class}`torch.utils.flop_counter.FlopCounterMode`)
# on a few dev sentences, one at a time, at several speeds:

# %%
checks = []
for s in (0.0, 0.3, 0.8):
    for text in list(dev["text"])[:3]:
        batch = dict(tokenizer([text], return_tensors="pt"))
        with torch.inference_mode():
            out = ee(**batch, speed=s)
        checks.append({"speed": s, "tokens": batch["input_ids"].shape[1], "exit layer": int(out.exit_layer),
                       "analytic": int(out.flops), "FlopCounterMode": count_flops(ee, **batch, speed=s)})
checks = pd.DataFrame(checks)
assert (checks["analytic"] == checks["FlopCounterMode"]).all()
checks

# %% [markdown]
# ## Wall-clock time
#
# A random sample of dev sentences is timed, one at a time and in batches of 32; each batch runs through
# every configuration before the next, so load from other processes touches all of them alike
# ({func}`~ufkit.measure.latency.measure_latency`). The reference is the plain Hugging Face model.

# %%
texts = list(subset(task["validation"], N_LATENCY)["text"])
runners = {"full model": model, **{f"speed {s:.1f}": ee.runner(speed=s) for s in SPEEDS},
           **{f"patience {t}": ee.runner(patience=t) for t in PATIENCES}}
latency = pd.concat([
    measure_latency(runners, tokenizer, texts, batch_size=b, rounds=LATENCY_ROUNDS,
                    table="fastbert_latency")
    for b in (1, 32)], ignore_index=True)
lat = latency.pivot(index="name", columns="batch_size", values="ms_per_seq")
lat.columns = [f"ms/sentence, batch {b}" for b in lat.columns]
for b in (1, 32):
    lat[f"speedup, batch {b}"] = lat.loc["full model", f"ms/sentence, batch {b}"] / lat[f"ms/sentence, batch {b}"]
lat = lat.loc[list(runners)]
lat.round(2)

# %% [markdown]
# The table in the form of FastBERT's README, with measured time beside the FLOPs:

# %%
table = sweep[["accuracy (%)", "FLOPs (M)", "speedup (FLOPs)"]].copy()
for b in (1, 32):
    table[f"speedup, batch {b}"] = [lat.loc[f"speed {s:.1f}", f"speedup, batch {b}"] for s in sweep.index]
table.to_csv(config.results_dir() / "fastbert_speed_sweep.csv")
table.round(2)

# %% [markdown]
# ## Entropy, patience, truncation
#
# One pass computes every classifier's logits on the dev split; the exits of any rule then follow without
# re-running the model ({func}`~ufkit.early_exit.simulate_exits`), which gives smooth curves. *Truncation* keeps
# the first *k* layers and always answers with the *k*-th classifier: the same classifiers, no adaptivity.

# %%
all_logits, n_tok = ee.predict_all_layers(dev)
L = ee.num_hidden_layers
points = exit_curves(ee, all_logits, n_tok, y_dev, patiences=PATIENCES)
points[points.rule != "entropy"].set_index(["rule", "setting"]).round(2)

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
style = {"entropy": dict(marker=".", ls="-", color="C0"), "patience": dict(marker="s", ls="--", color="C1"),
         "truncate": dict(marker="^", ls=":", color="C2")}
for rule, part in points.groupby("rule", sort=False):
    axes[0].plot(part["flops_speedup"], part["accuracy"], label=rule, **style[rule])
axes[0].set(xlabel="speedup in FLOPs (×)", ylabel="dev accuracy (%)", title="Accuracy against FLOPs")
patience_acc = points.loc[points.rule == "patience", "accuracy"].tolist()
for b, ls, marker in ((1, "-", "o"), (32, "--", "s")):
    col = f"ms/sentence, batch {b}"
    axes[1].plot([lat.loc[f"speed {s:.1f}", col] for s in SPEEDS], sweep["accuracy (%)"], ls=ls, marker=marker,
                 color="C0", label=f"entropy, batch {b}")
    axes[1].plot([lat.loc[f"patience {t}", col] for t in PATIENCES], patience_acc, ls=ls, marker=marker,
                 color="C1", label=f"patience, batch {b}")
    axes[1].axvline(lat.loc["full model", col], color="grey", ls=ls, lw=0.8)
axes[1].set(xscale="log", xlabel="measured ms per sentence (grey: the full model)", ylabel="dev accuracy (%)",
            title="Accuracy against wall-clock time")
axes[1].xaxis.set_major_locator(mticker.LogLocator(subs=(1, 2, 5)))
axes[1].xaxis.set_major_formatter(mticker.FormatStrFormatter("%g"))
axes[1].xaxis.set_minor_formatter(mticker.NullFormatter())
for ax in axes:
    ax.axhline(sweep["accuracy (%)"].iloc[0] - 1.0, color="red", lw=0.8, ls=":", label="full model − 1 point")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
fig.suptitle(f"FastBERT on MiniLM-L6, SST-2 dev; {measure.machine_summary(machine)}", fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Where sentences leave

# %%
exit_dist = pd.DataFrame({s: np.bincount(runs[s].exit_layer, minlength=L + 1)[1:] / len(y_dev) * 100
                          for s in SPEEDS}, index=pd.Index(range(1, L + 1), name="exit layer"))
fig, ax = plt.subplots(figsize=(7, 3.5))
bottom = np.zeros(len(SPEEDS))
for layer in exit_dist.index:
    ax.bar([f"{s:.1f}" for s in SPEEDS], exit_dist.loc[layer], bottom=bottom, label=f"layer {layer}")
    bottom += exit_dist.loc[layer].to_numpy()
ax.set(xlabel="speed", ylabel="% of dev sentences", title="Exit layer by speed")
ax.legend(fontsize=7, ncols=2)
plt.show()
exit_dist.round(1)

# %% [markdown]
# ## A budget instead of a threshold
#
# {func}`~ufkit.early_exit.calibrate_speed` picks the largest speed whose accuracy drop on held-out training
# sentences (not the dev split) stays within 1 point of the full model. We then run that speed on dev.

# %%
speed, calib = calibrate_speed(ee, heldout, budget=1.0)
chosen = ee.predict(dev, speed=speed, batch_size=32)
timed = measure_latency({"full model": model, "calibrated": ee.runner(speed=speed)}, tokenizer, texts,
                        batch_size=1, rounds=LATENCY_ROUNDS, table="fastbert_latency",
                        extra={"speed": speed})
ms = timed.set_index("name")["ms_per_seq"]
# the best speed on the dev grid itself (optimistic: chosen on the data it is reported on)
dense = points[points.rule == "entropy"]
ok = dense[dense["accuracy"] >= dense["accuracy"].iloc[0] - 1.0]
best_dev = ok.loc[ok["flops_speedup"].idxmax()]
result = pd.Series({
    "calibrated speed (held-out, budget 1 point)": speed,
    "held-out accuracy drop at that speed (points)": calib.set_index("speed").loc[speed, "drop"],
    "full model dev accuracy (%)": runs[0.0].accuracy(y_dev),
    "dev accuracy at that speed (%)": chosen.accuracy(y_dev),
    "accuracy drop (points)": runs[0.0].accuracy(y_dev) - chosen.accuracy(y_dev),
    "FLOPs speedup": full_flops / chosen.flops.mean(),
    "FLOPs speedup, linear layers only": runs[0.0].flops_linear.mean() / chosen.flops_linear.mean(),
    "wall-clock speedup, batch 1": ms["full model"] / ms["calibrated"],
    "mean exit layer": chosen.exit_layer.mean(),
    "best dev-grid speed within 1 point": best_dev["setting"],
    "its FLOPs speedup": best_dev["flops_speedup"],
}, name="FastBERT, MiniLM-L6, SST-2 dev")
print(f"machine: {measure.machine_summary(machine)}")
result.round(3).to_frame()
