"""The three operations as ``torch.autograd.Function`` s that ``torch.func`` transforms support.

PyTorch's custom operators with a registered backward (:mod:`.ops`) do not work under
``torch.func.grad``/``jacrev`` (PyTorch issues 168393, 179652: the generated autograd function has
no ``setup_context``). Under a functorch transform, :func:`.ops.locally_connected` calls these
instead; they call the same custom operators on plain tensors, so every backend computes. Each
operation is bilinear, so its derivatives are the other two (``backward``) and its forward-mode
derivative is the sum of two calls of itself (``jvp``). ``vmap`` folds a batched input into the
batch dimension (one call); a batched weight, or the per-sample weight gradient, is one call per
vmapped sample.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._utils import is_kernel_major, memory_format_of

__all__ = ["Forward", "InputGrad", "WeightGrad", "transforms_active"]


def transforms_active() -> bool:
    """Whether a ``torch.func`` transform (grad, vmap, jvp, ...) is running."""
    return bool(getattr(torch._C, "_are_functorch_transforms_active", lambda: False)())


def _fold(t: Tensor, dim: int) -> Tensor:
    """``(..., B at dim, N, ...)`` -> ``(B * N, ...)``."""
    t = t.movedim(dim, 0)
    return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])


def _per_sample(info, in_dims, args, apply):
    """``apply(*args)`` for each vmapped sample, stacked along dimension 0."""
    outs = []
    for i in range(info.batch_size):
        outs.append(apply(*[a if d is None else a.select(d, i) for a, d in zip(args, in_dims)]))
    return torch.stack(outs), 0


class Forward(torch.autograd.Function):
    """``(x, weight)`` -> the layer's output (``unshared::forward``)."""

    @staticmethod
    def forward(x, weight, geometry, backend):
        return torch.ops.unshared.forward(x, weight, geometry, backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, geometry, backend = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)
        ctx.geometry, ctx.backend = geometry, backend
        ctx.channels_last = memory_format_of(x) != torch.contiguous_format
        ctx.kernel_major = is_kernel_major(weight)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        gx = InputGrad.apply(grad, weight, ctx.geometry, ctx.backend, ctx.channels_last) \
            if ctx.needs_input_grad[0] else None
        gw = WeightGrad.apply(x, grad, ctx.geometry, ctx.backend, ctx.kernel_major) \
            if ctx.needs_input_grad[1] else None
        return gx, gw, None, None

    @staticmethod
    def jvp(ctx, x_t, w_t, *_):
        x, weight = ctx.saved_tensors
        terms = [Forward.apply(x_t, weight, ctx.geometry, ctx.backend) if x_t is not None else None,
                 Forward.apply(x, w_t, ctx.geometry, ctx.backend) if w_t is not None else None]
        return sum(t for t in terms if t is not None)

    @staticmethod
    def vmap(info, in_dims, x, weight, geometry, backend):
        x_dim, w_dim = in_dims[:2]
        if w_dim is None:  # the vmapped samples join the batch: one call
            y = Forward.apply(_fold(x, x_dim), weight, geometry, backend)
            return y.unflatten(0, (info.batch_size, -1)), 0
        return _per_sample(info, (x_dim, w_dim), (x, weight), lambda a, b: Forward.apply(a, b, geometry, backend))


class InputGrad(torch.autograd.Function):
    """``(grad_output, weight)`` -> the input gradient (``unshared::input_grad``), also the
    transposed layer's forward."""

    @staticmethod
    def forward(grad_output, weight, geometry, backend, channels_last):
        return torch.ops.unshared.input_grad(grad_output, weight, geometry, backend, channels_last)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_output, weight, geometry, backend, channels_last = inputs
        ctx.save_for_backward(grad_output, weight)
        ctx.save_for_forward(grad_output, weight)
        ctx.geometry, ctx.backend, ctx.channels_last = geometry, backend, channels_last
        ctx.kernel_major = is_kernel_major(weight)

    @staticmethod
    def backward(ctx, grad):
        grad_output, weight = ctx.saved_tensors
        g_gy = Forward.apply(grad, weight, ctx.geometry, ctx.backend) if ctx.needs_input_grad[0] else None
        g_w = WeightGrad.apply(grad, grad_output, ctx.geometry, ctx.backend, ctx.kernel_major) \
            if ctx.needs_input_grad[1] else None
        return g_gy, g_w, None, None, None

    @staticmethod
    def jvp(ctx, gy_t, w_t, *_):
        grad_output, weight = ctx.saved_tensors
        args = (ctx.geometry, ctx.backend, ctx.channels_last)
        terms = [InputGrad.apply(gy_t, weight, *args) if gy_t is not None else None,
                 InputGrad.apply(grad_output, w_t, *args) if w_t is not None else None]
        return sum(t for t in terms if t is not None)

    @staticmethod
    def vmap(info, in_dims, grad_output, weight, geometry, backend, channels_last):
        gy_dim, w_dim = in_dims[:2]
        if w_dim is None:
            gx = InputGrad.apply(_fold(grad_output, gy_dim), weight, geometry, backend, channels_last)
            return gx.unflatten(0, (info.batch_size, -1)), 0
        return _per_sample(info, (gy_dim, w_dim), (grad_output, weight),
                           lambda a, b: InputGrad.apply(a, b, geometry, backend, channels_last))


class WeightGrad(torch.autograd.Function):
    """``(x, grad_output)`` -> the weight gradient (``unshared::weight_grad``)."""

    @staticmethod
    def forward(x, grad_output, geometry, backend, kernel_major):
        return torch.ops.unshared.weight_grad(x, grad_output, geometry, backend, kernel_major)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, grad_output, geometry, backend, kernel_major = inputs
        ctx.save_for_backward(x, grad_output)
        ctx.save_for_forward(x, grad_output)
        ctx.geometry, ctx.backend, ctx.kernel_major = geometry, backend, kernel_major
        ctx.channels_last = memory_format_of(x) != torch.contiguous_format

    @staticmethod
    def backward(ctx, grad):
        x, grad_output = ctx.saved_tensors
        g_x = InputGrad.apply(grad_output, grad, ctx.geometry, ctx.backend, ctx.channels_last) \
            if ctx.needs_input_grad[0] else None
        g_gy = Forward.apply(x, grad, ctx.geometry, ctx.backend) if ctx.needs_input_grad[1] else None
        return g_x, g_gy, None, None, None

    @staticmethod
    def jvp(ctx, x_t, gy_t, *_):
        x, grad_output = ctx.saved_tensors
        args = (ctx.geometry, ctx.backend, ctx.kernel_major)
        terms = [WeightGrad.apply(x_t, grad_output, *args) if x_t is not None else None,
                 WeightGrad.apply(x, gy_t, *args) if gy_t is not None else None]
        return sum(t for t in terms if t is not None)

    @staticmethod
    def vmap(info, in_dims, x, grad_output, geometry, backend, kernel_major):
        # the weight gradient sums over the batch: vmapped samples keep their own sums
        return _per_sample(info, in_dims[:2], (x, grad_output),
                           lambda a, b: WeightGrad.apply(a, b, geometry, backend, kernel_major))
