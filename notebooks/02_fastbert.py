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
# The fine-tuned MiniLM-L6 of the baseline chapter becomes the teacher; a small classifier after each of its
# other layers learns to imitate it (stage 2, self-distillation, on unlabeled text), and at inference each
# sentence leaves the model as soon as its classifier is sure enough ({mod}`ufkit.early_exit`). We measure the
# result twice: in FLOPs, as the paper does, and in wall-clock time on this machine, one sentence at a time and
# in batches. Every number the chapter's page quotes is computed here and passed to it with MyST-NB's `glue`.
#
# Run size comes from `UFKIT_SMOKE` ({mod}`ufkit.config`); at smoke size the numbers mean nothing.

# %%
import datasets
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
import torch
from IPython.display import display

from ufkit import config, measure
from ufkit.cache import fingerprint_model
from ufkit.data import load_sst2, subset
from ufkit.early_exit import calibrate_speed, exit_curves, load_or_fit
from ufkit.measure import ResultsStore, count_flops, measure_latency
from ufkit.zoo import load_teacher
from ufkit.measure.report import busy_note, put

datasets.disable_progress_bar()
threads = config.bench_threads()
torch.set_num_threads(threads)  # UFKIT_THREADS governs every cell, not only the timings
N_DISTILL = config.pick(20_000, 128)  # SST-2 training sentences for stage 2 (their labels are not used)
N_HELDOUT = config.pick(2_000, 64)  # other training sentences, with labels, for calibrate_speed
N_DEV = config.pick(None, 64)  # dev sentences evaluated (None: all 872)
N_LATENCY = config.pick(320, 16)  # dev sentences timed, one at a time and in batches
BATCH = 32  # the batched timings' batch size
LATENCY_ROUNDS = 1
BUDGET = 1.0  # accuracy points calibrate_speed may give up
MID_SPEED = 0.5  # a speed the page quotes (on the grid at both run sizes)
SPEEDS = config.pick(np.round(np.linspace(0, 1, 11), 2), np.array([0.0, 0.5, 1.0]))  # the table's speeds
PATIENCES = config.pick([1, 2, 3, 4], [1, 2])
machine = measure.machine_info(threads)
store = ResultsStore()
print(f"run size: {config.size()}")
print(f"machine: {measure.machine_summary(machine)}")






put("run_size", config.size())
put("machine", measure.machine_summary(machine))
put("isa", measure.isa_description())
put("threads", threads)
put("batch", BATCH)
put("budget", BUDGET)

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
print(f"teacher trained on {teacher_info['recipe']['n_train']} sentences; stage 2 uses {len(distill)}, "
      f"calibration {len(heldout)}, evaluation {len(dev)} dev sentences")
put("n_layers", model.config.num_hidden_layers)
put("n_distill", len(distill))
put("n_heldout", len(heldout))
put("n_dev", len(dev))

# %% [markdown]
# ## Stage 2: self-distillation
#
# Backbone and teacher are frozen; the students learn $\sum_i \mathrm{KL}(p_\text{teacher} \,\|\,
# p_{\text{student}_i})$ on training sentences whose labels are never read. The students are cached
# ({func}`~ufkit.early_exit.load_or_fit`): a rebuild loads them, and they are trained again only when the teacher's
# weights, the texts or the settings change.

# %%
students_dir = config.cache_dir() / f"fastbert-students-{N_DISTILL}"
ee, info = load_or_fit(students_dir, model, tokenizer, distill, epochs=1.0, batch_size=32, learning_rate=1e-3)
model_id = fingerprint_model(ee)  # backbone and branches: what the accuracies and timings below depend on
print(f"stage 2: {info['steps']} steps on {len(distill)} sentences in {info['train_seconds'] / 60:.1f} min "
      f"on {measure.machine_summary(info['machine'])}, final loss {info['final_loss']:.4f}; model_id {model_id}")
put("distill_steps", info["steps"])
put("distill_minutes", info["train_seconds"] / 60)
put("distill_machine", measure.machine_summary(info["machine"]))
put("model_id", model_id)

# %% [markdown]
# ## The speed sweep
#
# Each speed is a real run of {meth}`~ufkit.early_exit.EarlyExitModel.predict` over the dev split, in batches
# of 32 with compaction. FLOPs are per sentence at its own length: every matrix product (linear layers,
# attention products, classifiers), and, in the last column, only the linear layers, as the paper counts them.

# %%
runs = {s: ee.predict(dev, speed=s, batch_size=BATCH) for s in SPEEDS}
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
# A random sample of dev sentences is timed, one at a time and in batches; each batch runs through every
# configuration before the next, so load from other processes touches all of them alike
# ({func}`~ufkit.measure.measure_latency`). The reference is the plain Hugging Face model.
#
# The rows go to the results store (table `fastbert_latency`), keyed by this machine, the model's weights
# (`model_id`: backbone and branches) and the settings: a rebuild on this machine with the same students reuses
# them, anything else measures again.

# %%
texts = list(subset(task["validation"], N_LATENCY)["text"])
runners = {"full model": model, **{f"speed {s:.1f}": ee.runner(speed=s) for s in SPEEDS},
           **{f"patience {t}": ee.runner(patience=t) for t in PATIENCES}}
settings = f"speeds {list(map(float, SPEEDS))}; patiences {PATIENCES}"


def time_sweep(batch_size):
    return measure_latency(runners, tokenizer, texts, batch_size=batch_size, rounds=LATENCY_ROUNDS, threads=threads,
                           extra={"model_id": model_id})


latency = pd.concat([
    store.load_or_measure("fastbert_latency", lambda b=b: time_sweep(b), model_id=model_id, run="sweep",
                          settings=settings, batch_size=b, n_texts=len(texts), rounds=LATENCY_ROUNDS, threads=threads)
    for b in (1, BATCH)], ignore_index=True)
latency_note = busy_note(latency, "a FastBERT timing")
print(f"timed {latency['date'].min()} .. {latency['date'].max()} on {measure.machine_summary(latency.iloc[0])}; "
      f"{latency_note}")
put("latency_note", latency_note)
put("n_latency", len(texts))
lat = latency.pivot(index="name", columns="batch_size", values="ms_per_seq")
lat.columns = [f"ms/sentence, batch {b}" for b in lat.columns]
for b in (1, BATCH):
    lat[f"speedup, batch {b}"] = lat.loc["full model", f"ms/sentence, batch {b}"] / lat[f"ms/sentence, batch {b}"]
lat = lat.loc[list(runners)]
put("full_ms_b1", lat.loc["full model", "ms/sentence, batch 1"])
put("full_ms_batch", lat.loc["full model", f"ms/sentence, batch {BATCH}"])
lat.round(2)

# %% [markdown]
# The table in the form of FastBERT's README, with measured time beside the FLOPs. It is stored too (table
# `fastbert_sweep`), per machine and model: its accuracy and FLOPs belong to the model, its measured speed-ups to
# this machine.

# %%
def make_table() -> pd.DataFrame:
    t = sweep[["accuracy (%)", "FLOPs (M)", "speedup (FLOPs)"]].copy()
    for b in (1, BATCH):
        t[f"speedup, batch {b}"] = [lat.loc[f"speed {s:.1f}", f"speedup, batch {b}"] for s in sweep.index]
    return t.reset_index()


table = store.load_or_measure("fastbert_sweep", make_table, model_id=model_id, n_dev=len(dev), settings=settings,
                              threads=threads)
table = table.set_index("speed")[["accuracy (%)", "FLOPs (M)", "speedup (FLOPs)", "speedup, batch 1",
                                  f"speedup, batch {BATCH}"]]
put("sweep_table", table.round(2))
table.round(2)

# %% [markdown]
# Other machines' results for the full model, from the store, each labelled with its machine (their model files
# may differ from ours: `model_id`):

# %%
everything = store.read("fastbert_latency")
others = everything[~everything.machine_id.isin(set(latency.machine_id))] if len(everything) else everything
others = others[(others.name == "full model") & others.cpu_model.notna()] if len(others) else others
if len(others):
    others = others.assign(machine=[measure.machine_summary(r) for r in others.to_dict("records")],
                           day=others.date.str[:10])
    display(others.pivot_table(index=["machine", "day"], columns="batch_size", values="ms_per_seq",
                               aggfunc="median").round(2).add_prefix("ms/sentence, batch "))
    other_label = "; ".join(sorted(others.machine.unique()))
else:
    other_label = "none"
    print("no other machine's rows in the store")
put("other_machines", other_label)

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
for b, ls, marker in ((1, "-", "o"), (BATCH, "--", "s")):
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
    ax.axhline(sweep["accuracy (%)"].iloc[0] - BUDGET, color="red", lw=0.8, ls=":",
               label=f"full model − {BUDGET:g} point")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
fig.suptitle(f"FastBERT on MiniLM-L6, SST-2 dev; {measure.machine_summary(machine)}", fontsize=9)
plt.tight_layout()
put("tradeoff_fig", fig)
plt.show()

# %% [markdown]
# Truncation against adaptive exits at a fixed FLOP budget: for each truncation depth, the best entropy speed
# that costs no more FLOPs.

# %%
entropy = points[points.rule == "entropy"]
trunc = points[points.rule == "truncate"].set_index("setting")
rows = []
for k, t in trunc.iterrows():
    cheaper = entropy[entropy.flops_speedup >= t.flops_speedup]
    best = cheaper.loc[cheaper.accuracy.idxmax()] if len(cheaper) else None
    rows.append({"layers kept": int(k), "speedup (FLOPs)": t.flops_speedup, "truncation accuracy (%)": t.accuracy,
                 "best entropy speed at no more FLOPs": best.setting if best is not None else np.nan,
                 "its accuracy (%)": best.accuracy if best is not None else np.nan})
fixed = pd.DataFrame(rows).set_index("layers kept")
full_acc = float(entropy.accuracy.iloc[0])
within = fixed[fixed["truncation accuracy (%)"] >= full_acc - BUDGET]
trunc_k = int(within.index.min())
compared = fixed.dropna()
compared = compared[compared.index < L]
put("trunc_k", trunc_k)
put("trunc_acc", fixed.loc[trunc_k, "truncation accuracy (%)"])
put("trunc_flops_x", fixed.loc[trunc_k, "speedup (FLOPs)"])
put("adaptive_wins", int((compared["its accuracy (%)"] > compared["truncation accuracy (%)"]).sum()))
put("adaptive_ties", int((compared["its accuracy (%)"] == compared["truncation accuracy (%)"]).sum()))
put("n_compared", len(compared))
put("fixed_budget_table", fixed.round(2))
fixed.round(2)

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
# sentences (not the dev split) stays within the budget. We then run that speed on dev and time it beside the
# full model (table `fastbert_latency` again, as a run of its own).

# %%
speed, calib = calibrate_speed(ee, heldout, budget=BUDGET)
chosen = ee.predict(dev, speed=speed, batch_size=BATCH)
timed = store.load_or_measure(
    "fastbert_latency",
    lambda: measure_latency({"full model": model, "calibrated": ee.runner(speed=speed)}, tokenizer, texts,
                            batch_size=1, rounds=LATENCY_ROUNDS, threads=threads, extra={"model_id": model_id}),
    model_id=model_id, run="calibrated", speed=speed, batch_size=1, n_texts=len(texts), rounds=LATENCY_ROUNDS,
    threads=threads)
calib_note = busy_note(timed, "the calibrated timing")
print(calib_note)
ms = timed.set_index("name")["ms_per_seq"]
# the best speed on the dev grid itself (optimistic: chosen on the data it is reported on)
ok = entropy[entropy["accuracy"] >= full_acc - BUDGET]
best_dev = ok.loc[ok["flops_speedup"].idxmax()]
full_dev = runs[0.0].accuracy(y_dev)
result = pd.Series({
    f"calibrated speed (held-out, budget {BUDGET:g} point)": speed,
    "held-out accuracy drop at that speed (points)": calib.set_index("speed").loc[speed, "drop"],
    "full model dev accuracy (%)": full_dev,
    "dev accuracy at that speed (%)": chosen.accuracy(y_dev),
    "accuracy drop (points)": full_dev - chosen.accuracy(y_dev),
    "FLOPs speedup": full_flops / chosen.flops.mean(),
    "FLOPs speedup, linear layers only": runs[0.0].flops_linear.mean() / chosen.flops_linear.mean(),
    "wall-clock speedup, batch 1": ms["full model"] / ms["calibrated"],
    "mean exit layer": chosen.exit_layer.mean(),
    "best dev-grid speed within budget": best_dev["setting"],
    "its FLOPs speedup": best_dev["flops_speedup"],
}, name="FastBERT, MiniLM-L6, SST-2 dev")
for key, value in [("calib_speed", speed), ("calib_heldout_drop", calib.set_index("speed").loc[speed, "drop"]),
                   ("calib_dev_drop", full_dev - chosen.accuracy(y_dev)),
                   ("calib_flops_x", full_flops / chosen.flops.mean()),
                   ("calib_wall_x_b1", ms["full model"] / ms["calibrated"]),
                   ("calib_exit_layer", chosen.exit_layer.mean()),
                   ("best_dev_speed", best_dev["setting"]), ("best_dev_flops_x", best_dev["flops_speedup"])]:
    put(key, value)
print(f"machine: {measure.machine_summary(machine)}")
result.round(3).to_frame()

# %% [markdown]
# ## The numbers the chapter quotes

# %%
t0 = table.loc[0.0]
mid = table.loc[MID_SPEED]
lossless = table[table["accuracy (%)"] >= t0["accuracy (%)"]]
lossless_speed = float(lossless.index.max())
ratio = {b: (table[f"speedup, batch {b}"] / table["speedup (FLOPs)"])[table.index > 0] * 100 for b in (1, BATCH)}
patience1 = points[(points.rule == "patience") & (points.setting == min(PATIENCES))].iloc[0]
for key, value in [("teacher_accuracy", t0["accuracy (%)"]), ("lossless_speed", lossless_speed),
                   ("lossless_flops_x", table.loc[lossless_speed, "speedup (FLOPs)"]),
                   ("mid_speed", MID_SPEED), ("mid_drop", t0["accuracy (%)"] - mid["accuracy (%)"]),
                   ("mid_flops_x", mid["speedup (FLOPs)"]), ("mid_wall_x_b1", mid["speedup, batch 1"]),
                   ("mid_wall_x_batch", mid[f"speedup, batch {BATCH}"]),
                   ("time_vs_flops_b1_lo", ratio[1].min()), ("time_vs_flops_b1_hi", ratio[1].max()),
                   ("time_vs_flops_batch_lo", ratio[BATCH].min()), ("time_vs_flops_batch_hi", ratio[BATCH].max()),
                   ("patience_min", int(min(PATIENCES))), ("patience1_flops_x", patience1.flops_speedup),
                   ("patience1_drop", full_acc - patience1.accuracy),
                   ("mean_tokens", float(np.mean(n_tok))),
                   ("linear_share", 100 * runs[0.0].flops_linear.mean() / full_flops)]:
    put(key, value)
pd.Series({"lossless up to speed": lossless_speed, "measured / FLOP speed-up, batch 1 (%)":
           f"{ratio[1].min():.0f} .. {ratio[1].max():.0f}", f"measured / FLOP speed-up, batch {BATCH} (%)":
           f"{ratio[BATCH].min():.0f} .. {ratio[BATCH].max():.0f}"}).to_frame("value")
