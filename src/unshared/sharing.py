"""Partial weight sharing between the locally connected layer and the convolution.

Output positions are assigned to filter banks in a fixed pattern; positions with the same bank
share weights. Both patterns run from a convolution (one bank) to a locally connected layer (one
bank per position):

- ``TiledLocallyConnectedNd`` (Le et al., "Tiled convolutional neural networks", NIPS 2010):
  positions ``tile_size`` steps apart share a bank, so there are ``prod(tile_size)`` banks laid
  out periodically. ``tile_size=1`` is a convolution, ``tile_size=output_size`` is locally connected.
- ``RegionLocallyConnectedNd``: the output grid is cut into ``regions`` nearly equal blocks, one
  bank per block (as used on aligned faces, where eyes and mouth sit in known regions).

Both patterns give each dimension's output coordinates a bank coordinate, which is what the
functional form takes as ``banks``; the backends then choose how to compute (one convolution per
bank when banks hold many positions, the locally connected kernel reading filters from their
banks otherwise: :func:`unshared.backends.choose_backend`).
"""
from __future__ import annotations


import torch
from torch import Tensor

from . import _utils as U
from . import functional as UF
from .modules import LocallyConnectedNd

__all__ = [
    "TiledLocallyConnected1d", "TiledLocallyConnected2d", "TiledLocallyConnected3d",
    "RegionLocallyConnected1d", "RegionLocallyConnected2d", "RegionLocallyConnected3d",
]


class _PartiallySharedNd(LocallyConnectedNd):
    """A locally connected layer whose positions share filter banks; subclasses define the
    pattern by :meth:`_bank_coordinates` and the bank grid by ``_grid``."""

    _grid_name = "filter-bank grid"

    def _bank_coordinates(self, d: int) -> list[int]:
        """The bank coordinate of every output coordinate along dimension ``d``."""
        raise NotImplementedError

    @property
    def banks(self) -> tuple[tuple[int, ...], ...] | None:
        """Per dimension, the bank coordinate of every output coordinate (the functional form's
        ``banks``); ``None`` when every position has its own bank (a plain locally connected layer)."""
        if self._grid() == self.output_size:
            return None
        return tuple(tuple(self._bank_coordinates(d)) for d in range(self._nd))

    def bank_index(self, device=None) -> list[Tensor]:
        """Per spatial dimension, the int64 bank coordinate of every output coordinate (on
        ``device``, by default the weight's)."""
        device = self.weight.device if device is None else device
        return [torch.tensor(self._bank_coordinates(d), dtype=torch.int64, device=device) for d in range(self._nd)]

    @property
    def position_bank(self) -> Tensor | None:
        """``(positions,)`` int64 flat bank of every output position (row-major, on the CPU), or
        ``None`` when each position has its own bank."""
        banks = self.banks
        if banks is None:
            return None
        g = U.Geometry(self.input_size, self.output_size, self.kernel_size, self.stride, self._padding,
                       self.dilation, self.groups, self.in_channels, self.out_channels, self._grid(), banks)
        return U.flat_bank_index(g, "cpu")

    def expanded_weight(self) -> Tensor:
        """The per-position weight ``(*output_size, O, C/groups, *kernel_size)`` this layer uses."""
        nd = self._nd
        storage = self.weight.permute(U.public_to_storage_perm(nd))
        grid = [i.view(*(1,) * d, -1, *(1,) * (nd - d - 1)) for d, i in enumerate(self.bank_index())]
        return storage[tuple(grid)].permute(U.storage_to_public_perm(nd))

    def expanded_bias(self) -> Tensor | None:
        """The per-position bias ``(O, *output_size)`` (or the shared ``(O,)`` one, or ``None``)."""
        if self.bias is None or self.shared_bias:
            return self.bias
        idx = self.bank_index()
        grid = [i.view(*(1,) * d, -1, *(1,) * (len(idx) - d - 1)) for d, i in enumerate(idx)]
        return self.bias[(slice(None), *grid)]

    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        return UF.locally_connected(input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                    self.groups, padding_mode=self.padding_mode, backend=self.backend,
                                    banks=self.banks)


def _grid_argument(value, nd, name, limit, cls):
    sizes = U.positive(U.ntuple(value, nd, name), name)
    if any(v > o for v, o in zip(sizes, limit)):
        raise ValueError(f"{cls}: {name} must not exceed the output size {limit}, got {name}={sizes}")
    return sizes


class _TiledNd(_PartiallySharedNd):
    def __init__(self, *args, tile_size, **kwargs):
        self._tile_size_arg = tile_size
        super().__init__(*args, **kwargs)

    def _set_input_size(self, input_size) -> None:
        super()._set_input_size(input_size)
        self.tile_size = _grid_argument(self._tile_size_arg, self._nd, "tile_size", self.output_size,
                                        type(self).__name__)

    def _grid(self):
        return self.tile_size

    def _bank_coordinates(self, d: int) -> list[int]:
        return [i % self.tile_size[d] for i in range(self.output_size[d])]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", tile_size={self.tile_size}"


class _RegionNd(_PartiallySharedNd):
    def __init__(self, *args, regions, **kwargs):
        self._regions_arg = regions
        super().__init__(*args, **kwargs)

    def _set_input_size(self, input_size) -> None:
        super()._set_input_size(input_size)
        self.regions = _grid_argument(self._regions_arg, self._nd, "regions", self.output_size, type(self).__name__)

    def _grid(self):
        return self.regions

    def _bank_coordinates(self, d: int) -> list[int]:
        size, parts = self.output_size[d], self.regions[d]
        return [_region_of(i, size, parts) for i in range(size)]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", regions={self.regions}"


def _region_of(i: int, size: int, parts: int) -> int:
    """The region of coordinate ``i`` when ``size`` coordinates are cut at ``size * r // parts``."""
    return max(r for r in range(parts) if size * r // parts <= i)



def _doc(kind: str, nd: int) -> str:
    names = U.dimension_names(nd)
    dims, odims = names["dims"], names["odims"]
    size, xsize = {1: ("12", "12"), 2: ("(12, 12)", "12, 12"), 3: ("(6, 6, 6)", "6, 6, 6")}[nd]
    if kind == "Tiled":
        arg, value, summary = "tile_size", 2, (
            f"Tiled locally connected {nd}d layer (Le et al., NIPS 2010): positions ``tile_size`` steps\n"
            f"    apart share a filter bank.")
        meaning = ("positions ``tile_size`` steps apart share a filter bank (``prod(tile_size)`` banks); "
                   "1 is a convolution, ``output_size`` a locally connected layer")
    else:
        arg, value, summary = "regions", 3, (
            f"Region-shared locally connected {nd}d layer: the output grid is cut into ``regions``\n"
            f"    nearly equal blocks, one filter bank each.")
        meaning = ("the output grid is cut into this many nearly equal blocks per dimension, one filter "
                   "bank each; 1 is a convolution, ``output_size`` a locally connected layer")
    cls = f"{kind}LocallyConnected{nd}d"
    return f"""{summary}

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype, input_size, shared_bias, backend:
            as ``LocallyConnected{nd}d``.
        {arg}: int or tuple (keyword-only): {meaning}.

    Shape:
        - Input: ``(N, C_in, {dims})`` or ``(C_in, {dims})``.
        - Output: ``(N, C_out, {odims})`` or ``(C_out, {odims})``, sizes as ``nn.Conv{nd}d``.

    Attributes:
        weight: ``(*{arg}, C_out, C_in // groups, *kernel_size)``: one filter bank per grid cell,
            initialised as ``LocallyConnected{nd}d``'s.
        bias: ``(C_out, *{arg})`` (per bank), or ``(C_out,)`` with ``shared_bias=True``.
        banks: per dimension, the bank coordinate of every output coordinate (``None`` when every
            position has its own bank).
        expanded_weight(): the per-position ``(*output_size, C_out, C_in // groups, *kernel_size)``
            weight, as a ``LocallyConnected{nd}d`` would hold it.

    Example::

        >>> import torch, unshared
        >>> layer = unshared.{cls}(3, 8, 3, padding=1, input_size={size}, {arg}={value})
        >>> layer(torch.randn(4, 3, {xsize})).shape
        torch.Size([4, 8, {xsize}])
        >>> tuple(layer.weight.shape)
        {(*(value,) * nd, 8, 3, *(3,) * nd)}
    """


class TiledLocallyConnected1d(_TiledNd):
    __doc__ = _doc("Tiled", 1)
    _nd = 1


class TiledLocallyConnected2d(_TiledNd):
    __doc__ = _doc("Tiled", 2)
    _nd = 2


class TiledLocallyConnected3d(_TiledNd):
    __doc__ = _doc("Tiled", 3)
    _nd = 3


class RegionLocallyConnected1d(_RegionNd):
    __doc__ = _doc("Region", 1)
    _nd = 1


class RegionLocallyConnected2d(_RegionNd):
    __doc__ = _doc("Region", 2)
    _nd = 2


class RegionLocallyConnected3d(_RegionNd):
    __doc__ = _doc("Region", 3)
    _nd = 3
