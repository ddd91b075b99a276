"""The one measurement layer: timing, inputs, FLOPs, the machine, and the results store.

* :mod:`ufkit.measure.timing`: :func:`~ufkit.measure.timing.time_calls` (thread count, warm-up, interleaved rounds,
  the busy-machine check), :func:`~ufkit.measure.timing.summarize` (the latency columns),
  :func:`~ufkit.measure.timing.drift_scale` (reference-model drift correction).
* :mod:`ufkit.measure.inputs`: real sentences batched for timing; model sizes.
* :mod:`ufkit.measure.latency`: :func:`~ufkit.measure.latency.benchmark` and
  :func:`~ufkit.measure.latency.measure_latency`, models on real sentences.
* :mod:`ufkit.measure.flops`: :func:`~ufkit.measure.flops.count_flops`.
* :mod:`ufkit.measure.machine`: the machine's description and :func:`~ufkit.measure.machine.machine_id`.
* :mod:`ufkit.measure.store`: :class:`~ufkit.measure.store.ResultsStore`, CSV tables labelled by machine.
* :mod:`ufkit.measure.report`: values glued for the book, warnings about a busy machine, other machines' rows.
"""

from .flops import count_flops
from .inputs import make_batches, model_size_mb, sample_texts
from .latency import as_callable, benchmark, measure_latency
from .machine import (isa_description, machine_id, machine_info, machine_summary, native_bf16)
from .store import ResultsStore
from .timing import BusyMachineWarning, CpuLoad, Timing, drift_scale, num_threads, summarize, time_calls

__all__ = ["count_flops", "make_batches", "model_size_mb", "sample_texts", "as_callable", "benchmark",
           "measure_latency", "isa_description", "machine_id", "machine_info", "machine_summary", "native_bf16",
           "ResultsStore", "BusyMachineWarning", "CpuLoad", "Timing", "drift_scale", "num_threads", "summarize",
           "time_calls"]
