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
the dispatcher and reach it through :mod:`.derivatives`, with the same results.
"""
import torch
from torch import Tensor

from .._utils import Geometry, memory_format_of
from . import checks, composite, compute, derivatives
from .registry import BACKENDS

__all__ = ["locally_connected", "locally_connected_transpose", "decompositions", "DECOMPOSITION_TABLES"]


def _with_bias(y: Tensor, bias: Tensor | None) -> Tensor:
    return y if bias is None else y + compute.bias_view(bias, y.dim())


def locally_connected(x: Tensor, weight: Tensor, geometry: Geometry, backend: str,
                      plan: compute.Plan | None = None, bias: Tensor | None = None) -> Tensor:
    """``(N, C, *input_size)`` -> ``(N, O, *output_size)``, plus ``bias`` (``(O,)`` or
    ``(O, *output_size)``) when given; zero padding only. ``plan``: the call's
    :class:`~.compute.Plan` (of ``geometry`` and ``backend``), when the caller keeps one (its
    checks then vouch for the tensors; without one they are checked here)."""
    module = BACKENDS.get(backend)  # "auto": chosen inside the operator
    if getattr(module, "STANDARD_OPERATORS", False):
        return _with_bias(module.forward(x, weight, geometry), bias)
    if plan is None:  # tensors that no plan vouches for: checked as the operator checks them
        plan = compute.plan_of(geometry.encode(), backend)
        checks.check_forward(plan.entry, x, weight)
    return derivatives.forward(x, weight, bias, plan)


def locally_connected_transpose(x: Tensor, weight: Tensor, geometry: Geometry, backend: str,
                                plan: compute.Plan | None = None, bias: Tensor | None = None) -> Tensor:
    """The adjoint of :func:`locally_connected` in its input: ``(N, O, *output_size)`` ->
    ``(N, C, *input_size)`` of ``geometry`` (the transposed layer's forward), plus ``bias``
    (``(C,)`` or ``(C, *input_size)``) when given."""
    module = BACKENDS.get(backend)
    channels_last = memory_format_of(x) != torch.contiguous_format
    if getattr(module, "STANDARD_OPERATORS", False):
        if not hasattr(module, "input_grad"):
            raise ValueError(f"backend={backend!r} cannot compute a transposed layer")
        y = module.input_grad(x, weight, geometry, compute.input_grad_format(channels_last, x.dim()))
    else:
        if plan is None:
            plan = compute.plan_of(geometry.encode(), backend)
            checks.check_input_grad(plan.entry, x, weight)
        y = derivatives.call("input_grad", x, weight, plan, channels_last)
    return _with_bias(y, bias)


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

derivatives.register({"forward": _forward, "input_grad": _input_grad, "weight_grad": _weight_grad})


# ----------------------------------------------------------------------------- decompositions

def _decoded(geometry: list[int]) -> Geometry:
    g = Geometry.decode(geometry)
    if g.banks is not None:
        raise NotImplementedError(
            "unshared.decompositions: shared filter banks (tiled and region layers) do not decompose (their bank "
            "index is a constant tensor that run_decompositions cannot lift); export such a layer with "
            "backend='composite', which records standard operators")
    return g


#: More decomposition tables (functions returning dicts like :func:`decompositions`') that the
#: packages above register, so that :func:`decompositions` covers every operator: the sparse layer's.
DECOMPOSITION_TABLES: list = []


def decompositions() -> dict:
    """Every ``unshared`` operator as standard operators (the composite backend; the sparse layer's
    by ``index_add``), for
    ``ExportedProgram.run_decompositions``: the decomposed program runs and loads without ``unshared``.
    Layers with shared filter banks (tiled, region) raise ``NotImplementedError``: export them
    with ``backend="composite"``.

    Example::

        >>> import torch, unshared
        >>> layer = unshared.LocallyConnected1d(2, 3, 3, input_size=8)
        >>> program = torch.export.export(layer, (torch.randn(4, 2, 8),))
        >>> program = program.run_decompositions(unshared.decompositions())
        >>> any("unshared" in str(node.target) for node in program.graph.nodes)
        False
    """
    table = {
        torch.ops.unshared.forward.default:
            lambda x, weight, geometry, backend: composite.forward(x, weight, _decoded(geometry)),
        torch.ops.unshared.input_grad.default:
            lambda grad_output, weight, geometry, backend, channels_last: composite.input_grad(
                grad_output, weight, _decoded(geometry),
                compute.input_grad_format(channels_last, grad_output.dim())),
        torch.ops.unshared.weight_grad.default:
            lambda x, grad_output, geometry, backend, kernel_major: composite.weight_grad(
                x, grad_output, _decoded(geometry), kernel_major),
    }
    for more in DECOMPOSITION_TABLES:
        table.update(more())
    return table
