"""The cortical sheet of a locally connected layer, and All-TNN's smoothness loss.

All-TNN (Lu, Doerig, Bosch, Krahmer, Kaiser, Cichy, Kietzmann, "End-to-end topographic networks as
models of cortical map formation and human visual behaviour", 2025; code KietzmannLab/All-TNN) lays
the units of a locally connected layer (one per output position and channel) on a 2-d sheet, each
position's ``C = a * b`` channels as an ``a x b`` block, and trains with a loss that makes
neighbouring units' filters similar:

- :func:`sheet`: the units on the sheet, ``(H * a, W * b, F)``, each with its filter and bias;
- :func:`smoothness_loss`: the mean cosine distance between neighbouring units;
- :func:`default_channel_grid`: All-TNN's ``(a, b)`` for ``C`` channels.

The loss never builds the sheet: a unit's filter is a row of the weight's memory in either layout
(cosine similarity does not depend on the order of a unit's features), the pairs of neighbouring
units form a sparse pattern, and the loss is one sampled matrix product over it (one read of the
weight), its gradient one sparse-dense product (one read, one write).
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.lazy import LazyModuleMixin

from . import _utils as U
from . import lowrank, sharing
from .backends.buffers import pooled_buffer
from .modules import LocallyConnected1d, LocallyConnected2d

__all__ = ["sheet", "smoothness_loss", "default_channel_grid"]

_NOT_PER_POSITION = tuple(getattr(module, f"{kind}LocallyConnected{nd}d") for nd in (1, 2)
                          for module, kind in ((sharing, "Tiled"), (sharing, "Region"), (lowrank, "LowRank")))
#: Neighbour directions (rows down, columns right) on a 2-d sheet, and on a 1-d line.
_DIRECTIONS = {4: ((1, 0), (0, 1)), 8: ((1, 0), (0, 1), (1, 1), (1, -1))}
_LINE = ((0, 1),)
#: The floor of a unit's norm (``torch.nn.functional.normalize``'s ``eps``).
_EPS = 1e-12


def default_channel_grid(channels: int) -> tuple[int, int]:
    """All-TNN's block ``(a, b)`` for ``channels = a * b``: ``a = b = sqrt(channels)`` for a square,
    otherwise the largest divisor ``a <= sqrt(channels)`` and ``b = channels // a``.

    Example::

        >>> from unshared.topography import default_channel_grid
        >>> default_channel_grid(64), default_channel_grid(2500), default_channel_grid(12), default_channel_grid(7)
        ((8, 8), (50, 50), (3, 4), (1, 7))
    """
    a = math.isqrt(channels)
    while channels % a:
        a -= 1
    return a, channels // a


def _check_layer(layer: nn.Module, caller: str, channel_grid) -> tuple[int, tuple[int, int]]:
    """The layer's ``nd`` (1 or 2) and its channel block ``(a, b)`` (``(1, C)`` in 1d)."""
    name = type(layer).__name__
    if not isinstance(layer, (LocallyConnected1d, LocallyConnected2d)) or isinstance(layer, _NOT_PER_POSITION):
        raise TypeError(f"{caller} expects a LocallyConnected1d or LocallyConnected2d (one filter bank per "
                        f"output position), got {name}")
    if isinstance(layer, LazyModuleMixin) and layer.has_uninitialized_params():
        raise ValueError(f"{caller}: the lazy {name} is not initialised yet; run one forward first")
    channels, nd = layer.out_channels, len(layer.kernel_size)
    if nd == 1:
        if channel_grid is not None:
            raise ValueError(f"{caller}: channel_grid={channel_grid!r} has no meaning for {name}: a 1d layer's "
                             f"units lie on a line, each position's channels in a row")
        return 1, (1, channels)
    if channel_grid is None:
        return 2, default_channel_grid(channels)
    grid = tuple(channel_grid) if isinstance(channel_grid, (tuple, list)) else ()
    positive = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in grid)
    if len(grid) != 2 or not positive or grid[0] * grid[1] != channels:
        raise ValueError(f"{caller}: channel_grid must be two positive ints (a, b) with a * b = out_channels "
                         f"= {channels} of {name}, got channel_grid={channel_grid!r}")
    return 2, grid


def _position_bias(layer: nn.Module) -> Tensor | None:
    """The per-position bias ``(C, *output_size)``, or ``None`` (no bias, or a shared one)."""
    bias = layer.bias
    return bias if bias is not None and bias.dim() == len(layer.kernel_size) + 1 else None


def sheet(layer: nn.Module, channel_grid=None) -> Tensor:
    """The units of ``layer`` laid out on All-TNN's cortical sheet, each with its features.

    A 2d layer with output grid ``(H, W)`` and ``out_channels = a * b`` gives ``(H * a, W * b, F)``:
    unit ``(row, col)`` is output position ``(row // a, col // b)``, channel
    ``(row % a) * b + col % b``. A 1d layer of length ``L`` gives ``(L * C, F)``, each position's
    ``C`` channels consecutive. A unit's ``F`` features are that channel's filter at that position,
    ``layer.weight[position][channel].flatten()`` (``in_channels // groups * prod(kernel_size)``
    values), followed by its bias when the bias is per position. Differentiable (one copy of the
    weight).

    Args:
        layer: a ``LocallyConnected1d`` or ``LocallyConnected2d``.
        channel_grid: 2d only, ``(a, b)``. Default: :func:`default_channel_grid` of ``out_channels``.

    Example::

        >>> import torch, unshared
        >>> layer = unshared.LocallyConnected2d(3, 6, 2, input_size=(4, 5))  # 3 x 4 positions, 6 channels
        >>> s = unshared.topography.sheet(layer)                             # blocks of 2 x 3 channels
        >>> s.shape
        torch.Size([6, 12, 13])
        >>> torch.equal(s[3, 5, :12], layer.weight[1, 1, 5].flatten()), torch.equal(s[3, 5, 12], layer.bias[5, 1, 1])
        (True, True)
    """
    nd, (a, b) = _check_layer(layer, "sheet", channel_grid)
    weight, bias = layer.weight, _position_bias(layer)
    grid, filter_shape = tuple(weight.shape[:nd]), tuple(weight.shape[nd + 1:])
    size = math.prod(filter_shape)
    features = size + (bias is not None)
    if nd == 1:
        units = weight.new_empty((grid[0], a * b, features))
        units[..., :size].unflatten(-1, filter_shape).copy_(weight)
        if bias is not None:
            units[..., size].copy_(bias.t())
        return units.view(grid[0] * a * b, features)
    (H, W) = grid
    units = weight.new_empty((H, a, W, b, features))   # (row block, row in block, col block, col in block)
    units[..., :size].unflatten(-1, filter_shape).copy_(weight.unflatten(2, (a, b)).transpose(1, 2))
    if bias is not None:
        units[..., size].copy_(bias.unflatten(0, (a, b)).permute(2, 0, 3, 1))
    return units.view(H * a, W * b, features)


def smoothness_loss(layer: nn.Module, *, circular: bool = True, neighbours: int = 4, channel_grid=None) -> Tensor:
    """All-TNN's spatial smoothness loss: the mean cosine distance between neighbouring units of
    :func:`sheet`.

    Each unit's features are normalised to unit length (norms below ``1e-12`` count as ``1e-12``),
    and ``D = (1 - mean of the direction means) / 2``, where a direction's mean is the mean cosine
    similarity over the pairs of units one step apart in that direction: down and right for
    ``neighbours=4`` (All-TNN's default), also down-right and down-left for ``neighbours=8``; in
    1d the next unit along the line. ``D`` is 0 for a sheet of identical filters and at most 1.

    With ``circular`` (All-TNN's default) the last row and column pair with the first (every unit
    has a neighbour in every direction); without it only pairs inside the sheet count. All-TNN's
    own 8-neighbour code pairs each of these directions twice (up repeats down, left repeats right,
    and so on) and wraps only down and right; here each direction counts once, and all wrap.

    Fast: no sheet is built; the products of neighbouring units are one sampled matrix product on
    the weight's memory, and the gradient one sparse-dense product written into a buffer in the
    weight's layout (a ``torch.sparse_csr_tensor`` pattern cached per sheet geometry).

    Args:
        layer: a ``LocallyConnected1d`` or ``LocallyConnected2d``.
        circular: wrap around the sheet's borders. Default: ``True``.
        neighbours: 4 or 8 (2d only). Default: 4.
        channel_grid: as for :func:`sheet`.

    Returns:
        A scalar tensor (float32 for half-precision weights), differentiable with respect to the
        weight and a per-position bias (reverse and forward mode).

    Example::

        >>> import torch, unshared
        >>> layer = unshared.LocallyConnected2d(3, 16, 3, input_size=10)
        >>> loss = unshared.topography.smoothness_loss(layer)
        >>> 0.4 < loss.item() < 0.6     # random filters: nearly orthogonal neighbours
        True
        >>> loss.backward(); layer.weight.grad.shape
        torch.Size([8, 8, 16, 3, 3, 3])
    """
    nd, (a, b) = _check_layer(layer, "smoothness_loss", channel_grid)
    if neighbours not in _DIRECTIONS or (nd == 1 and neighbours != 4):
        raise ValueError(f"smoothness_loss: neighbours must be 4 or 8 (2d layers; a 1d layer has one direction), "
                         f"got neighbours={neighbours!r} for {type(layer).__name__}")
    directions = _LINE if nd == 1 else _DIRECTIONS[neighbours]
    grid = tuple(layer.weight.shape[:nd])
    rows, cols = (1, grid[0] * b) if nd == 1 else (grid[0] * a, grid[1] * b)
    if not circular and any(rows <= dr or cols <= abs(dc) for dr, dc in directions):
        raise ValueError(f"smoothness_loss: the {rows} x {cols} sheet of {type(layer).__name__} has no "
                         f"neighbouring pairs in some direction without circular=True")
    bias = _position_bias(layer)
    products = _SheetProducts.apply(layer.weight, bias, (a, b), directions)
    norms = products[0].clamp_min(_EPS ** 2).sqrt()
    means = []
    for k, (dr, dc) in enumerate(directions):
        cosines = products[1 + k] / (norms * norms.roll((-dr, -dc), (0, 1)))
        if not circular:
            cosines = cosines[:rows - dr, max(0, -dc):cols - max(0, dc)]
        means.append(cosines.mean())
    return (1 - torch.stack(means).mean()) / 2


# ------------------------------------------------------------------------------------------------
# The products: a unit is a row of the weight's memory, (N, R) with N = positions x channels, so
# unit (h, w, channel i * b + j) is row ((h * W + w) * a + i) * b + j and sits at sheet (h * a + i,
# w * b + j). The pairs of units to multiply (each unit with itself, and with its neighbour in
# each direction, circular) form a sparse N x N pattern: the products are a sampled matrix
# product X X^T on it, and the gradient one sparse-dense product into the gradient's memory.
# ------------------------------------------------------------------------------------------------

class _NeighbourGraph(NamedTuple):
    """The pairs ``(u, v)`` of one sheet as CSR patterns (``crow``, ``col``) and the position of
    each pair in them: ``slot`` for ``X X^T`` sampled at the pairs, ``mirror_slot`` (pairs then
    reversed pairs) for the symmetric pattern of the gradient. A pair's index is
    ``(k, row, col)`` flattened: ``k = 0`` pairs a unit with itself, ``k = 1 + d`` with its
    neighbour in direction ``d``."""

    units: int
    first: Tensor
    second: Tensor
    crow: Tensor
    col: Tensor
    slot: Tensor
    mirror_crow: Tensor
    mirror_col: Tensor
    mirror_slot: Tensor


def _csr_pattern(rows: Tensor, cols: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """The CSR pattern of the distinct ``(rows, cols)`` pairs of an ``n x n`` matrix, and each pair's position."""
    keys, position = torch.unique(rows * n + cols, return_inverse=True)
    crow = torch.zeros(n + 1, dtype=torch.int64, device=rows.device)
    crow[1:] = torch.bincount(keys // n, minlength=n).cumsum(0)
    return crow, keys % n, position


@functools.lru_cache(maxsize=32)
def _neighbour_graph(grid: tuple[int, int], block: tuple[int, int], directions, device: torch.device):
    (H, W), (a, b) = grid, block
    rows, cols = torch.arange(H * a, device=device), torch.arange(W * b, device=device)
    unit = (((rows // a)[:, None] * W + (cols // b)) * a + (rows % a)[:, None]) * b + cols % b   # (H * a, W * b)
    first = unit.expand(1 + len(directions), -1, -1).flatten()
    second = torch.stack([unit] + [unit.roll((-dr, -dc), (0, 1)) for dr, dc in directions]).flatten()
    n = H * W * a * b
    crow, col, slot = _csr_pattern(first, second, n)
    mirror = _csr_pattern(torch.cat([first, second]), torch.cat([second, first]), n)
    return _NeighbourGraph(n, first, second, crow, col, slot, *mirror)


def _sparse(crow: Tensor, col: Tensor, values: Tensor, n: int) -> Tensor:
    with warnings.catch_warnings():   # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, (n, n))


def _sampled_products(graph: _NeighbourGraph, left: Tensor, right: Tensor, mirrored: bool = False) -> Tensor:
    """``left[u] . right[v]`` for the graph's pairs (or, ``mirrored``, for the symmetric pattern's)."""
    crow, col = (graph.mirror_crow, graph.mirror_col) if mirrored else (graph.crow, graph.col)
    mask = _sparse(crow, col, left.new_zeros(col.shape), graph.units)
    return torch.sparse.sampled_addmm(mask, left, right.t(), beta=0).values()


def _units(weight: Tensor, bias: Tensor | None, nd: int, kernel_major: bool | None = None, dtype=None):
    """The weight's memory as ``(N, R)`` rows of units (kernel-major or not, as ``kernel_major``
    says, else as it is laid out), a per-position bias as ``(N,)``, and the order used."""
    if kernel_major is None:
        memory, kernel_major = U.weight_memory(weight)
    else:
        memory = weight.permute(U.public_to_storage_perm(nd)).contiguous() if kernel_major else weight.contiguous()
    units = memory.view(math.prod(memory.shape[:nd + 1]), -1)
    flat_bias = None if bias is None else bias.movedim(0, -1).reshape(-1)
    if dtype is not None:
        units = units.to(dtype)
        flat_bias = None if flat_bias is None else flat_bias.to(dtype)
    return units, flat_bias, kernel_major


class _SheetProducts(torch.autograd.Function):
    """``(1 + directions, rows, cols)``: each unit's squared norm, then its dot product with its
    neighbour in each direction (circular), on the sheet of ``weight`` and a per-position ``bias``
    (or ``None``), accumulated in float32 at least."""

    @staticmethod
    def forward(ctx, weight: Tensor, bias: Tensor | None, block: tuple[int, int], directions):
        nd = (weight.dim() - 2) // 2
        grid = (1, weight.shape[0]) if nd == 1 else tuple(weight.shape[:2])
        dtype = _accumulation_dtype(weight.dtype)
        units, flat_bias, kernel_major = _units(weight, bias, nd, dtype=dtype)
        graph = _neighbour_graph(grid, block, directions, weight.device)
        products = _sampled_products(graph, units, units)[graph.slot]
        if flat_bias is not None:
            products = products + flat_bias[graph.first] * flat_bias[graph.second]
        ctx.nd, ctx.graph, ctx.kernel_major, ctx.dtype = nd, graph, kernel_major, dtype
        ctx.shape = (1 + len(directions), grid[0] * block[0], grid[1] * block[1])
        ctx.save_for_backward(weight, bias)
        ctx.save_for_forward(weight, bias)
        return products.view(ctx.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_products: Tensor):
        weight, bias = ctx.saved_tensors
        graph, nd = ctx.graph, ctx.nd
        g = grad_products.reshape(-1).to(ctx.dtype)
        values = g.new_zeros(graph.mirror_col.shape).index_add_(0, graph.mirror_slot, torch.cat([g, g]))
        coefficients = _sparse(graph.mirror_crow, graph.mirror_col, values, graph.units)
        units, flat_bias, _ = _units(weight, bias, nd, ctx.kernel_major, ctx.dtype)
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_weight, rows = _empty_weight_gradient(weight, nd, ctx.kernel_major)
            if rows.dtype == ctx.dtype:
                torch.addmm(rows, coefficients, units, beta=0, out=rows)
            else:
                rows.copy_(coefficients @ units)
        if bias is not None and ctx.needs_input_grad[1]:
            flat = coefficients @ flat_bias
            grad_bias = flat.view(*bias.shape[1:], bias.shape[0]).movedim(-1, 0).to(bias.dtype).contiguous()
        return grad_weight, grad_bias, None, None

    @staticmethod
    def jvp(ctx, weight_tangent, bias_tangent, *_):
        weight, bias = ctx.saved_tensors
        graph = ctx.graph
        units, flat_bias, _ = _units(weight, bias, ctx.nd, ctx.kernel_major, ctx.dtype)
        if weight_tangent is None:
            weight_tangent = torch.zeros_like(weight)
        if bias is not None and bias_tangent is None:
            bias_tangent = torch.zeros_like(bias)
        tangent, flat_tangent, _ = _units(weight_tangent, bias_tangent, ctx.nd, ctx.kernel_major, ctx.dtype)
        crossed = _sampled_products(graph, units, tangent, mirrored=True)   # x_u . dx_v on the symmetric pattern
        slots = len(graph.first)
        result = crossed[graph.mirror_slot[:slots]] + crossed[graph.mirror_slot[slots:]]
        if flat_bias is not None:
            result = result + flat_bias[graph.first] * flat_tangent[graph.second] \
                + flat_tangent[graph.first] * flat_bias[graph.second]
        return result.view(ctx.shape)


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _empty_weight_gradient(weight: Tensor, nd: int, kernel_major: bool) -> tuple[Tensor, Tensor]:
    """An uninitialised gradient in the weight's layout (its memory from the pool of large
    buffers), and its memory as ``(N, R)`` rows of units."""
    shape = [weight.shape[i] for i in U.public_to_storage_perm(nd)] if kernel_major else list(weight.shape)
    memory = pooled_buffer(shape, dtype=weight.dtype, device=weight.device)
    grad = memory.permute(U.storage_to_public_perm(nd)) if kernel_major else memory
    return grad, memory.view(math.prod(memory.shape[:nd + 1]), -1)
