"""The locally connected operator as three ``torch.library`` custom ops.

``unshared::forward``, ``unshared::input_grad`` and ``unshared::weight_grad`` are the layer and its
two adjoints. The derivatives of each are the other two, so every order of derivative is
available (gradgradcheck). Each op computes with the backend named in its call (``"torch"``,
``"cpu"`` or ``"triton"``) and has a fake implementation, so ``torch.compile(fullgraph=True)`` traces through
it without graph breaks and ``device="meta"`` tensors get shapes without computation.

The geometry travels as a flat ``list[int]`` (:meth:`Geometry.encode`), shared filter banks
included. The backend name ``"auto"`` inside an op means "choose now, with real tensors" (CUDA:
:mod:`.selection` measures once per key); the choice is never made while tracing. Backends made of standard operators (``composite``, ``conv``: their module sets
``STANDARD_OPERATORS``) are called directly and differentiated by autograd. What the ops compute
is :mod:`.compute`; eager calls that nothing observes (plain tensors, no mode, no tracer) skip
the dispatcher and call it through :mod:`.eager`, with the same checks and results.
"""
import torch
from torch import Tensor

from .._utils import Geometry, is_kernel_major, memory_format_of
from . import checks, compute, eager, func
from .registry import BACKENDS

__all__ = ["locally_connected", "locally_connected_transpose"]


def _with_bias(y: Tensor, bias: Tensor | None) -> Tensor:
    return y if bias is None else y + compute.bias_view(bias, y.dim())


def locally_connected(x: Tensor, weight: Tensor, geometry: Geometry, backend: str,
                      entry: checks.Entry | None = None, bias: Tensor | None = None) -> Tensor:
    """``(N, C, *input_size)`` -> ``(N, O, *output_size)``, plus ``bias`` (``(O,)`` or
    ``(O, *output_size)``) when given; zero padding only. ``entry``: ``geometry``'s
    :class:`~.checks.Entry`, when the caller keeps it."""
    module = BACKENDS.get(backend)  # "auto": chosen inside the operator
    if getattr(module, "STANDARD_OPERATORS", False):
        return _with_bias(module.forward(x, weight, geometry), bias)
    if eager.applies(x, weight):
        e = entry or checks.entry_of(geometry)
        folded = bias if bias is None or eager.foldable(bias, x) else None  # added inside the call
        if eager.needs_grad(x, weight, folded):
            y = eager.Forward.apply(x, weight, folded, e, backend)
        else:
            y = compute.forward(e, x, weight, backend)
            if folded is not None:
                y.add_(compute.bias_view(folded, y.dim()))
        return y if folded is not None else _with_bias(y, bias)
    if func.transforms_active():  # torch.func cannot differentiate the operator itself
        return _with_bias(func.Forward.apply(x, weight, geometry.encode(), backend), bias)
    return _with_bias(torch.ops.unshared.forward(x, weight, geometry.encode(), backend), bias)


def locally_connected_transpose(x: Tensor, weight: Tensor, geometry: Geometry, backend: str,
                                entry: checks.Entry | None = None, bias: Tensor | None = None) -> Tensor:
    """The adjoint of :func:`locally_connected` in its input: ``(N, O, *output_size)`` ->
    ``(N, C, *input_size)`` of ``geometry`` (the transposed layer's forward), plus ``bias``
    (``(C,)`` or ``(C, *input_size)``) when given."""
    return _with_bias(_transpose(x, weight, geometry, backend, entry), bias)


def _transpose(x: Tensor, weight: Tensor, geometry: Geometry, backend: str, entry: checks.Entry | None) -> Tensor:
    module = BACKENDS.get(backend)
    channels_last = memory_format_of(x) != torch.contiguous_format
    if getattr(module, "STANDARD_OPERATORS", False):
        if not hasattr(module, "input_grad"):
            raise ValueError(f"backend={backend!r} cannot compute a transposed layer")
        return module.input_grad(x, weight, geometry, compute.input_grad_format(channels_last, x.dim()))
    if eager.applies(x, weight):
        e = entry or checks.entry_of(geometry)
        if eager.needs_grad(x, weight):
            return eager.InputGrad.apply(x, weight, e, backend, channels_last)
        return compute.input_grad(e, x, weight, backend, channels_last)
    if func.transforms_active():
        return func.InputGrad.apply(x, weight, geometry.encode(), backend, channels_last)
    return torch.ops.unshared.input_grad(x, weight, geometry.encode(), backend, channels_last)


# ----------------------------------------------------------------------------- the ops

@torch.library.custom_op("unshared::forward", mutates_args=())
def _forward(x: Tensor, weight: Tensor, geometry: list[int], backend: str) -> Tensor:
    return compute.forward(checks.entry(geometry), x, weight, backend)


@torch.library.custom_op("unshared::input_grad", mutates_args=())
def _input_grad(grad_output: Tensor, weight: Tensor, geometry: list[int], backend: str,
                channels_last: bool) -> Tensor:
    return compute.input_grad(checks.entry(geometry), grad_output, weight, backend, channels_last)


@torch.library.custom_op("unshared::weight_grad", mutates_args=())
def _weight_grad(x: Tensor, grad_output: Tensor, geometry: list[int], backend: str,
                 kernel_major: bool) -> Tensor:
    return compute.weight_grad(checks.entry(geometry), x, grad_output, backend, kernel_major)


# ----------------------------------------------------------------------------- shapes (fake/meta)
# The fake implementations check their arguments as the real ones do.

@_forward.register_fake
def _(x, weight, geometry, backend):
    e = checks.entry(geometry)
    checks.check_forward(e, x, weight)
    return compute.empty_forward(x, e.geometry)


@_input_grad.register_fake
def _(grad_output, weight, geometry, backend, channels_last):
    e = checks.entry(geometry)
    checks.check_input_grad(e, grad_output, weight)
    return compute.empty_input_grad(grad_output, e.geometry, channels_last)


@_weight_grad.register_fake
def _(x, grad_output, geometry, backend, kernel_major):
    e = checks.entry(geometry)
    checks.check_weight_grad(e, x, grad_output)
    return compute.empty_weight_grad(x, e.geometry, kernel_major)


# ----------------------------------------------------------------------------- derivatives

def _save(ctx, first: Tensor, second: Tensor, geometry, backend) -> None:
    ctx.save_for_backward(first, second)
    ctx.geometry, ctx.backend = geometry, backend


def _forward_setup(ctx, inputs, output):
    x, weight, geometry, backend = inputs
    _save(ctx, x, weight, geometry, backend)
    ctx.channels_last = memory_format_of(x) != torch.contiguous_format


def _forward_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    gx = gw = None
    if ctx.needs_input_grad[0]:
        gx = _input_grad(grad, weight, ctx.geometry, ctx.backend, ctx.channels_last)
    if ctx.needs_input_grad[1]:
        gw = _weight_grad(x, grad, ctx.geometry, ctx.backend, is_kernel_major(weight))
    return gx, gw, None, None


def _input_grad_setup(ctx, inputs, output):
    grad_output, weight, geometry, backend, channels_last = inputs
    _save(ctx, grad_output, weight, geometry, backend)


def _input_grad_backward(ctx, grad):
    # input_grad(gy, w) is linear in each argument: d/dgy is forward(., w), d/dw is weight_grad(., gy)
    grad_output, weight = ctx.saved_tensors
    g_gy = g_w = None
    if ctx.needs_input_grad[0]:
        g_gy = _forward(grad, weight, ctx.geometry, ctx.backend)
    if ctx.needs_input_grad[1]:
        g_w = _weight_grad(grad, grad_output, ctx.geometry, ctx.backend, is_kernel_major(weight))
    return g_gy, g_w, None, None, None


def _weight_grad_setup(ctx, inputs, output):
    x, grad_output, geometry, backend, kernel_major = inputs
    _save(ctx, x, grad_output, geometry, backend)
    ctx.channels_last = memory_format_of(x) != torch.contiguous_format


def _weight_grad_backward(ctx, grad):
    x, grad_output = ctx.saved_tensors
    g_x = g_gy = None
    if ctx.needs_input_grad[0]:
        g_x = _input_grad(grad_output, grad, ctx.geometry, ctx.backend, ctx.channels_last)
    if ctx.needs_input_grad[1]:
        g_gy = _forward(x, grad, ctx.geometry, ctx.backend)
    return g_x, g_gy, None, None, None


_forward.register_autograd(_forward_backward, setup_context=_forward_setup)
_input_grad.register_autograd(_input_grad_backward, setup_context=_input_grad_setup)
_weight_grad.register_autograd(_weight_grad_backward, setup_context=_weight_grad_setup)
