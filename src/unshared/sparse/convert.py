"""Conversions of the sparse layer: :func:`to_sparse` (a locally connected layer as one) and
:func:`sparse_to_linear` (the dense ``nn.Linear``, small sizes only)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import _utils as U
from ..modules import LocallyConnectedNd
from . import connectivity as K
from .layer import SparselyConnected

__all__ = ["MAX_DENSE_ELEMENTS", "sparse_to_linear", "to_sparse"]

#: Largest dense matrix (elements) that :func:`sparse_to_linear` and ``unshared.to_linear`` build unless told otherwise.
MAX_DENSE_ELEMENTS = 1 << 26


def _windows(layer: LocallyConnectedNd):
    """``(source, valid)``, ``(P, K)``: the flat input position of each output position's kernel
    taps (row-major), and whether the tap reads the input rather than zero padding."""
    pads = U.normalize_padding(layer.padding, layer.kernel_size, layer.stride, layer.dilation)
    source = torch.zeros((), dtype=torch.long)
    valid = torch.ones((), dtype=torch.bool)
    nd = len(layer.kernel_size)
    for d, (n, o, k, s, dil, (lo, _)) in enumerate(zip(layer.input_size, layer.output_size, layer.kernel_size,
                                                       layer.stride, layer.dilation, pads)):
        i = torch.arange(o).view(-1, 1) * s + torch.arange(k) * dil - lo          # (o, k) input coordinates
        shape = [1] * 2 * nd
        shape[d], shape[nd + d] = o, k
        source = source * n + i.view(shape)
        valid = valid & ((i >= 0) & (i < n)).view(shape)
    positions, taps = math.prod(layer.output_size), math.prod(layer.kernel_size)
    shape = (*layer.output_size, *layer.kernel_size)
    return source.expand(shape).reshape(positions, taps), valid.expand(shape).reshape(positions, taps)


def to_sparse(layer: LocallyConnectedNd) -> SparselyConnected:
    """The :class:`SparselyConnected` layer computing ``layer`` on flattened positions:
    ``sparse(x.flatten(2))`` equals ``layer(x).flatten(2)`` for ``x`` ``(N, C, *input_size)``.

    One connection per (output position, kernel tap inside the input); taps that read zero
    padding are dropped. Channels: the connection's filter is ``(out_channels, in_channels)``,
    ``weight[p][:, :, tap]`` in the columns of the output channel's group and zero outside it
    (with ``groups > 1`` the sparse layer then holds ``groups`` times the numbers, the zeros
    included). A shared bias is repeated at every position.

    Raises ``TypeError`` for other layers (shared filter banks, low-rank) and ``ValueError`` for a
    padding mode other than ``"zeros"``.

    Example::

        >>> import torch, unshared
        >>> layer = unshared.LocallyConnected2d(2, 3, 3, stride=2, padding=1, input_size=(7, 6))
        >>> sparse = unshared.to_sparse(layer)
        >>> sparse
        SparselyConnected(in_features=42, out_features=12, nnz=80, in_channels=2, out_channels=3)
        >>> x = torch.randn(4, 2, 7, 6)
        >>> torch.allclose(sparse(x.flatten(2)), layer(x).flatten(2), atol=1e-6)
        True
    """
    if not isinstance(layer, LocallyConnectedNd) or tuple(layer.weight.shape[:len(layer.kernel_size)]) != \
            tuple(layer.output_size):
        raise TypeError(f"to_sparse expects a LocallyConnected1d/2d/3d layer with one filter bank per position, "
                        f"got {type(layer).__name__}")
    if layer.padding_mode != "zeros":
        raise ValueError(f"to_sparse: {type(layer).__name__} has padding_mode={layer.padding_mode!r}; only "
                         f"'zeros' padding drops out of a sparse layer (pad the input first for the others)")
    w = layer.weight.detach()
    source, valid = _windows(layer)
    positions, taps = source.shape
    out_c, in_c, groups = layer.out_channels, layer.in_channels, layer.groups
    per_group = in_c // groups
    dst = torch.arange(positions).view(-1, 1).expand(positions, taps)[valid]
    pairs = torch.stack([source[valid], dst])
    filters = w.reshape(positions, out_c, per_group, taps).permute(0, 3, 1, 2)[valid.to(w.device)]  # (nnz, O, Cg)
    full = filters.new_zeros(filters.shape[0], out_c, in_c)
    for g in range(groups):
        o, c = slice(g * out_c // groups, (g + 1) * out_c // groups), slice(g * per_group, (g + 1) * per_group)
        full[:, o, c] = filters[:, o]
    sparse = SparselyConnected(math.prod(layer.input_size), positions, pairs, in_channels=in_c, out_channels=out_c,
                               bias=layer.bias is not None, device=w.device, dtype=w.dtype)
    order = K.sort_order(pairs, sparse.in_features)
    with torch.no_grad():
        sparse.weight.copy_(full[order.to(w.device)])
        if layer.bias is not None:
            b = layer.bias.detach()
            sparse.bias.copy_(b.view(out_c, 1).expand(out_c, positions) if b.dim() == 1 else b.reshape(out_c, -1))
    return sparse


def sparse_to_linear(layer: SparselyConnected, max_elements: int = MAX_DENSE_ELEMENTS) -> nn.Linear:
    """The ``nn.Linear`` equal to ``layer`` on flattened channels: ``linear(x.flatten(1))`` equals
    ``layer(x).flatten(1)`` for ``x`` ``(N, in_channels, in_features)`` (rows ``o * out_features + j``,
    columns ``c * in_features + i``); zero outside the connections. Above ``max_elements`` dense
    elements this raises ``ValueError`` with the size.

    Example::

        >>> import torch, unshared
        >>> from unshared.sparse import sparse_to_linear
        >>> layer = unshared.SparselyConnected(5, 2, torch.tensor([[0, 1, 4], [0, 0, 1]]), dtype=torch.float64)
        >>> dense = sparse_to_linear(layer)
        >>> x = torch.randn(3, 5, dtype=torch.float64)
        >>> torch.allclose(dense(x), layer(x)), int(dense.weight.count_nonzero())
        (True, 3)
    """
    if not isinstance(layer, SparselyConnected):
        raise TypeError(f"sparse_to_linear expects a SparselyConnected layer, got {type(layer).__name__}")
    n_in, n_out = layer.in_channels * layer.in_features, layer.out_channels * layer.out_features
    if n_in * n_out > max_elements:
        raise ValueError(f"sparse_to_linear: the dense weight of {layer} would be {n_out} x {n_in} = "
                         f"{n_in * n_out:,} elements, more than max_elements={max_elements:,}")
    w = layer.weight.detach()
    src, dst = layer.connectivity.to(w.device)
    o = torch.arange(layer.out_channels, device=w.device).view(1, -1, 1)
    c = torch.arange(layer.in_channels, device=w.device).view(1, 1, -1)
    rows = (o * layer.out_features + dst.view(-1, 1, 1)).expand(w.shape)
    cols = (c * layer.in_features + src.view(-1, 1, 1)).expand(w.shape)
    linear = nn.Linear(n_in, n_out, bias=layer.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        linear.weight.zero_().index_put_((rows.reshape(-1), cols.reshape(-1)), w.reshape(-1))
        if layer.bias is not None:
            linear.bias.copy_(layer.bias.detach().reshape(-1))
    return linear
