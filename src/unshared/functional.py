"""Functional locally connected layers: ``locally_connected1d/2d/3d``.

Each validates its arguments (errors name the offending values), applies non-zero padding modes,
then dispatches to a backend (see :mod:`unshared.backends`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _utils as U
from .backends import choose_backend, ops

__all__ = ["locally_connected", "locally_connected1d", "locally_connected2d", "locally_connected3d"]


def _check_tensors(name: str, nd: int, input, weight, bias) -> None:
    for arg, value in (("input", input), ("weight", weight)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name}: {arg} must be a Tensor, got {type(value).__name__}")
    if bias is not None and not isinstance(bias, Tensor):
        raise TypeError(f"{name}: bias must be a Tensor or None, got {type(bias).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"{name}: input must be a floating point tensor, got dtype={input.dtype}")
    for arg, value in (("weight", weight), ("bias", bias)):
        if value is None:
            continue
        if value.dtype != input.dtype:
            raise TypeError(f"{name}: {arg} dtype {value.dtype} differs from input dtype {input.dtype}")
        if value.device != input.device:
            raise ValueError(f"{name}: {arg} is on {value.device} but input is on {input.device}")
    if weight.dim() != 2 * nd + 2:
        raise ValueError(
            f"{name}: weight must have {2 * nd + 2} dimensions (*output_size, out_channels, "
            f"in_channels // groups, *kernel_size), got weight of shape {tuple(weight.shape)}"
        )
    if any(s == 0 for s in weight.shape):
        raise ValueError(f"{name}: weight has a zero-sized dimension: shape {tuple(weight.shape)}")
    if input.dim() not in (nd + 1, nd + 2):
        raise ValueError(
            f"{name}: expected a {nd + 2}-d (batched) or {nd + 1}-d (unbatched) input, "
            f"got input of shape {tuple(input.shape)}"
        )


#: the dtypes ``torch.autocast`` casts (float64 and integer tensors are left alone, as for ``nn.Conv``)
_AUTOCAST_ELIGIBLE = (torch.float32, torch.float16, torch.bfloat16)


def _autocast_dtype(device_type: str):
    """The dtype ``torch.autocast`` computes in on ``device_type``, or ``None`` outside autocast."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except RuntimeError:                 # a device type autocast does not know (meta)
        return None
    return torch.get_autocast_dtype(device_type) if enabled else None


def _autocast(input, *tensors):
    """Under ``torch.autocast``, cast the input, weight and bias to the autocast dtype, as
    ``nn.Conv`` does (the layer then multiplies in that dtype and sums in float32). The casts are
    differentiable: the float32 weights receive float32 gradients. Outside autocast: unchanged."""
    if not isinstance(input, Tensor):
        return (input, *tensors)
    dtype = _autocast_dtype(input.device.type)
    if dtype is None:
        return (input, *tensors)
    return tuple(t.to(dtype) if isinstance(t, Tensor) and t.dtype in _AUTOCAST_ELIGIBLE else t
                 for t in (input, *tensors))


def _pad(x: Tensor, padding, padding_mode: str, name: str) -> Tensor:
    """Apply a non-zero padding mode with ``F.pad``, after checking its size limits."""
    spatial = x.shape[2:]
    for i, ((lo, hi), size) in enumerate(zip(padding, spatial)):
        if padding_mode == "reflect" and max(lo, hi) >= size:
            raise ValueError(f"{name}: padding_mode='reflect' needs padding < input size, got "
                             f"padding={padding} for input spatial size {tuple(spatial)}")
        if padding_mode == "circular" and max(lo, hi) > size:
            raise ValueError(f"{name}: padding_mode='circular' needs padding <= input size, got "
                             f"padding={padding} for input spatial size {tuple(spatial)}")
    flat = [p for pair in reversed(padding) for p in pair]
    return F.pad(x, flat, mode=padding_mode)


def _locally_connected(nd, input, weight, bias, stride, padding, dilation, groups, padding_mode, backend,
                       banks=None, output_size=None, name=None):
    """The functional forms; with ``banks`` (partial sharing) the weight's leading dimensions are
    filter banks, ``banks`` the ``(positions,)`` bank of each position of ``output_size``."""
    name = name or f"locally_connected{nd}d"
    input, weight, bias = _autocast(input, weight, bias)
    _check_tensors(name, nd, input, weight, bias)
    unbatched = input.dim() == nd + 1
    x = input.unsqueeze(0) if unbatched else input

    grid = tuple(weight.shape[:nd]) if banks is None else tuple(output_size)
    out_channels, in_per_group = weight.shape[nd], weight.shape[nd + 1]
    kernel_size = tuple(weight.shape[nd + 2:])
    stride = U.positive(U.ntuple(stride, nd, "stride"), "stride")
    dilation = U.positive(U.ntuple(dilation, nd, "dilation"), "dilation")
    if not isinstance(groups, int) or isinstance(groups, bool) or groups <= 0:
        raise ValueError(f"{name}: groups must be a positive int, got groups={groups!r}")
    channels = x.shape[1]
    if channels != in_per_group * groups:
        raise ValueError(
            f"{name}: expected input with {in_per_group * groups} channels (weight has "
            f"in_channels // groups = {in_per_group}, groups={groups}), got {channels} channels "
            f"in input of shape {tuple(input.shape)}"
        )
    U.check_groups(channels, out_channels, groups)
    U.check_padding_mode(padding_mode)
    pads = U.normalize_padding(padding, kernel_size, stride, dilation)
    spatial = tuple(x.shape[2:])
    produced = U.output_size(spatial, kernel_size, stride, pads, dilation)
    if produced != grid:
        smallest = tuple(max(1, (o - 1) * s + d * (k - 1) + 1 - lo - hi)
                         for o, s, d, k, (lo, hi) in zip(grid, stride, dilation, kernel_size, pads))
        raise ValueError(
            f"{name}: weight was made for output size {grid}, which needs input spatial size "
            f"{smallest}, got input spatial size {spatial} (output size {produced})"
        )
    if bias is not None and tuple(bias.shape) not in ((out_channels, *grid), (out_channels,)):
        raise ValueError(
            f"{name}: bias must have shape {(out_channels, *grid)} (per position) or "
            f"{(out_channels,)} (shared), got bias of shape {tuple(bias.shape)}"
        )

    if padding_mode != "zeros" and any(lo or hi for lo, hi in pads):
        x = _pad(x, pads, padding_mode, name)
        spatial, pads = tuple(x.shape[2:]), ((0, 0),) * nd
    geometry = U.Geometry(spatial, grid, kernel_size, stride, pads, dilation, groups, channels, out_channels,
                          None if banks is None else tuple(weight.shape[:nd]))
    y = ops.locally_connected(x, weight, geometry, choose_backend(x, weight, geometry, backend),
                              None if banks is None else banks.to(x.device))
    if bias is not None:
        y = y + (bias if bias.dim() > 1 else bias.view(out_channels, *(1,) * nd))
    return y.squeeze(0) if unbatched else y


_DOC = """Locally connected {nd}d layer: a convolution with a separate filter bank per output position.

    ``out[n, o, p] = bias[o, p] + sum_{{c, k}} weight[p, o, c, k] * input_padded[n, g*C/G + c, p*stride + k*dilation]``
    where ``p`` runs over the output grid, ``k`` over the kernel and ``g = o // (out_channels / groups)``.

    Args:
        input: ``(N, C_in, {dims})`` or unbatched ``(C_in, {dims})``, floating point.
        weight: ``({odims}, C_out, C_in // groups, {kdims})``; ``weight[p]`` is the
            ``nn.Conv{nd}d`` weight used at output position ``p``. The output grid is read from it.
        bias: ``(C_out, {odims})`` (per position), ``(C_out,)`` (shared) or ``None``. Default: ``None``.
        stride, padding, dilation, groups: as ``torch.nn.functional.conv{nd}d``; ``padding`` is an
            int, a tuple, ``"valid"`` or ``"same"`` (stride 1 only). Defaults: 1, 0, 1, 1.
        padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``. Default: ``"zeros"``.
        backend: ``"torch"`` (pure PyTorch, any device), ``"triton"`` (fused GPU kernels),
            ``"composite"`` (standard operators only, for exporters) or ``"auto"``: Triton for CUDA
            tensors when it is installed, composite while exporting to ONNX, else PyTorch.
            Default: ``"auto"``.

    Returns:
        ``(N, C_out, {odims})`` (or unbatched ``(C_out, {odims})``), where
        ``out_i = floor((in_i + 2 * padding_i - dilation_i * (kernel_i - 1) - 1) / stride_i) + 1``.
        float16/bfloat16 inputs are multiplied and summed in float32.

    Raises:
        ValueError: when the input does not produce the weight's output grid, or on inconsistent
            shapes, channels, groups or padding (the message names the values).
        TypeError: for non-tensor or non-floating-point arguments, or mismatched dtypes.

    Example::

        >>> import torch
        >>> from unshared import functional as UF
        >>> x = torch.randn(2, 3, {example_in})
        >>> w = torch.randn({example_w})
        >>> UF.locally_connected{nd}d(x, w).shape
        torch.Size([2, 4, {example_out}])
    """


def _make(nd: int, example_in: str, example_w: str, example_out: str):
    def fn(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1, *, padding_mode: str = "zeros", backend: str = "auto") -> Tensor:
        return _locally_connected(nd, input, weight, bias, stride, padding, dilation, groups,
                                  padding_mode, backend)

    letters = ["D", "H", "W"][3 - nd:]
    fn.__name__ = fn.__qualname__ = f"locally_connected{nd}d"
    fn.__doc__ = _DOC.format(
        nd=nd, dims=", ".join(f"{l}_in" for l in letters), odims=", ".join(f"{l}_out" for l in letters),
        kdims=", ".join(f"k{l}" for l in letters), example_in=example_in, example_w=example_w,
        example_out=example_out)
    return fn


locally_connected1d = _make(1, "10", "8, 4, 3, 3", "8")
locally_connected2d = _make(2, "6, 6", "4, 4, 4, 3, 3, 3", "4, 4")
locally_connected3d = _make(3, "4, 4, 4", "2, 2, 2, 4, 3, 3, 3, 3", "2, 2, 2")


def locally_connected(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                      dilation=1, groups: int = 1, *, padding_mode: str = "zeros", backend: str = "auto") -> Tensor:
    """:func:`locally_connected1d`, ``2d`` or ``3d`` by the weight's dimensions
    (``2 * nd + 2``: ``(*output_size, C_out, C_in // groups, *kernel_size)``)."""
    if not isinstance(weight, Tensor):
        raise TypeError(f"locally_connected: weight must be a Tensor, got {type(weight).__name__}")
    if weight.dim() not in (4, 6, 8):
        raise ValueError("locally_connected: weight must have 4, 6 or 8 dimensions (1d, 2d or 3d: "
                         "*output_size, out_channels, in_channels // groups, *kernel_size), got weight "
                         f"of shape {tuple(weight.shape)}")
    nd = (weight.dim() - 2) // 2
    return _locally_connected(nd, input, weight, bias, stride, padding, dilation, groups, padding_mode, backend)
