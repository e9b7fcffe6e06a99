"""Locally connected transposed layers: ``nn.ConvTranspose`` with a separate filter bank at every
input position, eager and lazy.

The layer is exactly the adjoint (input gradient) of the locally connected layer with the same
weight, so it runs on that layer's input-gradient operation, on every backend (no kernels of its
own), and its gradients are the other two operations. With one filter everywhere it equals
``nn.ConvTranspose``.
"""
from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin

from . import _utils as U
from . import functional as UF
from .backends import check_backend_name
from .modules import LazyInitialization, PositionParameters

__all__ = ["LOCALLY_CONNECTED_TRANSPOSE", "LocallyConnectedTranspose1d", "LocallyConnectedTranspose2d",
           "LocallyConnectedTranspose3d", "LazyLocallyConnectedTranspose1d", "LazyLocallyConnectedTranspose2d",
           "LazyLocallyConnectedTranspose3d"]


class _LocallyConnectedTransposeNd(PositionParameters, nn.Module):
    """Arguments, parameters, initialisation and checks of ``LocallyConnectedTranspose{1,2,3}d``."""

    _nd: int
    _repr_defaults = (("padding", 0), ("output_padding", 0), ("dilation", 1))

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, output_padding=0,
                 groups: int = 1, bias: bool = True, dilation=1, padding_mode: str = "zeros", device=None,
                 dtype=None, *, input_size, shared_bias: bool = False, backend: str = "auto") -> None:
        super().__init__()
        nd, name = self._nd, type(self).__name__
        lazy = isinstance(self, LazyModuleMixin)
        U.check_channels(name, in_channels, out_channels, lazy)
        U.check_groups(in_channels if not lazy else groups if isinstance(groups, int) else 1, out_channels, groups)
        if padding_mode != "zeros":
            raise ValueError(f'{name}: only padding_mode="zeros" is supported (as for nn.ConvTranspose), '
                             f"got padding_mode={padding_mode!r}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = U.positive(U.ntuple(kernel_size, nd, "kernel_size"), "kernel_size")
        self.stride = U.positive(U.ntuple(stride, nd, "stride"), "stride")
        self.dilation = U.positive(U.ntuple(dilation, nd, "dilation"), "dilation")
        self.padding = U.padding_argument(padding, nd, name, strings=())  # ints or (low, high) pairs, as given
        self._padding = U.padding_pairs(self.padding)
        self.output_padding = U.ntuple(output_padding, nd, "output_padding")
        if any(p < 0 for p in self.output_padding):
            raise ValueError(f"{name}: output_padding must be non-negative, got output_padding={self.output_padding}")
        if any(op >= max(s, d) for op, s, d in zip(self.output_padding, self.stride, self.dilation)):
            raise ValueError(f"{name}: output_padding must be smaller than stride or dilation, got "
                             f"output_padding={self.output_padding}, stride={self.stride}, dilation={self.dilation}")
        self.padding_mode, self.shared_bias = padding_mode, bool(shared_bias)
        self.backend = check_backend_name(backend)
        self.input_size: tuple[int, ...] | None = None
        self.output_size: tuple[int, ...] | None = None
        self._set_up_parameters(lazy, bias, input_size, {"device": device, "dtype": dtype})

    def _set_input_size(self, input_size) -> None:
        name = type(self).__name__
        self.input_size = U.positive(U.ntuple(input_size, self._nd, "input_size"), "input_size")
        self.output_size = U.transposed_output_size(self.input_size, self.kernel_size, self.stride, self._padding,
                                                    self.output_padding, self.dilation)
        if any(o <= 0 for o in self.output_size):
            raise ValueError(f"{name}: output size {self.output_size} is not positive (padding={self.padding} "
                             f"too large for input_size={self.input_size})")

    def _weight_shape(self) -> tuple[int, ...]:
        return (*self.input_size, self.in_channels, self.out_channels // self.groups, *self.kernel_size)

    def _bias_shape(self) -> tuple[int, ...]:
        return (self.out_channels,) if self.shared_bias else (self.out_channels, *self.output_size)

    def reset_parameters(self) -> None:
        """``nn.ConvTranspose``'s init with the per-position fan-in ``out_channels / groups *
        prod(kernel_size)``: ``U(-b, b)``, ``b = 1 / sqrt(fan_in)`` for weight and bias."""
        fan_in = U.fan_in(self.out_channels, self.groups, self.kernel_size)
        bound = nn.init.calculate_gain("leaky_relu", math.sqrt(5)) * math.sqrt(3.0 / fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))

    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        pairs = self._padding  # ((low, high), ...); plain ints where even (the calls' cache keys)
        padding = tuple(lo for lo, _ in pairs) if all(lo == hi for lo, hi in pairs) else pairs
        return UF.locally_connected_transpose(input, self.weight, self.bias, self.stride, padding,
                                              self.output_padding, self.groups, self.dilation, backend=self.backend)


class _LazyTransposeMixin(LazyInitialization):
    """Takes ``nn.LazyConvTransposeNd``'s arguments."""

    def _sizes_from_weight(self, shape: tuple[int, ...]) -> None:
        """A loaded weight ``(*input_size, C_in, C_out // groups, *kernel_size)`` fixes every size."""
        self.in_channels = shape[self._nd]
        self._set_input_size(shape[: self._nd])

    def __init__(self, out_channels: int, kernel_size, stride=1, padding=0, output_padding=0, groups: int = 1,
                 bias: bool = True, dilation=1, padding_mode: str = "zeros", device=None, dtype=None, *,
                 shared_bias: bool = False, backend: str = "auto") -> None:
        super().__init__(0, out_channels, kernel_size, stride, padding, output_padding, groups, bias, dilation,
                         padding_mode, device, dtype, input_size=None, shared_bias=shared_bias, backend=backend)


def _doc(nd: int) -> str:
    names = U.dimension_names(nd)
    dims, odims = names["dims"], names["odims"]
    size, xsize, osize = {1: ("5", "5", "11"), 2: ("(4, 5)", "4, 5", "9, 11"), 3: ("(2, 3, 2)", "2, 3, 2", "5, 7, 5")}[nd]
    return f"""Locally connected transposed {nd}d layer: ``nn.ConvTranspose{nd}d`` with a separate filter
    bank at every input position, the adjoint of ``LocallyConnected{nd}d``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, output_padding, groups, bias, dilation, padding_mode, device, dtype:
            as ``nn.ConvTranspose{nd}d`` (in its order;
            ``padding_mode`` must be ``"zeros"``, as there). ``padding`` may also give a dimension
            a ``(low, high)`` pair: what the output loses on each side, the padding of the
            ``LocallyConnected{nd}d`` this layer is the adjoint of (``((0, 2),)`` in 1d).
        input_size: spatial size ``({dims})`` of the inputs, int or tuple (required, keyword-only).
        shared_bias: one bias per output channel instead of one per channel and output position.
        backend: ``"auto"`` or a backend name (see ``unshared.backends``). Default: ``"auto"``.

    Shape:
        - Input: ``(N, C_in, {dims})`` or ``(C_in, {dims})``.
        - Output: ``(N, C_out, {odims})``, ``out_i = (in_i - 1) * stride_i - low_i - high_i +
          dilation_i * (kernel_size_i - 1) + output_padding_i + 1`` (``low_i = high_i = padding_i``
          for an int).

    Attributes:
        weight: ``({dims}, C_in, C_out // groups, *kernel_size)``: ``weight[p]`` is the
            ``nn.ConvTranspose{nd}d`` weight applied at input position ``p``; initialised as
            ``nn.ConvTranspose{nd}d`` with the per-position fan-in ``C_out / groups * prod(kernel_size)``.
        bias: ``(C_out, {odims})``, or ``(C_out,)`` with ``shared_bias=True``.
        output_size: the output grid.

    Example::

        >>> import torch, unshared
        >>> layer = unshared.LocallyConnectedTranspose{nd}d(4, 3, 3, stride=2, input_size={size})
        >>> layer(torch.randn(2, 4, {xsize})).shape
        torch.Size([2, 3, {osize}])
    """


def _lazy_doc(nd: int) -> str:
    size, osize, weight = {1: ("5", "11", "5, 4, 3, 3"), 2: ("4, 5", "9, 11", "4, 5, 4, 3, 3, 3"),
                           3: ("2, 3, 2", "5, 7, 5", "2, 3, 2, 4, 3, 3, 3, 3")}[nd]
    return f"""``LocallyConnectedTranspose{nd}d`` that infers ``in_channels`` and ``input_size`` from its first input.

    Takes ``nn.LazyConvTranspose{nd}d``'s arguments (no ``in_channels``) plus keyword-only
    ``shared_bias`` and ``backend``. After the first forward it becomes a ``LocallyConnectedTranspose{nd}d``.

    Example::

        >>> import torch, unshared
        >>> layer = unshared.LazyLocallyConnectedTranspose{nd}d(3, 3, stride=2)
        >>> layer(torch.randn(2, 4, {size})).shape
        torch.Size([2, 3, {osize}])
        >>> type(layer).__name__, layer.in_channels, layer.input_size, tuple(layer.weight.shape)
        ('LocallyConnectedTranspose{nd}d', 4, {tuple(map(int, size.split(', ')))}, ({weight}))
    """


class LocallyConnectedTranspose1d(_LocallyConnectedTransposeNd):
    __doc__ = _doc(1)
    _nd = 1


class LocallyConnectedTranspose2d(_LocallyConnectedTransposeNd):
    __doc__ = _doc(2)
    _nd = 2


class LocallyConnectedTranspose3d(_LocallyConnectedTransposeNd):
    __doc__ = _doc(3)
    _nd = 3


class LazyLocallyConnectedTranspose1d(_LazyTransposeMixin, LocallyConnectedTranspose1d):
    __doc__ = _lazy_doc(1)
    cls_to_become = LocallyConnectedTranspose1d


class LazyLocallyConnectedTranspose2d(_LazyTransposeMixin, LocallyConnectedTranspose2d):
    __doc__ = _lazy_doc(2)
    cls_to_become = LocallyConnectedTranspose2d


class LazyLocallyConnectedTranspose3d(_LazyTransposeMixin, LocallyConnectedTranspose3d):
    __doc__ = _lazy_doc(3)
    cls_to_become = LocallyConnectedTranspose3d


#: The transposed layer class of each spatial dimensionality.
LOCALLY_CONNECTED_TRANSPOSE = {1: LocallyConnectedTranspose1d, 2: LocallyConnectedTranspose2d,
                               3: LocallyConnectedTranspose3d}
