"""The one timing core: thread count, warm-up, interleaved rounds, and a check that the machine was quiet.

Every latency in ufkit goes through :func:`time_calls`. It times several callables on the same inputs in
interleaved, rotating order (each input goes through every callable before the next input), so that a burst of
load from another process falls on all of them alike instead of on whichever ran at that moment; runs under
:func:`num_threads`, which restores the caller's thread count even when a call raises; and watches the machine
with :class:`CpuLoad`: if other processes (or the hypervisor, as steal time) took more than ``max_other_cores``
cores while it timed, it measures again, and if the machine stays busy it warns and flags the result
(``busy=True`` and ``other_cores`` in every row), so a number taken on a loaded machine never passes as a
quiet one.

:func:`drift_scale` is chapter 4's correction for a VM whose speed drifts over minutes: time a fixed reference
model in the same turns and divide its drift out.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .. import UfkitError

#: Cores' worth of CPU time other processes may take during a timing before it counts as busy.
MAX_OTHER_CORES = 0.25
#: A timing shorter than this (seconds) is too short for /proc/stat's 10 ms ticks to judge the load.
MIN_JUDGED_SECONDS = 0.3


class BusyMachineWarning(RuntimeWarning):
    """Other processes took CPU time while ufkit timed something; the result is flagged ``busy``."""


@contextlib.contextmanager
def num_threads(n: int | None):
    """Run a block with torch's intra-op thread count set to ``n`` (None: leave it); restore it after, even on error.

    Raises:
        UfkitError: ``n`` is not a positive integer.
    """
    import torch

    if n is None:
        yield torch.get_num_threads()
        return
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise UfkitError(f"threads must be a positive integer, got {n!r}")
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield int(n)
    finally:
        torch.set_num_threads(old)


def _busy_seconds() -> float:
    import psutil

    t = psutil.cpu_times()
    # guest time is already inside user time on Linux; steal is time the hypervisor gave to other VMs
    return sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))


def _own_seconds() -> float:
    import psutil

    t = psutil.Process().cpu_times()
    return t.user + t.system + t.children_user + t.children_system


class CpuLoad:
    """How many cores' worth of CPU time *other* processes took while the context was open.

    System-wide busy time (``/proc/stat``: user, nice, system, irq, softirq and steal) minus this process's own
    CPU time, divided by the wall time. ``other_cores`` is about 0 on a quiet machine, about 1 when another
    process keeps one core busy. Resolution is the kernel's 10 ms tick, so windows shorter than
    :data:`MIN_JUDGED_SECONDS` are not judged (``judged`` is False).

    Attributes:
        seconds: wall time of the window.
        other_cores: other processes' CPU time divided by ``seconds`` (cores).
        judged: the window was long enough to judge.
    """

    def __enter__(self) -> "CpuLoad":
        self._busy0, self._own0, self._t0 = _busy_seconds(), _own_seconds(), time.perf_counter()
        self.seconds, self.other_cores, self.judged = 0.0, 0.0, False
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
        others = (_busy_seconds() - self._busy0) - (_own_seconds() - self._own0)
        self.other_cores = max(0.0, others) / self.seconds if self.seconds > 0 else 0.0
        self.judged = self.seconds >= MIN_JUDGED_SECONDS

    def busy(self, max_other_cores: float = MAX_OTHER_CORES) -> bool:
        """True when the window was judged and others took more than ``max_other_cores`` cores."""
        return self.judged and self.other_cores > max_other_cores


@dataclass
class Timing:
    """What :func:`time_calls` measured.

    Attributes:
        times_ms: name -> `numpy.ndarray` of per-call latencies in milliseconds, in call order.
        other_cores: CPU time other processes took during the kept attempt, in cores (see :class:`CpuLoad`).
        busy: the machine was busy during the kept attempt (after all retries).
        attempts: how many times the whole timing ran (1 + re-measurements on a busy machine).
        seconds: wall time of the kept attempt.
    """

    times_ms: dict[str, np.ndarray]
    other_cores: float = 0.0
    busy: bool = False
    attempts: int = 1
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def load_columns(self) -> dict:
        """The columns every result row carries about the machine's load: ``busy``, ``other_cores``, ``attempts``."""
        return {"busy": bool(self.busy), "other_cores": round(float(self.other_cores), 3),
                "attempts": int(self.attempts)}


def summarize(times_ms: Sequence[float], batch_size: int = 1) -> dict:
    """The result schema's latency columns for one series of calls.

    Args:
        times_ms: per-call latencies in milliseconds.
        batch_size: sequences (or tokens) per call, for the throughput.

    Returns:
        dict with ``latency_ms_mean``, ``latency_ms_std``, ``latency_ms_p50``, ``latency_ms_p95``,
        ``latency_ms_min``, ``n_calls`` and ``throughput_seq_per_s`` (``batch_size`` x calls per second of mean
        latency).
    """
    t = np.asarray(times_ms, dtype=np.float64)
    if t.size == 0:
        raise UfkitError("no timed calls to summarize")
    return {"latency_ms_mean": float(t.mean()), "latency_ms_std": float(t.std(ddof=1)) if t.size > 1 else 0.0,
            "latency_ms_p50": float(np.percentile(t, 50)), "latency_ms_p95": float(np.percentile(t, 95)),
            "latency_ms_min": float(t.min()), "n_calls": int(t.size),
            "throughput_seq_per_s": float(batch_size * 1e3 / t.mean())}


def time_calls(fns: Mapping[str, Callable[[Any], Any]], inputs: Sequence[Any], *, n_warmup: int = 1,
               rounds: int = 1, threads: int | None = None, sync: Callable[[], Any] | None = None,
               max_seconds: float | None = None, max_other_cores: float = MAX_OTHER_CORES, retries: int = 1,
               inference_mode: bool = True) -> Timing:
    """Time every callable on every input, interleaved, under a fixed thread count, on a quiet machine.

    Each round runs the inputs in order; each input goes through every callable back to back, starting one
    callable later for every input (rotating order). Before timing, each callable runs on the first ``n_warmup``
    inputs (cycled), untimed.

    Args:
        fns: name -> callable taking one input (a batch dict, a tensor, ...).
        inputs: what the callables are called with; every callable sees all of them, ``rounds`` times.
        n_warmup: untimed calls per callable first.
        rounds: passes over the inputs.
        threads: torch intra-op threads for the run (None: leave as is); restored after (:func:`num_threads`).
        sync: called after every call before the clock stops (``torch.cuda.synchronize`` for GPU work).
        max_seconds: stop a round early once this much time was spent and every callable has ≥ 3 calls.
        max_other_cores: the load from other processes above which the machine counts as busy
            (:class:`CpuLoad`).
        retries: re-measurements when the machine was busy; if it still is, a :class:`BusyMachineWarning` is
            issued and the result carries ``busy=True``.
        inference_mode: run under ``torch.inference_mode()``.

    Returns:
        :class:`Timing`.

    Raises:
        UfkitError: no callables, no inputs, or a non-positive ``rounds``/negative ``n_warmup``.
    """
    import torch

    if not fns:
        raise UfkitError("fns is empty: nothing to time")
    if len(inputs) == 0:
        raise UfkitError("inputs is empty: nothing to time on")
    if not isinstance(rounds, int) or rounds < 1:
        raise UfkitError(f"rounds must be a positive integer, got {rounds!r}")
    if not isinstance(n_warmup, int) or n_warmup < 0:
        raise UfkitError(f"n_warmup must be a non-negative integer, got {n_warmup!r}")
    names = list(fns)
    ctx = torch.inference_mode if inference_mode else contextlib.nullcontext
    attempts, result = 0, None
    with num_threads(threads), ctx():
        for fn in fns.values():
            for i in range(n_warmup):
                fn(inputs[i % len(inputs)])
            if sync is not None:
                sync()
        while attempts <= retries:
            attempts += 1
            times = {name: [] for name in names}
            with CpuLoad() as load:
                start = time.perf_counter()
                for _ in range(rounds):
                    for j, x in enumerate(inputs):
                        if (max_seconds is not None and time.perf_counter() - start > max_seconds
                                and min(len(t) for t in times.values()) >= 3):
                            break
                        for name in names[j % len(names):] + names[:j % len(names)]:
                            t0 = time.perf_counter()
                            fns[name](x)
                            if sync is not None:
                                sync()
                            times[name].append((time.perf_counter() - t0) * 1e3)
            result = Timing({k: np.asarray(v) for k, v in times.items()}, load.other_cores,
                            load.busy(max_other_cores), attempts, load.seconds)
            if not result.busy:
                break
    if result.busy:
        warnings.warn(f"other processes took {result.other_cores:.2f} cores while timing {', '.join(names)} "
                      f"({attempts} attempt(s)); the result is flagged busy=True", BusyMachineWarning, stacklevel=2)
    return result


def drift_scale(reference_ms: Sequence[float]) -> np.ndarray:
    """Factors that divide a drifting machine's speed out of timings taken beside a fixed reference model.

    Chapter 4's correction: a VM's speed drifts by 10-20 % over minutes; timing a fixed reference model in the same
    turns as each measurement and scaling measurement ``i`` by ``median(reference) / reference[i]`` puts every
    timing on the speed the machine had typically.

    Args:
        reference_ms: the reference's latency beside each measurement, shape ``(n,)``.

    Returns:
        `numpy.ndarray` of shape ``(n,)``: multiply measurement ``i``'s latencies by element ``i``.
    """
    ref = np.asarray(reference_ms, dtype=np.float64)
    return float(np.median(ref)) / ref
