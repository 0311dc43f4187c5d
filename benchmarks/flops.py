"""The floating-point operations a piece of work executed: matrix products and attention, counted by
torch's ``FlopCounterMode`` as each op is dispatched (work that ran, not a formula of the model), plus
formulas for two CPU ops it does not know: oneDNN's linear (``mkldnn::_linear_pointwise``, what
``recsys.kernels.onednn`` runs) and SDPA's CPU flash kernel, plus what our fused CPU kernels
(``recsys.kernels.cpu_*``, outside torch's dispatcher) count of their own loops. Elementwise work
(softmax, LayerNorm, GELU) is not counted, on either side of a comparison.

Needs torch only (recsys where it is importable), so RecBole's side of ``benchmarks/peer_recbole.py``
counts with it too.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch.utils import flop_counter

_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    _registered = True

    def linear_flops(x_shape, w_shape) -> int:  # x [..., K] @ w [N, K].T
        return 2 * math.prod(x_shape[:-1]) * x_shape[-1] * w_shape[0]

    known = flop_counter.flop_registry
    linear_pointwise = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if linear_pointwise is not None and linear_pointwise not in known:
        # one formula for both overloads: (X, W, B, attr, ...) and .binary (X, other, W, B, attr)
        def linear_pointwise_flops(x_shape, *args, out_shape=None, **kwargs) -> int:
            w_shape = args[0] if isinstance(args[2], str) else args[1]
            return linear_flops(x_shape, w_shape)

        flop_counter.register_flop_formula(linear_pointwise)(linear_pointwise_flops)
    cpu_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_flash is not None and cpu_flash not in known:
        flop_counter.register_flop_formula(cpu_flash)(
            lambda q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs: flop_counter.sdpa_flop_count(
                q_shape, k_shape, v_shape
            )
        )


def count_flops(fn, *args, **kwargs):
    """(fn's result, the floating-point operations its products and attention executed)."""
    _register()
    try:
        from recsys.kernels.cpu_build import counting_flops
    except ImportError:  # RecBole's environment: no recsys there
        counting_flops = None
    mode = flop_counter.FlopCounterMode(display=False)
    with mode, counting_flops() if counting_flops else contextlib.nullcontext([0]) as kernels:
        out = fn(*args, **kwargs)
    return out, mode.get_total_flops() + kernels[0]
