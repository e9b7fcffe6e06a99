"""The operator's entry: the geometry list decoded and validated once, the tensors checked per call.

``torch.ops.unshared.forward/input_grad/weight_grad`` are public (anyone may call them, and
exporters and compilers replay them), so nothing behind them may trust its arguments. The
encoded geometry is decoded and validated once per distinct list (:func:`entry`, kept in :mod:`unshared._cache`: its sizes,
channel counts, output grid, filter banks and the bounds of :data:`unshared._utils.MAX_EXTENT`),
which also computes the shapes the tensors must have; each call then compares its tensors with
those tuples (:func:`check_forward`, :func:`check_input_grad`, :func:`check_weight_grad`): a
mismatch raises ``ValueError`` naming it, on every backend and in the fake (meta)
implementations alike. The compiled kernels check again what they read (csrc/dispatch.c).
"""
from __future__ import annotations

import math

import torch

from .._cache import cached
from .._utils import Geometry, check_extents

__all__ = ["Entry", "entry", "entry_of", "check_forward", "check_input_grad", "check_weight_grad"]


class Entry:
    """A validated geometry, what the operands must look like, and what backends prepared for it
    (``state``: the compiled kernels' call templates, say), kept as long as the entry is."""

    __slots__ = ("geometry", "encoded", "input_shape", "output_shape", "weight_shape", "empty", "state")

    def __init__(self, g: Geometry, encoded: list[int]):
        self.geometry, self.encoded = g, encoded
        self.input_shape = (g.in_channels, *g.input_size)  # the input or its gradient, after the batch
        self.output_shape = (g.out_channels, *g.output_size)  # the output or its gradient, after the batch
        self.weight_shape = (*g.weight_leading, g.out_channels, g.in_channels // g.groups, *g.kernel_size)
        self.empty = math.prod(g.input_size) == 0  # the input has no elements (a zero spatial size)
        self.state: dict = {}


def entry(encoded) -> Entry:
    """The :class:`Entry` of an encoded geometry (:meth:`Geometry.encode`), validated on first sight."""
    return cached(("entry", *encoded), lambda: Entry(_decode(tuple(encoded)), list(encoded)))


def entry_of(g: Geometry) -> Entry:
    """The :class:`Entry` of a geometry object (validated as :func:`entry` validates a list)."""
    return entry(g.encode())


def _decode(key: tuple[int, ...]) -> Geometry:
    if not key or key[0] not in (1, 2, 3) or not all(isinstance(v, int) for v in key):
        raise ValueError(f"unshared operator: the geometry must be a list of ints starting with the number of "
                         f"spatial dimensions (1, 2 or 3), got {list(key)[:8]}")
    try:
        g = Geometry.decode(key)
        well_formed = tuple(g.encode()) == key
    except (IndexError, TypeError, ValueError):
        well_formed = False
    if not well_formed:
        raise ValueError(f"unshared operator: the geometry list {list(key)} is not one that Geometry.encode makes "
                         f"(wrong length for {key[0]} dimensions)")
    _validate(g)
    return g


def _refuse(g: Geometry, what: str):
    raise ValueError(f"unshared operator: invalid geometry ({what}): {g}")


def _validate(g: Geometry) -> None:
    """Everything a backend relies on: positive sizes, divisible channels, bounded values, an output
    grid inside the padded input and bank coordinates inside the bank grid."""
    if any(i < 0 for i in g.input_size) or any(p < 0 for pair in g.padding for p in pair):
        _refuse(g, "negative input size or padding")
    for name, values in (("output_size", g.output_size), ("kernel_size", g.kernel_size), ("stride", g.stride),
                         ("dilation", g.dilation)):
        if any(v <= 0 for v in values):
            _refuse(g, f"{name}={values} must be positive")
    if min(g.groups, g.in_channels, g.out_channels) <= 0 or g.in_channels % g.groups or g.out_channels % g.groups:
        _refuse(g, f"channels {g.in_channels} -> {g.out_channels} in {g.groups} groups")
    check_extents(g.input_size, g.kernel_size, g.stride, g.padding, g.dilation)
    for d, (o, p, k, s, dil) in enumerate(zip(g.output_size, g.padded_size, g.kernel_size, g.stride, g.dilation)):
        span = dil * (k - 1) + 1
        if p < span or o > (p - span) // s + 1:
            _refuse(g, f"output size {o} along dimension {d} needs more than the padded input size {p}")
    if g.banks is not None:
        if any(size <= 0 for size in g.weight_grid):
            _refuse(g, f"bank grid {g.weight_grid} must be positive")
        for d, (coords, size) in enumerate(zip(g.banks, g.weight_grid)):
            if any(not 0 <= c < size for c in coords):
                _refuse(g, f"a bank coordinate along dimension {d} is outside the bank grid {g.weight_grid}")


# ----------------------------------------------------------------------------- per call

def _batched(op: str, name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if t.dim() != len(shape) + 1 or t.shape[1:] != shape:
        raise ValueError(f"unshared.{op}: {name} of shape {tuple(t.shape)} does not fit the geometry, which "
                         f"needs (N, {', '.join(map(str, shape))})")


def _pair(op: str, first: str, a: torch.Tensor, second: str, b: torch.Tensor) -> None:
    if a.dtype != b.dtype or not a.is_floating_point():
        raise ValueError(f"unshared.{op}: {first} and {second} must have one floating dtype, got {a.dtype} and "
                         f"{b.dtype}")
    if a.device != b.device:
        raise ValueError(f"unshared.{op}: {first} is on {a.device} but {second} on {b.device}")


def _weight(op: str, name: str, w: torch.Tensor, e: Entry) -> None:
    if w.shape != e.weight_shape:
        raise ValueError(f"unshared.{op}: {name} of shape {tuple(w.shape)} does not fit the geometry, which needs "
                         f"{e.weight_shape}")


def check_forward(e: Entry, x: torch.Tensor, w: torch.Tensor) -> None:
    """``unshared::forward``'s ``(x, weight)`` against the geometry."""
    _pair("forward", "input", x, "weight", w)
    _batched("forward", "input", x, e.input_shape)
    _weight("forward", "weight", w, e)


def check_input_grad(e: Entry, gy: torch.Tensor, w: torch.Tensor) -> None:
    """``unshared::input_grad``'s ``(grad_output, weight)`` against the geometry."""
    _pair("input_grad", "grad_output", gy, "weight", w)
    _batched("input_grad", "grad_output", gy, e.output_shape)
    _weight("input_grad", "weight", w, e)


def check_weight_grad(e: Entry, x: torch.Tensor, gy: torch.Tensor) -> None:
    """``unshared::weight_grad``'s ``(x, grad_output)`` against the geometry."""
    _pair("weight_grad", "input", x, "grad_output", gy)
    _batched("weight_grad", "input", x, e.input_shape)
    _batched("weight_grad", "grad_output", gy, e.output_shape)
    if x.shape[0] != gy.shape[0]:
        raise ValueError(f"unshared.weight_grad: input has batch {x.shape[0]} but grad_output {gy.shape[0]}")
