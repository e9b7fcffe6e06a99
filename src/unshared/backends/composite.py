"""The locally connected layer written with standard differentiable PyTorch operators only.

One strided slice of the zero-padded input and one ``einsum`` per kernel offset, summed; autograd
differentiates it. Slower than the other backends and, with shared banks, it expands the filters
to every position; its purpose is to be visible to tools that cannot see custom operators:
``torch.onnx.export`` (chosen automatically while exporting), and any other graph exporter.
Half precision is summed in float32.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from .._utils import Geometry, flat_bank_index

#: made of standard differentiable operators: called directly, differentiated by autograd
STANDARD_OPERATORS = True


def can_run(x: torch.Tensor, w: torch.Tensor, g: Geometry) -> str | None:
    """``None``: standard operators run wherever PyTorch does."""
    return None


def forward(x: torch.Tensor, w: torch.Tensor, g: Geometry) -> torch.Tensor:
    """``(N, C, *input_size)``, public weight -> ``(N, O, *output_size)``, differentiable by autograd."""
    n = x.shape[0]
    groups, cg, og = g.groups, g.in_channels // g.groups, g.out_channels // g.groups
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    pads = [p for pair in reversed(g.padding) for p in pair]
    xp = F.pad(x, pads) if any(pads) else x
    filters = w.reshape(-1, g.out_channels, cg, g.kernel_volume)  # (banks or positions, O, Cg, K)
    if g.banks is not None:
        filters = filters[flat_bank_index(g, x.device)]
    filters = filters.reshape(g.positions, groups, og, cg, g.kernel_volume).to(compute)
    y = None
    for k, offset in enumerate(itertools.product(*map(range, g.kernel_size))):
        window = tuple(slice(i * d, i * d + (o - 1) * s + 1, s)
                       for i, d, o, s in zip(offset, g.dilation, g.output_size, g.stride))
        patch = xp[(slice(None), slice(None), *window)].reshape(n, groups, cg, g.positions).to(compute)
        term = torch.einsum("ngcp,pgoc->ngop", patch, filters[..., k])
        y = term if y is None else y + term
    return y.reshape(n, g.out_channels, *g.output_size).to(x.dtype)
