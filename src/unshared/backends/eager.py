"""The eager fast path: the operations as ``torch.autograd.Function`` s that call the backend
directly, without the custom-operator dispatcher.

A ``torch.library`` custom operator costs tens of microseconds of Python per call (dispatch, the
Dynamo-disabling wrapper, schema defaults, the autograd wrapper), which a small layer notices
(issue 16). When nothing can observe the difference, :func:`applies` says so and :mod:`.ops`
calls :class:`Forward` or :class:`InputGrad` here instead: plain CPU or CUDA tensors (no subclass,
no functorch wrapper, not meta), no dispatch or ``__torch_function__`` mode (``FlopCounterMode``, fake
tensors, proxies), not compiling, not tracing. Both paths run the same checks and the same
backend code (:mod:`.compute`), so they agree bit for bit. Derivatives taken with
``create_graph`` (second derivatives) or under a dispatch mode run as the registered operators,
which are differentiable at every order and seen by the mode.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad

from .._utils import is_kernel_major, memory_format_of
from . import compute
from .checks import Entry

__all__ = ["applies", "Forward", "InputGrad"]

_PLAIN = (Tensor, nn.Parameter)


def applies(first: Tensor, second: Tensor) -> bool:
    """Whether the fast path may compute a call on these tensors now."""
    if torch.compiler.is_compiling():  # first: Dynamo folds it, and traces none of the rest
        return False
    return (type(first) in _PLAIN and type(second) in _PLAIN and (first.is_cpu or first.is_cuda)
            and not torch._C._len_torch_dispatch_stack() and not torch._C._is_torch_function_mode_enabled()
            and not torch._C._are_functorch_transforms_active() and not torch.jit.is_tracing())


def needs_grad(first: Tensor, second: Tensor, third: Tensor | None = None) -> bool:
    """Whether autograd records a call on these tensors (else the operation runs bare)."""
    return torch.is_grad_enabled() and (first.requires_grad or second.requires_grad
                                        or (third is not None and third.requires_grad))


def foldable(bias: Tensor, x: Tensor) -> bool:
    """Whether :class:`Forward` may add ``bias`` to its output in place: a plain tensor of the
    output's dtype and device (else type promotion or broadcasting rules would differ), outside
    forward-mode AD."""
    return (type(bias) in _PLAIN and bias.dtype == x.dtype and bias.device == x.device
            and getattr(forward_ad, "_current_level", -1) < 0)  # the node has no jvp: a dual bias is added after


def _by_operator() -> bool:
    """Whether a derivative must run as the registered operator: with ``create_graph`` (its own
    derivatives are then recorded), or under a dispatch mode (``FlopCounterMode`` around the backward)."""
    return torch.is_grad_enabled() or bool(torch._C._len_torch_dispatch_stack())


def _input_grad(e: Entry, grad_output, weight, backend, channels_last):
    if _by_operator():
        return torch.ops.unshared.input_grad(grad_output, weight, e.encoded, backend, channels_last)
    return compute.input_grad(e, grad_output, weight, backend, channels_last)


def _weight_grad(e: Entry, x, grad_output, backend, kernel_major):
    if _by_operator():
        return torch.ops.unshared.weight_grad(x, grad_output, e.encoded, backend, kernel_major)
    return compute.weight_grad(e, x, grad_output, backend, kernel_major)


def _forward(e: Entry, x, weight, backend):
    if _by_operator():
        return torch.ops.unshared.forward(x, weight, e.encoded, backend)
    return compute.forward(e, x, weight, backend)


class Forward(torch.autograd.Function):
    """``(x, weight, bias or None)`` -> the layer's output, as ``unshared::forward`` plus the bias
    (one node: the bias is added in place, its gradient summed here as autograd would)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, e: Entry, backend: str) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.entry, ctx.backend = e, backend
        y = compute.forward(e, x, weight, backend)
        if bias is not None:
            view = compute.bias_view(bias, y.dim())
            ctx.bias_shapes = (view.shape, bias.shape)
            y.add_(view)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        e, backend = ctx.entry, ctx.backend
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _input_grad(e, grad, weight, backend, memory_format_of(x) != torch.contiguous_format)
        if ctx.needs_input_grad[1]:
            gw = _weight_grad(e, x, grad, backend, is_kernel_major(weight))
        if ctx.needs_input_grad[2]:
            view_shape, shape = ctx.bias_shapes
            gb = grad.sum_to_size(view_shape).view(shape)
        return gx, gw, gb, None, None


class InputGrad(torch.autograd.Function):
    """``(grad_output, weight)`` -> the input gradient, as ``unshared::input_grad`` (the transposed
    layer's forward)."""

    @staticmethod
    def forward(ctx, grad_output: Tensor, weight: Tensor, e: Entry, backend: str, channels_last: bool) -> Tensor:
        ctx.save_for_backward(grad_output, weight)
        ctx.entry, ctx.backend = e, backend
        return compute.input_grad(e, grad_output, weight, backend, channels_last)

    @staticmethod
    def backward(ctx, grad: Tensor):
        # linear in each argument: d/dgy is forward(., w), d/dw is weight_grad(., gy)
        grad_output, weight = ctx.saved_tensors
        e, backend = ctx.entry, ctx.backend
        g_gy = g_w = None
        if ctx.needs_input_grad[0]:
            g_gy = _forward(e, grad, weight, backend)
        if ctx.needs_input_grad[1]:
            g_w = _weight_grad(e, grad, grad_output, backend, is_kernel_major(weight))
        return g_gy, g_w, None, None, None
