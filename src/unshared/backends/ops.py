"""The locally connected operator as three ``torch.library`` custom ops.

``unshared::forward``, ``unshared::input_grad`` and ``unshared::weight_grad`` are the layer and its
two adjoints. The derivatives of each are the other two, so every order of derivative is
available (gradgradcheck). Each op computes with the backend named in its call (``"torch"``,
``"cpu"`` or ``"triton"``) and has a fake implementation, so ``torch.compile(fullgraph=True)`` traces through
it without graph breaks and ``device="meta"`` tensors get shapes without computation.

The geometry travels as a flat ``list[int]`` (:meth:`Geometry.encode`), shared filter banks
included. The backend name ``"auto"`` inside an op means "choose now, with real tensors" (CUDA:
:mod:`.selection` measures once per key); the choice is never made while tracing. Backends made of standard operators (``composite``, ``conv``: their module sets
``STANDARD_OPERATORS``) are called directly and differentiated by autograd.
"""
import torch
from torch import Tensor

from .._utils import Geometry, empty_weight, is_kernel_major, memory_format_of
from . import checks, func, selection
from .registry import BACKENDS

__all__ = ["locally_connected", "locally_connected_transpose"]


def locally_connected(x: Tensor, weight: Tensor, geometry: Geometry, backend: str) -> Tensor:
    """``(N, C, *input_size)`` -> ``(N, O, *output_size)`` without bias; zero padding only."""
    module = BACKENDS.get(backend)  # "auto": chosen inside the operator
    if getattr(module, "STANDARD_OPERATORS", False):
        return module.forward(x, weight, geometry)
    if func.transforms_active():  # torch.func cannot differentiate the operator itself
        return func.Forward.apply(x, weight, geometry.encode(), backend)
    return torch.ops.unshared.forward(x, weight, geometry.encode(), backend)


def locally_connected_transpose(x: Tensor, weight: Tensor, geometry: Geometry, backend: str) -> Tensor:
    """The adjoint of :func:`locally_connected` in its input: ``(N, O, *output_size)`` ->
    ``(N, C, *input_size)`` of ``geometry`` (the transposed layer's forward)."""
    module = BACKENDS.get(backend)
    channels_last = memory_format_of(x) != torch.contiguous_format
    if getattr(module, "STANDARD_OPERATORS", False):
        if not hasattr(module, "input_grad"):
            raise ValueError(f"backend={backend!r} cannot compute a transposed layer")
        return module.input_grad(x, weight, geometry, _input_grad_format(channels_last, x.dim()))
    if func.transforms_active():
        return func.InputGrad.apply(x, weight, geometry.encode(), backend, channels_last)
    return torch.ops.unshared.input_grad(x, weight, geometry.encode(), backend, channels_last)


def _input_grad_format(channels_last: bool, dim: int) -> torch.memory_format:
    if not channels_last or dim not in (4, 5):
        return torch.contiguous_format
    return torch.channels_last if dim == 4 else torch.channels_last_3d


def _run(name: str, stage: str, sample: Tensor, weight: Tensor, g: Geometry, operation: str, *args):
    """``BACKENDS[name].operation(*args)``; with ``"auto"`` the measured (or preferred) backend, and
    when that one fails (a kernel that does not compile or launch) the PyTorch backend, with one
    warning and the choice remembered."""
    if name != "auto":
        module = BACKENDS.get(name)
        if module is None or getattr(module, "STANDARD_OPERATORS", False):
            raise ValueError(f"unshared.{operation}: backend must be 'auto' or one of "
                             f"{tuple(n for n, m in BACKENDS.items() if not getattr(m, 'STANDARD_OPERATORS', False))}"
                             f", got backend={name!r}")
        return getattr(module, operation)(*args)
    chosen = selection.resolve(sample, weight, g, stage)
    try:
        return getattr(BACKENDS[chosen], operation)(*args)
    except Exception as error:
        if chosen == "torch":
            raise
        fallback = selection.failed(sample, weight, g, stage, chosen, error)
        return getattr(BACKENDS[fallback], operation)(*args)


# ----------------------------------------------------------------------------- the ops

@torch.library.custom_op("unshared::forward", mutates_args=())
def _forward(x: Tensor, weight: Tensor, geometry: list[int], backend: str) -> Tensor:
    e = checks.entry(geometry)
    checks.check_forward(e, x, weight)
    g = e.geometry
    if e.empty:  # every patch is padding
        return _empty_forward(x, g).zero_()
    return _run(backend, "forward", x, weight, g, "forward", x, weight, g)


@torch.library.custom_op("unshared::input_grad", mutates_args=())
def _input_grad(grad_output: Tensor, weight: Tensor, geometry: list[int], backend: str,
                channels_last: bool) -> Tensor:
    e = checks.entry(geometry)
    checks.check_input_grad(e, grad_output, weight)
    g = e.geometry
    fmt = _input_grad_format(channels_last, grad_output.dim())
    if e.empty:
        return _empty_input_grad(grad_output, g, channels_last)
    return _run(backend, "backward", grad_output, weight, g, "input_grad", grad_output, weight, g, fmt)


@torch.library.custom_op("unshared::weight_grad", mutates_args=())
def _weight_grad(x: Tensor, grad_output: Tensor, geometry: list[int], backend: str,
                 kernel_major: bool) -> Tensor:
    e = checks.entry(geometry)
    checks.check_weight_grad(e, x, grad_output)
    g = e.geometry
    if e.empty:
        return _empty_weight_grad(x, g, kernel_major).zero_()
    layout = empty_weight(e.weight_shape, g.ndim, kernel_major=kernel_major, device="meta")  # for the choice
    return _run(backend, "backward", grad_output, layout, g, "weight_grad", x, grad_output, g, kernel_major)


# ----------------------------------------------------------------------------- shapes (fake/meta)
# The layouts here are the ones every backend returns: outputs and input gradients in the input's
# memory format, weight gradients kernel-major or channel-major as asked (the weight's layout).
# The fake implementations check their arguments as the real ones do.

def _empty_forward(x, g):
    return torch.empty((x.shape[0], g.out_channels, *g.output_size), dtype=x.dtype, device=x.device,
                       memory_format=memory_format_of(x))


def _empty_input_grad(grad_output, g, channels_last):
    return torch.empty((grad_output.shape[0], g.in_channels, *g.input_size), dtype=grad_output.dtype,
                       device=grad_output.device, memory_format=_input_grad_format(channels_last, grad_output.dim()))


def _empty_weight_grad(x, g, kernel_major):
    shape = (*g.weight_leading, g.out_channels, g.in_channels // g.groups, *g.kernel_size)
    return empty_weight(shape, g.ndim, kernel_major=kernel_major, dtype=x.dtype, device=x.device)


@_forward.register_fake
def _(x, weight, geometry, backend):
    e = checks.entry(geometry)
    checks.check_forward(e, x, weight)
    return _empty_forward(x, e.geometry)


@_input_grad.register_fake
def _(grad_output, weight, geometry, backend, channels_last):
    e = checks.entry(geometry)
    checks.check_input_grad(e, grad_output, weight)
    return _empty_input_grad(grad_output, e.geometry, channels_last)


@_weight_grad.register_fake
def _(x, grad_output, geometry, backend, kernel_major):
    e = checks.entry(geometry)
    checks.check_weight_grad(e, x, grad_output)
    return _empty_weight_grad(x, e.geometry, kernel_major)


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
