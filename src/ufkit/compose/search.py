"""Searching a small, explicit set of recipes under an accuracy budget: the Pareto front and the choice.

:func:`search` runs every recipe (:class:`ufkit.compose.run.Composer`), takes every model any of them made (each
step's model, once, however many recipes share it) and the teacher as the candidates, keeps those whose accuracy
on held-out *training* sentences is within ``budget`` points of the teacher's (the dev split is measured and
reported, never used to choose), marks the Pareto front over (held-out accuracy, objective) and chooses the
candidate within the budget that is best on the objective (ties: the more accurate).

Objectives (:data:`OBJECTIVES`): ``latency`` (ms per call at batch 1, lower is better), ``throughput``
(sentences/s at batch 32, higher is better), ``size`` (MB, lower is better).

Bigger&Faster (Chai et al. 2022) searches one technique's architectures under a latency constraint; here the
search is over compositions of techniques, each recipe explicit, as bert-squeeze's issue #49 asks for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .recipe import DEFAULT_RECIPES, ComposeError, Recipe
from .run import Composer, RecipeRun, StepResult

#: objective -> (measurement column, "min" or "max", what it is, its unit)
OBJECTIVES = {
    "latency": ("latency_ms", "min", "latency per call at batch {latency_batch_size}", "ms"),
    "throughput": ("throughput_seq_per_s", "max", "throughput at batch {throughput_batch_size}", "sentences/s"),
    "size": ("size_mb", "min", "size", "MB"),
}


def points(x: float) -> str:
    """``1 point``, ``0.5 points``, ``2 points``."""
    return f"{x:g} point" + ("" if x == 1 else "s")


def check_objective(objective: str) -> tuple[str, str]:
    """``(column, "min" | "max")`` of an objective.

    Raises:
        ComposeError: an unknown objective.
    """
    if objective not in OBJECTIVES:
        raise ComposeError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    column, sense = OBJECTIVES[objective][:2]
    return column, sense


def pareto_front(df: pd.DataFrame, column: str, sense: str = "min", accuracy: str = "heldout_accuracy") -> pd.Series:
    """Which rows are on the Pareto front of (``accuracy``, higher is better) and ``column`` (``sense``).

    A row is on the front when no other row is at least as accurate and at least as good on ``column`` and
    strictly better on one of them. Rows with a missing value are never on it.

    Returns:
        boolean `pandas.Series` aligned with ``df``.
    """
    acc = df[accuracy].to_numpy(dtype=float)
    obj = df[column].to_numpy(dtype=float) * (1.0 if sense == "min" else -1.0)
    ok = np.isfinite(acc) & np.isfinite(obj)
    on = np.zeros(len(df), dtype=bool)
    for i in np.flatnonzero(ok):
        at_least = ok & (acc >= acc[i]) & (obj <= obj[i])
        strictly = (acc > acc[i]) | (obj < obj[i])
        on[i] = not (at_least & strictly).any()
    return pd.Series(on, index=df.index)


@dataclass
class SearchResult:
    """What :func:`search` found.

    Attributes:
        budget, objective: as asked; ``column`` and ``sense``: the objective's measurement and direction.
        teacher: the teacher's :class:`~ufkit.compose.run.StepResult`.
        runs: one :class:`~ufkit.compose.run.RecipeRun` per recipe (``error`` set where a step did not apply).
        table: every recipe's every step (and the teacher) as rows: :meth:`StepResult.row` plus
            ``heldout_drop`` and ``dev_drop`` (points below the teacher), ``within_budget``, ``on_front``,
            ``chosen``.
        candidates: one row per distinct model (``recipes`` lists the recipes that made it), the same columns.
        front: the candidates on the Pareto front, sorted by the objective.
        chosen: the chosen candidate's row (a dict).
        reason: why it was chosen, in a sentence.
        seconds: the search's wall-clock time.
    """

    budget: float
    objective: str
    column: str
    sense: str
    teacher: StepResult
    runs: list = field(default_factory=list)
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    candidates: pd.DataFrame = field(default_factory=pd.DataFrame)
    front: pd.DataFrame = field(default_factory=pd.DataFrame)
    chosen: dict = field(default_factory=dict)
    reason: str = ""
    seconds: float = 0.0

    def chosen_result(self) -> StepResult:
        """The :class:`~ufkit.compose.run.StepResult` of the chosen model (the teacher's when it is the teacher)."""
        if self.chosen.get("artifact_id") == self.teacher.artifact_id:
            return self.teacher
        for run in self.runs:
            for r in run.steps:
                if r.artifact_id == self.chosen.get("artifact_id"):
                    return r
        raise ComposeError("the chosen model is not among the runs' results")


def _objective_name(objective: str, row: dict, unit: bool = False) -> str:
    """What the objective measures, with the batch sizes of ``row`` (and its unit in brackets)."""
    _, _, text, u = OBJECTIVES[objective]
    sizes = {}
    for key, default in (("latency_batch_size", 1), ("throughput_batch_size", 32)):
        try:
            sizes[key] = int(row.get(key, default))
        except (TypeError, ValueError):
            sizes[key] = default
    return text.format(**sizes) + (f" ({u})" if unit else "")


def summarize(teacher: StepResult, runs: Sequence[RecipeRun], *, budget: float, objective: str) -> SearchResult:
    """The table, the candidates, the front and the choice of a set of recipe runs (what :func:`search` returns,
    without running anything).

    Raises:
        ComposeError: a budget ≤ 0 or an unknown objective; no candidate has the objective measured.
    """
    column, sense = check_objective(objective)
    if not (isinstance(budget, (int, float)) and budget > 0):
        raise ComposeError(f"budget must be a positive number of accuracy points, got {budget!r}")
    rows = [{**teacher.row(), "recipe": None}] + [r.row() for run in runs for r in run.steps]
    table = pd.DataFrame(rows)
    for col in ("heldout_accuracy", "dev_accuracy", column):
        if col not in table:
            table[col] = np.nan
    t = teacher.measurement
    table["heldout_drop"] = t["heldout_accuracy"] - table["heldout_accuracy"]
    table["dev_drop"] = t.get("dev_accuracy", np.nan) - table["dev_accuracy"]
    table["within_budget"] = table["heldout_drop"] <= budget + 1e-9
    recipes = table.groupby("artifact_id", sort=False)["recipe"].apply(lambda s: [x for x in s if x is not None])
    cand = table.drop_duplicates("artifact_id").set_index("artifact_id", drop=False)
    cand["recipes"] = recipes.reindex(cand.index)
    cand = cand.reset_index(drop=True)
    cand["on_front"] = pareto_front(cand, column, sense)
    ok = cand[cand["within_budget"] & np.isfinite(cand[column].astype(float))]
    if ok.empty:
        raise ComposeError(f"no model has its {objective} ({column}) measured: cannot choose")
    best = ok.sort_values([column, "heldout_accuracy"], ascending=[sense == "min", False]).iloc[0]
    cand["chosen"] = cand["artifact_id"] == best["artifact_id"]
    table["on_front"] = table["artifact_id"].isin(cand.loc[cand["on_front"], "artifact_id"])
    table["chosen"] = table["artifact_id"] == best["artifact_id"]
    front = cand[cand["on_front"]].sort_values(column, ascending=sense == "min").reset_index(drop=True)
    chosen = best.to_dict()
    what, unit = _objective_name(objective, chosen), OBJECTIVES[objective][3]
    within = (f"within {points(budget)} of the teacher's held-out accuracy ({t['heldout_accuracy']:.2f} %)")
    if best["artifact_id"] == teacher.artifact_id:
        reason = f"the teacher itself: no composed model {within} beats it on {what}"
    else:
        versus = t.get(column, np.nan)
        ratio = (versus / best[column] if sense == "min" else best[column] / versus) if versus else np.nan
        reason = (f"{chosen['label']} is the best on {what}, {best[column]:.4g} {unit} against the teacher's "
                  f"{versus:.4g} {unit} ({ratio:.2f}x), of the {len(ok)} models {within}; its held-out drop is "
                  f"{best['heldout_drop']:.2f} points")
    return SearchResult(budget, objective, column, sense, teacher, list(runs), table, cand, front, chosen, reason)


def search(recipes: Sequence[Recipe] | None, teacher, tokenizer, train_ds, heldout_ds, dev_ds=None, cache_dir=None,
           *, budget: float = 1.0, objective: str = "latency", calibration_ds=None, settings=None,
           measure: Callable | None = None, threads: int | None = None, store=None, progress: bool = True,
           on_step: Callable[[StepResult], None] | None = None) -> SearchResult:
    """Run a small, explicit set of recipes and choose the best model within an accuracy budget.

    Args:
        recipes: the recipes (default: :data:`~ufkit.compose.recipe.DEFAULT_RECIPES`).
        teacher, tokenizer, train_ds, heldout_ds, dev_ds, cache_dir, calibration_ds, settings, measure, threads, store: as
            for :class:`~ufkit.compose.run.Composer`. ``heldout_ds`` must be training sentences that no step trained
            on: the budget is kept there, never on ``dev_ds``.
        budget: accuracy points (> 0) a model may lose against the teacher on ``heldout_ds``; the steps that
            calibrate (exits, ``onnx_int8_auto``) spend what is left of it on ``calibration_ds``.
        objective: ``latency``, ``throughput`` or ``size`` (:data:`OBJECTIVES`).
        progress: a progress bar over the recipes' steps (and the chapter functions' bars).
        on_step: called with each :class:`~ufkit.compose.run.StepResult` as it is measured.

    Returns:
        :class:`SearchResult`. A recipe a step of which does not apply to the model it meets (e.g. an FFF of a
        depth the feedforward does not fit) stops there; its ``error`` says why and its other steps still count.

    Raises:
        ComposeError: a budget ≤ 0, an unknown objective, no recipes, bad data.
    """
    from ..progress import progress_bar

    column, sense = check_objective(objective)
    if not (isinstance(budget, (int, float)) and not isinstance(budget, bool) and budget > 0):
        raise ComposeError(f"budget must be a positive number of accuracy points, got {budget!r}")
    recipes = list(DEFAULT_RECIPES.values()) if recipes is None else list(recipes)
    if not recipes:
        raise ComposeError("no recipes to search")
    start = time.perf_counter()
    composer = Composer(teacher, tokenizer, train_ds, heldout_ds, dev_ds, cache_dir, calibration_ds=calibration_ds,
                        settings=settings, measure=measure, budget=budget, threads=threads, store=store,
                        progress=progress)
    total = sum(len(r.steps) for r in recipes) + 1
    bar = progress_bar(total=total, desc="optimize", disable=not progress, unit="step")
    try:
        bar.set_postfix_str("teacher")
        teacher_row = composer.teacher_measurement()
        bar.update(1)
        runs = []
        for recipe in recipes:
            bar.set_postfix_str(recipe.name)

            def step_done(result, recipe=recipe):
                bar.update(1)
                bar.set_postfix_str(f"{recipe.name}: {result.label}")
                if on_step is not None:
                    on_step(result)

            run = composer.run(recipe, on_step=step_done, errors="record")
            bar.update(len(recipe.steps) - len(run.steps) if run.error else 0)
            run.final = None  # the models stay in the cache; do not hold every recipe's in memory
            runs.append(run)
    finally:
        bar.close()
    result = summarize(teacher_row, runs, budget=budget, objective=objective)
    result.seconds = time.perf_counter() - start
    return result
