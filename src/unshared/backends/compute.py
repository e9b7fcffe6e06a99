"""The three operations on checked tensors: what ``unshared::forward``, ``unshared::input_grad``
and ``unshared::weight_grad`` compute, shared by the registered operators (:mod:`.ops`) and the
autograd Functions (:mod:`.derivatives`); and the :class:`Plan` that carries a call to them.

Each operation takes the :class:`~.checks.Entry` of its geometry (validated once), checks its
tensors against it (every call: a mismatch raises ``ValueError`` naming it), handles inputs with
no elements, and runs the named backend; ``"auto"`` means the measured (or preferred) backend,
with the PyTorch backend as the fallback when the chosen one fails. A :class:`Plan` whose tensors
were checked once (its key holds their metadata) calls the backend directly (:meth:`Plan.run`).
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

from .._utils import Geometry, empty_weight, memory_format_of
from . import checks, selection
from .._cache import cached
from .checks import Entry
from .registry import BACKENDS

__all__ = ["Plan", "plan_of", "forward", "input_grad", "weight_grad", "input_grad_format", "empty_forward",
           "empty_input_grad", "empty_weight_grad", "bias_view"]


def input_grad_format(channels_last: bool, dim: int) -> torch.memory_format:
    """The memory format of an input gradient: channels-last (2d, 3d) when asked, else contiguous."""
    if not channels_last or dim not in (4, 5):
        return torch.contiguous_format
    return torch.channels_last if dim == 4 else torch.channels_last_3d


def _function(module, operation: str, e: Entry):
    """``module.<operation>``, given ``e``'s prepared state when the backend keeps one (``PREPARES``)."""
    fn = getattr(module, operation)
    return functools.partial(fn, state=e.state) if getattr(module, "PREPARES", False) else fn


def _run(name: str, stage: str, sample: Tensor, weight: Tensor | None, e: Entry, operation: str, *args):
    """``BACKENDS[name].operation(*args)``; with ``"auto"`` the measured (or preferred) backend, and
    when that one fails (a kernel that does not compile or launch) the PyTorch backend, with one
    warning and the choice remembered."""
    if name != "auto":
        module = BACKENDS.get(name)
        if module is None or getattr(module, "STANDARD_OPERATORS", False):
            raise ValueError(f"unshared.{operation}: backend must be 'auto' or one of "
                             f"{tuple(n for n, m in BACKENDS.items() if not getattr(m, 'STANDARD_OPERATORS', False))}"
                             f", got backend={name!r}")
        return _function(module, operation, e)(*args)
    g = e.geometry
    chosen = selection.resolve(sample, weight, g, stage)
    try:
        return _function(BACKENDS[chosen], operation, e)(*args)
    except Exception as error:
        if chosen == "torch":
            raise
        fallback = selection.failed(sample, weight, g, stage, chosen, error)
        return _function(BACKENDS[fallback], operation, e)(*args)


# ----------------------------------------------------------------------------- the plan

class Plan:
    """One configuration of a call, checked: its validated geometry (``entry``), the backend that
    computes it, and whether the caller's input is unbatched. ``direct`` holds the backend's own
    three functions (with what it prepared, see ``Entry.state``), called without per-call checks
    by :meth:`run` where the plan's key vouches for the tensors; ``None`` where the backend is
    chosen per call (``"auto"``) or the input has no elements. ``standard``: the backend is made
    of standard operators (``composite``, ``conv``), which run outside the operators and Functions."""

    __slots__ = ("entry", "geometry", "backend", "unbatched", "standard", "direct", "formats")

    def __init__(self, e: Entry, backend: str, unbatched: bool = False):
        self.entry, self.geometry, self.backend, self.unbatched = e, e.geometry, backend, unbatched
        module = BACKENDS.get(backend)
        self.standard = getattr(module, "STANDARD_OPERATORS", False)  # standard operators: autograd differentiates
        self.direct = None
        if module is not None and not self.standard and not e.empty:
            self.direct = {op: _function(module, op, e) for op in ("forward", "input_grad", "weight_grad")}
        dim = e.geometry.ndim + 2
        self.formats = {False: torch.contiguous_format, True: input_grad_format(True, dim)}

    def run(self, op: str, a: Tensor, b: Tensor, flag=None) -> Tensor:
        """``op(a, b)`` (``flag``: the input gradient's ``channels_last``, the weight gradient's
        ``kernel_major``) on tensors that this plan's checks covered."""
        direct = self.direct
        if direct is None:
            return (forward(self.entry, a, b, self.backend) if op == "forward"
                    else globals()[op](self.entry, a, b, self.backend, flag))
        if op == "forward":
            return direct[op](a, b, self.geometry)
        return direct[op](a, b, self.geometry, self.formats[flag] if op == "input_grad" else flag)


def plan_of(encoded, backend: str) -> Plan:
    """The :class:`Plan` of an encoded geometry and a backend (the operators' calls)."""
    return cached(("operator plan", backend, *encoded), lambda: Plan(checks.entry(encoded), backend))


# ----------------------------------------------------------------------------- the operations

def forward(e: Entry, x: Tensor, weight: Tensor, backend: str) -> Tensor:
    """``(N, C, *input_size)`` -> ``(N, O, *output_size)`` in ``x``'s memory format."""
    checks.check_forward(e, x, weight)
    g = e.geometry
    if e.empty:  # every patch is padding
        return empty_forward(x, g).zero_()
    return _run(backend, "forward", x, weight, e, "forward", x, weight, g)


def input_grad(e: Entry, grad_output: Tensor, weight: Tensor, backend: str, channels_last: bool) -> Tensor:
    """``(N, O, *output_size)`` -> ``(N, C, *input_size)``, channels-last when asked (2d, 3d)."""
    checks.check_input_grad(e, grad_output, weight)
    g = e.geometry
    if e.empty:
        return empty_input_grad(grad_output, g, channels_last)
    fmt = input_grad_format(channels_last, grad_output.dim())
    return _run(backend, "backward", grad_output, weight, e, "input_grad", grad_output, weight, g, fmt)


def weight_grad(e: Entry, x: Tensor, grad_output: Tensor, backend: str, kernel_major: bool) -> Tensor:
    """The public-shaped weight gradient, kernel-major or channel-major as asked."""
    checks.check_weight_grad(e, x, grad_output)
    g = e.geometry
    if e.empty:
        return empty_weight_grad(x, g, kernel_major).zero_()
    layout = None  # the weight's layout, for auto's choice
    if backend == "auto":
        layout = empty_weight(e.weight_shape, g.ndim, kernel_major=kernel_major, device="meta")
    return _run(backend, "backward", grad_output, layout, e, "weight_grad", x, grad_output, g, kernel_major)


def bias_view(bias: Tensor, dim: int) -> Tensor:
    """A bias, ``(O,)`` shared or ``(O, *output_size)`` per position, viewed to broadcast over a
    ``dim``-d output ``(N, O, *output_size)``."""
    return bias.view(-1, *(1,) * (dim - 2)) if bias.dim() == 1 else bias


# ----------------------------------------------------------------------------- shapes (fake/meta)
# The layouts here are the ones every backend returns: outputs and input gradients in the input's
# memory format, weight gradients kernel-major or channel-major as asked (the weight's layout).

def empty_forward(x: Tensor, g: Geometry) -> Tensor:
    """The uninitialised output of :func:`forward`."""
    return torch.empty((x.shape[0], g.out_channels, *g.output_size), dtype=x.dtype, device=x.device,
                       memory_format=memory_format_of(x))


def empty_input_grad(grad_output: Tensor, g: Geometry, channels_last: bool) -> Tensor:
    """The uninitialised output of :func:`input_grad`."""
    return torch.empty((grad_output.shape[0], g.in_channels, *g.input_size), dtype=grad_output.dtype,
                       device=grad_output.device, memory_format=input_grad_format(channels_last, grad_output.dim()))


def empty_weight_grad(x: Tensor, g: Geometry, kernel_major: bool) -> Tensor:
    """The uninitialised output of :func:`weight_grad`."""
    shape = (*g.weight_leading, g.out_channels, g.in_channels // g.groups, *g.kernel_size)
    return empty_weight(shape, g.ndim, kernel_major=kernel_major, dtype=x.dtype, device=x.device)
