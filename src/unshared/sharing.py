"""Partial weight sharing between the locally connected layer and the convolution.

Output positions are assigned to filter banks in a fixed pattern; positions with the same bank
share weights. Both patterns run from a convolution (one bank) to a locally connected layer (one
bank per position):

- ``TiledLocallyConnectedNd`` (Le et al., "Tiled convolutional neural networks", NIPS 2010):
  positions ``tile_size`` steps apart share a bank, so there are ``prod(tile_size)`` banks laid
  out periodically. ``tile_size=1`` is a convolution, ``tile_size=output_size`` is locally connected.
- ``RegionLocallyConnectedNd``: the output grid is cut into ``regions`` nearly equal blocks, one
  bank per block (as used on aligned faces, where eyes and mouth sit in known regions).

The positions of one bank form a strided sub-grid (tiled) or a block (region) of the output,
which is a convolution over a crop of the input: with many positions per bank the layer runs one
``F.convNd`` per bank. Otherwise it runs the locally connected kernel, which reads each block's
filters from their banks and adds each block's weight gradient into them (per-position filters
are never built for the whole layer).
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _utils as U
from . import functional as UF
from .functional import _pad
from .modules import _LocallyConnectedNd

__all__ = [
    "TiledLocallyConnected1d", "TiledLocallyConnected2d", "TiledLocallyConnected3d",
    "RegionLocallyConnected1d", "RegionLocallyConnected2d", "RegionLocallyConnected3d",
]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

#: Run one convolution per bank when banks hold at least this many positions on average; below
#: it, the per-call overhead of many small convolutions loses to the locally connected kernel
#: (forward+backward at DeepFace L4, batch 8, 2 cores, 2026-11-22: 25 banks of 121 positions,
#: 142 ms by convolutions against 190 ms by the locally connected kernel; 121 banks of 25
#: positions, 505 ms against 213 ms).
MIN_POSITIONS_PER_CONV = 64


class _PartiallySharedNd(_LocallyConnectedNd):
    """A locally connected layer whose positions share filter banks; subclasses define the pattern."""

    _grid_name = "filter-bank grid"

    def _grid(self) -> tuple[int, ...]:
        raise NotImplementedError

    def bank_index(self, device=None) -> list[Tensor]:
        """Per spatial dimension, the bank coordinate of every output coordinate (int64, on
        ``device``, by default the weight's)."""
        raise NotImplementedError

    def _create_parameters(self, bias: bool, factory_kwargs) -> None:
        super()._create_parameters(bias, factory_kwargs)
        # The flat bank of every output position, for the locally connected kernel, on the CPU
        # (moved per call): derived from the sizes alone, it is neither a parameter nor a buffer,
        # so meta construction, to_empty() and state dicts cannot leave it stale. None when every
        # position has its own bank: then the layer is a plain locally connected one.
        self._position_bank = None
        if self._grid() != self.output_size:
            index = torch.stack(torch.meshgrid(*self.bank_index("cpu"), indexing="ij")).flatten(1)
            flat = torch.zeros(index.shape[1], dtype=torch.int64, device="cpu")
            for d, size in enumerate(self._grid()):
                flat = flat * size + index[d]
            self._position_bank = flat

    @property
    def position_bank(self) -> Tensor | None:
        """``(positions,)`` int64 flat bank index of every output position (row-major), or
        ``None`` when each position has its own bank."""
        return self._position_bank

    def _bank_plan(self):
        """Yield ``(bank, output slices, input slices, conv stride)`` per bank."""
        raise NotImplementedError

    def expanded_weight(self) -> Tensor:
        """The per-position weight ``(*output_size, O, C/groups, *kernel_size)`` this layer uses."""
        nd = self._nd
        storage = self.weight.permute(U.public_to_storage_perm(nd))
        idx = self.bank_index()
        grid = [i.view(*(1,) * d, -1, *(1,) * (nd - d - 1)) for d, i in enumerate(idx)]
        return storage[tuple(grid)].permute(U.storage_to_public_perm(nd))

    def expanded_bias(self) -> Tensor | None:
        if self.bias is None or self.shared_bias:
            return self.bias
        idx = self.bank_index()
        grid = [i.view(*(1,) * d, -1, *(1,) * (len(idx) - d - 1)) for d, i in enumerate(idx)]
        return self.bias[(slice(None), *grid)]

    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        banks = math.prod(self._grid())
        if math.prod(self.output_size) >= MIN_POSITIONS_PER_CONV * banks:
            return self._forward_by_conv(input)
        return self._forward_by_banks(input)

    def _forward_by_banks(self, input: Tensor) -> Tensor:
        """The locally connected kernel, reading each position's filters from its bank."""
        return UF._locally_connected(self._nd, input, self.weight, self.expanded_bias(), self.stride,
                                     self.padding, self.dilation, self.groups, self.padding_mode,
                                     self.backend, self._position_bank, self.output_size, type(self).__name__)

    def _forward_by_conv(self, input: Tensor) -> Tensor:
        nd = self._nd
        unbatched = input.dim() == nd + 1
        x = input.unsqueeze(0) if unbatched else input
        x, bias = UF._autocast(x, self.expanded_bias())   # F.conv casts the weight itself
        if any(lo or hi for lo, hi in self._padding):
            if self.padding_mode == "zeros":
                x = F.pad(x, [p for pair in reversed(self._padding) for p in pair])
            else:
                x = _pad(x, self._padding, self.padding_mode, type(self).__name__)
        y = x.new_empty(x.shape[0], self.out_channels, *self.output_size)
        conv = _CONV[nd]
        for bank, out_slices, in_slices, stride in self._bank_plan():
            part = conv(x[(slice(None), slice(None), *in_slices)], self.weight[bank], None, stride,
                        0, self.dilation, self.groups)
            y[(slice(None), slice(None), *out_slices)] = part
        if bias is not None:
            y = y + (bias.view(-1, *(1,) * nd) if bias.dim() == 1 else bias)
        return y.squeeze(0) if unbatched else y

    def _span(self, d: int) -> int:
        return self.dilation[d] * (self.kernel_size[d] - 1) + 1


def _tuple_arg(value, nd, name, limit, cls):
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
        self.tile_size = _tuple_arg(self._tile_size_arg, self._nd, "tile_size", self.output_size,
                                    type(self).__name__)

    def _grid(self):
        return self.tile_size

    def bank_index(self, device=None):
        device = self.weight.device if device is None else device
        return [torch.arange(o, device=device) % t for o, t in zip(self.output_size, self.tile_size)]

    def _bank_plan(self):
        for bank in itertools.product(*map(range, self.tile_size)):
            outs, ins, strides = [], [], []
            for d, t in enumerate(bank):
                step, s = self.tile_size[d], self.stride[d]
                count = (self.output_size[d] - t + step - 1) // step
                start = t * s
                outs.append(slice(t, None, step))
                ins.append(slice(start, start + (count - 1) * s * step + self._span(d)))
                strides.append(s * step)
            yield bank, outs, ins, tuple(strides)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", tile_size={self.tile_size}"


def _boundaries(size: int, parts: int) -> list[int]:
    return [size * i // parts for i in range(parts + 1)]


class _RegionNd(_PartiallySharedNd):
    def __init__(self, *args, regions, **kwargs):
        self._regions_arg = regions
        super().__init__(*args, **kwargs)

    def _set_input_size(self, input_size) -> None:
        super()._set_input_size(input_size)
        self.regions = _tuple_arg(self._regions_arg, self._nd, "regions", self.output_size, type(self).__name__)

    def _grid(self):
        return self.regions

    def bank_index(self, device=None):
        device = self.weight.device if device is None else device
        index = []
        for o, r in zip(self.output_size, self.regions):
            b = _boundaries(o, r)
            index.append(torch.repeat_interleave(torch.arange(r, device="cpu"), torch.tensor(
                [b[i + 1] - b[i] for i in range(r)], device="cpu")).to(device))
        return index

    def _bank_plan(self):
        bounds = [_boundaries(o, r) for o, r in zip(self.output_size, self.regions)]
        for bank in itertools.product(*map(range, self.regions)):
            outs, ins = [], []
            for d, r in enumerate(bank):
                a, e = bounds[d][r], bounds[d][r + 1]
                outs.append(slice(a, e))
                ins.append(slice(a * self.stride[d], (e - 1) * self.stride[d] + self._span(d)))
            yield bank, outs, ins, self.stride

    def extra_repr(self) -> str:
        return super().extra_repr() + f", regions={self.regions}"


def _doc(kind: str, nd: int) -> str:
    arg = "tile_size" if kind == "Tiled" else "regions"
    meaning = ("positions ``tile_size`` steps apart share a filter bank (``prod(tile_size)`` banks); "
               "1 is a convolution, ``output_size`` a locally connected layer"
               if kind == "Tiled" else
               "the output grid is split into ``regions`` nearly equal blocks with one filter bank "
               "each; 1 is a convolution, ``output_size`` a locally connected layer")
    return f"""Locally connected {nd}d layer with partial weight sharing: {meaning}.

    Arguments as ``LocallyConnected{nd}d``, plus keyword-only ``{arg}`` (int or tuple of {nd}).

    Attributes:
        weight: ``(*{arg}, C_out, C_in // groups, *kernel_size)``, one filter bank per grid cell.
        bias: ``(C_out, *{arg})``, or ``(C_out,)`` with ``shared_bias=True``.
        expanded_weight(): the per-position ``(*output_size, C_out, C_in // groups, *kernel_size)``
            weight, as a ``LocallyConnected{nd}d`` would hold it.
    """


def _make(kind, base, nd):
    return type(f"{kind}LocallyConnected{nd}d", (base,), {"_nd": nd, "__doc__": _doc(kind, nd),
                                                         "__module__": __name__})


TiledLocallyConnected1d = _make("Tiled", _TiledNd, 1)
TiledLocallyConnected2d = _make("Tiled", _TiledNd, 2)
TiledLocallyConnected3d = _make("Tiled", _TiledNd, 3)
RegionLocallyConnected1d = _make("Region", _RegionNd, 1)
RegionLocallyConnected2d = _make("Region", _RegionNd, 2)
RegionLocallyConnected3d = _make("Region", _RegionNd, 3)
