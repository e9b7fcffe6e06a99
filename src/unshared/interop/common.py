"""What the Keras and the Flax/lax importers share: reading arrays and arguments, checking shapes,
and building the layer from a weight in the public layout.

Notation: ``P`` the output grid, ``O`` the output channels, ``C`` the input channels, ``k`` the
kernel size; the public weight is ``(*P, O, C, *k)`` (see :class:`unshared.LocallyConnected2d`).
Nothing here imports numpy before it is handed an array that is not a tensor.
"""
from __future__ import annotations

import numbers
from collections import OrderedDict
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .. import _utils as U
from ..modules import LOCALLY_CONNECTED

__all__ = ["as_tensor", "int_tuple", "kernel_tuple", "check_shape", "output_grid", "build_layer"]

_PAD_MODULES = {
    "zeros": {1: nn.ZeroPad1d, 2: nn.ZeroPad2d, 3: nn.ZeroPad3d},
    "circular": {1: nn.CircularPad1d, 2: nn.CircularPad2d, 3: nn.CircularPad3d},
    "reflect": {1: nn.ReflectionPad1d, 2: nn.ReflectionPad2d, 3: nn.ReflectionPad3d},
}


def as_tensor(array, name: str) -> Tensor:
    """A CPU tensor holding ``array`` (torch tensor, numpy/JAX array, TF variable, nested list).

    Raises ``TypeError`` for a non-numeric array (strings, objects), naming ``name``.
    """
    if isinstance(array, Tensor):
        return array.detach().cpu()
    import numpy as np

    a = np.asarray(array)
    if a.dtype.name == "bfloat16":                 # ml_dtypes (JAX): no torch.from_numpy for it
        return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a numeric array, got dtype {a.dtype} (shape {a.shape})")
    a = np.ascontiguousarray(a) if a.flags.writeable else np.array(a, order="C")   # JAX's are read-only
    return torch.from_numpy(a)


def _plain_int(value):
    """``value`` as a Python int when it is an integer of any kind but bool (numpy's included)."""
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value


def int_tuple(value, n: int, name: str) -> tuple[int, ...]:
    """``value`` as an ``n``-tuple of ints, by :func:`unshared._utils.ntuple`'s rules, after reading
    what other frameworks write: numpy integers, lists or arrays, and one int for every dimension.

    ``3``, ``[3]``, ``np.int64(3)`` -> ``(3,) * n``; ``[2, 3]`` or ``np.array([2, 3])`` -> ``(2, 3)``
    when ``n == 2``. Raises ``TypeError``/``ValueError`` naming ``name`` and the value otherwise.
    """
    value = _plain_int(value)
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        value = tuple(_plain_int(v) for v in value)
        if len(value) == 1 and isinstance(value[0], int) and not isinstance(value[0], bool):
            value = value * n
    return U.ntuple(value, n, name)


def kernel_tuple(value, name: str) -> tuple[int, ...]:
    """A kernel size as a tuple of positive ints, its length the dimensionality: ``3`` -> ``(3,)``,
    ``[3, 2]`` -> ``(3, 2)``. Raises ``TypeError``/``ValueError`` naming ``name`` and the value."""
    value = _plain_int(value)
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        value = tuple(value)
    return U.positive(int_tuple(value, len(value) if isinstance(value, tuple) else 1, name), name)


def check_shape(array: Tensor, expected: tuple[int, ...], what: str, source: str, note: str = "") -> None:
    """Raise ``ValueError`` ``"{source}: expected {what} of shape {expected}, got {shape}{note}"``."""
    if tuple(array.shape) != tuple(expected):
        raise ValueError(f"{source}: expected {what} of shape {tuple(expected)}, "
                         f"got {tuple(array.shape)}{note}")


def output_grid(input_size, kernel_size, stride, pads, dilation, source: str) -> tuple[int, ...]:
    """:func:`unshared._utils.output_size` (``pads`` as ``((lo, hi), ...)``), its error naming ``source``."""
    try:
        return U.output_size(input_size, kernel_size, stride, pads, dilation)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def build_layer(weight: Tensor, bias: Tensor | None, *, stride, pads, dilation, input_size,
                padding_mode: str = "zeros", dtype=None, activation: nn.Module | None = None,
                source: str) -> nn.Module:
    """The ``LocallyConnected{1,2,3}d`` holding ``weight``, wrapped in ``nn.Sequential`` if needed.

    Args:
        weight: ``(*P, O, C, *k)``, the public layout.
        bias: ``(O, *P)`` or None.
        stride, dilation: one int per spatial dimension.
        pads: ``((lo, hi), ...)`` per spatial dimension, non-negative. Even pads go into the layer;
            uneven ones become a ``pad`` module (``padding_mode``: zeros, circular, reflect) in front.
        input_size: the spatial input size, before padding; with the rest it must give the grid ``P``.
        dtype: of the parameters; default ``weight``'s. Must be floating point.
        activation: appended as an ``activation`` module when given.
        source: what the messages start with, e.g. ``"from_flax"``.

    Returns:
        The layer for ``(N, C, *input_size)`` input, or ``nn.Sequential`` with children ``pad``
        (optional), ``local`` and ``activation`` (optional).
    """
    nd = (weight.dim() - 2) // 2
    grid, out_channels, in_channels, kernel = (weight.shape[:nd], weight.shape[nd],
                                               weight.shape[nd + 1], tuple(weight.shape[nd + 2:]))
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    if any(lo < 0 or hi < 0 for lo, hi in pads):
        raise ValueError(f"{source}: negative padding {pads} is not supported")
    expected = output_grid(input_size, kernel, stride, pads, dilation, source)
    if expected != tuple(grid):
        raise ValueError(
            f"{source}: the weights hold an output grid of {tuple(grid)} positions, but input_size="
            f"{tuple(input_size)} with kernel_size={kernel}, strides={tuple(stride)}, padding={pads}, "
            f"dilation={tuple(dilation)} gives {expected}; check input_size and the layer's settings")
    dtype = weight.dtype if dtype is None else dtype
    if not dtype.is_floating_point:
        raise TypeError(f"{source}: the weights must be floating point, got dtype={dtype}")
    modules: list[tuple[str, nn.Module]] = []
    if all(lo == hi for lo, hi in pads):
        padding, size = tuple(lo for lo, _ in pads), tuple(input_size)
    else:
        flat = [p for lo_hi in reversed(pads) for p in lo_hi]    # torch order: last dim first
        modules.append(("pad", _PAD_MODULES[padding_mode][nd](tuple(flat))))
        padding, size, padding_mode = 0, tuple(i + lo + hi for i, (lo, hi) in zip(input_size, pads)), "zeros"
    layer = LOCALLY_CONNECTED[nd](in_channels, out_channels, kernel, stride, padding, dilation,
                                  bias=bias is not None, padding_mode=padding_mode, dtype=dtype, input_size=size)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    modules.append(("local", layer))
    if activation is not None:
        modules.append(("activation", activation))
    return layer if len(modules) == 1 else nn.Sequential(OrderedDict(modules))
