"""End-to-end latency of UltraFastBERT as a model: the masked form the released code runs, ufkit's kernel form, and
the dense twin.

Belcak & Wattenhofer, "Exponentially Faster Language Modelling", 2023, arXiv:2311.10770, measure the FFF layer on
its own. As a whole model the released code is slower than a BERT of its size: pbelcak/UltraFastBERT issue #1 reports
the hub model about 15 % slower end to end than a vanilla BERT of similar size. The reason is in the released
code (``training/cramming/architectures/fff.py``): its FFF computes every one of the 4,095 neurons of a 1x11 tree
and then masks all but the 12 visited, at training and at inference alike, so each layer costs a dense feedforward
of width 4,095 instead of 3,072.

:func:`bench_end_to_end` times three forms of one model of UltraFastBERT-1x11-long's size
(:data:`ULTRAFASTBERT_1X11_LONG`: 16 layers, hidden 768, 12 heads, one tree of depth 11; random weights, which are
fine for timing):

``masked``
    The FFF model in ``eval()`` with backend ``"masked"``: the training form, what the released code runs.
``kernel``
    The same model with ufkit's inference kernels (backend ``"auto"``: the native C++ kernel for float32 on the
    CPU), through the op ``torch.ops.ufkit.fff``.
``dense``
    Its dense twin: the same embedding, attention, norms and weights, and crammedBERT's dense feedforward
    ``Linear -> GELU -> Linear`` of width 3,072 (BERT-base's; ``arch.intermed_type = "dense"``).

The timed call is the encoder (:class:`~ufkit.ultrafastbert.modeling.CrammedBertModel`): token ids `(batch, seq_len)`
in, the last hidden states out. A masked-LM decoder (a 768 x 32,768 product at every position) or a classification
head would add the same cost to every form. Inputs are random token ids (int64) of full length: no padding, no
attention mask, a fresh draw per input. Every form sees every input in turn, interleaved call by call, through
:func:`ufkit.measure.timing.time_calls` (fixed threads, warm-up, the busy-machine check).

:func:`amdahl_bound` is what the FLOPs allow: the end-to-end speedup over the dense twin if the feedforward cost
nothing, and if it cost only the FFF's useful FLOPs.
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import pandas as pd
import torch

from .. import config as ufkit_config
from ..fff.kernels import available_backends, cpu_path
from ..measure.machine import machine_info
from ..measure.store import ResultsStore
from ..measure.timing import summarize, time_calls
from .configuration import CrammedBertConfig, UltraFastBertConfigError, _merge, check_supported
from .modeling import FFF_BACKENDS, CrammedBertModel

__all__ = ["ULTRAFASTBERT_1X11_LONG", "DENSE_WIDTH", "FORMS", "TABLE", "end_to_end_config", "dense_twin",
           "bench_end_to_end", "speedups", "amdahl_bound"]

#: The sizes of ``pbelcak/UltraFastBERT-1x11-long`` as ``arch`` entries of its ``config.json``: 16 layers, hidden 768,
#: 12 heads, vocabulary 32,768, 128 positions, one FFF tree (``intermed_size``) of depth 11 (4,095 neurons, 12 used
#: per token). The other entries are :data:`~ufkit.ultrafastbert.configuration.DEFAULT_ARCH`'s, the same checkpoint's.
ULTRAFASTBERT_1X11_LONG: dict = {
    "num_transformer_layers": 16,
    "hidden_size": 768,
    "embedding": {"embedding_dim": 768, "vocab_size": 32768, "max_seq_length": 128},
    "attention": {"num_attention_heads": 12},
    "intermed_type": "fff",
    "intermed_depth": 11,
    "intermed_size": 1,
}
#: The dense twin's feedforward width: BERT-base's 3,072 (crammedBERT's ``intermed_size``).
DENSE_WIDTH = 3072
#: The forms :func:`bench_end_to_end` times.
FORMS = ("masked", "kernel", "dense")
#: The results-store table of :func:`bench_end_to_end`.
TABLE = "ultrafastbert_e2e"


def end_to_end_config(dense: bool = False, *, num_hidden_layers: int | None = None, hidden_size: int | None = None,
                      num_attention_heads: int | None = None, depth: int | None = None, n_trees: int | None = None,
                      dense_width: int = DENSE_WIDTH, vocab_size: int | None = None,
                      max_seq_length: int | None = None, arch: dict | None = None) -> CrammedBertConfig:
    """The config of an UltraFastBERT-1x11-long-sized model, or of its dense twin, with sizes overridden.

    Args:
        dense: the dense twin (``arch.intermed_type = "dense"``, ``arch.intermed_size = dense_width``) instead of the
            FFF model.
        num_hidden_layers: ``arch.num_transformer_layers`` (default 16).
        hidden_size: ``arch.hidden_size`` and ``arch.embedding.embedding_dim`` (default 768).
        num_attention_heads: default 12 at hidden 768, else ``hidden_size // 64`` (BERT's head size), at least 1.
        depth, n_trees: the FFF trees (defaults 11 and 1); not read for the dense twin.
        dense_width: the dense twin's feedforward width (default :data:`DENSE_WIDTH`, 3,072).
        vocab_size: ``arch.embedding.vocab_size`` (default 32,768).
        max_seq_length: ``arch.embedding.max_seq_length`` (default 128).
        arch: further nested ``arch`` entries, merged last.

    Returns:
        :class:`~ufkit.ultrafastbert.configuration.CrammedBertConfig`.

    Raises:
        UltraFastBertConfigError: sizes the model does not support (e.g. ``hidden_size`` not divisible by the heads),
            named by their ``arch`` entry; raised here rather than when the model is built.
    """
    over = copy.deepcopy(ULTRAFASTBERT_1X11_LONG)
    if num_hidden_layers is not None:
        over["num_transformer_layers"] = num_hidden_layers
    if hidden_size is not None:
        over["hidden_size"] = over["embedding"]["embedding_dim"] = hidden_size
        if num_attention_heads is None:
            num_attention_heads = 12 if hidden_size == 768 else max(1, hidden_size // 64)
    if num_attention_heads is not None:
        over["attention"]["num_attention_heads"] = num_attention_heads
    if depth is not None:
        over["intermed_depth"] = depth
    if n_trees is not None:
        over["intermed_size"] = n_trees
    if vocab_size is not None:
        over["embedding"]["vocab_size"] = vocab_size
    if max_seq_length is not None:
        over["embedding"]["max_seq_length"] = max_seq_length
    if dense:
        over["intermed_type"], over["intermed_size"] = "dense", dense_width
    if arch:
        over = _merge(over, arch)
    config = CrammedBertConfig(arch=over)
    check_supported(config.arch)
    return config


def dense_twin(model: CrammedBertModel, dense_width: int = DENSE_WIDTH, seed: int = 0) -> CrammedBertModel:
    """The dense twin of an FFF model: the same config and tensors except each layer's ``ffn``, which is crammedBERT's
    dense feedforward of width ``dense_width`` (``arch.intermed_type = "dense"``), newly initialised from ``seed``.

    Returns:
        a :class:`~ufkit.ultrafastbert.modeling.CrammedBertModel` in ``model``'s mode, dtype and device.

    Raises:
        UltraFastBertConfigError: ``model`` is itself dense.
    """
    if not model.config.is_fff:
        raise UltraFastBertConfigError(
            f"dense_twin needs an FFF model, got arch.intermed_type = {model.config.arch['intermed_type']!r}")
    arch = copy.deepcopy(model.config.arch)
    arch["intermed_type"], arch["intermed_size"] = "dense", dense_width
    param = next(model.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        twin = CrammedBertModel(CrammedBertConfig(arch=arch)).to(dtype=param.dtype, device=param.device)
    shared = {k: v for k, v in model.state_dict().items() if ".ffn." not in k}
    missing, unexpected = twin.load_state_dict(shared, strict=False)
    assert not unexpected and all(".ffn." in k for k in missing), (missing, unexpected)
    return twin.train(model.training)


def _token_ids(batch: int, seq_len: int, config: CrammedBertConfig, gen: torch.Generator) -> torch.Tensor:
    """`(batch, seq_len)` int64 ids, uniform over the vocabulary without the padding id."""
    vocab, pad = config.vocab_size, config.pad_token_id
    ids = torch.randint(0, vocab - (pad is not None), (batch, seq_len), generator=gen, dtype=torch.int64)
    if pad is not None:
        ids = ids + (ids >= pad).long()  # skip the padding id
    return ids


def _resolve(backend: str) -> str:
    """The backend ``"auto"`` runs for float32 on the CPU (as :func:`ufkit.fff.kernels.fff_forward` picks it)."""
    if backend != "auto":
        return backend
    have = available_backends("cpu")
    return next((b for b in ("native", "mkl") if b in have), "torch_gather")


def _torch_path() -> str:
    return "torch-" + torch.backends.cpu.get_cpu_capability().lower()


def bench_end_to_end(
    batch_sizes: Sequence[int] = (1, 32),
    seq_len: int = 128,
    forms: Sequence[str] = FORMS,
    *,
    n_inputs: int,
    rounds: int,
    n_warmup: int = 1,
    threads: int | None = None,
    table: str | None = None,
    store: ResultsStore | None = None,
    num_hidden_layers: int | None = None,
    hidden_size: int | None = None,
    num_attention_heads: int | None = None,
    depth: int | None = None,
    n_trees: int | None = None,
    dense_width: int = DENSE_WIDTH,
    vocab_size: int | None = None,
    backend: str = "auto",
    seed: int = 0,
    max_seconds: float | None = None,
) -> pd.DataFrame:
    """Time an UltraFastBERT-1x11-long-sized encoder in the masked, kernel and dense forms (module docstring), on CPU.

    Builds the FFF model (random init from ``seed``, ``eval()``, float32) and its dense twin (:func:`dense_twin`),
    then for each batch size draws ``n_inputs`` inputs of token ids `(batch_size, seq_len)` and times every form on
    every input, interleaved, ``rounds`` times (:func:`ufkit.measure.timing.time_calls`).

    Args:
        batch_sizes: sequences per call.
        seq_len: tokens per sequence (all real tokens); ``arch.embedding.max_seq_length`` is raised to it if larger.
        forms: any of :data:`FORMS` (``"masked"``, ``"kernel"``, ``"dense"``), each once.
        n_inputs: distinct inputs per batch size.
        rounds: passes over the inputs; each form is timed ``n_inputs * rounds`` times per batch size.
        n_warmup: untimed calls per form first.
        threads: torch intra-op threads (default :func:`ufkit.config.bench_threads`); restored after.
        table: results-store table to append the rows to (e.g. :data:`TABLE`); None: only return them.
        store: the :class:`~ufkit.measure.store.ResultsStore` to append to (default: the book's); given without
            ``table``, the rows go to :data:`TABLE`.
        num_hidden_layers, hidden_size, num_attention_heads, depth, n_trees, dense_width, vocab_size: the model's
            sizes (see :func:`end_to_end_config`; defaults UltraFastBERT-1x11-long's, dense width 3,072).
        backend: the kernel form's backend (``"auto"``, ``"native"``, ``"mkl"``, ``"torch_gather"``).
        seed: seed of the weights and the inputs.
        max_seconds: per batch size, stop timing once this much time is spent and every form has 3 calls.

    Returns:
        `pandas.DataFrame`, one row per (form, batch size), with ``form``, ``batch_size``, ``seq_len``,
        ``num_hidden_layers``, ``hidden_size``, ``num_attention_heads``, ``vocab_size``, ``intermed_type``
        (``"fff"`` or ``"dense"``), ``intermediate_size`` (neurons per feedforward: K*(2**(D+1) - 1) for the FFF
        forms, the width for dense), ``depth`` and ``n_trees`` (NA for dense), ``fff_backend`` (``"masked"``, the
        kernel backend that ran, or None), ``cpu_path`` (the kernel form's native CPU path,
        :func:`ufkit.fff.kernels.cpu_path`; ``torch-<ATen CPU capability>`` for torch code, ``mkl`` for MKL),
        ``threads``, ``seed``, the latency columns of :func:`ufkit.measure.timing.summarize` in milliseconds per
        call (``latency_ms_mean``, ``latency_ms_std``, ``latency_ms_p50``, ``latency_ms_p95``,
        ``latency_ms_min``, ``n_calls``), ``throughput_seq_per_s`` (sequences per second at the mean latency),
        ``tokens_per_s``, ``max_abs_diff_vs_masked`` (the kernel form's largest difference from the masked form's
        last hidden state on the first input; NA for the others), the load columns (``busy``, ``other_cores``,
        ``attempts``), and the machine (:func:`ufkit.measure.machine.machine_info`, ``machine_id``, ``device``).

    Raises:
        ValueError: an unknown or repeated form, an unknown backend, or a non-positive size or count.
        UltraFastBertConfigError: sizes the model does not support.
    """
    forms = tuple(forms)
    if not forms or len(set(forms)) != len(forms) or any(f not in FORMS for f in forms):
        raise ValueError(f"forms must be distinct names among {FORMS}, got {forms!r}")
    if backend not in FFF_BACKENDS or backend in ("masked", "cuda"):
        raise ValueError(f"backend must be one of 'auto', 'torch_gather', 'native', 'mkl', got {backend!r}")
    if not batch_sizes or any(isinstance(b, bool) or int(b) != b or b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be positive integers, got {batch_sizes!r}")
    for name, value in (("seq_len", seq_len), ("n_inputs", n_inputs), ("rounds", rounds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    threads = int(threads or ufkit_config.bench_threads())
    sizes = dict(num_hidden_layers=num_hidden_layers, hidden_size=hidden_size, num_attention_heads=num_attention_heads,
                 depth=depth, n_trees=n_trees, vocab_size=vocab_size)
    max_len = max(seq_len, ULTRAFASTBERT_1X11_LONG["embedding"]["max_seq_length"])
    cfg = end_to_end_config(**sizes, max_seq_length=max_len)
    end_to_end_config(True, **sizes, dense_width=dense_width, max_seq_length=max_len)  # its errors, before building
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fff_model = CrammedBertModel(cfg).eval()
    dense_model = dense_twin(fff_model, dense_width, seed=seed + 1).eval() if "dense" in forms else None
    resolved = _resolve(backend)
    kernel_path = cpu_path() if resolved == "native" else ("mkl" if resolved == "mkl" else _torch_path())

    def run_fff(ids, mode):
        fff_model.set_fff_backend(mode)
        return fff_model(ids).last_hidden_state

    fns = {"masked": lambda ids: run_fff(ids, "masked"), "kernel": lambda ids: run_fff(ids, backend),
           "dense": lambda ids: dense_model(ids).last_hidden_state}
    fns = {f: fns[f] for f in forms}
    machine = machine_info(threads)
    gen = torch.Generator().manual_seed(seed)
    arch = cfg.arch
    rows = []
    for batch in batch_sizes:
        batch = int(batch)
        inputs = [_token_ids(batch, seq_len, cfg, gen) for _ in range(n_inputs)]
        diff = math.nan
        if "masked" in forms and "kernel" in forms:
            with torch.inference_mode():
                diff = float((run_fff(inputs[0], backend) - run_fff(inputs[0], "masked")).abs().max())
        timing = time_calls(fns, inputs, n_warmup=n_warmup, rounds=rounds, threads=threads, max_seconds=max_seconds)
        for form in forms:
            t = summarize(timing.times_ms[form], batch)
            is_fff = form != "dense"
            rows.append({
                "form": form, "batch_size": batch, "seq_len": seq_len,
                "num_hidden_layers": arch["num_transformer_layers"], "hidden_size": arch["hidden_size"],
                "num_attention_heads": arch["attention"]["num_attention_heads"],
                "vocab_size": arch["embedding"]["vocab_size"],
                "intermed_type": "fff" if is_fff else "dense",
                "intermediate_size": cfg.intermediate_size if is_fff else dense_width,
                "depth": arch["intermed_depth"] if is_fff else None,
                "n_trees": arch["intermed_size"] if is_fff else None,
                "fff_backend": {"masked": "masked", "kernel": resolved}.get(form),
                "cpu_path": kernel_path if form == "kernel" else _torch_path(),
                "threads": threads, "seed": seed,
                **t,
                "tokens_per_s": batch * seq_len / (t["latency_ms_mean"] / 1e3),
                "max_abs_diff_vs_masked": diff if form == "kernel" else math.nan,
                **timing.load_columns(),
                **{k: v for k, v in machine.items() if k != "threads"},
                "device": "cpu",
            })
    df = pd.DataFrame(rows)
    df["depth"] = df["depth"].astype("Int64")
    df["n_trees"] = df["n_trees"].astype("Int64")
    if table is not None or store is not None:
        store = store if store is not None else ResultsStore()
        store.append(table or TABLE, df)
    return df


def speedups(df: pd.DataFrame, stat: str = "latency_ms_mean") -> pd.DataFrame:
    """Speedups over the dense twin per batch size: ``kernel_vs_dense`` and ``masked_vs_dense`` (dense ``stat`` /
    form ``stat``: above 1 is faster than dense), and ``kernel_vs_masked``.

    Args:
        df: :func:`bench_end_to_end`'s rows (or the store's table; repeated rows are averaged).
        stat: ``"latency_ms_mean"``, ``"latency_ms_p50"`` or ``"latency_ms_min"``.

    Returns:
        `pandas.DataFrame`, one row per batch size (and model size, threads and machine where ``df`` holds
        several), with those key columns, the three speedups (NaN where a form is missing) and each form's ``stat``
        (``masked_ms``, ``kernel_ms``, ``dense_ms``).

    Raises:
        ValueError: ``df`` lacks ``form``, ``batch_size`` or ``stat``.
    """
    for col in ("form", "batch_size", stat):
        if col not in df.columns:
            raise ValueError(f"df has no column {col!r}: pass bench_end_to_end's rows")
    keys = [k for k in ("batch_size", "seq_len", "num_hidden_layers", "hidden_size", "threads", "machine_id")
            if k in df.columns]
    wide = df.pivot_table(index=keys, columns="form", values=stat, aggfunc="mean")
    wide = wide.reindex(columns=list(FORMS))
    out = wide.reset_index()
    out.columns.name = None
    out = out.rename(columns={f: f"{f}_ms" for f in FORMS})
    out["kernel_vs_dense"] = out["dense_ms"] / out["kernel_ms"]
    out["masked_vs_dense"] = out["dense_ms"] / out["masked_ms"]
    out["kernel_vs_masked"] = out["masked_ms"] / out["kernel_ms"]
    return out


def amdahl_bound(config: CrammedBertConfig | None = None, *, seq_len: int = 128,
                 dense_width: int = DENSE_WIDTH) -> dict:
    """What FLOPs allow end to end: the encoder's speedup over its dense twin when the feedforward gets cheaper.

    Counted analytically, per sequence of ``seq_len`` tokens, as :func:`ufkit.measure.flops.count_flops` counts a
    forward (matrix products, 2 FLOPs per multiply-add, and attention's two products; LayerNorm, GELU, softmax and
    the embedding are not counted; the tests check the formulas against ``count_flops`` on a small model). Per
    layer, with S = ``seq_len``, H the hidden size, I the dense width, K trees of depth D::

        attention  8 S H^2 (query_key_value, dense) + 4 S^2 H (scores, weighted values)
        dense FFN  4 S H I        masked FFF  4 S H K (2^(D+1) - 1)        FFF useful  4 S H K (D + 1)

    Args:
        config: an FFF config (default: UltraFastBERT-1x11-long's, :func:`end_to_end_config`).
        seq_len: tokens per sequence.
        dense_width: the dense twin's width I.

    Returns:
        dict of per-sequence FLOPs, ``flops_dense`` (the dense twin), ``flops_masked`` (the masked form),
        ``flops_kernel`` (the FFF at its useful FLOPs) and ``flops_ffn_dense`` (the twin's feedforward), and the
        ratios ``ffn_fraction`` (``flops_ffn_dense / flops_dense``), ``bound_ffn_free`` (``1 / (1 - ffn_fraction)``:
        the speedup over the dense twin if the feedforward cost nothing), ``bound_kernel`` (``flops_dense /
        flops_kernel``: if the FFF ran at the dense layers' FLOP rate) and ``masked_vs_dense`` (``flops_dense /
        flops_masked``, below 1: the masked form does more work than the twin).

    Raises:
        UltraFastBertConfigError: ``config`` is dense.
        ValueError: a non-positive ``seq_len`` or ``dense_width``.
    """
    config = config if config is not None else end_to_end_config()
    if not config.is_fff:
        raise UltraFastBertConfigError(
            f"amdahl_bound needs an FFF config, got arch.intermed_type = {config.arch['intermed_type']!r}")
    if seq_len < 1 or dense_width < 1:
        raise ValueError(f"seq_len and dense_width must be positive, got {seq_len} and {dense_width}")
    L, S, H = config.num_hidden_layers, seq_len, config.hidden_size
    K, D = config.fff_n_trees, config.fff_depth
    attention = L * (8 * S * H * H + 4 * S * S * H)
    ffn_dense = L * 4 * S * H * dense_width
    ffn_masked = L * 4 * S * H * K * (2 ** (D + 1) - 1)
    ffn_useful = L * 4 * S * H * K * (D + 1)
    dense, masked, kernel = attention + ffn_dense, attention + ffn_masked, attention + ffn_useful
    fraction = ffn_dense / dense
    return {"flops_dense": dense, "flops_masked": masked, "flops_kernel": kernel, "flops_ffn_dense": ffn_dense,
            "ffn_fraction": fraction, "bound_ffn_free": 1.0 / (1.0 - fraction), "bound_kernel": dense / kernel,
            "masked_vs_dense": dense / masked}
