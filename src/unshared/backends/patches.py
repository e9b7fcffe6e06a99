"""Strided views and copies that the batched-matmul backends share (:mod:`.pytorch`, :mod:`.unfold`).

Shapes: ``x`` is ``(N, C, *input_size)``, an output gradient ``(N, O, *output_size)``; the weight's
memory is viewed as ``(Pw, groups, out_per_group, R)`` with ``R = kernel_volume * in_per_group``
ordered kernel-major ``(kernel, Cg)`` or channel-major ``(Cg, kernel)`` (see :mod:`unshared._utils`).
"""
from __future__ import annotations

import torch

from .._utils import Geometry, weight_memory

__all__ = ["compute_dtype", "weight_matrix", "kernel_major_view", "padded_input", "position_major", "window_view"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype products and sums are computed in: float32 for half precision, else ``dtype``."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def weight_matrix(w: torch.Tensor, g: Geometry) -> tuple[torch.Tensor, bool]:
    """The weight's memory as ``(Pw, groups, out_per_group, R)``, and whether it is kernel-major
    (``R`` ordered ``(kernel, Cg)``) or channel-major (``(Cg, kernel)``; see :mod:`unshared._utils`)."""
    memory, kernel_major = weight_memory(w)
    cg = g.in_channels // g.groups
    return memory.view(-1, g.groups, g.out_channels // g.groups, g.kernel_volume * cg), kernel_major


def kernel_major_view(rows: torch.Tensor, g: Geometry, kernel_major: bool) -> torch.Tensor:
    """Rows ``(..., R)`` of either layout as a ``(..., kernel_volume, Cg)`` view, so that
    ``copy_`` between two such views converts the layout."""
    cg = g.in_channels // g.groups
    if kernel_major:
        return rows.unflatten(-1, (g.kernel_volume, cg))
    return rows.unflatten(-1, (cg, g.kernel_volume)).transpose(-1, -2)


def padded_input(x: torch.Tensor, g: Geometry) -> torch.Tensor:
    """``x`` zero-padded, as an ``(N, C, *padded)`` view whose channel stride is 1."""
    if all(lo == hi == 0 for lo, hi in g.padding) and x.stride(1) == 1:
        return x
    n, c = x.shape[:2]
    buf = x.new_zeros((n, *g.padded_size, c))
    interior = (slice(None),) + tuple(slice(lo, lo + i) for (lo, _), i in zip(g.padding, g.input_size))
    buf[interior].copy_(x.movedim(1, -1))
    return buf.movedim(-1, 1)


def position_major(gy: torch.Tensor, g: Geometry, dtype: torch.dtype, batch_last: bool = False):
    """``(N, O, *out)`` -> contiguous ``(positions, groups, N, out_per_group)`` in ``dtype``
    (``(positions, groups, out_per_group, N)`` with ``batch_last``), in one copy."""
    n = gy.shape[0]
    og = g.out_channels // g.groups
    pm = gy.movedim(0, -1).movedim(0, -1)  # (*out, N, O)
    pm = pm.reshape(g.positions, n, g.groups, og)
    pm = pm.permute(0, 2, 3, 1) if batch_last else pm.permute(0, 2, 1, 3)
    out = torch.empty(pm.shape, dtype=dtype, device=gy.device)
    return out.copy_(pm)


def window_view(xp: torch.Tensor, g: Geometry, r0: int, r1: int, offset=None) -> torch.Tensor:
    """Strided view of the padded input ``(N, C, *padded)`` for output rows ``r0:r1``.

    With ``offset=None``: shape ``(rows, *out[1:], groups, N, *kernel, in_per_group)`` (the
    patches). With a kernel offset tuple: ``(rows, *out[1:], groups, N, in_per_group)``, the input
    elements that this kernel offset touches. ``xp`` may be a batch slice of a larger tensor.
    """
    s_n, s_c, *s_sp = xp.stride()
    cg = g.in_channels // g.groups
    n = xp.shape[0]
    size = [r1 - r0, *g.output_size[1:], g.groups, n]
    strides = [st * sp for st, sp in zip(g.stride, s_sp)] + [cg * s_c, s_n]
    start = xp.storage_offset() + r0 * g.stride[0] * s_sp[0]
    if offset is None:
        size += [*g.kernel_size, cg]
        strides += [d * sp for d, sp in zip(g.dilation, s_sp)] + [s_c]
    else:
        size += [cg]
        strides += [s_c]
        start += sum(k * d * sp for k, d, sp in zip(offset, g.dilation, s_sp))
    return xp.as_strided(size, strides, start)
