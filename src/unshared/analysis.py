"""Measures of what a layer does, beyond its parameter count."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import _utils as U

__all__ = ["translation_equivariance_error"]


def translation_equivariance_error(module: nn.Module, input: Tensor, shift: int = 1) -> float:
    """How far ``module`` is from translation equivariance on ``input``: shift the input by
    ``shift`` output steps (``shift * stride`` input elements) along every spatial dimension and
    compare the output with the shifted output, ``|f(T x) - T f(x)| / |T f(x)|`` (Frobenius norms),
    on the output positions whose receptive fields touch neither the border nor the padding.

    About 0 (rounding) for a convolution; of order 1 for a locally connected layer with
    independent filters. ``module`` needs ``kernel_size``, ``stride``, ``padding`` and ``dilation``
    attributes (``nn.ConvNd`` and every layer of this library have them); ``input`` is
    ``(N, C, *spatial)``. Raises ``ValueError`` when no output position is far enough from the
    borders for this shift.

    Example::

        >>> import torch, unshared
        >>> conv = torch.nn.Conv2d(2, 4, 3, dtype=torch.float64)
        >>> x = torch.randn(3, 2, 12, 12, dtype=torch.float64)
        >>> unshared.translation_equivariance_error(conv, x) < 1e-12
        True
        >>> local = unshared.LocallyConnected2d(2, 4, 3, input_size=12, dtype=torch.float64)
        >>> unshared.translation_equivariance_error(local, x) > 0.5
        True
    """
    nd = input.dim() - 2
    kernel = U.ntuple(module.kernel_size, nd, "kernel_size")
    stride = U.ntuple(module.stride, nd, "stride")
    dilation = U.ntuple(module.dilation, nd, "dilation")
    pads = U.normalize_padding(module.padding, kernel, stride, dilation)
    dims = tuple(range(2, nd + 2))
    shifted_input = torch.roll(input, tuple(shift * s for s in stride), dims)
    with torch.no_grad():
        y, y_shifted = module(input), module(shifted_input)
    inside, before = [slice(None)] * 2, [slice(None)] * 2
    for d in range(nd):
        span = dilation[d] * (kernel[d] - 1) + 1
        lo = pads[d][0]
        first = -(-(lo + shift * stride[d]) // stride[d])  # window starts past the wrapped-in part
        last = (input.shape[2 + d] + lo - span) // stride[d]  # window ends before the high border
        if last < first:
            raise ValueError(f"translation_equivariance_error: input spatial size {tuple(input.shape[2:])} "
                             f"leaves no output position away from the borders for shift={shift}")
        inside.append(slice(first, last + 1))
        before.append(slice(first - shift, last + 1 - shift))
    a, b = y_shifted[tuple(inside)], y[tuple(before)]
    scale = b.norm().item()
    return (a - b).norm().item() / scale if scale else math.inf * (a - b).norm().item()
