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

from .._utils import Geometry, flat_bank_index, public_to_storage_perm, storage_to_public_perm

#: made of standard differentiable operators: called directly, differentiated by autograd
STANDARD_OPERATORS = True


def can_run(x: torch.Tensor, w: torch.Tensor, g: Geometry) -> str | None:
    """``None``: standard operators run wherever PyTorch does."""
    return None


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _filters(w: torch.Tensor, g: Geometry, compute: torch.dtype) -> torch.Tensor:
    """Every position's filters as ``(positions, groups, out_per_group, in_per_group, kernel_volume)``."""
    cg, og = g.in_channels // g.groups, g.out_channels // g.groups
    # cast before the bank gather, so that its gradient (a sum over each bank's positions) is float32
    filters = w.reshape(-1, g.out_channels, cg, g.kernel_volume).to(compute)  # (banks or positions, O, Cg, K)
    if g.banks is not None:
        filters = filters[flat_bank_index(g, w.device)]
    return filters.reshape(g.positions, g.groups, og, cg, g.kernel_volume)


def _windows(g: Geometry):
    """Per kernel offset: its index and the strided slices of the padded input it touches."""
    for k, offset in enumerate(itertools.product(*map(range, g.kernel_size))):
        yield k, offset, tuple(slice(i * d, i * d + (o - 1) * s + 1, s)
                               for i, d, o, s in zip(offset, g.dilation, g.output_size, g.stride))


def forward(x: torch.Tensor, w: torch.Tensor, g: Geometry) -> torch.Tensor:
    """``(N, C, *input_size)``, public weight -> ``(N, O, *output_size)``, differentiable by autograd."""
    n = x.shape[0]
    groups, cg = g.groups, g.in_channels // g.groups
    compute = _compute_dtype(x.dtype)
    pads = [p for pair in reversed(g.padding) for p in pair]
    xp = F.pad(x, pads) if any(pads) else x
    filters = _filters(w, g, compute)
    y = None
    for k, _, window in _windows(g):
        patch = xp[(slice(None), slice(None), *window)].reshape(n, groups, cg, g.positions).to(compute)
        term = torch.einsum("ngcp,pgoc->ngop", patch, filters[..., k])
        y = term if y is None else y + term
    return y.reshape(n, g.out_channels, *g.output_size).to(x.dtype)


def _place(term: torch.Tensor, g: Geometry, offset) -> torch.Tensor:
    """``term`` ``(N, C, *output_size)`` spread to the positions of the padded input that kernel
    offset ``offset`` reads (every ``stride``-th from ``offset * dilation``), zeros elsewhere: with
    ``F.pad`` and reshapes only, so that exporters see standard operators."""
    for d, (i, dil, o, s, size) in enumerate(zip(offset, g.dilation, g.output_size, g.stride, g.padded_size)):
        dim = 2 + d
        t = term.movedim(dim, -1)
        if s > 1:  # insert s - 1 zeros after every element, then drop the trailing ones
            t = F.pad(t.unsqueeze(-1), (0, s - 1)).flatten(-2)[..., : (o - 1) * s + 1]
        term = F.pad(t, (i * dil, size - i * dil - ((o - 1) * s + 1))).movedim(-1, dim)  # t: (o - 1) * s + 1 long
    return term


def input_grad(gy: torch.Tensor, w: torch.Tensor, g: Geometry,
               memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """The adjoint of :func:`forward` in its input (also the transposed layer's forward):
    ``(N, O, *output_size)`` -> ``(N, C, *input_size)``, standard operators only."""
    n = gy.shape[0]
    groups, og = g.groups, g.out_channels // g.groups
    compute = _compute_dtype(gy.dtype)
    filters = _filters(w, g, compute)
    grads = gy.reshape(n, groups, og, g.positions).to(compute)
    gxp = None
    for k, offset, _ in _windows(g):
        term = torch.einsum("ngop,pgoc->ngcp", grads, filters[..., k]).reshape(n, g.in_channels, *g.output_size)
        placed = _place(term, g, offset)
        gxp = placed if gxp is None else gxp + placed
    interior = (slice(None), slice(None)) + tuple(slice(lo, lo + i) for (lo, _), i in zip(g.padding, g.input_size))
    return gxp[interior].to(gy.dtype).contiguous(memory_format=memory_format)


def weight_grad(x: torch.Tensor, gy: torch.Tensor, g: Geometry, kernel_major: bool = False) -> torch.Tensor:
    """The adjoint of :func:`forward` in its weight: the public-shaped weight gradient (kernel-major
    strides when asked), summed over each shared bank's positions; standard operators only."""
    n = x.shape[0]
    groups, cg, og = g.groups, g.in_channels // g.groups, g.out_channels // g.groups
    compute = _compute_dtype(x.dtype)
    pads = [p for pair in reversed(g.padding) for p in pair]
    xp = F.pad(x, pads) if any(pads) else x
    grads = gy.reshape(n, groups, og, g.positions).to(compute)
    terms = [torch.einsum("ngcp,ngop->pgoc", xp[(slice(None), slice(None), *window)]
                          .reshape(n, groups, cg, g.positions).to(compute), grads)
             for _, _, window in _windows(g)]
    per_position = torch.stack(terms, -1).reshape(g.positions, g.out_channels, cg, g.kernel_volume)
    if g.banks is not None:
        per_position = per_position.new_zeros(g.bank_count, *per_position.shape[1:]).index_add(
            0, flat_bank_index(g, x.device), per_position)
    gw = per_position.reshape(*g.weight_leading, g.out_channels, cg, *g.kernel_size).to(x.dtype)
    if kernel_major:
        gw = gw.permute(public_to_storage_perm(g.ndim)).contiguous().permute(storage_to_public_perm(g.ndim))
    return gw
