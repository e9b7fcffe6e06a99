"""FLOP counts of the three operators, for ``torch.utils.flop_counter.FlopCounterMode`` (and the
tools built on it: Lightning's model summary, ``torch.utils.benchmark``'s FLOP rates).

Each of ``unshared::forward``, ``unshared::input_grad`` and ``unshared::weight_grad`` is one
multiply-add per output position, output channel, input channel of its group and kernel offset,
for every sample: ``2 * N * prod(output_size) * C_out * (C_in / groups) * prod(kernel_size)``
FLOPs, as PyTorch counts a convolution with the same shapes (a transposed layer: the convolution
it is the adjoint of). Shared filter banks change where the weights come from, not the work, so
a forward is counted exactly and a training step (forward and both gradients) as three times it.

``torch.utils.flop_counter`` imports Triton when it is installed (hundreds of milliseconds), so
the formulas are registered when that module is first imported, by whoever imports it, and not
by ``import unshared`` (:func:`register_when_imported`).
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys

import torch

from .._utils import Geometry
from . import ops  # noqa: F401  (defines the operators registered here)

__all__ = ["flops", "register_when_imported"]

FLOP_COUNTER = "torch.utils.flop_counter"


def flops(batch: int, geometry) -> int:
    """FLOPs of one of the three operations on ``batch`` samples of ``geometry`` (a
    :class:`~unshared._utils.Geometry` or its :meth:`~unshared._utils.Geometry.encode`\\ d list)."""
    g = geometry if isinstance(geometry, Geometry) else Geometry.decode(list(geometry))
    return 2 * batch * g.positions * g.out_channels * (g.in_channels // g.groups) * g.kernel_volume


# each formula gets the shapes of the operator's tensors and its other arguments as they are
def forward_flops(x_shape, weight_shape, geometry, *args, out_shape=None, **kwargs) -> int:
    return flops(x_shape[0], geometry)


def input_grad_flops(grad_output_shape, weight_shape, geometry, *args, out_shape=None, **kwargs) -> int:
    return flops(grad_output_shape[0], geometry)


def weight_grad_flops(x_shape, grad_output_shape, geometry, *args, out_shape=None, **kwargs) -> int:
    return flops(x_shape[0], geometry)


def register(flop_counter) -> None:
    """Register the three formulas in ``flop_counter`` (the module), once."""
    formulas = {torch.ops.unshared.forward: forward_flops, torch.ops.unshared.input_grad: input_grad_flops,
                torch.ops.unshared.weight_grad: weight_grad_flops}
    for op, formula in formulas.items():
        if op not in flop_counter.flop_registry:
            flop_counter.register_flop_formula(op)(formula)


class _RegisteringLoader(importlib.abc.Loader):
    """Loads ``torch.utils.flop_counter`` with its own loader, then registers the formulas in it."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        register(module)

    def __getattr__(self, name):  # get_source, get_filename, ... as the wrapped loader has them
        return getattr(self.loader, name)


class _FlopCounterFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != FLOP_COUNTER:
            return None
        sys.meta_path.remove(self)  # found once, by the finders that would have found it anyway
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


def register_when_imported() -> None:
    """Register the formulas now if ``torch.utils.flop_counter`` is loaded, else when it is."""
    if FLOP_COUNTER in sys.modules:
        register(sys.modules[FLOP_COUNTER])
    elif not any(isinstance(finder, _FlopCounterFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _FlopCounterFinder())
