"""The sparse layer's derivative table, and every autograd entry derived from it.

As for the locally connected layer (:mod:`unshared.backends.derivatives`), the layer is
``forward(x, w)`` and its adjoints are ``input_grad(gy, w)`` and ``weight_grad(x, gy)``, each
bilinear, so :data:`TABLE` (the vector-Jacobian products, written once) gives reverse mode at every
order, the Jacobian-vector product is ``op(ta, b) + op(a, tb)``, and under ``vmap`` a batched first
operand joins the batch dimension. From it come the ``torch.autograd.Function`` s
:data:`FUNCTIONS` (backward, jvp, vmap) and the backward of the registered operators
``torch.ops.unshared.sparse_forward`` / ``sparse_input_grad`` / ``sparse_weight_grad``.

:func:`call` routes as :func:`unshared.backends.derivatives.call` does: plain tensors and nothing
observing -> the kernels (inside a Function when autograd records); ``torch.func`` transforms or
forward-mode AD -> the Function; anything else (compiling, exporting, fake tensors, dispatch modes,
gradcheck's batched tensors) -> the registered operator, which tracers see and whose fake
implementation gives shapes. :func:`decompositions` turns the operators into standard ones.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import forward_ad

from ..backends import ops
from ..backends.derivatives import applies
from . import kernels

__all__ = ["FUNCTIONS", "OPERATORS", "TABLE", "call", "decompositions"]

#: Per operation ``op(a, b)``, the vector-Jacobian products of a cotangent ``g``: for ``a``, then
#: for ``b``, as ``(operation, its first operand, its second)``.
TABLE = {
    "forward":     (("input_grad", "g", "b"), ("weight_grad", "a", "g")),
    "input_grad":  (("forward", "g", "b"), ("weight_grad", "g", "a")),
    "weight_grad": (("input_grad", "b", "g"), ("forward", "a", "g")),
}
_COMPUTE = {"forward": kernels.forward, "input_grad": kernels.input_grad, "weight_grad": kernels.weight_grad}
_is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


def _forward_ad_active() -> bool:
    return getattr(forward_ad, "_current_level", -1) >= 0


def _transforming() -> bool:
    return torch._C._are_functorch_transforms_active() or _forward_ad_active()


def _recorded(a: Tensor, b: Tensor) -> bool:
    return (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)) or _forward_ad_active()


def _operator(op: str, a, b, pairs, sizes, backend) -> Tensor:
    return getattr(torch.ops.unshared, f"sparse_{op}")(a, b, pairs, sizes[0], sizes[1], backend)


def call(op: str, a: Tensor, b: Tensor, pairs: Tensor, sizes: tuple[int, int], backend: str = "auto") -> Tensor:
    """``op(a, b)`` on checked ``pairs`` with ``sizes = (in_features, out_features)``, by the route
    the module docstring describes."""
    if applies(a, b):
        if _recorded(a, b):
            return FUNCTIONS[op].apply(a, b, pairs, sizes, backend, True)
        return _COMPUTE[op](a, b, pairs, *sizes, backend)
    if _transforming():
        return FUNCTIONS[op].apply(a, b, pairs, sizes, backend, False)
    return _operator(op, a, b, pairs, sizes, backend)


def _vjps(op: str, needs, a, b, grad, pairs, sizes, backend) -> list:
    operands = {"a": a, "b": b, "g": grad}
    return [call(name, operands[first], operands[second], pairs, sizes, backend) if need else None
            for need, (name, first, second) in zip(needs, TABLE[op])]


def _function(op: str) -> type:
    """The ``torch.autograd.Function`` of ``op``: ``apply(a, b, pairs, sizes, backend, direct)``."""

    def forward(a, b, pairs, sizes, backend, direct):
        if direct or applies(a, b):
            return _COMPUTE[op](a, b, pairs, *sizes, backend)
        if torch._C._are_functorch_transforms_active():  # wrapped by an outer transform
            return FUNCTIONS[op].apply(a, b, pairs, sizes, backend, False)
        return _operator(op, a, b, pairs, sizes, backend)

    def setup_context(ctx, inputs, output):
        a, b, pairs, sizes, backend, _ = inputs
        ctx.save_for_backward(a, b)
        ctx.save_for_forward(a, b)
        ctx.pairs, ctx.sizes, ctx.backend = pairs, sizes, backend

    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        return (*_vjps(op, ctx.needs_input_grad[:2], a, b, grad, ctx.pairs, ctx.sizes, ctx.backend),
                None, None, None, None)

    def jvp(ctx, ta, tb, *_):
        a, b = ctx.saved_tensors
        terms = [call(op, ta, b, ctx.pairs, ctx.sizes, ctx.backend) if ta is not None else None,
                 call(op, a, tb, ctx.pairs, ctx.sizes, ctx.backend) if tb is not None else None]
        terms = [t for t in terms if t is not None]
        return sum(terms[1:], terms[0])

    def vmap(info, in_dims, a, b, pairs, sizes, backend, direct):
        a_dim, b_dim, pairs_dim = in_dims[:3]
        if pairs_dim is not None:
            raise ValueError("sparsely_connected: the connectivity cannot be batched by vmap")
        if op != "weight_grad" and a_dim is not None and b_dim is None:
            a = a.movedim(a_dim, 0)
            y = FUNCTIONS[op].apply(a.flatten(0, 1), b, pairs, sizes, backend, False)
            return y.unflatten(0, (info.batch_size, -1)), 0
        sample = [FUNCTIONS[op].apply(a if a_dim is None else a.select(a_dim, i),
                                      b if b_dim is None else b.select(b_dim, i), pairs, sizes, backend, False)
                  for i in range(info.batch_size)]
        return torch.stack(sample), 0

    name = "Sparse" + "".join(part.capitalize() for part in op.split("_"))
    return type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward), "setup_context": staticmethod(setup_context),
        "backward": staticmethod(backward), "jvp": staticmethod(jvp), "vmap": staticmethod(vmap),
        "__doc__": f"``unshared::sparse_{op}`` as an autograd Function, derived from the derivative table."})


FUNCTIONS = {op: _function(op) for op in TABLE}


# ----------------------------------------------------------------------------- the operators

def _out_shape(op: str, a: Tensor, b: Tensor, pairs: Tensor, in_features: int, out_features: int):
    if op == "forward":
        return (a.shape[0], b.shape[1], out_features)
    if op == "input_grad":
        return (a.shape[0], b.shape[2], in_features)
    return (pairs.shape[1], b.shape[1], a.shape[1])  # weight grad


def _register(op: str):
    schema_names = {"forward": ("x", "weight"), "input_grad": ("grad_output", "weight"),
                    "weight_grad": ("x", "grad_output")}[op]

    def real(a: Tensor, b: Tensor, pairs: Tensor, in_features: int, out_features: int, backend: str) -> Tensor:
        out = _COMPUTE[op](a, b, pairs, in_features, out_features, backend)
        return out.clone() if out is a or out is b else out

    real.__name__ = f"sparse_{op}"
    operator = torch.library.custom_op(f"unshared::sparse_{op}", mutates_args=())(real)

    @operator.register_fake
    def _(a, b, pairs, in_features, out_features, backend):
        return a.new_empty(_out_shape(op, a, b, pairs, in_features, out_features))

    def setup_context(ctx, inputs, output):
        a, b, pairs, in_features, out_features, backend = inputs
        ctx.save_for_backward(a, b)
        ctx.pairs, ctx.sizes, ctx.backend = pairs, (in_features, out_features), backend

    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        return (*_vjps(op, ctx.needs_input_grad[:2], a, b, grad, ctx.pairs, ctx.sizes, ctx.backend),
                None, None, None, None)

    operator.register_autograd(backward, setup_context=setup_context)
    operator.__doc__ = f"unshared::sparse_{op}({', '.join(schema_names)}, pairs, in_features, out_features, backend)"
    return operator


OPERATORS = {op: _register(op) for op in TABLE}


def decompositions() -> dict:
    """The three sparse operators as standard operators (``index_select``, ``einsum``,
    ``index_add``), for ``ExportedProgram.run_decompositions``: the program then runs without
    ``unshared``. ``unshared.decompositions()`` includes them.

    Example::

        >>> import torch, unshared
        >>> from unshared.sparse import decompositions
        >>> layer = unshared.SparselyConnected(6, 2, torch.tensor([[0, 1, 4], [0, 0, 1]]))
        >>> program = torch.export.export(layer, (torch.randn(3, 6),))
        >>> program = program.run_decompositions(decompositions())
        >>> any("unshared" in str(node.target) for node in program.graph.nodes)
        False
    """
    def standard(op):
        return lambda a, b, pairs, in_features, out_features, backend: _COMPUTE[op](
            a, b, pairs, in_features, out_features, "torch")
    return {getattr(torch.ops.unshared, f"sparse_{op}").default: standard(op) for op in TABLE}


ops.DECOMPOSITION_TABLES.append(decompositions)
