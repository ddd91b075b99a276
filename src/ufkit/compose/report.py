"""What a search leaves behind: the chosen model, ``report.json``, a Markdown table and the Pareto plot.

* :func:`export_model`: the chosen model as a folder ``ufkit evaluate`` and ``ufkit benchmark`` load (a checkpoint,
  a ``ufkit quantize``-style folder holding the one variant, or an early-exit folder);
* :func:`report_dict`: every recipe's every step's measurements, the front, the choice and why, as JSON types;
* :func:`markdown_table`: the same as a Markdown table, one row per model made;
* :func:`pareto_plot`: held-out accuracy against the objective, the front, the budget line, the choice;
* :func:`write_report`: all three files into a folder.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np

from .recipe import ComposeError
from .search import OBJECTIVES, SearchResult, _objective_name, points

#: The report's files.
REPORT_JSON, REPORT_MD, PARETO_PNG = "report.json", "report.md", "pareto.png"


def _clean(value):
    """JSON-safe: NaN and infinities as None, numpy scalars and arrays as Python values, paths as strings."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def export_model(result: SearchResult, output: str | Path, *, teacher=None, tokenizer=None) -> Path:
    """Write the chosen model into ``output`` (replaced if it exists).

    A PyTorch model is copied as its checkpoint folder, a runtime variant as ``output/<variant>/`` (the layout of
    ``ufkit quantize``'s output, which ``ufkit evaluate`` and ``ufkit benchmark`` read), an early-exit model as its
    folder (backbone, branches, ``exit_speed.json``; ``ufkit evaluate`` and ``benchmark`` load its backbone, the
    model at speed 0). When the teacher is chosen it is saved from ``teacher`` and ``tokenizer``.

    Raises:
        ComposeError: the teacher was chosen and not given, or the chosen step's cache folder is gone.
    """
    from ..cache import INFO_FILE
    from ..models import atomic_folder, save_model

    output = Path(output)
    chosen = result.chosen_result()
    if chosen.path is None:
        if teacher is None or tokenizer is None:
            raise ComposeError("the teacher was chosen: pass teacher= and tokenizer= to export it")
        return save_model(teacher, tokenizer, output)
    if not Path(chosen.path).is_dir():
        raise ComposeError(f"the chosen model's cache folder {str(chosen.path)!r} is gone: run the search again")
    with atomic_folder(output) as tmp:
        shutil.copytree(chosen.path, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(INFO_FILE))
        (tmp / "compose.json").write_text(json.dumps(_clean({
            "label": chosen.label, "recipe": chosen.recipe, "state": chosen.state,
            "steps": [s.to_dict() for s in _steps_of(result, chosen)], "measurement": chosen.measurement}),
            indent=2))
    return output


def _steps_of(result: SearchResult, chosen) -> list:
    for run in result.runs:
        if run.recipe.name == chosen.recipe:
            return list(run.recipe.steps[:chosen.index])
    return []


def report_dict(result: SearchResult, **meta) -> dict:
    """The search as JSON types: ``meta`` (model, data, sizes, settings...), the budget and objective, the
    teacher's measurements, every recipe with its steps' rows (and its error, if one stopped it), the candidates
    on the front, the chosen one and the reason, the budget check on dev (``chosen.dev_drop`` beside
    ``chosen.heldout_drop``) and the search time."""
    table = result.table
    recipes = []
    for run in result.runs:
        rows = table[table["recipe"] == run.recipe.name].to_dict("records")
        recipes.append({**run.recipe.to_dict(), "error": run.error,
                        "results": [{**row, "info": step.info} for row, step in zip(rows, run.steps)]})
    chosen = dict(result.chosen)
    honesty = None
    if chosen.get("dev_drop") is not None and np.isfinite(chosen.get("dev_drop", np.nan)):
        honesty = {"heldout_drop": chosen["heldout_drop"], "dev_drop": chosen["dev_drop"],
                   "difference": chosen["dev_drop"] - chosen["heldout_drop"]}
    return _clean({
        **meta, "budget": result.budget, "objective": result.objective, "objective_column": result.column,
        "objective_sense": result.sense, "teacher": result.teacher.row(), "recipes": recipes,
        "front": result.front.to_dict("records"), "chosen": chosen, "reason": result.reason,
        "budget_check_on_dev": honesty, "search_seconds": result.seconds,
    })


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def _fmt(value, digits: int = 2) -> str:
    if _missing(value):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else ""
    if isinstance(value, (int, float, np.number)):
        if abs(value) >= 1e6:
            return f"{value / 1e6:,.1f} M"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(result: SearchResult) -> str:
    """A Markdown page: the choice and why, then one row per model made (the teacher first), then the recipes
    that stopped and why."""
    t = result.table
    cols = [("recipe", "recipe"), ("label", "model"), ("heldout_accuracy", "held-out acc. (%)"),
            ("heldout_drop", "drop (points)"), ("dev_accuracy", "dev acc. (%)"), ("dev_drop", "dev drop"),
            ("flops_per_sample", "FLOPs / sample"), ("latency_ms", "latency (ms)"),
            ("throughput_seq_per_s", "throughput (seq/s)"), ("size_mb", "size (MB)"),
            ("within_budget", "within budget"), ("on_front", "on front"), ("chosen", "chosen"),
            ("reused", "cached")]
    cols = [(c, name) for c, name in cols if c in t.columns]
    lines = [f"# ufkit optimize: {result.objective} within {points(result.budget)} of the teacher", "",
             f"**Chosen:** {result.reason}.", "",
             "| " + " | ".join(name for _, name in cols) + " |", "|" + "---|" * len(cols)]
    for row in t.to_dict("records"):
        cells = []
        for c, _ in cols:
            v = row.get(c)
            cells.append("teacher" if c == "recipe" and _missing(v) else _fmt(v))
        lines.append("| " + " | ".join(cells) + " |")
    failed = [run for run in result.runs if run.error]
    if failed:
        lines += ["", "Recipes that stopped:", ""] + [f"- {run.recipe.name}: {run.error}" for run in failed]
    lines += ["", f"Accuracy drops are against the teacher; the budget is kept on held-out training sentences, "
                  f"never on dev. Search time: {result.seconds:.0f} s.", ""]
    return "\n".join(lines)


def pareto_plot(result: SearchResult, path: str | Path | None = None):
    """Held-out accuracy (%) against the objective: every model made (grey), the Pareto front (line), the teacher,
    the budget (dashed: the teacher's accuracy minus the budget) and the chosen model (star).

    Returns:
        the matplotlib ``Figure`` (also saved as PNG when ``path`` is given).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    c = result.candidates
    col = result.column
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ok = c[np.isfinite(c[col].astype(float)) & np.isfinite(c["heldout_accuracy"].astype(float))]
    ax.scatter(ok[col], ok["heldout_accuracy"], color="0.6", s=25, label="models made", zorder=2)
    front = result.front
    ax.plot(front[col], front["heldout_accuracy"], "-o", color="tab:blue", ms=5, label="Pareto front", zorder=3)
    t = result.teacher.measurement
    ax.scatter([t.get(col)], [t["heldout_accuracy"]], marker="s", color="black", s=50, label="teacher", zorder=4)
    ax.axhline(t["heldout_accuracy"] - result.budget, ls="--", color="tab:red", lw=1,
               label=f"budget: {points(result.budget)} below the teacher")
    ch = result.chosen
    ax.scatter([ch.get(col)], [ch.get("heldout_accuracy")], marker="*", color="tab:orange", s=220,
               label=f"chosen: {ch.get('label')}", zorder=5)
    for row in front.to_dict("records"):  # the front's models by name (every model's is in report.md)
        ax.annotate(row["label"], (row[col], row["heldout_accuracy"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    if OBJECTIVES[result.objective][0] in ("latency_ms", "size_mb") and len(ok) > 1 and (ok[col] > 0).all():
        ax.set_xscale("log")
    ax.set_xlabel(_objective_name(result.objective, ch, unit=True))
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(f"ufkit optimize: {result.objective} within {points(result.budget)} of the teacher")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig


def write_report(result: SearchResult, folder: str | Path, **meta) -> dict[str, Path]:
    """Write ``report.json`` (:func:`report_dict` with ``meta``), ``report.md`` (:func:`markdown_table`) and
    ``pareto.png`` (:func:`pareto_plot`) into ``folder``.

    Returns:
        ``{"json": ..., "md": ..., "png": ...}``, the paths written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / REPORT_JSON, "md": folder / REPORT_MD, "png": folder / PARETO_PNG}
    paths["json"].write_text(json.dumps(report_dict(result, **meta), indent=2, default=str))
    paths["md"].write_text(markdown_table(result))
    pareto_plot(result, paths["png"])
    return paths
