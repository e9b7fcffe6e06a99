"""The one derivative table of the three operations, and every autograd entry derived from it.

The layer is ``forward(x, w)``; its adjoints are ``input_grad(gy, w)`` (also the transposed
layer's forward) and ``weight_grad(x, gy)``. Each is bilinear in its two tensors, so:

- its vector-Jacobian products are the other two operations (:data:`TABLE`, the only place they
  are written);
- its Jacobian-vector product is ``op(ta, b) + op(a, tb)``;
- under ``vmap``, a batched first operand with an unbatched second one joins the batch dimension
  (one call; ``weight_grad``, which sums over the batch, and batched weights run per sample).

From it come the ``torch.autograd.Function`` s :data:`FUNCTIONS` (reverse mode at every order,
forward mode, ``torch.func`` and batched gradients) and the custom operators' backward
(:func:`register`). Every call goes through :func:`call`, which picks one of three routes:

- plain tensors and nothing observing: the backend's code directly (:mod:`.compute`), inside a
  Function when autograd records the call (gradients, or forward-mode AD);
- a ``torch.func`` transform or forward-mode AD on wrapped or dual tensors: the Function, whose
  ``vmap``/``jvp`` rules reduce the call to plain tensors;
- anything else (compiling, exporting, a dispatch mode such as ``FlopCounterMode``, fake or meta
  tensors, subclasses, the batched tensors of ``is_grads_batched`` and ``gradcheck``'s batched
  check, whose vmap runs the operator once per sample): the registered operator
  ``torch.ops.unshared.<op>``, which they can see.

So a backend only ever computes on plain tensors.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad

from .._cache import CACHE, remember
from .._utils import is_kernel_major
from . import compute
from .compute import Plan
from .registry import BACKENDS

__all__ = ["TABLE", "FUNCTIONS", "call", "forward", "planned_forward", "applies", "register"]

_PLAIN = (Tensor, nn.Parameter)
#: The backends whose ``forward`` adds a bias (``bias=``) as it stores the output and whose
#: ``weight_grad`` returns the bias gradient beside the weight's (``bias_grad=True``).
_FUSES_BIAS = frozenset(name for name, module in BACKENDS.items() if getattr(module, "FUSES_BIAS", False))
_is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
_is_legacy_batched = torch._C._functorch.is_legacy_batchedtensor  # gradcheck's and is_grads_batched's vmap

#: Per operation ``op(a, b)``, the vector-Jacobian products of a cotangent ``g``: for ``a``, then for
#: ``b``, as ``(operation, its first operand, its second, its flag)``. Operands are named ``"a"``,
#: ``"b"`` and ``"g"``; flags are the input gradient's ``channels_last`` (of the tensor that was
#: ``x``) and the weight gradient's ``kernel_major`` (of the tensor that was the weight).
TABLE = {
    "forward":     (("input_grad", "g", "b", "a_channels_last"), ("weight_grad", "a", "g", "b_kernel_major")),
    "input_grad":  (("forward", "g", "b", None), ("weight_grad", "g", "a", "b_kernel_major")),
    "weight_grad": (("input_grad", "b", "g", "a_channels_last"), ("forward", "a", "g", None)),
}

def _flags(op: str, a: Tensor, b: Tensor) -> dict:
    """The flags that ``op``'s rows of :data:`TABLE` name, from its operands (a weight's layout is
    remembered per shape and strides)."""
    flags = {None: None}
    for _, _, _, flag in TABLE[op]:
        if flag == "a_channels_last":
            flags[flag] = (a.dim() in (4, 5) and not a.is_contiguous()
                           and a.is_contiguous(memory_format=_CHANNELS_LAST[a.dim()]))
        elif flag == "b_kernel_major":
            key = ("kernel major", b.shape, b.stride())
            found = CACHE.get(key)
            flags[flag] = found if found is not None else remember(key, is_kernel_major(b))
    return flags


_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def _forward_ad_active() -> bool:
    return getattr(forward_ad, "_current_level", -1) >= 0


def applies(a: Tensor, b: Tensor, bias: Tensor | None = None) -> bool:
    """Whether the backend may compute a call on these tensors directly: plain CPU or CUDA tensors
    (no subclass, no functorch wrapper, not meta), no dispatch or ``__torch_function__`` mode
    (``FlopCounterMode``, fake tensors, proxies), not compiling, not tracing; and ``bias``, if
    any, plain too and of ``a``'s dtype and device (so that adding it inside the call promotes and
    broadcasts as ``y + bias`` would)."""
    if torch.compiler.is_compiling():  # first: Dynamo folds it, and traces none of the rest
        return False
    return (type(a) in _PLAIN and type(b) in _PLAIN and (a.is_cpu or a.is_cuda)
            and not _is_wrapped(a) and not _is_wrapped(b) and not _is_legacy_batched(a)
            and not _is_legacy_batched(b) and not torch._C._len_torch_dispatch_stack()
            and not torch._C._is_torch_function_mode_enabled() and not torch.jit.is_tracing()
            and (bias is None or (type(bias) in _PLAIN and bias.dtype == a.dtype and bias.device == a.device
                                  and not _is_wrapped(bias) and not _is_legacy_batched(bias))))


def _operator(op: str, a: Tensor, b: Tensor, plan: Plan, flag) -> Tensor:
    fn = getattr(torch.ops.unshared, op)
    encoded = plan.entry.encoded
    return fn(a, b, encoded, plan.backend) if flag is None else fn(a, b, encoded, plan.backend, flag)


def _recorded(a: Tensor, b: Tensor, bias: Tensor | None = None) -> bool:
    """Whether autograd records a call on these operands: gradients, or forward-mode AD."""
    return (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad
                                         or (bias is not None and bias.requires_grad))) or _forward_ad_active()


def _unrecorded(op: str, a: Tensor, b: Tensor, plan: Plan, flag) -> Tensor:
    """``op(a, b)`` where autograd records nothing at this level (inside a Function's forward)."""
    if applies(a, b):
        return plan.run(op, a, b, flag)
    if torch._C._are_functorch_transforms_active():  # wrapped by an outer transform: its level's Function
        return FUNCTIONS[op].apply(a, b, plan, flag, None, False)
    return _operator(op, a, b, plan, flag)


def call(op: str, a: Tensor, b: Tensor, plan: Plan, flag=None) -> Tensor:
    """``op(a, b)`` (``flag``: ``input_grad``'s ``channels_last``, ``weight_grad``'s
    ``kernel_major``) by the route the module docstring describes."""
    if applies(a, b):
        if _recorded(a, b):
            return FUNCTIONS[op].apply(a, b, plan, flag, None, True)
        return plan.run(op, a, b, flag)
    if torch._C._are_functorch_transforms_active() or _forward_ad_active():
        return FUNCTIONS[op].apply(a, b, plan, flag, None, False)
    return _operator(op, a, b, plan, flag)


def forward(x: Tensor, weight: Tensor, bias: Tensor | None, plan: Plan) -> Tensor:
    """The layer: ``forward(x, weight)`` plus ``bias`` (``(O,)`` or ``(O, *output_size)``), added
    inside the call's one autograd node where it can be (a plain bias of the output's dtype and
    device: else type promotion or broadcasting rules would differ), else after it."""
    if bias is None or not applies(x, weight, bias):
        y = call("forward", x, weight, plan)
        return y if bias is None else y + compute.bias_view(bias, y.dim())
    return planned_forward(x, weight, bias, plan)


def planned_forward(x: Tensor, weight: Tensor, bias: Tensor | None, plan: Plan) -> Tensor:
    """:func:`forward` where the caller found that ``applies(x, weight, bias)``: one Function where
    autograd records, else the backend."""
    if (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                     or (bias is not None and bias.requires_grad))) or _forward_ad_active():
        return FUNCTIONS["forward"].apply(x, weight, plan, None, bias, True)
    if bias is not None and plan.direct is not None and plan.backend in _FUSES_BIAS:
        return plan.direct["forward"](x, weight, plan.geometry, bias=bias)  # added as the output is stored
    y = plan.run("forward", x, weight)
    return y if bias is None else y.add_(bias if bias.dim() > 1 else bias.view(-1, *(1,) * (x.dim() - 2)))


# ----------------------------------------------------------------------------- the Functions

def _vjps(op: str, ctx, a: Tensor, b: Tensor, grad: Tensor, bias_grad: bool = False) -> list:
    """The vector-Jacobian products of ``op`` for ``a`` and ``b`` that ``ctx`` needs, by :data:`TABLE`:
    computed by the plan directly when nothing records or wraps them, else through :func:`call`.
    ``bias_grad`` (the forward of a backend that fuses the bias): a third item, the per-position
    bias gradient that the weight gradient's call computed with it, or ``None`` where it did not run
    directly."""
    operands, flags = {"a": a, "b": b, "g": grad}, _flags(op, a, b)
    plan, needed, found = ctx.plan, ctx.needs_input_grad, [None, None, None]
    direct = (ctx.direct and type(grad) in _PLAIN and not torch.is_grad_enabled() and not _is_wrapped(grad)
              and not _is_legacy_batched(grad) and not torch._C._len_torch_dispatch_stack()
              and not torch._C._is_torch_function_mode_enabled()
              and getattr(forward_ad, "_current_level", -1) < 0)  # nothing records or observes the products
    functions = plan.direct if direct else None
    for i in (0, 1):
        if not needed[i]:
            continue
        name, first, second, flag = TABLE[op][i]
        first, second, flag = operands[first], operands[second], flags[flag]
        if functions is None:
            found[i] = call(name, first, second, plan, flag) if not direct else plan.run(name, first, second, flag)
        elif name == "forward":
            found[i] = functions[name](first, second, plan.geometry)
        elif bias_grad and name == "weight_grad":
            found[i], found[2] = functions[name](first, second, plan.geometry, flag, bias_grad=True)
        else:
            found[i] = functions[name](first, second, plan.geometry,
                                       plan.formats[flag] if name == "input_grad" else flag)
    return found if bias_grad else found[:2]


def _per_sample(info, dims, tensors, apply: Callable) -> tuple[Tensor, int]:
    """``apply(*tensors)`` for each vmapped sample, stacked along dimension 0."""
    return torch.stack([apply(*[t if d is None else t.select(d, i) for t, d in zip(tensors, dims)])
                        for i in range(info.batch_size)]), 0


def _fold(t: Tensor, dim: int) -> Tensor:
    """``(..., B at dim, N, ...)`` -> ``(B * N, ...)``."""
    t = t.movedim(dim, 0)
    return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])


def _function(op: str) -> type:
    """The ``torch.autograd.Function`` of ``op``, ``apply(a, b, plan, flag, bias, direct)``
    (``bias``: the forward's, or ``None``; ``direct``: the caller found that :func:`applies`),
    derived from :data:`TABLE`."""

    def forward(a, b, plan, flag, bias, direct):
        if direct and plan.direct is not None and op == "forward":  # the common case, without a call
            if bias is not None and plan.backend in _FUSES_BIAS:  # added as the output is stored
                return plan.direct["forward"](a, b, plan.geometry, bias=bias)
            y = plan.direct["forward"](a, b, plan.geometry)
        else:
            y = plan.run(op, a, b, flag) if direct else _unrecorded(op, a, b, plan, flag)
        if bias is None:
            return y
        return y.add_(bias if bias.dim() > 1 else bias.view(-1, *(1,) * (y.dim() - 2)))

    def setup_context(ctx, inputs, output):
        a, b, plan, flag, bias, direct = inputs
        ctx.save_for_backward(a, b)
        ctx.save_for_forward(a, b)
        ctx.plan, ctx.flag, ctx.direct = plan, flag, direct
        ctx.bias_shape, ctx.output_shape = None if bias is None else bias.shape, output.shape

    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        shape = ctx.bias_shape if ctx.needs_input_grad[4] else None
        # a per-position bias's gradient comes from the backend's weight-gradient call where it
        # computes both; else, and for a shared bias, the sum here (per-position sums summed again
        # would round otherwise than the operators' sum, which the eager path matches bit for bit)
        fused = (shape is not None and len(shape) > 1 and op == "forward" and ctx.needs_input_grad[1]
                 and ctx.plan.backend in _FUSES_BIAS)
        found = _vjps(op, ctx, a, b, grad, fused)
        g_a, g_b, g_bias = found[0], found[1], found[2] if fused else None
        if shape is not None and g_bias is None:
            g_bias = grad.sum_to_size((shape[0], *(1,) * (grad.dim() - 2)) if len(shape) == 1 else shape).view(shape)
        return g_a, g_b, None, None, g_bias, None

    def jvp(ctx, ta, tb, _plan, _flag, t_bias, _direct):
        a, b = ctx.saved_tensors
        terms = [call(op, ta, b, ctx.plan, ctx.flag) if ta is not None else None,
                 call(op, a, tb, ctx.plan, ctx.flag) if tb is not None else None]
        if t_bias is not None:
            terms.append(compute.bias_view(t_bias, len(ctx.output_shape)).expand(ctx.output_shape))
        terms = [t for t in terms if t is not None]
        return sum(terms[1:], terms[0])

    def vmap(info, in_dims, a, b, plan, flag, bias, direct):
        a_dim, b_dim, bias_dim = in_dims[0], in_dims[1], in_dims[4]
        if op != "weight_grad" and a_dim is not None and b_dim is None and bias_dim is None:
            y = FUNCTIONS[op].apply(_fold(a, a_dim), b, plan, flag, bias, False)
            return y.unflatten(0, (info.batch_size, -1)), 0
        return _per_sample(info, (a_dim, b_dim, bias_dim), (a, b, bias),
                           lambda a_i, b_i, bias_i: FUNCTIONS[op].apply(a_i, b_i, plan, flag, bias_i, False))

    name = "".join(part.capitalize() for part in op.split("_"))
    return type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward), "setup_context": staticmethod(setup_context),
        "backward": staticmethod(backward), "jvp": staticmethod(jvp), "vmap": staticmethod(vmap),
        "__doc__": f"``unshared::{op}`` as an autograd Function, derived from the derivative table."})


FUNCTIONS = {op: _function(op) for op in TABLE}


# ----------------------------------------------------------------------------- the operators

def register(operators: dict) -> None:
    """The backward of each registered custom operator (``operators[op]``, taking ``(a, b,
    geometry list, backend[, flag])``), derived from :data:`TABLE`."""
    for op, operator in operators.items():
        def setup_context(ctx, inputs, output, op=op):
            a, b, encoded, backend = inputs[:4]
            ctx.save_for_backward(a, b)
            ctx.plan, ctx.direct = compute.plan_of(encoded, backend), False

        def backward(ctx, grad, op=op):
            a, b = ctx.saved_tensors
            return (*_vjps(op, ctx, a, b, grad), *(None,) * (len(ctx.needs_input_grad) - 2))

        operator.register_autograd(backward, setup_context=setup_context)
