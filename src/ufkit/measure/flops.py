"""FLOPs of a model call, counted by :class:`torch.utils.flop_counter.FlopCounterMode`."""

from __future__ import annotations

from typing import Callable

import torch


def count_flops(fn: Callable, *args, **kwargs) -> int:
    """FLOPs of ``fn(*args, **kwargs)`` as :class:`torch.utils.flop_counter.FlopCounterMode` counts them.

    torch counts no FLOPs for the CPU's fused attention kernel (``_scaled_dot_product_flash_attention_for_cpu``);
    it is added here as the two matrix products it performs, ``2 B H L S (E + Ev)``, the same formula torch uses
    for the GPU kernels.
    """
    from torch.utils.flop_counter import FlopCounterMode

    def cpu_sdpa(query, key, value, *a, out_shape=None, **kw):
        b, h, lq, e = query
        return 2 * b * h * lq * key[-2] * (e + value[-1])

    mapping = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = cpu_sdpa
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


