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
# # Fast feedforward: the numbers
#
# This notebook backs the chapter [Fast feedforward](../book/01_fast_feedforward.md): it builds an
# UltraFastBERT-1x11 feedforward layer, shows that the training form and the inference form compute the same
# function, checks every backend against the reference, and measures the speedup over a dense feedforward
# layer on this machine. All code lives in {mod}`ufkit.fff` ({mod}`ufkit.fff.kernels`, {mod}`ufkit.fff.bench`).
#
# Results are per machine. The sweep's rows live in the results store (table `fff_bench`), labelled with the
# machine they were measured on: this machine's rows are reused when the store has them for the same settings,
# otherwise the sweep runs now and appends them. Other machines' rows are shown beside this machine's, labelled,
# never in its place. `UFKIT_SMOKE=1` runs a tiny sweep whose numbers mean nothing.

# %%
import shutil

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import display

from ufkit import config
from ufkit.fff import FFF, conformance
from ufkit.fff.bench import LADDER, bench_fff, measure_ceilings, speedups
from ufkit.fff.kernels import available_backends, fff_forward
from ufkit.measure import ResultsStore, isa_description, machine_info, machine_summary
from ufkit.measure.report import busy_note, put

pd.set_option("display.width", 160)
torch.manual_seed(0)
H = 768
threads = config.bench_threads()
store = ResultsStore()
print("run size:", config.size())
print("machine:", machine_summary(machine_info(threads)))
print("vector units:", isa_description())






put("run_size", config.size())
put("machine", machine_summary(machine_info(threads)))
put("isa", isa_description())
put("threads", threads)

# %% [markdown]
# ## One layer, 12 of 4,095 neurons
#
# UltraFastBERT-1x11 replaces BERT-base's 3,072-neuron feedforward by one tree of depth 11: 4,095 neurons, of
# which each token visits one per level, 12 in all. The FLOP ratio to a dense layer of the same 4,095 neurons
# is the limit of any speedup. The bytes a token must read (its 12 rows of each weight matrix, float32) give the
# kernel's arithmetic intensity.

# %%
layer = FFF(H, H, depth=11, n_trees=1)
flops = layer.flops_per_token()
visited = layer.n_trees * (layer.depth + 1)
row_bytes = 4 * H  # one float32 row of W_in or of W_out (transposed)
token_bytes = 2 * visited * row_bytes
weight_bytes = 4 * (layer.linear_in.weight.numel() + layer.linear_out.weight.numel())
napkin = pd.Series({
    "neurons (K*N)": layer.width, "visited per token": visited, "hidden size": H,
    "FLOPs per token, dense (M)": flops["dense"] / 1e6, "FLOPs per token, FFF (k)": flops["fff"] / 1e3,
    "FLOP ratio (limit of the speedup)": flops["dense"] / flops["fff"],
    "weight rows read per token (KiB)": token_bytes / 1024, "FLOP per byte read": flops["fff"] / token_bytes,
    "both weight matrices (MB)": weight_bytes / 1e6}, name="UltraFastBERT-1x11 feedforward")
print(layer)
for key, value in [("width", layer.width), ("visited", visited), ("hidden", H), ("depth", layer.depth),
                   ("flops_dense_m", flops["dense"] / 1e6), ("flops_fff_k", flops["fff"] / 1e3),
                   ("flop_ratio", flops["dense"] / flops["fff"]), ("row_kib", row_bytes / 1024),
                   ("token_kib", token_bytes / 1024), ("flop_per_byte", flops["fff"] / token_bytes),
                   ("weights_mb", weight_bytes / 1e6)]:
    put(key, value)
napkin.round(2).to_frame()

# %% [markdown]
# ## Training form = inference form, on real numbers
#
# In `train()` mode the layer computes all 4,095 pre-activations, masks the GELU outputs to the visited nodes
# and multiplies densely (what the paper trains with); in `eval()` mode it touches only the 12 visited nodes.
# Four tokens that look like LayerNorm outputs:

# %%
x = torch.nn.functional.layer_norm(torch.randn(4, H), (H,))
with torch.no_grad():
    y_train = layer.train()(x)
    y_infer = layer.eval()(x)
forms_diff = (y_train - y_infer).abs().max().item()
print("training form,  first 4 outputs of token 0:", [f"{v:+.6f}" for v in y_train[0, :4].tolist()])
print("inference form, first 4 outputs of token 0:", [f"{v:+.6f}" for v in y_infer[0, :4].tolist()])
print(f"max |difference| over 4 x {H} outputs: {forms_diff:.2e}")
print("visited nodes of token 0:", layer.visited_nodes(x)[0, 0].tolist())
put("forms_max_diff", forms_diff)

# %% [markdown]
# Every token visits one node per level. With realistic inputs and a freshly initialised tree the tokens
# spread over each level's nodes; the histogram below counts how many tokens reach each node of levels 3, 7
# and 11.

# %%
n_tok = config.pick(4096, 512)
usage = layer.node_usage(torch.nn.functional.layer_norm(torch.randn(n_tok, H), (H,)))[0]  # (4095,)
fig, axes = plt.subplots(1, 3, figsize=(12, 2.6))
for ax, level in zip(axes, (3, 7, 11)):
    counts = usage[2**level - 1 : 2 ** (level + 1) - 1]
    ax.bar(range(len(counts)), counts.numpy(), width=1.0)
    ax.set_title(f"level {level}: {len(counts)} nodes, {int((counts > 0).sum())} used")
    ax.set_xlabel("node within level")
axes[0].set_ylabel(f"tokens (of {n_tok})")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Every backend against the reference
#
# `fff_reference` is the definition in plain PyTorch. Each backend runs a batch of tokens through the 1x11
# layer; `conformance` compares with the float64 reference: relative error per token (against the size of its
# terms) and the tokens whose route differs (allowed only at a near-tie, a pre-activation within rounding of 0).

# %%
backends = available_backends("cpu")
xs = torch.nn.functional.layer_norm(torch.randn(config.pick(1000, 100), H), (H,))
w_in, b_in, w_out = (p.detach() for p in (layer.linear_in.weight, layer.linear_in.bias, layer.linear_out.weight))
rows = []
for b in backends:
    y, route = fff_forward(xs, w_in, b_in, w_out, 11, 1, backend=b, return_route=True)
    rows.append({"backend": b, **conformance(y, route, xs, w_in, b_in, w_out, 11, 1)})
conf = pd.DataFrame(rows)
put("backends", ", ".join(backends))
put("conformance_tokens", len(xs))
put("conformance_max_err", conf["max_rel_err"].max())
put("conformance_non_tie", int(conf["non_tie_mismatches"].sum()))
conf

# %% [markdown]
# ## The benchmark
#
# The sweep times each backend and the dense baselines with the thread count fixed (`UFKIT_THREADS`, default
# all cores), in three parts: UltraFastBERT's ladder of (trees x depth) at two batch sizes; 1x11 over a range
# of tokens per call; and the same at one thread, which other work on a shared machine disturbs least. Every row
# keeps mean, standard deviation, median and minimum, and the load other processes put on the machine while it
# was timed; the speedups below use medians.
#
# The rows are stored in the results store (`fff_bench`), keyed by this machine and the sweep's settings:
# a rebuild on this machine reuses them, a build on another machine measures its own.

# %%
compiled = [b for b in ("native", "mkl") if b in backends]
dense = ["dense_torch"] + (["dense_mkl"] if "mkl" in backends else [])
ladder_batches = config.pick((128, 2048), (16, 32))
ladder_configs = config.pick(LADDER, [(64, 5), (1, 11)])
batch_sizes = config.pick((1, 128, 2048, 16384), (1, 16, 64))
small_batch = config.pick(128, 16)  # one sentence of 128 tokens (smoke: a smaller one)
settings = (f"ladder of {len(ladder_configs)} at {ladder_batches} tokens x{config.pick(5, 2)}; 1x11 at {batch_sizes} "
            f"tokens x{config.pick(30, 2)}; threads {sorted({threads, 1}, reverse=True)}")


def run_sweep() -> pd.DataFrame:
    parts = []
    for batch, names in ((ladder_batches[0], compiled + ["torch_gather", "dense_torch"]),
                         (ladder_batches[1], [b for b in ("native",) if b in backends] + ["dense_torch"])):
        part = bench_fff(names, configs=ladder_configs, batches=(batch,), threads=threads, n_warmup=1,
                         n_iters=config.pick(5, 2), max_seconds=2.0, dense_widths=(3072,))
        part["sweep"] = "ladder"
        parts.append(part)
    for th in sorted({threads, 1}, reverse=True):
        part = bench_fff(compiled + ["torch_gather"] + dense, configs=[(1, 11)], batches=batch_sizes, threads=th,
                         n_warmup=1, n_iters=config.pick(30, 2), max_seconds=6.0, dense_widths=(3072, 4095))
        part["sweep"] = "batch"
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


df = store.load_or_measure("fff_bench", run_sweep, sweep_threads=threads, sweep_settings=settings)
for col in ("depth", "n_trees"):
    df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
sweep_note = busy_note(df, "an FFF benchmark row", lambda r: f"{r['backend']}, {r['batch']} tokens, "
                                                            f"{r['threads']} threads")
print(f"{len(df)} rows measured {df.date.min()} .. {df.date.max()} on {machine_summary(df.iloc[0])}")
print(sweep_note)
put("sweep_note", sweep_note)
put("sweep_dates", f"{df.date.min()[:10]}" + ("" if df.date.min()[:10] == df.date.max()[:10]
                                              else f" to {df.date.max()[:10]}"))

# %% [markdown]
# ### Speedup of 1x11 over dense
#
# Each row is one backend at one batch size and thread count; `x_4095` is the speedup of medians over the dense
# layer with the same number of neurons (the paper's comparison), `x_3072` over BERT-base's own feedforward,
# and `x_4095_min` the speedup of the fastest calls (what the code does when nothing else runs; on a machine
# that other jobs share, medians are at the mercy of the scheduler).

# %%
b = df[df.sweep == "batch"]
s4095 = speedups(b, "dense_torch", 4095, stat="latency_ms_p50")
s3072 = speedups(b, "dense_torch", 3072, stat="latency_ms_p50")
table = s4095[["threads", "batch", "backend", "latency_ms_mean", "latency_ms_p50", "busy"]].copy()
table["x_4095"] = s4095["speedup"].round(1)
table["x_3072"] = s3072["speedup"].round(1)
table["x_4095_min"] = speedups(b, "dense_torch", 4095, stat="latency_ms_min")["speedup"].round(1)
dense_ms = b[b.backend.str.startswith("dense")].pivot_table(index=["threads", "batch"], columns=["backend", "width"],
                                                              values="latency_ms_p50")
print("dense baselines, median ms per call:")
display(dense_ms.round(2))
table = table.sort_values(["threads", "batch", "latency_ms_p50"]).reset_index(drop=True)
put("speedup_table", table)
table

# %% [markdown]
# ### Side by side with the paper
#
# Belcak & Wattenhofer (2023) report, for UltraFastBERT-1x11 against a dense feedforward of the same width,
# 78x on CPU and 40x for their PyTorch batched-matmul implementation. Our closest rows: the best compiled
# CPU backend and `torch_gather` (the same gather + BMM idea), at the largest batch measured, all threads.
# Other machines' results in the store, if any, stand beside this machine's, each labelled with its machine.

# %%
def paper_rows(rows: pd.DataFrame) -> dict:
    """Best compiled backend and torch_gather at the largest batch and thread count of a batch sweep."""
    rows = rows[rows.sweep == "batch"]
    big, th = int(rows.batch.max()), int(rows.threads.max())
    sp = speedups(rows, "dense_torch", 4095, stat="latency_ms_p50")
    at = sp[(sp.batch == big) & (sp.threads == th)]
    comp = at[at.backend != "torch_gather"]
    best = comp.loc[comp.speedup.idxmax()] if len(comp) else None
    tg = at[at.backend == "torch_gather"]
    return {"big": big, "threads": th, "best": best,
            "best_x": float(best.speedup) if best is not None else float("nan"),
            "gather_x": float(tg.speedup.iloc[0]) if len(tg) else float("nan")}


mine = paper_rows(df)
paper = pd.DataFrame({
    "implementation": ["CPU, compiled", "PyTorch BMM"],
    "paper (x)": [78.0, 40.0],
    "this machine (x)": [round(mine["best_x"], 1), round(mine["gather_x"], 1)],
    "this machine's row": [f"{mine['best'].backend if mine['best'] is not None else 'none'}, {mine['big']} tokens, "
                           f"{mine['threads']} threads", f"torch_gather, {mine['big']} tokens, {mine['threads']} threads"],
}).set_index("implementation")
everything = store.read("fff_bench")
others = everything[~everything.machine_id.isin(set(df.machine_id))]
others = others[others.get("sweep", pd.Series(dtype=str)).eq("batch")] if not others.empty else others
labels = []
if not others.empty:
    for _, rows in others.groupby(["cpu_model", "cpu_flags", "torch_version"], dropna=False):
        r = paper_rows(rows)
        label = machine_summary(rows[rows.threads == r["threads"]].iloc[0])
        paper[f"{label}, {rows.date.min()[:10]}, {r['big']} tokens (x)"] = [round(r["best_x"], 1),
                                                                           round(r["gather_x"], 1)]
        labels.append(label)
print(f"this machine: {machine_summary(machine_info(threads))}")
print("other machines in the store:", "; ".join(labels) if labels else "none")
best_name = mine["best"].backend if mine["best"] is not None else "torch_gather"
put("big_batch", mine["big"])
put("best_backend", best_name)
put("best_x4095_big", mine["best_x"])
put("gather_x4095_big", mine["gather_x"])
put("n_other_machines", len(labels))
put("other_machines", "; ".join(labels) if labels else "none")
put("paper_table", paper)
paper

# %% [markdown]
# The best compiled backend at one sentence's worth of tokens and at the largest batch, against both dense
# widths:

# %%
def best_at(batch: int, width: int) -> float:
    sp = speedups(b, "dense_torch", width, stat="latency_ms_p50")
    sp = sp[(sp.batch == batch) & (sp.threads == mine["threads"]) & (sp.backend == best_name)]
    return float(sp.speedup.iloc[0]) if len(sp) else float("nan")


key_numbers = pd.DataFrame({f"x over dense I={w}": [best_at(small_batch, w), best_at(mine["big"], w)]
                            for w in (4095, 3072)}, index=pd.Index([small_batch, mine["big"]], name="tokens"))
put("small_batch", small_batch)
put("best_x4095_small", best_at(small_batch, 4095))
put("best_x3072_small", best_at(small_batch, 3072))
put("best_x3072_big", best_at(mine["big"], 3072))
key_numbers.round(1)

# %% [markdown]
# ### Speedup vs depth (the ladder)
#
# Deeper trees use fewer neurons per token (K*(D+1) falls from 3,072 at 3072x0 to 12 at 1x11), so the speedup
# over the dense layer grows with depth. Speedups of the fastest call of each row (`latency_ms_min`), the estimate
# least disturbed by other work on the machine; the dashed line is the FLOP ratio, the limit.

# %%
lad = speedups(df[df.sweep == "ladder"], "dense_torch", 3072, stat="latency_ms_min")
fig, axes = plt.subplots(1, lad.batch.nunique(), figsize=(12, 3.2), squeeze=False)
for ax, (batch, g) in zip(axes[0], lad.groupby("batch")):
    for backend, gg in g.groupby("backend"):
        gg = gg.sort_values("depth")
        ax.plot(gg.depth, gg.speedup, marker="o", label=backend)
    limit = g.drop_duplicates("depth").sort_values("depth")
    ax.plot(limit.depth, 3072 / (limit.n_trees * (limit.depth + 1)), "k--", lw=0.8, label="FLOP ratio")
    ax.set_yscale("log")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("depth D (K = trees, K*(2^(D+1)-1) ~ 3072)")
    ax.set_title(f"{batch} tokens: speedup over dense I=3072")
axes[0][0].set_ylabel("speedup (x)")
axes[0][0].legend()
fig.suptitle(machine_summary(machine_info(threads)), fontsize=8)
plt.tight_layout()
put("ladder_fig", fig)
plt.show()

# %% [markdown]
# ### Latency vs batch (1x11)

# %%
bt = b[b.threads == b.threads.max()]
fig, ax = plt.subplots(figsize=(6, 3.6))
for backend, g in bt.groupby(["backend", "width"]):
    g = g.sort_values("batch")
    label = backend[0] if not backend[0].startswith("dense") else f"{backend[0]} I={backend[1]}"
    ax.errorbar(g.batch, g.latency_ms_mean, yerr=g.latency_ms_std, marker="o", label=label, capsize=2)
ax.set_title(f"1x11, {int(bt.threads.max())} threads: mean +- std")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("tokens per call")
ax.set_ylabel("ms per call")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ### Against this machine's ceilings
#
# Useful FLOP/s (only the 12 visited neurons count for FFF) and bytes moved, against a measured memory
# bandwidth (a large copy) and matmul throughput (a float32 matmul). The FFF kernels do too little arithmetic
# per byte to approach the matmul ceiling; the question is how close they come to moving their bytes at the
# memory's speed. The ceilings are stored per machine too (table `fff_ceilings`).

# %%
ceil_size_mb, ceil_n = config.pick(256, 32), config.pick(1024, 256)


def run_ceilings() -> pd.DataFrame:
    return pd.DataFrame([{**measure_ceilings(threads=threads, size_mb=ceil_size_mb, n=ceil_n),
                          **machine_info(threads)}])


ceil_rows = store.load_or_measure("fff_ceilings", run_ceilings, threads=threads, size_mb=ceil_size_mb, n=ceil_n)
ceil = ceil_rows.iloc[-1]
ceil_note = busy_note(ceil_rows, "the ceilings", lambda r: "copy and matmul")
print(f"ceilings: memory {ceil['mem_gbytes_per_s']:.1f} GB/s, matmul {ceil['matmul_gflops']:.1f} GFLOP/s "
      f"({ceil['threads']} threads, {ceil['date']}); {ceil_note}")
put("mem_gbps", ceil["mem_gbytes_per_s"])
put("matmul_gflops", ceil["matmul_gflops"])
native_big = bt[(bt.backend == best_name) & (bt.batch == bt.batch.max())]
put("best_gbps_big", float(native_big.gbytes_per_s.iloc[0]) if len(native_big) else float("nan"))
fig, axes = plt.subplots(1, 2, figsize=(12, 3.4))
for backend, g in bt.groupby(["backend", "width"]):
    g = g.sort_values("batch")
    label = backend[0] if not backend[0].startswith("dense") else f"{backend[0]} I={backend[1]}"
    axes[0].plot(g.batch, g.gflops, marker="o", label=label)
    axes[1].plot(g.batch, g.gbytes_per_s, marker="o", label=label)
axes[0].axhline(ceil["matmul_gflops"], color="k", ls="--", label="matmul ceiling")
axes[1].axhline(ceil["mem_gbytes_per_s"], color="k", ls="--", label="memory ceiling")
for ax, unit in zip(axes, ("useful GFLOP/s", "GB/s (weights once + x + y)")):
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens per call")
    ax.set_ylabel(unit)
axes[0].legend(fontsize=7)
plt.tight_layout()
plt.show()
others_ceil = store.read("fff_ceilings")
others_ceil = others_ceil[~others_ceil.machine_id.isin(set(ceil_rows.machine_id))]
if len(others_ceil):
    others_ceil.insert(0, "machine", [machine_summary(r) for r in others_ceil.to_dict("records")])
    display(others_ceil[["machine", "date", "mem_gbytes_per_s", "matmul_gflops"]].round(1))

# %% [markdown]
# ## On a GPU
#
# The CUDA kernels (`cuda/fff_cuda.cu`) are compiled with `nvcc` on first use. On a machine with a GPU,
# `python scripts/check_fff_cuda.py` checks them against the reference and writes `fff_bench_cuda.csv` into the
# results folder ({func}`ufkit.config.results_dir`); its rows are shown here, labelled with the GPU they ran on.

# %%
has_gpu = torch.cuda.is_available()
nvcc = shutil.which("nvcc")
gpu_here = (f"this machine has a GPU ({torch.cuda.get_device_name(0)})" if has_gpu
            else "this machine has no GPU that torch can use")
gpu_here += "; nvcc is " + ("installed" if nvcc else "not installed")
print(gpu_here)
gpu_path = config.results_dir() / "fff_bench_cuda.csv"
if gpu_path.exists():
    g = pd.read_csv(gpu_path)
    if "mean_ms" in g:  # rows timed with CUDA events by the script (cuda_v1) carry their mean as mean_ms
        own = g["mean_ms"].notna()
        g.loc[own, "latency_ms_mean"] = g.loc[own, "mean_ms"]
        g.loc[own, ["latency_ms_std", "latency_ms_p50", "latency_ms_min"]] = np.nan
    sp = speedups(g, "dense_torch", 4095, stat="latency_ms_mean")
    sp = sp[sp.depth == 11]
    devices = sorted(g["device"].dropna().unique())
    gpu_results = (f"the results folder holds GPU rows from {', '.join(devices)} "
                   f"({g['date'].min()[:10]})")
    display(sp[["device", "backend", "batch", "latency_ms_mean", "speedup", "torch_version", "date"]].round(3))
else:
    gpu_results = "the results folder holds no GPU rows yet"
print(gpu_results)
put("gpu_here", gpu_here)
put("gpu_results", gpu_results)

# %%
print("machine:", machine_summary(machine_info(threads)))
