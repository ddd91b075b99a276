"""Stage 2b: evolutionary search for the most accurate int8 sub-model within a latency window, and its baselines.

Bigger&Faster (Chai et al. 2022, arXiv:2209.12127) searches the super-model's sub-architectures with an
evolutionary algorithm whose fitness is the accuracy of the *int8-quantized* sub-model and whose candidates must
have a predicted int8 latency inside ``[0.85 C, 1.1 C]`` for a target ``C``: a sub-model much faster than the target
wastes budget, one slower breaks it. Population 25, explore rate 0.5, parents by fitness roulette, children by
mutating the number of layers, the hidden size and the feedforward size.

:func:`search` is that loop; :func:`make_fitness` builds the fitness (extract, quantize, measure accuracy on
held-out sentences); :func:`baseline_archs` lists the hand-made families the search must beat (fewer layers, or
every layer narrower) and :func:`pareto_front` marks the best trade-offs.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .space import ARCH_FIELDS, ArchConfig, NasError, SearchSpace


# ------------------------------------------------------------------------------------------------- fitness


def accuracy(model, tokenizer, dataset, *, batch_size: int = 64, max_length: int = 128) -> float:
    """Accuracy (%) of a sequence classifier on a labeled split (:func:`ufkit.evaluate.evaluate`).

    Args:
        model: a Hugging Face classifier (float or int8), or a callable taking the batch's tensors as keywords and
            returning logits.
        dataset (`datasets.Dataset`): ``text`` and ``label`` (raw) or already tokenised.
    """
    from ..evaluate import evaluate

    return float(evaluate(model, tokenizer, dataset, batch_size=batch_size, max_length=max_length)["accuracy"])


def make_fitness(supernet, tokenizer, dataset, *, quant: str = "int8", batch_size: int = 64,
                 max_length: int = 128, threads: int | None = None) -> Callable[[ArchConfig], float]:
    """The search's fitness: accuracy (%) of the sub-model ``arch`` extracted from ``supernet``, int8-quantized by
    default (:func:`~ufkit.quantization.torch_int8.quantize_int8`), on ``dataset``.

    Use held-out *training* sentences for ``dataset``: the dev split is for the final report, and a search that
    selects on it reports an optimistic number.

    Args:
        supernet: a :class:`~ufkit.nas.supernet.SuperBert`.
        dataset (`datasets.Dataset`): labeled sentences; tokenised once here.
        quant: ``"int8"`` or ``"fp32"``.
        threads: torch threads while evaluating (default: leave as is).

    Raises:
        NasError: an unknown ``quant`` or an unlabeled dataset.
    """
    from ..data import tokenize
    from ..measure.timing import num_threads
    from ..quantization.torch_int8 import quantize_int8

    if quant not in ("fp32", "int8"):
        raise NasError(f"quant must be 'fp32' or 'int8', got {quant!r}")
    tok = dataset if "input_ids" in dataset.column_names else tokenize(dataset, tokenizer, max_length)
    if len(tok) == 0 or min(tok["label"]) < 0:
        raise NasError("the fitness needs labeled sentences (found none, or label -1)")

    def fitness(arch: ArchConfig) -> float:
        with num_threads(threads or None):
            model = supernet.extract(arch)
            if quant == "int8":
                model = quantize_int8(model)
            return accuracy(model, tokenizer, tok, batch_size=batch_size)

    return fitness


# -------------------------------------------------------------------------------------------------- search


@dataclass
class SearchResult:
    """What :func:`search` returns.

    Attributes:
        history: `pandas.DataFrame`, one row per individual of every generation's population: ``generation``
            (0 = the initial population), the arch's fields, ``predicted_latency_ms``, ``fitness``.
        best: the fittest architecture seen.
        best_fitness, best_predicted_latency_ms: its fitness and predicted latency.
        target_ms, window_ms: the target ``C`` and the window ``(lo, hi)`` in ms.
        n_evaluations: distinct architectures whose fitness this search computed (not found in a shared cache).
    """

    history: pd.DataFrame
    best: ArchConfig
    best_fitness: float
    best_predicted_latency_ms: float
    target_ms: float
    window_ms: tuple[float, float]
    n_evaluations: int

    def top(self, k: int = 5) -> pd.DataFrame:
        """The ``k`` fittest distinct architectures seen, best first, with the generation each first appeared in."""
        cols = [*ARCH_FIELDS, "num_attention_heads", "predicted_latency_ms", "fitness"]
        first = self.history.groupby(list(ARCH_FIELDS), sort=False)["generation"].min().rename("first_generation")
        uniq = self.history.drop_duplicates(list(ARCH_FIELDS))[cols].join(first, on=list(ARCH_FIELDS))
        best = uniq.sort_values(["fitness", "predicted_latency_ms"], ascending=[False, True])
        return best.head(k).reset_index(drop=True)

    def save(self, path: str | Path, recipe: dict | None = None) -> Path:
        """Write the history as CSV to ``path`` and the rest (and ``recipe``) as JSON to ``<path>.json``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.history.to_csv(path, index=False)
        meta = {"best": {**asdict(self.best)}, "best_fitness": self.best_fitness,
                "best_predicted_latency_ms": self.best_predicted_latency_ms, "target_ms": self.target_ms,
                "window_ms": list(self.window_ms), "n_evaluations": self.n_evaluations, "recipe": recipe}
        Path(str(path) + ".json").write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SearchResult":
        """Read what :meth:`save` wrote.

        Raises:
            NasError: the CSV or its JSON is missing.
        """
        path = Path(path)
        meta_path = Path(str(path) + ".json")
        if not path.is_file() or not meta_path.is_file():
            raise NasError(f"no saved search at {str(path)!r} (expected the CSV and {meta_path.name})")
        meta = json.loads(meta_path.read_text())
        return cls(history=pd.read_csv(path), best=ArchConfig(**meta["best"]), best_fitness=meta["best_fitness"],
                   best_predicted_latency_ms=meta["best_predicted_latency_ms"], target_ms=meta["target_ms"],
                   window_ms=tuple(meta["window_ms"]), n_evaluations=meta["n_evaluations"])


def _predict_fn(predictor):
    if hasattr(predictor, "predict"):
        return lambda archs: np.asarray(predictor.predict(list(archs)), dtype=np.float64)
    if callable(predictor):
        return lambda archs: np.array([float(predictor(a)) for a in archs])
    raise NasError(f"predictor must have .predict(archs) or be callable, got {type(predictor).__name__}")


def _roulette(fitness: np.ndarray, rng: np.random.Generator) -> int:
    """Index drawn with probability proportional to fitness above the population's worst (plus a floor).

    Accuracies of 80-90 % would make a roulette on raw fitness almost uniform; shifting by the worst keeps the
    selection proportional to fitness while giving it pressure. The floor (5 % of the spread) keeps the worst
    individual selectable.
    """
    spread = float(fitness.max() - fitness.min())
    w = fitness - fitness.min() + (0.05 * spread if spread > 0 else 1.0)
    return int(rng.choice(len(fitness), p=w / w.sum()))


def search(fitness_fn: Callable[[ArchConfig], float], predictor, target_ms: float, space: SearchSpace, *,
           population: int = 25, generations: int = 10, explore_rate: float = 0.5, crossover_rate: float = 0.0,
           window: tuple[float, float] = (0.85, 1.1), seed: int = 0, max_tries: int = 200,
           cache: dict | None = None, progress: bool = True) -> SearchResult:
    """Evolutionary search for the fittest architecture whose predicted latency lies in ``window * target_ms``.

    1. The initial population: ``population`` distinct architectures drawn uniformly from ``space`` and kept only if
       ``lo <= predicted latency <= hi`` (rejection sampling, at most ``max_tries * population`` draws).
    2. Each generation: every individual's fitness is computed (once per architecture: cached), then ``population``
       children are made. A child's parent is drawn by fitness roulette (``_roulette``); with probability
       ``crossover_rate`` it is first crossed with a second roulette parent (:meth:`SearchSpace.crossover`); then
       each of its three fields is redrawn with probability ``explore_rate`` (:meth:`SearchSpace.mutate`, at least
       one field changes). A child is kept only if it is inside the window and new to this generation; up to
       ``max_tries`` attempts per child.
    3. The next population is the ``population`` fittest of parents and children together (elitist: the best never
       gets lost).

    Args:
        fitness_fn: ``arch -> fitness`` (higher is better), e.g. :func:`make_fitness`.
        predictor: a :class:`~ufkit.nas.latency.LatencyPredictor`, or any callable ``arch -> latency_ms``.
        target_ms: the latency target ``C`` in ms.
        space: the search space.
        population: individuals per generation (25 in Bigger&Faster).
        generations: generations after the initial one.
        explore_rate: probability that a child's field is redrawn (0.5 in Bigger&Faster).
        crossover_rate: probability that a child mixes two parents before mutating (0: mutation only, as the paper).
        window: ``(lo, hi)`` as fractions of ``target_ms`` (``(0.85, 1.1)`` in Bigger&Faster).
        seed: seeds every random choice; with a deterministic fitness the search is reproducible.
        cache: a dict ``arch -> fitness`` shared between searches (e.g. at several targets); filled in place.

    Returns:
        :class:`SearchResult`.

    Raises:
        NasError: a non-positive or non-finite target, a bad window, ``population < 2``, a rate outside ``[0, 1]``,
            or no architecture of the space predicted inside the window (the message gives the predicted range).
    """
    from ..progress import progress_bar

    if not isinstance(target_ms, (int, float, np.floating)) or not math.isfinite(target_ms) or target_ms <= 0:
        raise NasError(f"target_ms must be a positive number of milliseconds, got {target_ms!r}")
    lo_f, hi_f = window
    if not 0 < lo_f < hi_f:
        raise NasError(f"window must be (lo, hi) fractions with 0 < lo < hi, got {window!r}")
    if not isinstance(population, int) or population < 2:
        raise NasError(f"population must be an integer >= 2, got {population!r}")
    if not isinstance(generations, int) or generations < 0:
        raise NasError(f"generations must be a non-negative integer, got {generations!r}")
    for name, r in (("explore_rate", explore_rate), ("crossover_rate", crossover_rate)):
        if not 0.0 <= r <= 1.0:
            raise NasError(f"{name} must be in [0, 1], got {r!r}")
    lo, hi = lo_f * target_ms, hi_f * target_ms
    predict = _predict_fn(predictor)
    rng = np.random.default_rng(seed)
    latency: dict[ArchConfig, float] = {}

    def lat(arch):
        if arch not in latency:
            latency[arch] = float(predict([arch])[0])
        return latency[arch]

    def inside(arch):
        return lo <= lat(arch) <= hi

    # 1. initial population, by rejection sampling
    pop: list[ArchConfig] = []
    for _ in range(max_tries * population):
        a = space.sample(rng)
        if a not in pop and inside(a):
            pop.append(a)
            if len(pop) == population:
                break
    if not pop:
        every = list(space)
        preds = predict(every)
        raise NasError(f"no architecture has a predicted latency in [{lo:.3g}, {hi:.3g}] ms (target "
                       f"{target_ms:.3g} ms, window {window}); the space's predictions span "
                       f"[{preds.min():.3g}, {preds.max():.3g}] ms")

    cache = {} if cache is None else cache
    n_before = len(cache)
    rows = []
    bar = progress_bar(total=generations + 1, desc="evolutionary search", disable=not progress)

    def evaluate(archs):
        for a in archs:
            if a not in cache:
                cache[a] = float(fitness_fn(a))

    for gen in range(generations + 1):
        evaluate(pop)
        pop = sorted(pop, key=lambda a: (-cache[a], lat(a), a))  # fittest first; ties: faster, then a fixed order
        for a in pop:
            rows.append({"generation": gen, **a.to_dict(), "predicted_latency_ms": lat(a), "fitness": cache[a]})
        bar.set_postfix(best=f"{max(cache[a] for a in pop):.2f}", evaluated=len(cache) - n_before)
        bar.update(1)
        if gen == generations:
            break
        fit = np.array([cache[a] for a in pop])
        children: list[ArchConfig] = []
        for _ in range(population):
            for _ in range(max_tries):
                parent = pop[_roulette(fit, rng)]
                if crossover_rate > 0 and rng.random() < crossover_rate:
                    parent = space.crossover(parent, pop[_roulette(fit, rng)], rng)
                child = space.mutate(parent, rng, explore_rate)
                if child not in children and child not in pop and inside(child):
                    children.append(child)
                    break
        evaluate(children)
        # (mu + lambda) selection: the fittest of parents and children survive
        pop = sorted(pop + children, key=lambda a: (-cache[a], lat(a), a))[:population]
    bar.close()
    best = pop[0]  # the selection is elitist: the fittest architecture evaluated is in the last population
    return SearchResult(history=pd.DataFrame(rows), best=best, best_fitness=cache[best],
                        best_predicted_latency_ms=lat(best), target_ms=float(target_ms), window_ms=(lo, hi),
                        n_evaluations=len(cache) - n_before)


def load_or_search(path: str | Path, fitness_fn: Callable[[ArchConfig], float], predictor, target_ms: float,
                   space: SearchSpace, *, key: dict | None = None, **kwargs) -> SearchResult:
    """:func:`search`, cached: load the result saved at ``path`` if it was made with the same settings, else search
    and save it there (:meth:`SearchResult.save`).

    Args:
        key: anything else that decides the result and that the settings do not show: what the fitness measures
            (the super-model's training recipe, the held-out data) and which latency table the predictor learned
            from. A saved search with another ``key`` is run again.
        kwargs: :func:`search`'s keyword arguments (``progress`` and ``cache`` do not count as settings).
    """
    recipe = {"target_ms": float(target_ms), "space": space.to_dict(), "key": key,
              **{k: v for k, v in kwargs.items() if k not in ("progress", "cache")}}
    recipe = json.loads(json.dumps(recipe, default=str))  # the form it takes in the file, for the comparison
    path = Path(path)
    meta = Path(str(path) + ".json")
    if path.is_file() and meta.is_file() and json.loads(meta.read_text()).get("recipe") == recipe:
        return SearchResult.load(path)
    result = search(fitness_fn, predictor, target_ms, space, **kwargs)
    result.save(path, recipe)
    return result


# ----------------------------------------------------------------------------------------------- baselines


def baseline_archs(space: SearchSpace) -> pd.DataFrame:
    """Hand-made sub-architectures to compare the search against, from the same space (and super-model).

    * ``depth``: the first ``k`` layers at full width, for every allowed ``k`` (truncating the teacher);
    * ``width``: every layer, the hidden size shrunk to each allowed value and the feedforward size by the same
      ratio (rounded to the nearest allowed value): a uniformly narrower model.

    Both families contain the full model.

    Returns:
        `pandas.DataFrame` with ``family``, ``name`` (e.g. ``"depth 3"``), ``arch`` (:class:`ArchConfig`) and the
        arch's fields.
    """
    big = space.largest
    rows = []
    for k in space.num_hidden_layers:
        rows.append(("depth", f"depth {k}", space.arch(k, big.hidden_size, big.intermediate_size)))
    choices = np.array(space.intermediate_size)
    for h in space.hidden_size:
        f = int(choices[np.argmin(np.abs(choices - big.intermediate_size * h / big.hidden_size))])
        rows.append(("width", f"width {h}", space.arch(big.num_hidden_layers, h, f)))
    return pd.DataFrame([{"family": fam, "name": name, "arch": a, **a.to_dict()} for fam, name, a in rows])


def pareto_front(latency_ms: Sequence[float], accuracy: Sequence[float]) -> np.ndarray:
    """Boolean mask of the points no other point beats: none is at least as fast and as accurate, and better in one.

    Args:
        latency_ms, accuracy: arrays of shape ``(n,)``.
    """
    x, y = np.asarray(latency_ms, dtype=float), np.asarray(accuracy, dtype=float)
    if x.shape != y.shape:
        raise NasError(f"latency_ms and accuracy must have the same shape, got {x.shape} and {y.shape}")
    keep = np.ones(len(x), dtype=bool)
    for i in range(len(x)):
        dominated = (x <= x[i]) & (y >= y[i]) & ((x < x[i]) | (y > y[i]))
        keep[i] = not dominated.any()
    return keep
