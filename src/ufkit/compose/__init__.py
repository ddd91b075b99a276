"""Composed recipes under an accuracy budget (chapter 7): chapters' techniques applied one after another.

Every anchor of the book does one technique: UltraFastBERT's fast feedforward layers (Belcak & Wattenhofer 2023),
FastBERT's exits (Liu et al. 2020), bert-squeeze's compression, Bigger&Faster's quantization-aware search (Chai et
al. 2022), fast-bert's runtimes. None composes them, and users ask for exactly that (bert-squeeze's issue #49: an
example that combines pruning, quantization and distillation). A *recipe* here is an ordered list of *steps*, each a
``model -> model`` transformation a chapter provides; :func:`run_recipe` runs one, caching each step's result by the
recipe prefix and measuring each model; :func:`search` runs a small explicit set and picks the best model within an
accuracy budget kept on held-out training sentences; ``ufkit optimize`` is its command line.

* :mod:`ufkit.compose.recipe`: :class:`Step`, :class:`Recipe`, the composition rules, :data:`DEFAULT_RECIPES`, the
  recipe syntax (:func:`parse_recipe`);
* :mod:`ufkit.compose.steps`: :func:`apply_step` (each kind as the chapter functions that do it), :class:`Artifact`,
  :class:`TrainSettings`, saving and loading a step's result;
* :mod:`ufkit.compose.measuring`: :class:`Measurer`, the default measurement (through :mod:`ufkit.measure`);
* :mod:`ufkit.compose.run`: :class:`Composer` and :func:`run_recipe` (the cache by recipe prefix);
* :mod:`ufkit.compose.search`: :func:`search`, :func:`pareto_front`;
* :mod:`ufkit.compose.report`: the chosen model's folder, ``report.json``, ``report.md``, ``pareto.png``.

Composition rules
-----------------
A model is in one of five states: ``dense`` (a BERT classifier), ``pruned`` (heads or feedforward neurons removed,
``config.ufkit_structure``), ``fff`` (fast feedforward layers, ``config.ufkit_fff``), ``exits`` (an
:class:`ufkit.early_exit.EarlyExitModel`), ``runtime`` (an ONNX Runtime or torchao variant). Each step takes the
states below and leaves the model in the state of its row (distil and truncate keep the state they found). A recipe
is checked when it is made, from a dense model, and every step again at run time on the model it actually meets;
a step that does not compose raises :class:`ComposeError` with the reason in the last column.

============  ==========================  ========  ===================================================================
step          takes                       leaves    refuses, and why
============  ==========================  ========  ===================================================================
``distil``    dense, pruned               (same)    fff: ``config.ufkit_fff`` names the converted layers by index,
                                                    which dropping layers would break (distil before converting);
                                                    exits, runtime (below)
``truncate``  dense, pruned               (same)    fff: as distil; exits, runtime
``prune``     dense, pruned               pruned    fff: pruning removes neurons of dense feedforward layers
                                                    (``intermediate.dense``), which FFF layers do not have; exits,
                                                    runtime
``fff``       dense                       fff       pruned: ``convert_fff`` converts only unpruned models (its leaves
                                                    split the whole dense layer; FFF layers go into unpruned BERT
                                                    models only); fff: already converted; exits, runtime
``exits``     dense, pruned, fff          exits     exits, runtime
``quantize``  dense, pruned, fff          runtime   exits: the exits are Python control flow between layers, which one
                                                    exported ONNX graph cannot express (it would run every layer);
                                                    exporting per layer is not implemented; runtime
============  ==========================  ========  ===================================================================

After ``exits`` no step applies (its branches read every layer and its speed was calibrated on that exact model);
after ``quantize`` none either (a runtime variant is not a trainable PyTorch model): both are last steps, and they
do not compose with each other. At run time a step also refuses what does not fit the model it meets: a student
deeper than its input, leaves wider than the feedforward, exits on a one-layer model.
"""

from .measuring import COLUMNS, Measurer, accuracy
from .recipe import (ACCEPTS, DEFAULT_RECIPES, STATES, STEP_KINDS, ComposeError, Recipe, Step, check_steps, distil,
                     exits, fff, parse_recipe, parse_step, prefix_label, prune, quantize, truncate)
from .report import export_model, markdown_table, pareto_plot, report_dict, write_report
from .run import Composer, RecipeRun, StepResult, run_recipe
from .search import OBJECTIVES, SearchResult, pareto_front, search, summarize
from .steps import Artifact, TrainSettings, apply_step, load_artifact, model_state, save_artifact

__all__ = ["COLUMNS", "Measurer", "accuracy", "ACCEPTS", "DEFAULT_RECIPES", "STATES", "STEP_KINDS", "ComposeError",
           "Recipe", "Step", "check_steps", "distil", "exits", "fff", "parse_recipe", "parse_step", "prefix_label",
           "prune", "quantize", "truncate", "export_model", "markdown_table", "pareto_plot", "report_dict",
           "write_report", "Composer", "RecipeRun", "StepResult", "run_recipe", "OBJECTIVES", "SearchResult",
           "pareto_front", "search", "summarize", "Artifact", "TrainSettings", "apply_step", "load_artifact",
           "model_state", "save_artifact"]
