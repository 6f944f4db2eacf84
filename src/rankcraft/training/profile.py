"""Cost of a model: parameters, FLOPs per example and throughput.

FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode` on one forward pass in eval mode, which
counts matrix products (mm/addmm/bmm/baddbmm/scaled-dot-product attention) as ``2·m·n·k``; elementwise ops and
embedding gathers count 0. The figure is divided by the batch size.

Two gaps of the stock counter on CPU are closed here: the CPU flash-attention kernel behind
``F.scaled_dot_product_attention`` gets the same formula as the GPU kernels (``4·B·H·L·S·E``-style, via
``sdpa_flop_count``), and PyTorch's fused "fast path" for ``nn.TransformerEncoderLayer`` / ``nn.MultiheadAttention``
in eval mode (one opaque kernel, counted as 0) is switched off while counting, so attention layers are counted
through their matmuls.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_CUSTOM_FLOPS = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _CUSTOM_FLOPS[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flops


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def slice_batch(batch: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    return {k: v[:n] for k, v in batch.items()}


@torch.no_grad()
def flops_per_example(model: nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """Forward FLOPs per example of ``model`` on ``batch`` (counted on the whole batch, divided by its size)."""
    was_training = model.training
    model.eval()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOPS) as counter:
            model(batch)
        n = next(iter(batch.values())).shape[0]
        return counter.get_total_flops() / max(n, 1)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        model.train(was_training)


@torch.no_grad()
def inference_rows_per_s(model: nn.Module, batch: dict[str, torch.Tensor], *, repeats: int = 5,
                         min_seconds: float = 0.2) -> float:
    """Rows/s of ``model(batch)`` in eval mode (median-free: total rows over total time after one warm-up)."""
    was_training = model.training
    model.eval()
    try:
        model(batch)
        n = next(iter(batch.values())).shape[0]
        rows, start = 0, time.perf_counter()
        while True:
            for _ in range(repeats):
                model(batch)
                rows += n
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                return rows / elapsed
    finally:
        model.train(was_training)
