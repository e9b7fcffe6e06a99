"""``nn.Module`` locally connected layers, eager and lazy.

The modules hold parameters, initialise them and call :mod:`unshared.functional`.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter, is_lazy

from . import _utils as U
from . import functional as UF
from .backends import check_backend_name

__all__ = [
    "LOCALLY_CONNECTED", "LocallyConnectedNd", "PositionParameters", "LazyInitialization", "LocallyConnected1d", "LocallyConnected2d", "LocallyConnected3d",
    "LazyLocallyConnected1d", "LazyLocallyConnected2d", "LazyLocallyConnected3d",
]


class PositionParameters:
    """Parameter set-up shared by the family's layers, from their ``_set_input_size``,
    ``_weight_shape``, ``_bias_shape`` and ``reset_parameters``: uninitialised until the first input
    for lazy layers; otherwise ``input_size`` is required, and the weight is laid out kernel-major.
    ``torch.jit.script`` is refused with the ways that work (:meth:`__prepare_scriptable__`)."""

    def __prepare_scriptable__(self):
        """Called by ``torch.jit.script`` on every submodule: the layers are Python (argument checks,
        backend choice, custom operators), which TorchScript cannot compile."""
        raise RuntimeError(
            f"{type(self).__name__} cannot be compiled by torch.jit.script; use torch.compile (JIT), "
            f"torch.export (a graph to save or deploy, also for ONNX: torch.onnx.export(..., dynamo=True)), "
            f"or torch.jit.trace (standard operators, any batch size)")

    #: the tuple arguments that ``extra_repr`` prints when they differ from this default in every dimension
    _repr_defaults = (("padding", 0), ("dilation", 1))

    def extra_repr(self) -> str:
        """The arguments, those with their default values left out, as ``nn.Conv``'s (``padding``
        as given)."""
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        s += "".join(f", {arg}={getattr(self, arg)}" for arg, default in self._repr_defaults
                     if getattr(self, arg) != (default,) * self._nd)
        s += f", groups={self.groups}" if self.groups != 1 else ""
        s += ", bias=False" if self.bias is None else ""
        s += f", padding_mode={self.padding_mode}" if self.padding_mode != "zeros" else ""
        s += f", input_size={self.input_size}" + (", shared_bias=True" if self.shared_bias else "")
        return s + (f", backend={self.backend}" if self.backend != "auto" else "")

    def _check_input(self, input: Tensor) -> None:
        U.check_layer_input(type(self).__name__, input, self._nd, self.in_channels, self.input_size)

    def _set_up_parameters(self, lazy: bool, bias: bool, input_size, factory_kwargs) -> None:
        if lazy:
            self.weight = UninitializedParameter(**factory_kwargs)
            self.bias = UninitializedParameter(**factory_kwargs) if bias else None
            return
        if input_size is None:
            name = type(self).__name__
            raise ValueError(f"{name}: input_size is required (the weights depend on it); "
                             f"use Lazy{name} to infer it from the first input")
        self._set_input_size(input_size)
        self._create_parameters(bias, factory_kwargs)
        self.reset_parameters()

    def _create_parameters(self, bias: bool, factory_kwargs) -> None:
        self.weight = nn.Parameter(U.empty_weight(self._weight_shape(), self._nd, kernel_major=True,
                                                  **factory_kwargs))
        self.bias = nn.Parameter(torch.empty(self._bias_shape(), **factory_kwargs)) if bias else None


class LocallyConnectedNd(PositionParameters, nn.Module):
    """The base of every layer of the family (plain, partially shared, low-rank): arguments,
    parameters, initialisation, checks and ``extra_repr``; subclasses set ``_nd`` and may override
    :meth:`_grid` (the weight's leading dimensions) and ``forward``."""

    _nd: int
    __constants__ = ["in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                     "groups", "padding_mode", "input_size", "output_size", "shared_bias"]

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None, *, input_size, shared_bias: bool = False,
                 backend: str = "auto") -> None:
        super().__init__()
        nd, name = self._nd, type(self).__name__
        lazy = isinstance(self, LazyModuleMixin)
        U.check_channels(name, in_channels, out_channels, lazy)
        # a lazy layer checks out_channels now (in_channels is not known yet: any multiple works)
        U.check_groups(in_channels if not lazy else groups if isinstance(groups, int) else 1,
                       out_channels, groups)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = U.positive(U.ntuple(kernel_size, nd, "kernel_size"), "kernel_size")
        self.stride = U.positive(U.ntuple(stride, nd, "stride"), "stride")
        self.dilation = U.positive(U.ntuple(dilation, nd, "dilation"), "dilation")
        self._padding = U.normalize_padding(padding, self.kernel_size, self.stride, self.dilation, name)
        self.padding = U.padding_argument(padding, nd, name)  # as given: a string, ints or (low, high) pairs
        self.padding_mode = U.check_padding_mode(padding_mode)
        self.shared_bias = bool(shared_bias)
        self.backend = check_backend_name(backend)
        self.input_size: tuple[int, ...] | None = None
        self.output_size: tuple[int, ...] | None = None
        self._set_up_parameters(lazy, bias, input_size, {"device": device, "dtype": dtype})

    # -- geometry -------------------------------------------------------------------------------
    def _set_input_size(self, input_size) -> None:
        self.input_size = U.positive(U.ntuple(input_size, self._nd, "input_size"), "input_size")
        try:
            self.output_size = U.output_size(self.input_size, self.kernel_size, self.stride,
                                             self._padding, self.dilation)
        except ValueError as error:  # say which layer, with the padding as written
            raise ValueError(f"{type(self).__name__}({self.in_channels}, {self.out_channels}, "
                             f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}) "
                             f"at input_size={self.input_size}: {error}") from None

    #: what the leading weight dimensions index, for messages
    _grid_name = "output size"

    def _grid(self) -> tuple[int, ...]:
        """The leading dimensions of ``weight`` (and trailing ones of a per-position ``bias``)."""
        return self.output_size

    def _weight_shape(self) -> tuple[int, ...]:
        return (*self._grid(), self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def _bias_shape(self) -> tuple[int, ...]:
        return (self.out_channels,) if self.shared_bias else (self.out_channels, *self._grid())

    # -- parameters -----------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """``nn.Conv``'s init with the per-position fan-in ``in_channels / groups * prod(kernel_size)``.

        ``kaiming_uniform_(a=sqrt(5))`` draws from ``U(-b, b)`` with
        ``b = gain * sqrt(3 / fan_in)``, ``gain = sqrt(2 / (1 + a^2))``; the bias uses ``1 / sqrt(fan_in)``.
        """
        fan_in = U.fan_in(self.in_channels, self.groups, self.kernel_size)
        gain = nn.init.calculate_gain("leaky_relu", math.sqrt(5))
        bound = gain * math.sqrt(3.0 / fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        weight = state_dict.get(prefix + "weight")
        if (isinstance(weight, Tensor) and self.output_size is not None
                and not isinstance(self.weight, UninitializedParameter)
                and weight.dim() == 2 * self._nd + 2
                and tuple(weight.shape[: self._nd]) != self._grid()):
            raise ValueError(
                f"{type(self).__name__}: the state_dict's weight (shape {tuple(weight.shape)}) was made "
                f"for {self._grid_name} {tuple(weight.shape[: self._nd])}, but this layer has "
                f"{self._grid_name} {self._grid()} (input_size={self.input_size}); rebuild the layer "
                f"with the checkpoint's sizes"
            )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    # -- computation ----------------------------------------------------------------------------
    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        return UF.locally_connected(input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                    self.groups, padding_mode=self.padding_mode, backend=self.backend)


class LazyInitialization(LazyModuleMixin):
    """Lazy layers of the family: ``in_channels`` and ``input_size`` from the first input, then
    the layer's own ``_set_input_size``, ``_weight_shape``, ``_bias_shape`` and ``reset_parameters``.

    A state dict loaded before the first input (as into ``nn.LazyConv2d``) materialises the
    parameters and sets the sizes its weight determines (the layer's ``_sizes_from_weight``); a
    size it leaves open (a plain layer's ``input_size``: with stride > 1 several give one output
    grid) comes from the first input, which must produce the loaded grid.
    """

    def reset_parameters(self) -> None:
        if not self.has_uninitialized_params() and self.in_channels != 0:
            super().reset_parameters()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        weight = state_dict.get(prefix + "weight")
        loads = isinstance(self.weight, UninitializedParameter) and isinstance(weight, Tensor) and not is_lazy(weight)
        if loads:
            self._sizes_from_state(tuple(weight.shape), state_dict.get(prefix + "bias"))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if loads and not isinstance(self.weight, UninitializedParameter) and not U.is_kernel_major(self.weight):
            with torch.no_grad():  # materialised contiguous: the default layout, as an eager layer has
                self.weight.data = U.empty_weight(tuple(self.weight.shape), self._nd, kernel_major=True,
                                                  device=self.weight.device,
                                                  dtype=self.weight.dtype).copy_(self.weight)

    def _sizes_from_state(self, shape: tuple[int, ...], bias) -> None:
        """Set the sizes a loaded weight of ``shape`` determines, after checking it (and the bias)
        against the layer's arguments; on a mismatch raise ``ValueError`` and change nothing."""
        name, nd = type(self).__name__, self._nd
        if len(shape) != 2 * nd + 2 or 0 in shape:
            raise ValueError(f"{name}: the state_dict's weight has shape {shape}, not a {nd}d layer's "
                             f"{2 * nd + 2} positive dimensions")
        before = self.in_channels, self.input_size, self.output_size
        try:
            self._sizes_from_weight(shape)
            found, needed = [shape], [self._weight_shape()]
            if isinstance(bias, Tensor) and self.bias is not None:
                found.append(tuple(bias.shape))
                needed.append(self._bias_shape())
            if found != needed:
                raise ValueError(f"{name}: the state_dict's weight and bias have shapes {tuple(found)}, but this "
                                 f"layer's arguments ({self.extra_repr()}) need {tuple(needed)}")
        except ValueError:
            self.in_channels, self.input_size, self.output_size = before
            raise

    def initialize_parameters(self, input: Tensor) -> None:
        nd = self._nd
        if not self.has_uninitialized_params() and self.input_size is not None:
            return
        if not isinstance(input, Tensor) or input.dim() not in (nd + 1, nd + 2):
            raise ValueError(f"{type(self).__name__}: expected a {nd + 2}-d (batched) or {nd + 1}-d "
                             f"(unbatched) input, got {getattr(input, 'shape', type(input).__name__)}")
        if not self.has_uninitialized_params():  # loaded from a state dict: the input completes the sizes
            self._input_size_after_loading(tuple(input.shape[-nd:]))
            return
        self.in_channels = input.shape[-nd - 1]
        U.check_groups(self.in_channels, self.out_channels, self.groups)
        self._set_input_size(tuple(input.shape[-nd:]))
        with torch.no_grad():
            self.weight.materialize(self._weight_shape())
            self.weight.data = U.empty_weight(self._weight_shape(), nd, kernel_major=True,
                                              device=self.weight.device, dtype=self.weight.dtype)
            if self.bias is not None:
                self.bias.materialize(self._bias_shape())
            self.reset_parameters()


class _LazyLocallyConnectedMixin(LazyInitialization):
    """Takes ``nn.LazyConvNd``'s arguments."""

    def _sizes_from_weight(self, shape: tuple[int, ...]) -> None:
        """A loaded weight ``(*output_size, C_out, C_in // groups, *kernel_size)`` fixes
        ``in_channels`` and ``output_size``, but not ``input_size`` (the first input sets it)."""
        self.in_channels = shape[self._nd + 1] * self.groups
        self.output_size = shape[: self._nd]

    def _input_size_after_loading(self, spatial: tuple[int, ...]) -> None:
        loaded = self.output_size
        self._set_input_size(spatial)
        if self.output_size != loaded:
            produced, self.input_size, self.output_size = self.output_size, None, loaded
            raise ValueError(f"{type(self).__name__}: the loaded state_dict was made for output size {loaded}, "
                             f"but input of spatial size {spatial} gives output size {produced}")

    def __init__(self, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None,
                 dtype=None, *, shared_bias: bool = False, backend: str = "auto") -> None:
        super().__init__(0, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype, input_size=None, shared_bias=shared_bias,
                         backend=backend)


def _module_doc(nd: int) -> str:
    names = U.dimension_names(nd)
    dims, odims = names["dims"], names["odims"]
    size = {1: "32", 2: "32, 32", 3: "8, 8, 8"}[nd]
    return f"""Locally connected {nd}d layer: ``nn.Conv{nd}d`` with a separate filter bank per output position.

    ``out[n, :, p] = bias[:, p] + Conv{nd}d(weight[p])`` evaluated at output position ``p`` only.
    The positional arguments are ``nn.Conv{nd}d``'s; ``input_size`` (keyword-only) fixes the
    output grid and therefore the number of weights.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype:
            as ``nn.Conv{nd}d``. ``padding`` may also give a dimension a ``(low, high)`` pair
            (one-sided padding: ``((0, 4),)`` in 1d), or be ``"same"`` (stride 1), ``"valid"`` or, in
            1d, ``"causal"`` (all ``dilation * (kernel_size - 1)`` on the low side); ``layer.padding``
            keeps it as given. ``padding_mode`` is ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
        input_size: spatial size ``({dims})`` of the inputs, int or tuple (required, keyword-only).
        shared_bias: one bias per output channel instead of one per channel and position. Default: False.
        backend: ``"auto"`` or a backend name (see ``unshared.backends``). Default: ``"auto"``.

    Shape:
        - Input: ``(N, C_in, {dims})`` or ``(C_in, {dims})``.
        - Output: ``(N, C_out, {odims})`` or ``(C_out, {odims})``, with
          ``out_i = floor((in_i + low_i + high_i - dilation_i * (kernel_size_i - 1) - 1) / stride_i) + 1``
          (``low_i = high_i = padding_i`` for an int).

    Attributes:
        weight: ``({odims}, C_out, C_in // groups, *kernel_size)``; ``weight[p]`` is the
            ``nn.Conv{nd}d`` weight at output position ``p``. Stored kernel-major (the kernel axes
            before the channel axis: a strided view), the fastest layout on the CPU; a contiguous
            weight (``weight.data = weight.data.contiguous()``, as FSDP2 requires) works too.
            Initialised from ``U(-b, b)``, ``b = 1 / sqrt(fan_in)``, ``fan_in = C_in / groups * prod(kernel_size)``.
        bias: ``(C_out, {odims})``, or ``(C_out,)`` with ``shared_bias=True``; same init bound.
        output_size: the output grid ``({odims})``.

    Example::

        >>> import torch, unshared
        >>> layer = unshared.LocallyConnected{nd}d(3, 8, 3, padding=1, input_size=({size},))
        >>> layer(torch.randn(4, 3, {size})).shape
        torch.Size([4, 8, {size}])
    """


def _lazy_doc(nd: int) -> str:
    size, osize, weight = {1: ("9", "7", "7, 8, 3, 3"), 2: ("9, 6", "7, 4", "7, 4, 8, 3, 3, 3"),
                           3: ("5, 4, 3", "3, 2, 1", "3, 2, 1, 8, 3, 3, 3, 3")}[nd]
    return f"""``LocallyConnected{nd}d`` that infers ``in_channels`` and ``input_size`` from its first input.

    Takes ``nn.LazyConv{nd}d``'s arguments (no ``in_channels``) plus keyword-only ``shared_bias``
    and ``backend``. After the first forward it becomes a ``LocallyConnected{nd}d``.

    Example::

        >>> import torch, unshared
        >>> layer = unshared.LazyLocallyConnected{nd}d(8, 3)
        >>> layer(torch.randn(2, 3, {size})).shape
        torch.Size([2, 8, {osize}])
        >>> type(layer).__name__, layer.in_channels, layer.input_size, tuple(layer.weight.shape)
        ('LocallyConnected{nd}d', 3, {tuple(map(int, size.split(', ')))}, ({weight}))
    """


class LocallyConnected1d(LocallyConnectedNd):
    _nd = 1
    __doc__ = _module_doc(1)


class LocallyConnected2d(LocallyConnectedNd):
    _nd = 2
    __doc__ = _module_doc(2)


class LocallyConnected3d(LocallyConnectedNd):
    _nd = 3
    __doc__ = _module_doc(3)


class LazyLocallyConnected1d(_LazyLocallyConnectedMixin, LocallyConnected1d):
    cls_to_become = LocallyConnected1d
    __doc__ = _lazy_doc(1)


class LazyLocallyConnected2d(_LazyLocallyConnectedMixin, LocallyConnected2d):
    cls_to_become = LocallyConnected2d
    __doc__ = _lazy_doc(2)


class LazyLocallyConnected3d(_LazyLocallyConnectedMixin, LocallyConnected3d):
    cls_to_become = LocallyConnected3d
    __doc__ = _lazy_doc(3)


#: The layer class of each spatial dimensionality.
LOCALLY_CONNECTED = {1: LocallyConnected1d, 2: LocallyConnected2d, 3: LocallyConnected3d}
