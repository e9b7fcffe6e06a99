"""The definition of a locally connected layer: slow, obviously correct, float64.

Written independently of the library (its own argument handling and padding): padding is an
explicit index map per dimension, and each output position is one plain loop iteration that takes
its window and applies that position's own filter bank, group by group.
"""
from __future__ import annotations

import itertools

import torch


def _tuple(v, n):
    return (v,) * n if isinstance(v, int) else tuple(v)


def _pads(padding, kernel, dilation, n):
    if padding == "valid":
        return [(0, 0)] * n
    if padding == "same":  # total d*(k-1), the extra one on the high side
        return [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation)]
    return [(p, p) for p in _tuple(padding, n)]


def _source(j: int, size: int, mode: str):
    """Index in the unpadded input that padded coordinate ``j`` (0-based at -lo) reads, or None."""
    if 0 <= j < size:
        return j
    if mode == "zeros":
        return None
    if mode == "reflect":
        return -j if j < 0 else 2 * (size - 1) - j
    if mode == "replicate":
        return min(max(j, 0), size - 1)
    if mode == "circular":
        return j % size
    raise ValueError(mode)


def pad_reference(x, pads, mode):
    """Pad ``(N, C, *spatial)`` with an explicit index map per spatial dimension."""
    for dim, (lo, hi) in enumerate(pads, start=2):
        size = x.shape[dim]
        src = [_source(j, size, mode) for j in range(-lo, size + hi)]
        index = torch.tensor([0 if s is None else s for s in src], device=x.device)
        mask = torch.tensor([s is not None for s in src], dtype=x.dtype, device=x.device)
        x = x.index_select(dim, index) * mask.view(-1, *(1,) * (x.dim() - dim - 1))
    return x


def locally_connected_reference(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                                padding_mode="zeros"):
    """``y[n, o, p] = b[o, p] + sum_{c, k} w[p, o, c, k] * x_pad[n, g(o)*Cg + c, p*s + k*d]`` in float64."""
    nd = weight.dim() // 2 - 1
    unbatched = x.dim() == nd + 1
    x = (x.unsqueeze(0) if unbatched else x).double()
    w = weight.double()
    grid, out_channels, cg, kernel = w.shape[:nd], w.shape[nd], w.shape[nd + 1], w.shape[nd + 2:]
    stride, dilation = _tuple(stride, nd), _tuple(dilation, nd)
    xp = pad_reference(x, _pads(padding, kernel, dilation, nd), padding_mode)
    og = out_channels // groups
    y = x.new_zeros(x.shape[0], out_channels, *grid)
    for p in itertools.product(*map(range, grid)):
        window = xp[(slice(None), slice(None)) + tuple(
            slice(pi * s, pi * s + d * (k - 1) + 1, d) for pi, s, d, k in zip(p, stride, dilation, kernel))]
        for g in range(groups):
            patch = window[:, g * cg:(g + 1) * cg]              # (N, Cg, *kernel)
            filters = w[p][g * og:(g + 1) * og]                  # (Og, Cg, *kernel)
            y[(slice(None), slice(g * og, (g + 1) * og)) + p] = patch.flatten(1) @ filters.flatten(1).T
    if bias is not None:
        b = bias.double()
        y = y + (b if b.dim() > 1 else b.view(-1, *(1,) * nd))
    return y.squeeze(0) if unbatched else y
