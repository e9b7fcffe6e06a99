"""Layers with shared filters, computed by PyTorch's own convolutions (cuDNN, oneDNN).

- Shared filter banks (``geometry.banks``) whose output coordinates form, per dimension and bank,
  an arithmetic progression (every ``t``-th coordinate for tiled sharing, a run for regions): the
  positions of one bank are then a strided sub-grid of the output, which is a convolution over a
  crop of the input with stride ``stride * step``, so the layer is one ``F.convNd`` per bank.
- Low-rank layers (:func:`low_rank_forward`): one convolution with ``rank * out_channels``
  filters, then the per-position combination of the ``rank`` results.

Everything here is made of differentiable standard operators: autograd differentiates it (no
custom operator) and exporters see it. Padding means zeros (other modes are applied before).
"""
from __future__ import annotations

import functools
import itertools

import torch
import torch.nn.functional as F

from .._utils import CONV_FUNCTIONS, Geometry

#: made of standard differentiable operators: called directly, differentiated by autograd
STANDARD_OPERATORS = True

__all__ = ["can_run", "forward", "low_rank_forward", "bank_runs"]

Run = tuple[int, int, int]  # (first output coordinate, step, count)


def bank_runs(g: Geometry) -> list[list[Run | None]] | str:
    """Per dimension and bank coordinate, the ``(first, step, count)`` progression of the output
    coordinates that use it (``None`` for an unused coordinate), or why there is none."""
    if g.banks is None:
        return ("every position has its own filters: nothing for a convolution to share (this "
                "backend computes shared banks and low-rank layers)")
    if torch.compiler.is_compiling():  # Dynamo traces the plain function (it warns on lru_cache)
        return _runs(g.banks, g.weight_grid)
    return _remembered_runs(g.banks, g.weight_grid)


def _runs(banks, weight_grid):
    result = []
    for d, (coords, size) in enumerate(zip(banks, weight_grid)):
        runs = []
        for bank in range(size):
            where = [i for i, c in enumerate(coords) if c == bank]
            if not where:
                runs.append(None)
                continue
            step = where[1] - where[0] if len(where) > 1 else 1
            if any(b - a != step for a, b in zip(where, where[1:])):
                return (f"the output coordinates {where} of bank coordinate {bank} along dimension {d} "
                        f"are not evenly spaced, so they are no convolution's output grid")
            runs.append((where[0], step, len(where)))
        result.append(runs)
    return result


_remembered_runs = functools.lru_cache(maxsize=64)(_runs)


def can_run(x: torch.Tensor, w: torch.Tensor, g: Geometry) -> str | None:
    """``None`` when every bank's positions form a strided sub-grid, else the reason."""
    runs = bank_runs(g)
    return runs if isinstance(runs, str) else None


def _zero_pad(x: torch.Tensor, g: Geometry) -> torch.Tensor:
    pads = [p for pair in reversed(g.padding) for p in pair]
    return F.pad(x, pads) if any(pads) else x


def forward(x: torch.Tensor, w: torch.Tensor, g: Geometry) -> torch.Tensor:
    """``(N, C, *input_size)``, banks ``(*weight_grid, O, C/groups, *kernel)`` -> ``(N, O, *output_size)``."""
    runs = bank_runs(g)
    if isinstance(runs, str):
        raise ValueError(f"the conv backend cannot compute this call: {runs}")
    xp = _zero_pad(x, g)
    y = xp.new_empty(x.shape[0], g.out_channels, *g.output_size)
    conv = CONV_FUNCTIONS[g.ndim]
    for bank in itertools.product(*map(range, g.weight_grid)):
        per_dim = [runs[d][b] for d, b in enumerate(bank)]
        if any(run is None for run in per_dim):
            continue
        outs, ins, strides = [], [], []
        for (first, step, count), s, k, dil in zip(per_dim, g.stride, g.kernel_size, g.dilation):
            outs.append(slice(first, first + step * (count - 1) + 1, step))
            start = first * s
            ins.append(slice(start, start + (count - 1) * s * step + dil * (k - 1) + 1))
            strides.append(s * step)
        part = conv(xp[(slice(None), slice(None), *ins)], w[bank], None, tuple(strides), 0, g.dilation, g.groups)
        y[(slice(None), slice(None), *outs)] = part
    return y


def low_rank_forward(x: torch.Tensor, basis: torch.Tensor, alpha: torch.Tensor, g: Geometry) -> torch.Tensor:
    """``y[:, :, p] = sum_k alpha[k, p] * conv(x, basis[k])[:, :, p]``.

    ``x``: ``(N, C, *input_size)``; ``basis``: ``(rank, O, C/groups, *kernel)``; ``alpha``:
    ``(rank, *output_size)``; returns ``(N, O, *output_size)``.
    """
    # sizes from the geometry, and int(): torch.jit.trace then records the batch size alone
    n, rank, groups, og = x.shape[0], int(basis.shape[0]), g.groups, g.out_channels // g.groups
    filter_shape = (g.in_channels // groups, *g.kernel_size)
    xp = _zero_pad(x, g)
    # filters ordered (group, basis, out_per_group) so that the conv's groups stay contiguous
    filters = basis.view(rank, groups, og, *filter_shape).transpose(0, 1).reshape(-1, *filter_shape)
    z = CONV_FUNCTIONS[g.ndim](xp, filters, None, g.stride, 0, g.dilation, groups)
    z = z.view(n, groups, rank, og, *g.output_size)
    y = (z * alpha.view(1, 1, rank, 1, *g.output_size)).sum(2)
    return y.reshape(n, g.out_channels, *g.output_size)
