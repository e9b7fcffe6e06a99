"""FLOP counts of the three operators, for ``torch.utils.flop_counter.FlopCounterMode`` (and the
tools built on it: Lightning's model summary, ``torch.utils.benchmark``'s FLOP rates).

Each of ``unshared::forward``, ``unshared::input_grad`` and ``unshared::weight_grad`` is one
multiply-add per output position, output channel, input channel of its group and kernel offset,
for every sample: ``2 * N * prod(output_size) * C_out * (C_in / groups) * prod(kernel_size)``
FLOPs, as PyTorch counts a convolution with the same shapes (a transposed layer: the convolution
it is the adjoint of). Shared filter banks change where the weights come from, not the work, so
a forward is counted exactly and a training step (forward and both gradients) as three times it.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula

from .._utils import Geometry
from . import ops  # noqa: F401  (defines the operators registered here)

__all__ = ["flops"]


def flops(batch: int, geometry) -> int:
    """FLOPs of one of the three operations on ``batch`` samples of ``geometry`` (a
    :class:`~unshared._utils.Geometry` or its :meth:`~unshared._utils.Geometry.encode`\\ d list)."""
    g = geometry if isinstance(geometry, Geometry) else Geometry.decode(list(geometry))
    return 2 * batch * g.positions * g.out_channels * (g.in_channels // g.groups) * g.kernel_volume


# each formula gets the shapes of the operator's tensors and its other arguments as they are
@register_flop_formula(torch.ops.unshared.forward)
def _forward_flops(x_shape, weight_shape, geometry, *args, out_shape=None, **kwargs) -> int:
    return flops(x_shape[0], geometry)


@register_flop_formula(torch.ops.unshared.input_grad)
def _input_grad_flops(grad_output_shape, weight_shape, geometry, *args, out_shape=None, **kwargs) -> int:
    return flops(grad_output_shape[0], geometry)


@register_flop_formula(torch.ops.unshared.weight_grad)
def _weight_grad_flops(x_shape, grad_output_shape, geometry, *args, out_shape=None, **kwargs) -> int:
    return flops(x_shape[0], geometry)
