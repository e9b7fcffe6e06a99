"""What every functional form does before it computes: autocast, argument and tensor checks with
clear messages, non-zero padding modes, and the :class:`~unshared._utils.Geometry` of the call.

Pure bookkeeping on tensor metadata (``F.pad`` aside): no computation on tensor data.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _utils as U

__all__ = ["autocast", "check_tensors", "check_bias", "Prepared", "prepare"]

#: the dtypes ``torch.autocast`` casts (float64 and integer tensors are left alone, as for ``nn.Conv``)
_AUTOCAST_ELIGIBLE = (torch.float32, torch.float16, torch.bfloat16)


def _autocast_dtype(device_type: str):
    """The dtype ``torch.autocast`` computes in on ``device_type``, or ``None`` outside autocast."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except RuntimeError:                 # a device type autocast does not know (meta)
        return None
    return torch.get_autocast_dtype(device_type) if enabled else None


def autocast(input, *tensors):
    """Under ``torch.autocast``, cast the input and the parameters to the autocast dtype, as
    ``nn.Conv`` does (the layer then multiplies in that dtype and sums in float32). The casts are
    differentiable: float32 parameters receive float32 gradients. Outside autocast: unchanged."""
    if not isinstance(input, Tensor):
        return (input, *tensors)
    dtype = _autocast_dtype("cpu" if input.is_cpu else input.device.type)  # (is_cpu: no device object)
    if dtype is None:
        return (input, *tensors)
    return tuple(t.to(dtype) if isinstance(t, Tensor) and t.dtype in _AUTOCAST_ELIGIBLE else t
                 for t in (input, *tensors))


def check_tensors(name: str, nd: int, input, named: dict, weight_dims: int, layout: str) -> None:
    """Types, dtypes, devices and dimensions of the input and the named parameters (``None`` allowed
    for all but the first); the first parameter must have ``weight_dims`` non-empty dimensions,
    described by ``layout`` in messages."""
    if not isinstance(input, Tensor):
        raise TypeError(f"{name}: input must be a Tensor, got {type(input).__name__}")
    for arg, (label, value) in enumerate(named.items()):
        if value is None and arg > 0:
            continue
        if not isinstance(value, Tensor):
            raise TypeError(f"{name}: {label} must be a Tensor{' or None' if arg else ''}, got {type(value).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"{name}: input must be a floating point tensor, got dtype={input.dtype}")
    for label, value in named.items():
        if value is None:
            continue
        if value.dtype != input.dtype:
            raise TypeError(f"{name}: {label} dtype {value.dtype} differs from input dtype {input.dtype}")
        if value.device != input.device:
            raise ValueError(f"{name}: {label} is on {value.device} but input is on {input.device}")
    label, weight = next(iter(named.items()))
    if weight.dim() != weight_dims:
        raise ValueError(f"{name}: {label} must have {weight_dims} dimensions ({layout}), got {label} of shape "
                         f"{tuple(weight.shape)}")
    if any(s == 0 for s in weight.shape):
        raise ValueError(f"{name}: {label} has a zero-sized dimension: shape {tuple(weight.shape)}")
    if input.dim() not in (nd + 1, nd + 2):
        raise ValueError(f"{name}: expected a {nd + 2}-d (batched) or {nd + 1}-d (unbatched) input, "
                         f"got input of shape {tuple(input.shape)}")


def _pad(x: Tensor, padding, padding_mode: str, name: str) -> Tensor:
    """Apply a non-zero padding mode with ``F.pad``, after checking its size limits."""
    spatial = x.shape[2:]
    for (lo, hi), size in zip(padding, spatial):
        if padding_mode == "reflect" and max(lo, hi) >= size:
            raise ValueError(f"{name}: padding_mode='reflect' needs padding < input size, got "
                             f"padding={padding} for input spatial size {tuple(spatial)}")
        if padding_mode == "circular" and max(lo, hi) > size:
            raise ValueError(f"{name}: padding_mode='circular' needs padding <= input size, got "
                             f"padding={padding} for input spatial size {tuple(spatial)}")
    return F.pad(x, [p for pair in reversed(padding) for p in pair], mode=padding_mode)


class Prepared(NamedTuple):
    """A checked call: the batched (and, for non-zero modes, padded) input, its geometry
    (zero padding only), and whether the input was unbatched."""

    x: Tensor
    geometry: U.Geometry
    unbatched: bool


def prepare(name: str, nd: int, input: Tensor, grid, out_channels: int, in_per_group: int, kernel_size,
            stride, padding, dilation, groups, padding_mode: str, weight_grid=None, banks=None) -> Prepared:
    """Check the arguments of a call whose output grid is ``grid`` against ``input`` (whose
    tensors :func:`check_tensors` checked) and build its geometry."""
    unbatched = input.dim() == nd + 1
    x = input.unsqueeze(0) if unbatched else input
    stride = U.positive(U.ntuple(stride, nd, "stride"), "stride")
    dilation = U.positive(U.ntuple(dilation, nd, "dilation"), "dilation")
    if not isinstance(groups, int) or isinstance(groups, bool) or groups <= 0:
        raise ValueError(f"{name}: groups must be a positive int, got groups={groups!r}")
    channels = x.shape[1]
    if channels != in_per_group * groups:
        raise ValueError(
            f"{name}: expected input with {in_per_group * groups} channels (weight has "
            f"in_channels // groups = {in_per_group}, groups={groups}), got {channels} channels "
            f"in input of shape {tuple(input.shape)}")
    U.check_groups(channels, out_channels, groups)
    U.check_padding_mode(padding_mode)
    pads = U.normalize_padding(padding, kernel_size, stride, dilation, name)
    spatial = tuple(x.shape[2:])
    produced = U.output_size(spatial, kernel_size, stride, pads, dilation)
    if produced != tuple(grid):
        smallest = tuple(max(1, (o - 1) * s + d * (k - 1) + 1 - lo - hi)
                         for o, s, d, k, (lo, hi) in zip(grid, stride, dilation, kernel_size, pads))
        raise ValueError(
            f"{name}: weight was made for output size {tuple(grid)}, which needs input spatial size "
            f"{smallest}, got input spatial size {spatial} (output size {produced})")
    if padding_mode != "zeros" and any(lo or hi for lo, hi in pads):
        x = _pad(x, pads, padding_mode, name)
        spatial, pads = tuple(x.shape[2:]), ((0, 0),) * nd
    geometry = U.Geometry(spatial, tuple(grid), tuple(kernel_size), stride, pads, dilation, groups, channels,
                          out_channels, weight_grid, banks).untraced()
    return Prepared(x, geometry, unbatched)


def check_bias(name: str, bias, out_channels: int, grid, what: str = "per position") -> None:
    """``bias``: ``None``, ``(out_channels,)`` or ``(out_channels, *grid)``."""
    if bias is not None and tuple(bias.shape) not in ((out_channels, *grid), (out_channels,)):
        raise ValueError(f"{name}: bias must have shape {(out_channels, *grid)} ({what}) or "
                         f"{(out_channels,)} (shared), got bias of shape {tuple(bias.shape)}")
