"""Stage 2a: a latency table of sub-architectures on this CPU, in float32 and int8, and predictors fitted to it.

Bigger&Faster (Chai et al. 2022, arXiv:2209.12127) times sub-architectures on the target hardware, quantized to
int8 and not, and trains a latency predictor, as AutoTinyBERT (Yin et al., ACL 2021) does for float32; the search
then asks the predictor, not the clock. Two predictors are here:

* :class:`MLPLatencyPredictor`: the papers' kind, a small MLP on the three normalized sizes, fitted on
  ``log(latency_ms)`` (so that it minimises relative, not absolute, error);
* :class:`LinearLatencyPredictor`: least squares on FLOP-like terms at the table's sequence length
  (``L h^2`` for the four attention projections, ``L h f`` for the feedforward matrices, ``L h`` for the attention
  products and elementwise work on the residual stream, ``L f`` for GELU, ``L`` for per-layer overhead, ``h^2`` for
  the pooler, ``h`` for embeddings, and a constant), weighted by ``1/latency`` for the same reason.

Latency depends on the shapes, not on the weights' values, so a table can be measured from random weights of the
right shapes (a ``BertConfig``) as well as from slices of a trained super-model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from .space import ARCH_FIELDS, ArchConfig, NasError, SearchSpace
from ..measure.timing import time_calls
from ..training import TrainConfig, train_loop
from ..quantization.torch_int8 import quantize_int8
from .supernet import SuperBert, sub_config

QUANTS = ("fp32", "int8")


def _check_quants(quant) -> tuple[str, ...]:
    quants = (quant,) if isinstance(quant, str) else tuple(quant)
    bad = [q for q in quants if q not in QUANTS]
    if bad or not quants:
        raise NasError(f"quant must be one of {list(QUANTS)} (or a list of them), got {quant!r}")
    return quants


def build_model(arch: ArchConfig, source, quant: str = "fp32") -> nn.Module:
    """The sub-model ``arch`` as a Hugging Face model in eval mode, int8-quantized if ``quant == "int8"``.

    Args:
        source: a :class:`~ufkit.nas.supernet.SuperBert` (the slice's trained weights) or a base ``BertConfig``
            (random weights of the right shapes: enough for timing).

    Raises:
        NasError: an unknown ``quant`` or ``source``.
    """
    from transformers import BertForSequenceClassification

    from ..models import _quiet_transformers

    (quant,) = _check_quants(quant)
    if isinstance(source, SuperBert):
        model = source.extract(arch)
    elif hasattr(source, "hidden_size") and hasattr(source, "to_dict"):
        with torch.random.fork_rng(), _quiet_transformers():  # seeded weights, the caller's random state untouched
            torch.manual_seed(0)
            model = BertForSequenceClassification(sub_config(source, arch)).eval()
    else:
        raise NasError(f"source must be a SuperBert or a BertConfig, got {type(source).__name__}")
    return quantize_int8(model) if quant == "int8" else model


def _default_batch(vocab_size: int, batch_size: int, seq_len: int, seed: int) -> dict:
    """Seeded random token ids, no padding: a dense encoder's time depends on the shape, not on which tokens."""
    g = torch.Generator().manual_seed(seed)
    lo = min(1000, vocab_size - 1)  # past BERT's special and unused tokens
    ids = torch.randint(lo, vocab_size, (batch_size, seq_len), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def time_architecture(arch: ArchConfig, source, *, quant="int8", seq_len: int = 128, batch_size: int = 1,
                    threads: int | None = None, n_warmup: int = 5, n_repeats: int = 20, batch: dict | None = None,
                    seed: int = 0, reference_model: nn.Module | None = None) -> pd.DataFrame:
    """Time one sub-architecture's forward pass: ``n_warmup`` untimed calls, then the median of ``n_repeats``.

    The model is built by :func:`build_model` (a plain Hugging Face model, int8 by ``torch.ao`` dynamic quantization
    for ``"int8"``) and called under ``torch.inference_mode`` at a fixed batch size and sequence length; each call is
    timed with ``time.perf_counter``. With several quantizations the models take turns call by call.

    Args:
        arch: the sub-architecture.
        source: a :class:`~ufkit.nas.supernet.SuperBert` or a base ``BertConfig`` (see :func:`build_model`).
        quant: ``"fp32"``, ``"int8"`` or a list of both.
        seq_len, batch_size: the input's shape (batch 1 at 128 tokens by default).
        threads: torch intra-op threads (default :func:`ufkit.config.bench_threads`); restored after.
        batch: the inputs (e.g. :func:`ufkit.measure.make_batches` of real sentences); default: random token ids of
            the given shape.
        reference_model: a model timed in the same turns; its median is the ``reference_ms`` column.

    Returns:
        `pandas.DataFrame`, one row per quantization: the arch's fields, ``quant``, ``seq_len``, ``batch_size``,
        ``threads``, ``n_repeats``, ``latency_ms`` (median), ``latency_ms_min``, ``latency_ms_iqr`` (p75 - p25).

    Raises:
        NasError: an unknown ``quant``, or a non-positive ``seq_len``/``batch_size``/``threads``/``n_repeats``.
    """
    from .. import config

    quants = _check_quants(quant)
    threads = config.bench_threads() if threads is None else threads
    for name, v, lo in (("seq_len", seq_len, 1), ("batch_size", batch_size, 1), ("threads", threads, 1),
                        ("n_repeats", n_repeats, 1), ("n_warmup", n_warmup, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise NasError(f"{name} must be an integer >= {lo}, got {v!r}")
    base = source.config if isinstance(source, SuperBert) else source
    if batch is None:
        if seq_len > base.max_position_embeddings:
            raise NasError(f"seq_len={seq_len} exceeds the model's max_position_embeddings="
                           f"{base.max_position_embeddings}")
        batch = _default_batch(base.vocab_size, batch_size, seq_len, seed)
    models = {q: build_model(arch, source, q) for q in quants}
    if reference_model is not None:  # timed in the same turns, so that it sees the same machine
        models["reference"] = reference_model
    timing = time_calls({k: (lambda b, m=m: m(**b)) for k, m in models.items()}, [batch] * n_repeats,
                        n_warmup=n_warmup, threads=threads)
    times = dict(timing.times_ms)
    ref = times.pop("reference", None)
    shape = batch["input_ids"].shape
    rows = []
    for q, t in times.items():
        rows.append({**arch.to_dict(), "quant": q, "seq_len": int(shape[1]), "batch_size": int(shape[0]),
                     "threads": threads, "n_repeats": n_repeats, "latency_ms": float(np.median(t)),
                     "latency_ms_min": float(t.min()),
                     "latency_ms_iqr": float(np.percentile(t, 75) - np.percentile(t, 25)),
                     **({"reference_ms": float(np.median(ref))} if ref is not None else {}),
                     **timing.load_columns()})
    return pd.DataFrame(rows)


def sample_archs(space: SearchSpace, n: int, seed: int = 0) -> list[ArchConfig]:
    """``n`` distinct architectures: the largest, the smallest and ``n - 2`` drawn uniformly without replacement
    (all of them when ``n >= len(space)``), so a table always spans the whole latency range."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise NasError(f"n must be a positive integer, got {n!r}")
    every = list(space)
    if n >= len(every):
        return every
    ends = [space.largest, space.smallest][:n]
    rest = [a for a in every if a not in ends]
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(rest), size=n - len(ends), replace=False)
    return ends + [rest[i] for i in sorted(picked)]


def build_latency_dataset(archs, source, *, space: SearchSpace | None = None, quant=QUANTS, seq_len: int = 128,
                          batch_size: int = 1, threads: int | None = None, n_warmup: int = 5, n_repeats: int = 20,
                          rounds: int = 1, batch: dict | None = None, path: str | Path | None = None, seed: int = 0,
                          reference: ArchConfig | None = None, progress: bool = True) -> pd.DataFrame:
    """A latency table: every architecture timed in every quantization (:func:`time_architecture`).

    Architectures are timed in a seeded random order, so that a slow spell of the machine does not fall on one
    size range; with ``rounds > 1`` the whole table is timed again in other orders and each latency is the median
    of the rounds' medians (on a machine shared with other work, load varies over minutes, which repeats within one
    round cannot average out). With ``path`` the table is a CSV file loaded if present: it is reused when it holds
    the same architectures, settings and CPU model (recorded in ``<path>.json`` beside it) and measured again
    otherwise.

    Args:
        archs: a list of :class:`ArchConfig`, or an int ``n`` for :func:`sample_archs` of ``space``.
        source: a :class:`~ufkit.nas.supernet.SuperBert` or a base ``BertConfig``.
        space: the space to sample from (default: the super-model's, or :meth:`SearchSpace.from_config`).
        quant, seq_len, batch_size, threads, n_warmup, n_repeats, batch: as in :func:`time_architecture`.
        rounds: passes over the whole table.
        reference: a fixed architecture timed in float32 in the same turns as every measurement. The machine's speed drifts
            over minutes (on a shared virtual machine by 15 to 20 %), alike for every model; each latency is scaled
            by ``median(reference) / reference now``, which divides that drift out. ``latency_ms_raw`` keeps the
            unscaled median and ``reference_ms`` the reference's time beside it.
        path: CSV file to load from or write to (None: measure, store nothing).

    Returns:
        `pandas.DataFrame`, one row per (architecture, quantization), with :func:`time_architecture`'s columns
        (``latency_ms``: median over rounds of the median of ``n_repeats`` calls; ``latency_ms_min``: the fastest
        call; ``latency_ms_iqr``: median over rounds), ``rounds`` and the :func:`ufkit.measure.machine_info` columns.

    Raises:
        NasError: no architectures, ``rounds < 1``, or the errors of :func:`time_architecture`.
    """
    from ..progress import progress_bar

    from .. import config
    from ..measure.machine import machine_info

    quants = _check_quants(quant)
    threads = config.bench_threads() if threads is None else threads
    if isinstance(archs, (int, np.integer)) and not isinstance(archs, bool):
        if space is None:
            space = source.space if isinstance(source, SuperBert) else SearchSpace.from_config(source)
        archs = sample_archs(space, int(archs), seed)
    archs = list(archs)
    if not archs:
        raise NasError("archs is empty: a latency table needs at least one architecture")
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise NasError(f"rounds must be a positive integer, got {rounds!r}")
    machine = machine_info(threads)
    recipe = {"archs": [a.short() for a in archs], "quant": list(quants), "seq_len": seq_len, "batch_size": batch_size,
              "threads": threads, "n_warmup": n_warmup, "n_repeats": n_repeats, "rounds": int(rounds),
              "cpu_model": machine["cpu_model"],
              "torch_version": machine["torch_version"], "custom_batch": batch is not None,
              **({"reference": reference.short()} if reference is not None else {})}
    if path is not None:
        path = Path(path)
        meta = Path(str(path) + ".json")
        if path.is_file() and meta.is_file() and json.loads(meta.read_text()).get("recipe") == recipe:
            return pd.read_csv(path)
    rng = np.random.default_rng(seed)
    parts = {i: [] for i in range(len(archs))}
    bar = progress_bar(total=rounds * len(archs), desc="latency table", disable=not progress)
    ref_model = build_model(reference, source, "fp32") if reference is not None else None
    if ref_model is not None and batch is None:
        batch = _default_batch((source.config if isinstance(source, SuperBert) else source).vocab_size, batch_size,
                               seq_len, seed)
    for _ in range(rounds):
        for i in rng.permutation(len(archs)):
            parts[i].append(time_architecture(archs[i], source, quant=quants, seq_len=seq_len, batch_size=batch_size,
                                            threads=threads, n_warmup=n_warmup, n_repeats=n_repeats, batch=batch,
                                            seed=seed, reference_model=ref_model))
            bar.update(1)
    bar.close()
    if ref_model is not None:  # divide the machine's drift out: scale every run to the reference's median
        typical = float(np.median([p["reference_ms"].iloc[0] for runs in parts.values() for p in runs]))
        for runs in parts.values():
            for p in runs:
                p["latency_ms_raw"] = p["latency_ms"]
                scale = typical / p["reference_ms"]
                for col in ("latency_ms", "latency_ms_min", "latency_ms_iqr"):
                    p[col] = p[col] * scale
    rows = []
    for i in range(len(archs)):
        runs = pd.concat(parts[i], ignore_index=True)
        spec = dict(latency_ms=("latency_ms", "median"), latency_ms_min=("latency_ms_min", "min"),
                    latency_ms_iqr=("latency_ms_iqr", "median"))
        if ref_model is not None:
            spec.update(latency_ms_raw=("latency_ms_raw", "median"), reference_ms=("reference_ms", "median"))
        # a busy round makes the row busy; attempts add up over the rounds
        spec.update(busy=("busy", "any"), other_cores=("other_cores", "max"), attempts=("attempts", "sum"))
        agg = runs.groupby("quant", sort=False).agg(**spec)
        first = runs.drop_duplicates("quant").set_index("quant")
        first[list(spec)] = agg
        rows.append(first.reset_index())
    df = pd.concat(rows, ignore_index=True)
    df.insert(df.columns.get_loc("n_repeats") + 1, "rounds", int(rounds))
    for k, v in machine.items():
        if k not in df.columns:
            df[k] = v
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(path, index=False)
        meta.write_text(json.dumps({"recipe": recipe, "machine": machine}, indent=2))
    return df


def archs_of(df: pd.DataFrame, head_size: int | None = None) -> list[ArchConfig]:
    """The architectures of a table's rows (``num_attention_heads`` gives the head size when present)."""
    out = []
    cols = list(ARCH_FIELDS) + (["num_attention_heads"] if "num_attention_heads" in df else [])
    for row in df[cols].itertuples(index=False):
        l, h, f = int(row[0]), int(row[1]), int(row[2])
        hs = head_size or (h // int(row[3]) if len(row) > 3 else 32)
        out.append(ArchConfig(l, h, f, hs))
    return out


def split_archs(df: pd.DataFrame, test_fraction: float = 0.2, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a latency table by architecture (all quantizations of an architecture fall on the same side).

    Returns:
        ``(train, test)`` DataFrames.

    Raises:
        NasError: ``test_fraction`` outside ``(0, 1)`` or fewer than two architectures.
    """
    if not 0 < test_fraction < 1:
        raise NasError(f"test_fraction must be in (0, 1), got {test_fraction}")
    keys = df[list(ARCH_FIELDS)].drop_duplicates().reset_index(drop=True)
    if len(keys) < 2:
        raise NasError(f"need at least 2 architectures to split, got {len(keys)}")
    n_test = min(len(keys) - 1, max(1, round(test_fraction * len(keys))))
    test_idx = np.random.default_rng(seed).permutation(len(keys))[:n_test]
    test_keys = keys.iloc[np.sort(test_idx)]
    is_test = df.set_index(list(ARCH_FIELDS)).index.isin(test_keys.set_index(list(ARCH_FIELDS)).index)
    return df[~is_test].reset_index(drop=True), df[is_test].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- predictors


def _as_archs(archs) -> list[ArchConfig]:
    if isinstance(archs, ArchConfig):
        return [archs]
    if isinstance(archs, pd.DataFrame):
        return archs_of(archs)
    return list(archs)


def linear_features(archs) -> np.ndarray:
    """FLOP-like terms of each architecture at a fixed sequence length: shape ``(n, 8)``, columns
    ``L h^2, L h f, L h, L f, L, h^2, h, 1`` (see :data:`LINEAR_FEATURE_NAMES` and the module docstring)."""
    a = np.array([[x.num_hidden_layers, x.hidden_size, x.intermediate_size] for x in _as_archs(archs)],
                 dtype=np.float64)
    L, h, f = a[:, 0], a[:, 1], a[:, 2]
    return np.stack([L * h * h, L * h * f, L * h, L * f, L, h * h, h, np.ones_like(L)], axis=1)


#: Names of the columns of :func:`linear_features`.
LINEAR_FEATURE_NAMES = ("L*h^2", "L*h*f", "L*h", "L*f", "L", "h^2", "h", "1")


class LatencyPredictor:
    """Predicted ``latency_ms`` of architectures for one quantization and sequence length.

    Attributes:
        kind: ``"linear"`` or ``"mlp"``.
        quant, seq_len, batch_size, threads: what the training table measured.
    """

    kind = "base"

    def __init__(self, quant: str, seq_len: int, batch_size: int, threads: int | None):
        self.quant, self.seq_len, self.batch_size, self.threads = quant, seq_len, batch_size, threads

    def predict(self, archs) -> np.ndarray:
        """Predicted latency in ms, shape ``(n,)``, for a list of :class:`ArchConfig` (or a table's rows)."""
        raise NotImplementedError

    def __call__(self, arch: ArchConfig) -> float:
        return float(self.predict([arch])[0])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(quant={self.quant!r}, seq_len={self.seq_len}, threads={self.threads})"


class LinearLatencyPredictor(LatencyPredictor):
    """Least squares on :func:`linear_features`, rows weighted by ``1/latency`` (minimises relative error).

    Attributes:
        coef: `numpy.ndarray` of shape ``(8,)``, ms per unit of each feature (:data:`LINEAR_FEATURE_NAMES`).
    """

    kind = "linear"

    def fit(self, archs, latency_ms: np.ndarray) -> "LinearLatencyPredictor":
        X, y = linear_features(archs), np.asarray(latency_ms, dtype=np.float64)
        w = 1.0 / y
        scale = np.abs(X).max(0)
        scale[scale == 0] = 1.0  # columns are scaled to [0, 1] so that lstsq's rank cut-off treats them alike
        coef, *_ = np.linalg.lstsq((X / scale) * w[:, None], y * w, rcond=None)
        self.coef = coef / scale
        return self

    def predict(self, archs) -> np.ndarray:
        return linear_features(archs) @ self.coef


class _MLP(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


class MLPLatencyPredictor(LatencyPredictor):
    """A small MLP (3 -> hidden -> hidden -> 1, SiLU) on ``(L, h, f)`` divided by their largest values, predicting
    the standardized ``log(latency_ms)``; full-batch AdamW (:func:`ufkit.training.train_loop`) with a cosine-decayed learning rate, seeded. Its size
    and step count are kept small on purpose: on a hundred noisy timings a 64-wide MLP trained for 2,000 steps
    reached 7 % error on its training architectures and 20-27 % on held-out ones; 32 wide and 500 steps, 9 % on both.

    AutoTinyBERT and Bigger&Faster use such an MLP on the architecture's encoding; on a few hundred points it
    learns the smooth, almost multiplicative latency surface without being told which products matter.
    """

    kind = "mlp"

    def fit(self, archs, latency_ms: np.ndarray, *, hidden: int = 32, steps: int = 500, learning_rate: float = 1e-2,
            weight_decay: float = 1e-5, seed: int = 0) -> "MLPLatencyPredictor":
        archs = _as_archs(archs)
        X = np.array([[a.num_hidden_layers, a.hidden_size, a.intermediate_size] for a in archs], dtype=np.float64)
        self.x_scale = X.max(0)
        y = np.log(np.asarray(latency_ms, dtype=np.float64))
        self.y_mean, self.y_std = float(y.mean()), float(y.std() or 1.0)
        with torch.random.fork_rng():  # seeded init that leaves the caller's random state alone
            torch.manual_seed(seed)
            self.net = _MLP(hidden).double()
        xt = torch.from_numpy(X / self.x_scale)
        yt = torch.from_numpy((y - self.y_mean) / self.y_std)
        full_batch = [(xt, yt)]  # one batch, every step: full-batch training
        cfg = TrainConfig(learning_rate=learning_rate, max_steps=steps, batch_size=len(xt), warmup_ratio=0.0,
                          weight_decay=weight_decay, max_grad_norm=1e9, seed=seed, mixed_precision="no",
                          lr_scheduler_type="cosine", log_every=steps)
        with torch.random.fork_rng():  # the loop seeds globally; leave the caller's random state alone
            history = train_loop(self.net, full_batch, lambda b: ((self.net(b[0]) - b[1]) ** 2).mean(), cfg,
                                 desc="latency predictor", progress=False)
        self.final_loss = history["final_loss"]
        return self

    def predict(self, archs) -> np.ndarray:
        archs = _as_archs(archs)
        X = np.array([[a.num_hidden_layers, a.hidden_size, a.intermediate_size] for a in archs], dtype=np.float64)
        with torch.no_grad():
            z = self.net(torch.from_numpy(X / self.x_scale)).numpy()
        return np.exp(z * self.y_std + self.y_mean)


def _select(df: pd.DataFrame, quant: str, seq_len: int | None) -> tuple[pd.DataFrame, int]:
    (quant,) = _check_quants(quant)
    if df is None or len(df) == 0:
        raise NasError("the latency table is empty")
    missing = [c for c in (*ARCH_FIELDS, "quant", "seq_len", "latency_ms") if c not in df.columns]
    if missing:
        raise NasError(f"the latency table lacks columns {missing} (expected build_latency_dataset's output)")
    part = df[df["quant"] == quant]
    if part.empty:
        raise NasError(f"the latency table has no rows with quant={quant!r}; it has {sorted(df['quant'].unique())}")
    lens = sorted(part["seq_len"].unique().tolist())
    if seq_len is None:
        if len(lens) > 1:
            raise NasError(f"the table has several sequence lengths {lens}: pass seq_len=")
        seq_len = lens[0]
    part = part[part["seq_len"] == seq_len]
    if part.empty:
        raise NasError(f"no rows with seq_len={seq_len}; the table has {lens}")
    return part, int(seq_len)


def fit_predictor(df: pd.DataFrame, kind: str = "mlp", *, quant: str = "int8", seq_len: int | None = None,
                  column: str = "latency_ms", seed: int = 0, **kwargs) -> LatencyPredictor:
    """Fit a latency predictor to the rows of a latency table with one quantization and sequence length.

    Args:
        df: :func:`build_latency_dataset`'s table (or its training part, :func:`split_archs`).
        kind: ``"mlp"`` (:class:`MLPLatencyPredictor`) or ``"linear"`` (:class:`LinearLatencyPredictor`).
        quant: ``"fp32"`` or ``"int8"``.
        seq_len: which sequence length (needed only when the table has several).
        column: the latency to learn (``"latency_ms"``, the median; ``"latency_ms_min"``, the fastest call).
        kwargs: passed to the MLP's ``fit`` (``hidden``, ``steps``, ``learning_rate``).

    Raises:
        NasError: an unknown ``kind`` or ``quant``, an empty selection, or fewer than 2 rows.
    """
    if kind not in ("mlp", "linear"):
        raise NasError(f"kind must be 'mlp' or 'linear', got {kind!r}")
    part, seq_len = _select(df, quant, seq_len)
    if len(part) < 2:
        raise NasError(f"need at least 2 timed architectures to fit a predictor, got {len(part)}")
    bs = int(part["batch_size"].iloc[0]) if "batch_size" in part else 1
    threads = int(part["threads"].iloc[0]) if "threads" in part else None
    if column not in part.columns:
        raise NasError(f"the latency table has no column {column!r}")
    archs, y = archs_of(part), part[column].to_numpy()
    if kind == "linear":
        return LinearLatencyPredictor(quant, seq_len, bs, threads).fit(archs, y)
    return MLPLatencyPredictor(quant, seq_len, bs, threads).fit(archs, y, seed=seed, **kwargs)


def mape(predictor: LatencyPredictor | Callable, df: pd.DataFrame) -> float:
    """Mean absolute percentage error (%) of a predictor on a latency table's rows of its quantization and length.

    Raises:
        NasError: the table has no matching rows.
    """
    if isinstance(predictor, LatencyPredictor):
        part, _ = _select(df, predictor.quant, predictor.seq_len)
        pred = predictor.predict(archs_of(part))
    else:
        part = df
        pred = np.array([predictor(a) for a in archs_of(part)])
    y = part["latency_ms"].to_numpy()
    return float(100.0 * np.mean(np.abs(pred - y) / y))
